"""`histo report`: re-grading prediction folders (contract C) with a grading config, per-folder status, exit codes."""

from __future__ import annotations

import csv
import json

import yaml
from test_report_tables import mitoses_table, tiles_table, write_prediction_folder

from histo.cli import main
from histo.report import validate_report

SMALL_HPF = {"hpf": {"preset": "custom", "area_mm2": 0.001}}


def _grading(path, **high_grade):
    data = dict(SMALL_HPF)
    if high_grade:
        data["grading"] = {"high_grade": high_grade}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_rerun_with_another_grading_config_changes_the_verdict(tmp_path, test_slide_path, capsys):
    pred = write_prediction_folder(tmp_path / "run" / "slideA", test_slide_path, tiles_table(), mitoses_table())
    strict = _grading(tmp_path / "strict.yaml", mitoses_min_per_10hpf=500, necrosis_min_pct=50)

    assert main(["report", "--thumbnail-px", "256", str(pred), "--grading", str(_grading(tmp_path / "default.yaml"))]) == 0
    first = json.loads((pred / "report.json").read_text())
    validate_report(first)
    assert first["verdict"]["high_grade"] == "yes"
    assert first["slide"]["dimensions"] == [2048, 1536]  # slide found from prediction.json: thumbnail drawn
    assert "thumbnail" in first["files"]["images"]

    assert main(["report", "--thumbnail-px", "256", str(tmp_path / "run"), "--grading", str(strict)]) == 0  # run folder expands
    second = json.loads((pred / "report.json").read_text())
    assert second["verdict"]["high_grade"] == "no"
    assert second["verdict"]["line"].startswith("High grade: NO — mitotic activity 30 mitoses in the 0.01 mm² square hotspot window (10 HPF) = 30 per 10 HPF (HPF 0.001 mm²) < 500")
    assert second["grading_config_sha256"] != first["grading_config_sha256"]
    assert "High grade: NO" in (pred / "report.html").read_text()
    err = capsys.readouterr().err
    assert "high grade no" in err and "1 of 1 folders reported, 0 failed" in err

    # --set overrides on top of the file
    assert main(["report", "--thumbnail-px", "256", str(pred), "--grading", str(strict), "--set",
                 "grading.high_grade.necrosis_min_pct=10"]) == 0
    assert json.loads((pred / "report.json").read_text())["verdict"]["high_grade"] == "yes"


def test_failed_folder_is_reported_and_the_others_go_on(tmp_path, capsys):
    good = write_prediction_folder(tmp_path / "preds" / "good", None, tiles_table(), mitoses_table())
    broken = tmp_path / "preds" / "broken"
    broken.mkdir()
    (broken / "prediction.json").write_text("{}")
    out = tmp_path / "reports"
    code = main(["report", "--thumbnail-px", "256", str(good), str(broken), str(tmp_path / "missing"), "--out", str(out), "--set",
                 "hpf.preset=custom", "--set", "hpf.area_mm2=0.001"])
    assert code == 1
    rows = {r["folder"]: r for r in csv.DictReader((out / "status.csv").open())}
    assert rows[str(good)]["status"] == "ok" and rows[str(good)]["verdict"] == "yes"
    assert rows[str(broken)]["status"] == "failed" and "missing tiles.parquet" in rows[str(broken)]["reason"]
    assert rows[str(tmp_path / "missing")]["status"] == "failed"
    report = json.loads((out / "good" / "report.json").read_text())
    assert report["slide"]["dimensions"] is None  # the slide file named in prediction.json is gone: drawn on white
    assert yaml.safe_load((out / "grading.yaml").read_text())["hpf"]["area_mm2"] == 0.001
    assert not (good / "report.json").exists()  # --out leaves the prediction folder untouched
    assert "1 of 3 folders reported, 2 failed" in capsys.readouterr().err


def test_bad_grading_key_is_a_usage_error(tmp_path, capsys):
    pred = write_prediction_folder(tmp_path / "p", None, tiles_table(), mitoses_table())
    assert main(["report", "--thumbnail-px", "256", str(pred), "--set", "grading.high_grade.mitoses_min=3"]) == 2
    assert "unknown key 'grading.high_grade.mitoses_min'" in capsys.readouterr().err
    assert not (pred / "report.json").exists()


def test_regrading_in_place_updates_the_run_status_row(tmp_path, test_slide_path, capsys):
    from histo.status import read_status, update_status

    run = tmp_path / "run"
    pred = write_prediction_folder(run / "slideA", test_slide_path, tiles_table(), mitoses_table())
    fields = ["slide", "status", "reason", "n_tiles", "seconds", "verdict", "report"]  # as histo predict writes it
    update_status(run / "status.csv", {
        "slides/slideA.svs": {"slide": "slides/slideA.svs", "status": "ok", "n_tiles": 12, "verdict": "yes",
                              "report": str(pred / "report.html")},
        "slides/slideB.svs": {"slide": "slides/slideB.svs", "status": "skipped", "verdict": "no"}}, fields)
    strict = _grading(tmp_path / "strict.yaml", mitoses_min_per_10hpf=500, necrosis_min_pct=50)
    assert main(["report", "--thumbnail-px", "256", str(run), "--grading", str(strict)]) == 0
    rows = read_status(run / "status.csv")
    assert rows["slides/slideA.svs"]["verdict"] == "no"  # was "yes" before the re-grade
    assert rows["slides/slideA.svs"]["status"] == "ok" and rows["slides/slideA.svs"]["n_tiles"] == "12"
    assert rows["slides/slideA.svs"]["reason"] == f"re-graded by histo report ({strict})"
    assert rows["slides/slideA.svs"]["report"] == str(pred / "report.html")
    assert rows["slides/slideB.svs"]["verdict"] == "no" and rows["slides/slideB.svs"]["status"] == "skipped"
    # a folder whose re-grade fails is marked failed in the run's table, the reason saying why
    (pred / "tiles.parquet").unlink()
    assert main(["report", "--thumbnail-px", "256", str(pred), "--grading", str(strict)]) == 1
    row = read_status(run / "status.csv")["slides/slideA.svs"]
    assert row["status"] == "failed" and row["verdict"] == "" and row["reason"].startswith("report: ")


def test_report_out_status_merges_rows_of_earlier_runs(tmp_path):
    a = write_prediction_folder(tmp_path / "preds" / "a", None, tiles_table(), mitoses_table())
    b = write_prediction_folder(tmp_path / "preds" / "b", None, tiles_table(), mitoses_table())
    out = tmp_path / "reports"
    small = ["--set", "hpf.preset=custom", "--set", "hpf.area_mm2=0.001"]
    assert main(["report", "--thumbnail-px", "256", str(a), "--out", str(out), *small]) == 0
    assert main(["report", "--thumbnail-px", "256", str(b), "--out", str(out), *small]) == 0
    rows = {r["folder"]: r for r in csv.DictReader((out / "status.csv").open())}
    assert set(rows) == {str(a), str(b)}
