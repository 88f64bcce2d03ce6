"""Test-time augmentation (`histo predict --tta`): 8 flips and turns, undone exactly, averaged; each
variant's tables kept so the report can give the spread of the measurements."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from histo.aggregate import GradingConfig, assess_slide
from histo.aggregate.tta import tta_spread, variant_tables
from histo.models import ModelCard, build_model, load_model, save_model
from histo.predict import predict_image, predict_slide
from histo.predict.engine import TTA_TRANSFORMS, tta_forward_transform, tta_inverse_transform
from histo.prediction import TTA_MITOSES_FILE, TTA_TILES_FILE, read_tta
from histo.tiling import GridConfig, TilingConfig

CLASSES = ["none", "fascicular", "haphazard"]
ALL_TILES = TilingConfig(grid=GridConfig(min_tissue_fraction=0))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(3)
    scales = {
        "cells": {"backbone": "tiny", "tile_px": 64, "mpp": 0.25, "heads": {"mitosis": {"stride_px": 4}},
                  "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "tissue": {"backbone": "tiny", "tile_px": 32, "mpp": 1.0,
                   "heads": {"pattern": {"classes": CLASSES}, "necrosis": None},
                   "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    }
    card = ModelCard(name="tta-test", scales=scales, mitosis_threshold=0.3)
    net = build_model(card)
    with torch.no_grad():
        net.nets["cells"].mitosis.out.bias.fill_(0.4)  # peaks above the candidate floor
    folder = tmp_path_factory.mktemp("tta_model")
    save_model(net, card, folder)
    return load_model(folder)


def _image(size: int = 256, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(90, 230, (size, size, 3), dtype=np.uint8)
    img[..., 1] = (img[..., 1] * 0.6).astype(np.uint8)  # pink-ish, tissue-like
    return img


def test_transforms_are_the_8_symmetries_and_each_is_undone_exactly():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    seen = set()
    for name in TTA_TRANSFORMS:
        y = tta_forward_transform(x, name)
        seen.add(tuple(y[0, 0].flatten().tolist()))
        assert torch.equal(tta_inverse_transform(y, name), x), name
    assert len(TTA_TRANSFORMS) == 8 and len(seen) == 8


def test_tta_outputs_do_not_depend_on_how_the_slide_lay(model):
    net, card = model
    img = _image()
    a = predict_image(img, 0.25, net, card, tiling=ALL_TILES, tta=True)
    b = predict_image(np.ascontiguousarray(np.rot90(img)), 0.25, net, card, tiling=ALL_TILES, tta=True)
    # np.rot90: new[i, j] = old[j, W - 1 - i], so tile and point (x, y) go to (y, W - x)
    w = img.shape[1]
    ta = a.tiles.assign(cx=a.tiles.x + a.tiles.w / 2, cy=a.tiles.y + a.tiles.h / 2)
    tb = b.tiles.assign(cx=b.tiles.x + b.tiles.w / 2, cy=b.tiles.y + b.tiles.h / 2)
    ta = ta.assign(kx=ta.cy, ky=w - ta.cx).sort_values(["kx", "ky"]).reset_index(drop=True)
    tb = tb.assign(kx=tb.cx, ky=tb.cy).sort_values(["kx", "ky"]).reset_index(drop=True)
    assert len(ta) == len(tb) == 4
    for col in ["p_necrosis", *(f"p_pattern_{c}" for c in CLASSES)]:
        np.testing.assert_allclose(ta[col], tb[col], atol=1e-5)
    assert len(a.mitoses) == len(b.mitoses) > 0
    pa = np.sort(np.column_stack([a.mitoses.y, w - a.mitoses.x]).round(2), axis=0)
    pb = np.sort(np.column_stack([b.mitoses.x, b.mitoses.y]).round(2), axis=0)
    np.testing.assert_allclose(pa, pb, atol=0.05)
    # without TTA the same model is not invariant (otherwise this test could not fail)
    c = predict_image(img, 0.25, net, card, tiling=ALL_TILES)
    d = predict_image(np.ascontiguousarray(np.rot90(img)), 0.25, net, card, tiling=ALL_TILES)
    assert not np.allclose(np.sort(c.tiles.p_necrosis), np.sort(d.tiles.p_necrosis), atol=1e-5)


def test_each_variant_table_is_what_that_flip_alone_gives(model):
    net, card = model
    img = _image(seed=1)
    plain = predict_image(img, 0.25, net, card, tiling=ALL_TILES)
    tta = predict_image(img, 0.25, net, card, tiling=ALL_TILES, tta=True)
    assert tta.tta is not None and tta.tta.names == TTA_TRANSFORMS
    ident = tta.tta.tiles[tta.tta.tiles.variant == "identity"].sort_values("tile")
    np.testing.assert_allclose(ident.p_necrosis.to_numpy(), plain.tiles.p_necrosis.to_numpy(), atol=1e-5)
    mi = tta.tta.mitoses[tta.tta.mitoses.variant == "identity"]
    np.testing.assert_allclose(np.sort(mi.score.to_numpy()), np.sort(plain.mitoses.score.to_numpy()), atol=1e-5)
    # the main table is the mean of the 8 variants
    mean = tta.tta.tiles.groupby("tile").p_necrosis.mean().to_numpy()
    np.testing.assert_allclose(tta.tiles.p_necrosis.to_numpy(), mean, atol=1e-5)
    assert plain.tta is None


def test_predict_tta_writes_variants_and_the_report_gives_their_spread(model, tmp_path):
    from PIL import Image

    from histo.case import report_prediction

    net, card = model
    slide = tmp_path / "s.png"
    Image.fromarray(_image(seed=2)).save(slide)
    r = predict_slide(slide, net, card, tmp_path / "out", mpp=0.25, workers=0, tiling=ALL_TILES, progress=False,
                      tta=True)
    folder = tmp_path / "out" / "s"
    meta = json.loads((folder / "prediction.json").read_text())
    assert meta["tta"]["enabled"] and meta["tta"]["transforms"] == list(TTA_TRANSFORMS)
    tiles_long, mit_long = read_tta(folder)
    assert set(tiles_long.variant) == set(TTA_TRANSFORMS) and len(tiles_long) == 8 * r.n_tiles
    done = report_prediction(folder, tmp_path / "rep", slides=[slide])
    spread = done.report["tta"]
    assert spread["enabled"] and spread["n_variants"] == 8
    m = spread["measurements"]["mitoses_count"]
    counts = [v["mitoses_count"] for v in spread["variants"]]
    assert m["min"] == min(counts) and m["max"] == max(counts)
    assert m["reported"] == done.report["measurements"]["mitoses"]["count"]
    assert "Test-time augmentation" in (tmp_path / "rep" / "report.html").read_text()
    # a rerun without --tta is redone (the run key names TTA) and leaves no stale variant tables
    r2 = predict_slide(slide, net, card, tmp_path / "out", mpp=0.25, workers=0, tiling=ALL_TILES, progress=False)
    assert r2.status == "ok" and "tta" in r2.reason
    assert not (folder / TTA_TILES_FILE).exists() and not (folder / TTA_MITOSES_FILE).exists()
    again = report_prediction(folder, tmp_path / "rep2", slides=[slide])
    assert again.report["tta"] == {"enabled": False}
    assert "Test-time augmentation" not in (tmp_path / "rep2" / "report.html").read_text()


def test_spread_reports_a_verdict_that_flips_between_variants():
    import pandas as pd

    tiles = pd.DataFrame({"x": [0.0], "y": [0.0], "w": [10.0], "h": [10.0], "p_necrosis": [0.0]})
    tl = pd.DataFrame({"tile": [0, 0], "variant": ["identity", "rot90"], "p_necrosis": [0.1, 0.9]})
    ml = pd.DataFrame({"variant": pd.Series([], dtype=str), "score": pd.Series([], dtype=float)})

    class A:
        def __init__(self, p):
            self.p = p

        def to_dict(self):
            return {"measurements": {"necrosis_pct_of_tumour": 100.0 * self.p, "mitoses": {}, "pattern": {}},
                    "grading": {"high_grade": {"high_grade": self.p > 0.5}}}

    out = tta_spread(tiles, tl, ml, lambda t, m: A(float(t.p_necrosis.iloc[0])))
    assert out["verdict_stable"] is False and out["high_grade_votes"] == {"False": 1, "True": 1}
    n = out["measurements"]["necrosis_pct_of_tumour"]
    assert n["min"] == pytest.approx(10.0) and n["max"] == pytest.approx(90.0)


def test_grading_of_a_variant_uses_the_slides_rules(model):
    net, card = model
    img = _image(seed=4)
    p = predict_image(img, 0.25, net, card, tiling=ALL_TILES, tta=True)
    cfg = GradingConfig().for_model(card.mitosis_threshold)
    out = tta_spread(p.tiles, p.tta.tiles, p.tta.mitoses, lambda t, m: assess_slide(t, m, 0.25, cfg))
    assert out["n_variants"] == 8
    for row in out["variants"]:
        t, m = variant_tables(p.tiles, p.tta.tiles, p.tta.mitoses, row["variant"])
        direct = assess_slide(t, m, 0.25, cfg).to_dict()["measurements"]["mitoses"]["count"]
        assert row["mitoses_count"] == direct
