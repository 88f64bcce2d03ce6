"""Reruns keyed on what changes a result: a corrected --mpp, another tiling option, model or panel redoes a
finished slide (saying why); unchanged inputs still skip it. Covers predict, tile and ihc (case: test_case_cli)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from histo.cli import main
from histo.models import ModelCard, MultiTaskNet, save_model
from histo.rerun import NO_RECORD, describe_changes, redo_reason
from histo.tiling import TileGrid

REPO = Path(__file__).resolve().parents[1]


def _rows(out: Path, key: str = "slide") -> dict[str, dict[str, str]]:
    with (out / "status.csv").open(newline="") as f:
        return {Path(r[key]).stem: r for r in csv.DictReader(f)}


# -- the comparison ---------------------------------------------------------------------------------------
def test_changes_are_named_field_by_field():
    old = {"slide": {"size_bytes": 10, "mtime_ns": 1}, "mpp": 0.5, "tiling": {"grid": {"overlap_px": 0, "mpp": 0.5}}}
    assert describe_changes(old, json.loads(json.dumps(old))) == []
    assert describe_changes(old, {**old, "mpp": 0.25}) == ["mpp 0.5 → 0.25"]
    new = {**old, "slide": {"size_bytes": 10, "mtime_ns": 2}, "tiling": {"grid": {"overlap_px": 8, "mpp": 0.5}}}
    assert describe_changes(old, new) == ["slide file changed", "tiling.grid.overlap_px 0 → 8"]
    assert describe_changes(old, {**new, "mpp": 1.0})[:2] == ["mpp 0.5 → 1", "slide file changed"]  # top level first
    assert describe_changes(old, {**old, "panel": {"a": 1}}) == ["panel.a added (1)"]
    assert describe_changes(None, old) == [NO_RECORD]
    assert describe_changes(old, {**old, "mpp": (0.5,)}) == ["mpp 0.5 → [0.5]"]  # tuples compare as JSON lists
    assert redo_reason(["mpp 0.5 → 0.25", "b", "c"], limit=2) == "redone: mpp 0.5 → 0.25; b; and 1 more"


# -- histo predict ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A saved tiny model (64 px tiles at 0.5 µm/px)."""
    torch.manual_seed(0)
    net = MultiTaskNet("tiny", ["pattern", "necrosis", "mitosis"])
    card = ModelCard(name="rerun-tiny", backbone="tiny", heads=net.heads_config, tile_px=64, mpp=0.5)
    folder = tmp_path_factory.mktemp("model")
    save_model(net, card, folder / "rerun-tiny")
    return folder


def _predict(slide: Path, model: Path, out: Path, *extra: str) -> int:
    return main(["predict", str(slide), "--model", str(model), "--out", str(out), "--workers", "0", "--device", "cpu",
                 "--quiet", "--no-report", *extra])


@pytest.mark.slow
def test_predict_redoes_a_slide_whose_mpp_or_tiling_changed(test_slide_path, model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    pj = out / "test_slide" / "prediction.json"
    assert _predict(test_slide_path, model_dir, out) == 0
    first = json.loads(pj.read_text())
    assert first["run_settings"]["mpp"] == 0.25 and first["run_settings"]["model"]["weights_sha256"]
    assert _predict(test_slide_path, model_dir, out) == 0
    assert _rows(out)["test_slide"]["status"] == "skipped"
    capsys.readouterr()

    # the file said 0.25 µm/px; the user corrects it: the slide is predicted again at the new scale
    assert _predict(test_slide_path, model_dir, out, "--mpp", "0.3") == 0
    row = _rows(out)["test_slide"]
    assert row["status"] == "ok" and row["reason"] == "redone: mpp 0.25 → 0.3"
    assert "redone: mpp 0.25 → 0.3" in capsys.readouterr().err
    second = json.loads(pj.read_text())
    assert second["slide_mpp"] == 0.3 and second["n_tiles"] != first["n_tiles"]  # new numbers, not the old ones
    assert _predict(test_slide_path, model_dir, out, "--mpp", "0.3") == 0
    assert _rows(out)["test_slide"]["status"] == "skipped"
    # an --mpp equal to the file's own value changes nothing... relative to a run at that value
    assert _predict(test_slide_path, model_dir, out, "--mpp", "0.25") == 0
    assert _rows(out)["test_slide"]["reason"] == "redone: mpp 0.3 → 0.25"
    assert _predict(test_slide_path, model_dir, out) == 0
    assert _rows(out)["test_slide"]["status"] == "skipped"

    assert _predict(test_slide_path, model_dir, out, "--overlap-px", "16") == 0
    assert _rows(out)["test_slide"]["reason"] == "redone: tiling.grid.overlap_px 0 → 16"
    assert json.loads(pj.read_text())["tiling"]["grid"]["overlap_px"] == 16
    assert _predict(test_slide_path, model_dir, out, "--overlap-px", "16", "--min-tissue-fraction", "0.9") == 0
    assert _rows(out)["test_slide"]["reason"] == "redone: tiling.grid.min_tissue_fraction 0.5 → 0.9"


@pytest.mark.slow
def test_predict_redoes_on_another_model_card_slide_file_or_old_record(test_slide_path, model_dir, tmp_path):
    out = tmp_path / "out"
    assert _predict(test_slide_path, model_dir, out) == 0
    # the same weights applied with another mitosis threshold give other points: redone
    from histo.models import load_model

    net, card = load_model(model_dir, "cpu")
    other = tmp_path / "model2"
    save_model(net, ModelCard(**{**card.to_dict(), "mitosis_threshold": 0.7, "weights_sha256": None}), other / "m")
    assert _predict(test_slide_path, other, out) == 0
    assert "model.mitosis_threshold 0.5 → 0.7" in _rows(out)["test_slide"]["reason"]
    assert _predict(test_slide_path, other, out) == 0
    assert _rows(out)["test_slide"]["status"] == "skipped"
    # the slide file rewritten (here: touched) is redone
    st = os.stat(test_slide_path)
    slide = tmp_path / "test_slide.tiff"
    slide.write_bytes(Path(test_slide_path).read_bytes())
    os.utime(slide, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime as the original: same file
    assert _predict(slide, other, out) == 0
    assert _rows(out)["test_slide"]["status"] == "skipped"
    os.utime(slide, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert _predict(slide, other, out) == 0
    assert _rows(out)["test_slide"]["reason"] == "redone: slide file changed"
    # a folder from before run keys is redone once, then skipped
    pj = out / "test_slide" / "prediction.json"
    data = json.loads(pj.read_text())
    del data["run_settings"]
    pj.write_text(json.dumps(data))
    assert _predict(slide, other, out) == 0
    assert _rows(out)["test_slide"]["reason"] == f"redone: {NO_RECORD}"
    assert _predict(slide, other, out) == 0
    assert _rows(out)["test_slide"]["status"] == "skipped"


@pytest.mark.slow
def test_predict_rewrites_the_report_when_only_the_grading_changed(test_slide_path, model_dir, tmp_path):
    out = tmp_path / "out"
    base = ["predict", str(test_slide_path), "--model", str(model_dir), "--out", str(out), "--workers", "0",
            "--device", "cpu", "--quiet", "--set", "hpf.preset=custom", "--set", "hpf.area_mm2=0.001"]
    assert main(base) == 0
    assert main(base) == 0
    row = _rows(out)["test_slide"]
    assert row["status"] == "skipped" and row["verdict"] and Path(row["report"]).is_file()  # the verdict stays listed
    stricter = ["--set", "grading.high_grade.necrosis_min_pct=99"]
    assert main([*base, *stricter]) == 0
    row = _rows(out)["test_slide"]
    assert row["status"] == "ok"
    assert row["reason"] == ("report redone (grading changed: grading.high_grade.necrosis_min_pct 1 → 99); "
                             "predictions unchanged")
    report = json.loads((out / "test_slide" / "report.json").read_text())
    assert report["grading_config"]["grading"]["high_grade"]["necrosis_min_pct"] == 99
    assert row["verdict"] == report["verdict"]["high_grade"]
    assert main([*base, *stricter]) == 0
    assert _rows(out)["test_slide"]["status"] == "skipped"


# -- histo tile -------------------------------------------------------------------------------------------
def _tile(slide: Path, out: Path, *extra: str) -> int:
    return main(["tile", str(slide), "--out", str(out), "--workers", "0", "--quiet", "--set", "grid.tile_px=128",
                 *extra])


def test_tile_redoes_a_slide_whose_mpp_or_tiling_changed(test_slide_path, tmp_path, capsys):
    out = tmp_path / "out"
    assert _tile(test_slide_path, out) == 0
    n0 = len(TileGrid.load(out / "test_slide" / "grid.parquet"))
    assert _tile(test_slide_path, out) == 0
    assert _rows(out)["test_slide"]["status"] == "skipped"
    capsys.readouterr()
    assert _tile(test_slide_path, out, "--mpp", "0.5") == 0
    row = _rows(out)["test_slide"]
    assert row["status"] == "ok" and row["reason"] == "redone: mpp 0.25 → 0.5"
    assert "redone: mpp 0.25 → 0.5" in capsys.readouterr().err
    grid = TileGrid.load(out / "test_slide" / "grid.parquet")
    assert grid.slide["mpp"] == 0.5 and len(grid) != n0
    assert _tile(test_slide_path, out, "--mpp", "0.5") == 0
    assert _rows(out)["test_slide"]["status"] == "skipped"
    assert _tile(test_slide_path, out, "--mpp", "0.5", "--set", "grid.overlap_px=32") == 0
    assert _rows(out)["test_slide"]["reason"] == "redone: grid.overlap_px 0 → 32"
    assert _tile(test_slide_path, out, "--mpp", "0.5", "--set", "grid.overlap_px=32",
                 "--set", "grid.min_tissue_fraction=0.9") == 0
    assert _rows(out)["test_slide"]["reason"] == "redone: grid.min_tissue_fraction 0.5 → 0.9"


# -- histo ihc --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ihc_slide(tmp_path_factory):
    from test_ihc_slide import MPP, SIDE, _cells_render

    from histo.synth.tiff_writer import write_pyramidal_tiff

    render, _, _ = _cells_render(True)
    path = tmp_path_factory.mktemp("ihc") / "case1_IHC_ALK.tiff"
    write_pyramidal_tiff(path, SIDE, SIDE, MPP, render, tile_px=256, chunk_px=512, jpeg_quality=95)
    return path


@pytest.mark.slow
def test_ihc_redoes_a_slide_whose_mpp_or_panel_changed(ihc_slide, tmp_path, capsys):
    from test_ihc_slide import MPP

    out = tmp_path / "out"

    def ihc(*extra: str) -> int:
        return main(["ihc", str(ihc_slide), "--marker", "ALK", "--out", str(out), "--quiet", "--workers", "0", *extra])

    assert ihc() == 0
    assert ihc() == 0 and _rows(out)["case1_IHC_ALK"]["status"] == "skipped"
    capsys.readouterr()
    corrected = round(MPP * 0.9, 4)
    assert ihc("--mpp", str(corrected)) == 0
    row = _rows(out)["case1_IHC_ALK"]
    assert row["status"] == "ok" and row["reason"].startswith(f"redone: mpp {MPP:g} → {corrected:g} — ALK")
    assert f"redone: mpp {MPP:g} → {corrected:g}" in capsys.readouterr().out
    assert json.loads((out / "case1_IHC_ALK" / "ihc.json").read_text())["slide_mpp"] == pytest.approx(corrected)
    assert ihc("--mpp", str(corrected)) == 0 and _rows(out)["case1_IHC_ALK"]["status"] == "skipped"
    # a panel whose ALK thresholds differ
    panel = yaml.safe_load((REPO / "configs" / "markers" / "panel.yaml").read_text())
    alk = panel["markers"]["ALK"] if "markers" in panel else panel["ALK"]
    old = list(alk["thresholds_od"])
    alk["thresholds_od"] = [round(old[0] + 0.01, 4), *old[1:]]
    (tmp_path / "panel.yaml").write_text(yaml.safe_dump(panel))
    assert ihc("--mpp", str(corrected), "--panel", str(tmp_path / "panel.yaml")) == 0
    assert _rows(out)["case1_IHC_ALK"]["reason"].startswith("redone: thresholds_od ")
    # another analysis resolution (the IHC grid's tile mpp)
    assert ihc("--mpp", str(corrected), "--panel", str(tmp_path / "panel.yaml"), "--analysis-mpp", "0.6") == 0
    assert _rows(out)["case1_IHC_ALK"]["reason"].startswith("redone: analysis_mpp none → 0.6 — ALK")
