"""`histo ihc`: exit codes, status rows, resume, per-slide failures, tumour tiles matched by slide stem."""

from __future__ import annotations

import csv
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_ihc_slide import MPP, SIDE, _cells_render

from histo.cli import main


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    from histo.synth.tiff_writer import write_pyramidal_tiff

    render, centres, cls = _cells_render(True)
    path = tmp_path_factory.mktemp("cli") / "case1_IHC_ALK.tiff"
    write_pyramidal_tiff(path, SIDE, SIDE, MPP, render, tile_px=256, chunk_px=512, jpeg_quality=95)
    return path


def _status(out):
    with (out / "status.csv").open(newline="") as f:
        return {r["slide"]: r for r in csv.DictReader(f)}


def test_batch_status_resume_and_failure(slide, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["ihc", str(slide), str(tmp_path / "missing.tiff"), "--marker", "ALK", "--out", str(out), "--quiet"])
    assert rc == 1  # one slide failed, the other was done
    st = _status(out)
    assert st["case1_IHC_ALK"]["status"] == "ok" and st["case1_IHC_ALK"]["call"] == "positive"
    assert st["missing"]["status"] == "failed" and "no such file" in st["missing"]["reason"]
    printed = capsys.readouterr().out
    assert "ALK positive (H-score" in printed and "% of cells ≥ 1+)" in printed
    j = json.loads((out / "case1_IHC_ALK" / "ihc.json").read_text())
    assert j["schema"] == "histo.ihc/1" and j["run_settings"]["marker"] == "ALK"
    rc = main(["ihc", str(slide), "--marker", "ALK", "--out", str(out), "--quiet"])
    assert rc == 0 and _status(out)["case1_IHC_ALK"]["status"] == "skipped"
    rc = main(["ihc", str(slide), "--marker", "ALK", "--out", str(out), "--quiet", "--overwrite"])
    assert rc == 0 and _status(out)["case1_IHC_ALK"]["status"] == "ok"


def test_unknown_marker_is_usage_error(slide, tmp_path, capsys):
    rc = main(["ihc", str(slide), "--marker", "HER9", "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "HER9" in capsys.readouterr().err


def test_tumour_tiles_from_prediction_folder(slide, tmp_path):
    # A contract-C prediction folder for the H&E twin "case1_HE": left half spindle tumour, right half none.
    pred = tmp_path / "pred" / "case1_HE"
    pred.mkdir(parents=True)
    rows = []
    for y in range(0, SIDE, 512):
        for x in range(0, SIDE, 512):
            tumour = x < 1024
            rows.append({"col": x // 512, "row": y // 512, "x": float(x), "y": float(y), "w": 512.0, "h": 512.0,
                         "tissue_fraction": 1.0, "p_necrosis": 0.0, "p_pattern_none": 0.1 if tumour else 0.9,
                         "p_pattern_fascicular": 0.9 if tumour else 0.05, "p_pattern_haphazard": 0.0 if tumour else 0.05})
    t = pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
    t = t.replace_schema_metadata({b"histo.predict": json.dumps({"slide": "case1_HE", "slide_mpp": MPP}).encode()})
    pq.write_table(t, pred / "tiles.parquet")
    out = tmp_path / "out"
    rc = main(["ihc", str(slide), "--marker", "ALK", "--out", str(out), "--quiet", "--tumour-tiles", str(tmp_path / "pred")])
    assert rc == 0
    j = json.loads((out / "case1_IHC_ALK" / "ihc.json").read_text())
    assert j["region"] == "tumour"
    cells = pd.read_parquet(out / "case1_IHC_ALK" / "ihc_cells.parquet")
    assert (cells.loc[cells["in_tumour"], "x"] < 1024).all() and j["n_cells"] == int(cells["in_tumour"].sum())
    # A folder without a match for the slide fails that slide, not the run.
    rc = main(["ihc", str(slide), "--marker", "ALK", "--out", str(tmp_path / "o2"), "--quiet",
               "--tumour-tiles", str(tmp_path / "out")])
    assert rc == 1 and "no prediction" in _status(tmp_path / "o2")["case1_IHC_ALK"]["reason"]


def test_rerun_removes_the_temp_files_a_killed_run_left(slide, tmp_path):
    out = tmp_path / "out"
    assert main(["ihc", str(slide), "--marker", "ALK", "--out", str(out), "--quiet"]) == 0
    folder = out / "case1_IHC_ALK"
    left = [folder / ".ihc_heatmap.png.k9x1.tmp", folder / ".ihc.json.k9x2.tmp", folder / ".ihc_cells.parquet.k9x3.tmp"]
    for p in left:
        p.write_bytes(b"half-written")
    keep = folder / "notes.txt"  # not an output of histo ihc: never touched
    keep.write_text("mine")
    assert main(["ihc", str(slide), "--marker", "ALK", "--out", str(out), "--quiet", "--overwrite"]) == 0
    assert not any(p.exists() for p in left) and keep.read_text() == "mine"
