"""`histo predict`: status rows per slide, the batch going on past failures, resume, exit codes, torchrun."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import render_test_slide

from histo.cli import main
from histo.models import ModelCard, MultiTaskNet, save_model
from histo.predict import load_prediction
from histo.synth.tiff_writer import write_pyramidal_tiff

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A folder holding one saved tiny model (64 px tiles at 0.5 µm/px)."""
    torch.manual_seed(0)
    net = MultiTaskNet("tiny", ["pattern", "necrosis", "mitosis"])
    card = ModelCard(name="cli-tiny", backbone="tiny", heads=net.heads_config, tile_px=64, mpp=0.5)
    folder = tmp_path_factory.mktemp("model")
    save_model(net, card, folder / "cli-tiny")
    return folder


@pytest.fixture(scope="module")
def coarse_slide(tmp_path_factory) -> Path:
    """A small slide scanned at 2 µm/px: too coarse for a 0.5 µm/px model."""
    path = tmp_path_factory.mktemp("coarse") / "coarse.tiff"
    return write_pyramidal_tiff(path, 512, 384, 2.0, lambda x, y, w, h: render_test_slide(x * 4, y * 4, w, h),
                                tile_px=256, chunk_px=512)


def _status(out: Path) -> dict[str, dict[str, str]]:
    with (out / "status.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["slide", "status", "reason", "n_tiles", "seconds", "verdict", "report"]
    return {Path(r["slide"]).stem: r for r in rows}


def _predict(*args: str) -> int:
    return main(["predict", *map(str, args), "--workers", "0", "--device", "cpu", "--quiet"])


def test_batch_goes_on_past_failures_and_resumes(test_slide_path, blank_slide_path, coarse_slide, model_dir,
                                                 tmp_path, capsys):
    bad = tmp_path / "corrupt.svs"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    out = tmp_path / "out"
    slides = [bad, test_slide_path, coarse_slide, blank_slide_path]
    assert _predict(*slides, "--model", model_dir, "--out", out) == 1
    rows = _status(out)
    assert {k: r["status"] for k, r in rows.items()} == {
        "corrupt": "failed", "test_slide": "ok", "coarse": "failed", "blank": "no_tissue"}
    assert "corrupt" in rows["corrupt"]["reason"]
    assert "coarser than model 'cli-tiny'" in rows["coarse"]["reason"]
    assert rows["test_slide"]["n_tiles"] == "64" and float(rows["test_slide"]["seconds"]) > 0
    assert not (out / "coarse").exists() and not (out / "corrupt").exists()
    tiles, _, info = load_prediction(out / "test_slide")
    assert len(tiles) == 64 and info["model"]["name"] == "cli-tiny"
    # each predicted slide is graded and reported beside its tables (an empty slide is 'not assessable')
    assert rows["test_slide"]["verdict"] in ("yes", "no", "not_assessable")
    assert Path(rows["test_slide"]["report"]).is_file() and (out / "test_slide" / "annotations.geojson").is_file()
    assert rows["blank"]["verdict"] == "not_assessable"
    err = capsys.readouterr().err
    assert "ok        " in err and "FAILED    " in err and "no tissue " in err
    assert "2 of 4 slides done, 2 failed" in err

    # rerun: finished slides are skipped, the broken ones fail again
    assert _predict(*slides, "--model", model_dir / "cli-tiny", "--out", out) == 1
    rows = _status(out)
    assert rows["test_slide"]["status"] == "skipped" and rows["blank"]["status"] == "skipped"
    assert rows["corrupt"]["status"] == "failed"
    # only the good slides: exit 0
    assert _predict(test_slide_path, blank_slide_path, "--model", model_dir, "--out", out) == 0


def test_bad_model_is_usage_error(test_slide_path, model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert _predict(test_slide_path, "--model", tmp_path / "nope", "--out", out) == 2
    assert "model card" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "m.card.json").write_text("{not json")
    (broken / "m.safetensors").write_bytes(b"")
    assert _predict(test_slide_path, "--model", broken, "--out", out) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert _predict(test_slide_path, "--model", tmp_path, "--out", out) == 2  # a folder with no card
    assert _predict(test_slide_path, "--model", model_dir, "--out", out, "--batch-size", "0") == 2
    assert not (out / "test_slide").exists()


@pytest.mark.slow
def test_torchrun_two_processes_share_the_slides(test_slide_path, blank_slide_path, model_dir, tmp_path):
    out = tmp_path / "out"
    second = tmp_path / "second.tiff"
    shutil.copy(test_slide_path, second)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "histo", "predict", str(test_slide_path), str(second), str(blank_slide_path),
           "--model", str(model_dir), "--out", str(out), "--workers", "0", "--device", "cpu", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _status(out)
    assert {k: r["status"] for k, r in rows.items()} == {"test_slide": "ok", "second": "ok", "blank": "no_tissue"}
    assert not list(out.glob("status.rank*.csv"))  # merged and removed by rank 0
    # each slide predicted exactly once, by one of the two ranks
    done = [line for line in proc.stderr.splitlines() if line.startswith(("ok ", "no tissue "))]
    assert len(done) == 3, proc.stderr
    for name in ("test_slide", "second", "blank"):
        assert sum(f"{name}.tiff: " in line for line in done) == 1, proc.stderr
        assert (out / name / "prediction.json").is_file()
    assert "3 of 3 slides done, 0 failed" in proc.stderr
