"""scripts/combine_scales.py: one model from the scales of two; refuses scales that differ."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from histo.models import ModelCard, build_model, load_model, save_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import combine_scales as cs

CLASSES = ["none", "fascicular", "haphazard"]


def _scales(tissue_px: int = 32) -> dict:
    return {
        "cells": {"backbone": "tiny", "tile_px": 64, "mpp": 0.25, "heads": {"mitosis": {"stride_px": 4}},
                  "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "tissue": {"backbone": "tiny", "tile_px": tissue_px, "mpp": 1.0,
                   "heads": {"pattern": {"classes": CLASSES}, "necrosis": None},
                   "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    }


def _model(folder: Path, name: str, seed: int, threshold: float, **scales) -> Path:
    torch.manual_seed(seed)
    card = ModelCard(name=name, scales=_scales(**scales), mitosis_threshold=threshold,
                     metrics={"mitosis_f1": 0.1 * seed, "necrosis_auroc": 0.5 + 0.01 * seed, "tissue_loss": float(seed)})
    save_model(build_model(card), card, folder)
    return folder


def test_the_taken_scale_brings_its_weights_and_metrics_and_the_rest_stays(tmp_path):
    a = load_model(_model(tmp_path / "a", "a", 1, 0.4))
    b = load_model(_model(tmp_path / "b", "b", 2, 0.7))
    model, card = cs.combine(a, {"tissue": (b[0], b[1], "model b")}, "ab")
    for k, v in model.nets["tissue"].state_dict().items():
        assert torch.equal(v, b[0].nets["tissue"].state_dict()[k])
    for k, v in model.nets["cells"].state_dict().items():
        assert torch.equal(v, a[0].nets["cells"].state_dict()[k])
    assert card.name == "ab" and card.mitosis_threshold == 0.4  # the mitosis head stayed with a
    assert card.metrics["necrosis_auroc"] == pytest.approx(0.52) and card.metrics["tissue_loss"] == 2.0
    assert card.metrics["mitosis_f1"] == pytest.approx(0.1)
    out = tmp_path / "ab"
    save_model(model, card, out)
    again = load_model(out)  # the bound card fields travel with the new weights
    assert again[1].name == "ab"


def test_scales_that_differ_are_refused(tmp_path, capsys):
    _model(tmp_path / "a", "a", 1, 0.4)
    _model(tmp_path / "c", "c", 3, 0.5, tissue_px=64)
    code = cs.main([str(tmp_path / "a"), "--take", f"tissue={tmp_path / 'c'}", "--name", "x",
                    "--out", str(tmp_path / "x")])
    assert code == 2 and "differs" in capsys.readouterr().err and not (tmp_path / "x").exists()
