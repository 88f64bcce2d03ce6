"""`histo case`: one H&E + its IHC slides → slide reports and one case report; bad cases fail alone."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from histo.cli import main
from histo.cli.case import load_case
from histo.errors import ConfigError
from histo.models import ModelCard, MultiTaskNet, save_model
from histo.report import validate_case_report, validate_report
from histo.synth.phantom import make_phantom

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A saved tiny model with random weights (64 px tiles at 1 µm/px)."""
    torch.manual_seed(0)
    net = MultiTaskNet("tiny", ["pattern", "necrosis", "mitosis"])
    card = ModelCard(name="case-tiny", backbone="tiny", heads=net.heads_config, tile_px=64, mpp=1.0)
    folder = tmp_path_factory.mktemp("model")
    save_model(net, card, folder / "case-tiny")
    return folder


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """A small H&E + ALK IHC phantom pair sharing one level-0 frame."""
    out = tmp_path_factory.mktemp("phantom")
    return make_phantom(REPO / "configs" / "synth" / "demo_small.yaml", out, size_px=(1536, 1536))


def _case_file(folder: Path, phantom, **extra) -> Path:
    data = {"case_id": "C1", "he": str(phantom.he_path), "ihc": {"ALK": str(phantom.ihc_path)}, **extra}
    path = folder / f"{data['case_id']}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_case_file_errors_name_the_key(tmp_path, phantom):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"case_id": "C3", "he": str(phantom.he_path), "ihk": {}}), encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown key 'ihk'"):
        load_case(bad)
    bad.write_text(yaml.safe_dump({"case_id": "a/b", "he": str(phantom.he_path)}), encoding="utf-8")
    with pytest.raises(ConfigError, match="plain name"):
        load_case(bad)
    bad.write_text(yaml.safe_dump({"case_id": "C3", "he": str(phantom.he_path), "ihc": {"ALK": 3}}), encoding="utf-8")
    with pytest.raises(ConfigError, match="ihc.ALK"):
        load_case(bad)



def _check_case_report(out: Path) -> None:
    """The case report joins the H&E grading and the ALK call; the slide reports and status row agree."""
    report = json.loads((out / "C1" / "case_report.json").read_text(encoding="utf-8"))
    validate_case_report(report)
    assert report["case_id"] == "C1" and "ALK" in report["summary"]
    assert [r["marker"] for r in report["ihc"]] == ["ALK"]
    # the H&E slide report carries the same ALK result and lives under he/
    he_report = json.loads(next((out / "C1" / "he").glob("*/report.json")).read_text(encoding="utf-8"))
    validate_report(he_report)
    assert len(he_report["ihc"]) == 1
    ihc = json.loads(next((out / "C1" / "ihc" / "ALK").glob("*/ihc.json")).read_text(encoding="utf-8"))
    assert ihc["marker"] == "ALK" and ihc["region"] == "tumour"  # counted in the H&E model's tumour map
    html = (out / "C1" / "case_report.html").read_text(encoding="utf-8")
    assert "Research use only" in html
    with (out / "status.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["case"] == "C1" and rows[0]["status"] == "ok"


def _case(out: Path, model_dir: Path, *cases: Path, extra: tuple[str, ...] = ()) -> int:
    return main(["case", *map(str, cases), "--model", str(model_dir), "--out", str(out), "--workers", "0", "--quiet",
                 *extra])


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with (out / "status.csv").open(newline="") as f:
        return {r["case"]: r for r in csv.DictReader(f)}


def _he_prediction(out: Path, case_id: str = "C1") -> dict:
    return json.loads(next((out / case_id / "he").glob("*/prediction.json")).read_text(encoding="utf-8"))


@pytest.mark.slow
def test_case_report_then_reruns_skip_unchanged_and_redo_a_corrected_mpp(phantom, model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    case = _case_file(tmp_path, phantom)
    slide_mpp = 0.25  # configs/synth/demo_small.yaml
    assert _case(out, model_dir, case) == 0
    _check_case_report(out)
    assert _he_prediction(out)["slide_mpp"] == slide_mpp
    assert _case(out, model_dir, case) == 0
    assert _rows(out)["C1"]["status"] == "skipped"
    capsys.readouterr()
    fixed = _case_file(tmp_path, phantom, mpp=0.225)  # the case file's mpp corrected
    assert _case(out, model_dir, fixed) == 0
    row = _rows(out)["C1"]
    assert row["status"] == "ok"
    assert "H&E redone: mpp 0.25 → 0.225" in row["reason"] and "ALK redone: mpp 0.25 → 0.225" in row["reason"]
    assert "H&E redone: mpp 0.25 → 0.225" in capsys.readouterr().err
    assert _he_prediction(out)["slide_mpp"] == 0.225
    assert _case(out, model_dir, fixed) == 0 and _rows(out)["C1"]["status"] == "skipped"
    # another grading: the predictions stand, the reports (and the IHC count's necrosis rules) follow it
    assert _case(out, model_dir, fixed, extra=("--set", "grading.high_grade.necrosis_min_pct=99")) == 0
    row = _rows(out)["C1"]
    assert row["status"] == "ok" and "reports redone: grading.grading.high_grade.necrosis_min_pct 1 → 99" in row["reason"]
    assert "H&E redone" not in row["reason"]


@pytest.mark.slow
def test_case_rows_merge_and_a_duplicate_case_id_is_refused(phantom, model_dir, tmp_path):
    out = tmp_path / "out"
    first = _case_file(tmp_path, phantom)
    (tmp_path / "c2").mkdir()
    second = _case_file(tmp_path / "c2", phantom, case_id="C2")
    assert _case(out, model_dir, first) == 0
    assert _case(out, model_dir, second) == 0
    assert set(_rows(out)) == {"C1", "C2"}  # the second run merged its row in; C1's row is kept
    report = (out / "C1" / "case_report.json").read_bytes()
    (tmp_path / "dup").mkdir()
    dup = _case_file(tmp_path / "dup", phantom, mpp=0.225)  # also case_id C1
    assert _case(out, model_dir, first, dup) == 1
    rows = _rows(out)
    assert rows["C1"]["status"] == "skipped" and rows["C1"]["case_file"] == str(first)
    assert rows[str(dup)]["status"] == "failed" and rows[str(dup)]["case_file"] == str(dup)
    assert f"case_id 'C1' is already used in this run by {first}" in rows[str(dup)]["reason"]
    assert rows["C2"]["status"] == "ok"
    # the first case's outputs are untouched by the refused duplicate
    assert (out / "C1" / "case_report.json").read_bytes() == report
    assert _he_prediction(out)["slide_mpp"] == 0.25


def test_bad_cases_fail_alone(phantom, model_dir, tmp_path, monkeypatch):
    """A case whose slide is missing and one whose slide crashes native code fail, each alone; the good case runs."""
    import multiprocessing as mp
    import os
    import shutil

    import histo.isolate as iso

    monkeypatch.setattr(iso, "_CTX", mp.get_context("fork"))  # children see this test's monkeypatch
    real_probe = iso.probe

    def probe(path, *a, **k):
        if "crashy" in str(path):
            os.abort()  # what OpenSlide does on some corrupt files: no Python except can catch it
        return real_probe(path, *a, **k)

    monkeypatch.setattr(iso, "probe", probe)
    bad_he = tmp_path / "crashy_HE.tiff"
    shutil.copy(phantom.he_path, bad_he)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"case_id": "C9", "he": str(bad_he), "ihc": {"ALK": str(phantom.ihc_path)}}))
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({"case_id": "C2", "he": "nowhere.tiff"}), encoding="utf-8")
    good = _case_file(tmp_path, phantom)
    out = tmp_path / "out"
    rc = main(["case", str(missing), str(bad), str(good), "--model", str(model_dir), "--out", str(out),
               "--workers", "0", "--quiet"])
    assert rc == 1
    rows = _rows(out)
    assert rows["missing"]["status"] == "failed" and "nowhere.tiff" in rows["missing"]["reason"]
    assert rows["C9"]["status"] == "failed" and "crashed (signal 6" in rows["C9"]["reason"]
    assert rows["C1"]["status"] == "ok"
