"""The `histo` command: exit codes, status rows, messages, resume."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from histo.cli import main


def _status(out):
    with (out / "status.csv").open() as f:
        return {r["name"]: r for r in csv.DictReader(f)}


def test_info_json(test_slide_path, capsys):
    assert main(["info", str(test_slide_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["vendor"] == "generic-tiff" and info["width_px"] == 2048 and info["mpp"] == 0.25
    assert info["mpp_source"] == "metadata" and len(info["levels"]) == 2


def test_info_text_states_missing_mpp(tmp_path, capsys):
    from PIL import Image

    p = tmp_path / "x.png"
    Image.new("RGB", (20, 10), "white").save(p)
    assert main(["info", str(p)]) == 0
    out = capsys.readouterr().out
    assert "UNKNOWN" in out and "--mpp" in out and "20 x 10 px" in out


def test_info_missing_file_exit_2(tmp_path, capsys):
    assert main(["info", str(tmp_path / "none.svs")]) == 2
    err = capsys.readouterr().err
    assert "none.svs" in err and "no such file" in err


def test_tile_batch_with_bad_slides_reports_each_and_keeps_the_rest(test_slide_path, blank_slide_path, tmp_path, capsys):
    bad = tmp_path / "bad.svs"
    bad.write_bytes(b"not a slide at all" * 10)
    out = tmp_path / "out"
    argv = ["tile", str(test_slide_path), str(bad), str(blank_slide_path), str(tmp_path / "gone.ndpi"),
            "--out", str(out), "--workers", "0", "--quiet", "--set", "grid.tile_px=128"]
    assert main(argv) == 1
    st = _status(out)
    assert st["test_slide"]["status"] == "ok" and int(st["test_slide"]["n_tiles"]) > 0
    assert st["bad"]["status"] == "failed" and "bad.svs" in st["bad"]["reason"]
    assert st["blank"]["status"] == "no_tissue"
    assert st["gone"]["status"] == "failed" and "no such file" in st["gone"]["reason"]
    assert (out / "test_slide" / "grid.parquet").is_file() and (out / "config.yaml").is_file()
    err = capsys.readouterr().err
    assert "FAILED" in err and "2 failed" in err
    # rerun: finished slides are skipped, failures retried and still reported
    assert main(argv) == 1
    st = _status(out)
    assert st["test_slide"]["status"] == "skipped" and st["blank"]["status"] == "skipped"


def test_tile_bad_config_exit_2_names_key(test_slide_path, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("grid:\n  tile_size: 256\n")
    assert main(["tile", str(test_slide_path), "-c", str(cfg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "grid.tile_size" in err and "c.yaml" in err
    assert main(["tile", str(test_slide_path), "--set", "grid.mpp=fast", "--out", str(tmp_path / "o")]) == 2
    assert "grid.mpp" in capsys.readouterr().err


def test_tile_missing_mpp_fails_that_slide_with_the_fix(tmp_path, capsys):
    from PIL import Image

    p = tmp_path / "tile.png"
    Image.new("RGB", (64, 64), (200, 120, 180)).save(p)
    assert main(["tile", str(p), "--out", str(tmp_path / "o"), "--workers", "0", "--quiet"]) == 1
    assert "--mpp" in _status(tmp_path / "o")["tile"]["reason"]
    assert main(["tile", str(p), "--mpp", "0.5", "--out", str(tmp_path / "o"), "--workers", "0", "--quiet",
                 "--set", "grid.tile_px=32", "--set", "grid.mask_mpp=2.0"]) == 0


def test_console_script_runs():
    r = subprocess.run([sys.executable, "-m", "histo", "--version"], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and r.stdout.startswith("histo ")


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--size-px", "2048", "--workers", "1", "--quiet"]) == 0
    for case in ("high_grade_alk_positive", "low_grade_alk_positive"):
        report = json.loads((out / "reports" / case / "case_report.json").read_text(encoding="utf-8"))
        assert report["case_id"] == case and "ALK" in report["summary"]
        assert (out / "reports" / case / "case_report.html").is_file()
    err = capsys.readouterr().out
    assert "truth:" in err and "case_report.html" in err


def test_demo_model_is_shipped_and_loads():
    from histo.cli.demo import demo_model_dir
    from histo.models import load_model

    cards = list(demo_model_dir().glob("*.card.json"))
    assert len(cards) == 1
    net, card = load_model(cards[0])
    _, same = load_model(demo_model_dir())  # a model folder holding one card loads as well
    assert same == card
    assert set(card.heads) == {"pattern", "necrosis", "mitosis"} and card.mpp == 1.0
    assert card.config_digest  # ties the weights to the shipped training config
