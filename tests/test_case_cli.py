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


def test_case_report_joins_grading_and_alk_call(phantom, model_dir, tmp_path, capsys):
    case = _case_file(tmp_path, phantom)
    out = tmp_path / "out"
    assert main(["case", str(case), "--model", str(model_dir), "--out", str(out), "--workers", "0", "--quiet"]) == 0
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


def test_bad_case_fails_alone(phantom, model_dir, tmp_path, capsys):
    good = _case_file(tmp_path, phantom)
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({"case_id": "C2", "he": "nowhere.tiff"}), encoding="utf-8")
    out = tmp_path / "out"
    rc = main(["case", str(missing), str(good), "--model", str(model_dir), "--out", str(out), "--workers", "0",
               "--quiet"])
    assert rc == 1
    with (out / "status.csv").open(newline="") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    assert rows["missing"]["status"] == "failed" and "nowhere.tiff" in rows["missing"]["reason"]
    assert rows["C1"]["status"] == "ok"


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
