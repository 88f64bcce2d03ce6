"""Heads at several resolutions: one grid per scale read at its own mpp, joined on level-0 coordinates;
predict_image gives the numbers histo predict gives; heads a slide is too coarse for do not run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from histo.errors import ConfigError, ModelError
from histo.models import ModelCard, MultiScaleNet, build_model, load_model, save_model
from histo.predict import load_prediction, predict_image, predict_slide
from histo.predict.scales import plan_scales
from histo.slide import open_slide
from histo.tiling import GridConfig, TilingConfig

CLASSES = ["none", "fascicular", "haphazard"]


def _scales(fine_mpp: float = 0.25, coarse_mpp: float = 1.0) -> dict:
    return {
        "cells": {"backbone": "tiny", "tile_px": 64, "mpp": fine_mpp, "heads": {"mitosis": {"stride_px": 4}},
                  "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "tissue": {"backbone": "tiny", "tile_px": 32, "mpp": coarse_mpp,
                   "heads": {"pattern": {"classes": CLASSES}, "necrosis": None},
                   "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    }


@pytest.fixture(scope="module")
def two_scale_model(tmp_path_factory):
    torch.manual_seed(1)
    card = ModelCard(name="two-scale", scales=_scales(), mitosis_threshold=0.3)
    net = build_model(card)
    assert isinstance(net, MultiScaleNet)
    with torch.no_grad():
        net.nets["cells"].mitosis.out.bias.fill_(0.5)  # some peaks pass the threshold
    folder = tmp_path_factory.mktemp("two_scale")
    save_model(net, card, folder)
    return load_model(folder)


def test_each_scale_has_its_own_grid_read_at_its_mpp(test_slide_path, two_scale_model):
    _, card = two_scale_model
    with open_slide(test_slide_path) as slide:  # 0.25 µm/px level 0
        grids, _ = plan_scales(slide, card)
    cells, tissue = grids["cells"], grids["tissue"]
    assert cells.mpp == 0.25 and cells.tile_px == 64 and tissue.mpp == 1.0 and tissue.tile_px == 32
    # 64 px at 0.25 = 16 µm = 64 level-0 px; 32 px at 1 µm/px = 32 µm = 128 level-0 px
    assert set(cells.table["w"]) == {64.0} and set(tissue.table["w"]) == {128.0}
    assert len(cells) > len(tissue) > 0


def test_predict_slide_joins_scales_on_level0(test_slide_path, two_scale_model, tmp_path):
    model, card = two_scale_model
    r = predict_slide(test_slide_path, model, card, tmp_path, workers=0, device="cpu", progress=False)
    tiles, mitoses, info = load_prediction(r.out_dir)
    # the tile table is the tissue scale's grid, with both tissue heads
    assert set(tiles["w"]) == {128.0} and "p_necrosis" in tiles and all(f"p_pattern_{c}" in tiles for c in CLASSES)
    assert info["n_tiles_per_scale"]["cells"] > info["n_tiles_per_scale"]["tissue"] == len(tiles)
    assert info["model"]["table_scale"] == "tissue" and set(info["model"]["scales"]) == {"cells", "tissue"}
    assert info["heads_not_run"] == {}
    # mitosis points come from the 0.25 µm/px grid: level-0 px == µm / 0.25 and inside the slide
    assert len(mitoses) > 0
    np.testing.assert_allclose(mitoses["x_um"], mitoses["x"] * 0.25)
    w, h = info["slide_dimensions"]
    assert mitoses["x"].between(0, w).all() and mitoses["y"].between(0, h).all()
    assert info["n_mitoses"] == int((mitoses["score"] >= card.mitosis_threshold).sum())


def test_predict_image_gives_the_numbers_of_histo_predict(test_slide_path, two_scale_model, tmp_path):
    """The same RGB as a file through histo predict --mpp and in memory through predict_image: equal tables."""
    model, card = two_scale_model
    with open_slide(test_slide_path) as slide:
        w, h = slide.dimensions
        rgb = slide.read(0, 0, w, h, mpp=0.25)
    png = tmp_path / "frame.png"
    Image.fromarray(rgb).save(png)
    r = predict_slide(png, model, card, tmp_path / "out", mpp=0.25, workers=0, device="cpu", progress=False)
    tiles_f, mit_f, _ = load_prediction(r.out_dir)
    pred = predict_image(rgb, 0.25, model, card, device="cpu")
    pd.testing.assert_frame_equal(pred.tiles.reset_index(drop=True), tiles_f.reset_index(drop=True))
    pd.testing.assert_frame_equal(pred.mitoses.reset_index(drop=True), mit_f.reset_index(drop=True))
    assert list(pred.mitoses.columns) == ["x_um", "y_um", "score", "x", "y"]
    assert len(pred.counted_mitoses) == r.n_mitoses


def test_predict_image_small_and_bad_inputs(two_scale_model):
    model, card = two_scale_model
    rgb = np.full((40, 33, 3), 200, np.uint8)
    rgb[5:30, 5:28] = (150, 60, 140)  # a small purple patch: padded with white to whole tiles
    pred = predict_image(rgb, 0.25, model, card, device="cpu",
                         tiling=TilingConfig(grid=GridConfig(min_tissue_fraction=0)))
    assert len(pred.tiles) == 1 and pred.tiles.iloc[0][["x", "y"]].tolist() == [0.0, 0.0]
    with pytest.raises(ConfigError, match="at least 32"):
        predict_image(np.zeros((31, 64, 3), np.uint8), 0.25, model, card)
    with pytest.raises(ConfigError, match="uint8"):
        predict_image(np.zeros((64, 64, 3), np.float32), 0.25, model, card)


def test_a_head_the_slide_is_too_coarse_for_does_not_run(two_scale_model):
    """A 0.5 µm/px image cannot feed the 0.25 µm/px mitosis scale: no mitosis rows, and it says why."""
    model, card = two_scale_model
    rgb = np.full((256, 256, 3), (150, 60, 140), np.uint8)
    pred = predict_image(rgb, 0.5, model, card, device="cpu")
    assert set(pred.heads_not_run) == {"mitosis"} and "coarser than the 0.25 µm/px" in pred.heads_not_run["mitosis"]
    assert len(pred.mitoses) == 0 and "p_necrosis" in pred.tiles
    with pytest.raises(ModelError, match="coarser than model 'two-scale' allows"):
        predict_image(rgb, 2.0, model, card)  # no scale at all can read a 2 µm/px image


def test_predict_applies_the_stain_normalisation_the_model_was_trained_with(test_slide_path, tmp_path):
    """A Macenko-trained model's card records its target; predict normalises every tile the same way."""
    from histo.data.stain import MacenkoNormaliser, normaliser_from_spec, normaliser_spec
    from histo.predict import TileBatchDataset

    torch.manual_seed(2)
    spec = normaliser_spec(MacenkoNormaliser())
    plain = ModelCard(name="plain", backbone="tiny", heads={"necrosis": None}, tile_px=32, mpp=1.0)
    macenko = plain.replace(name="mac", preprocessing={"stain_normalisation": spec})
    norm = normaliser_from_spec(macenko.preprocessing["stain_normalisation"])
    assert isinstance(norm, MacenkoNormaliser) and np.allclose(norm.stains, MacenkoNormaliser().stains, atol=1e-6)
    with open_slide(test_slide_path) as slide:
        grids, _ = plan_scales(slide, macenko)
    grid = grids["main"]
    _, raw = TileBatchDataset(str(test_slide_path), None, grid, 8)[0]
    _, normed = TileBatchDataset(str(test_slide_path), None, grid, 8, normaliser=norm)[0]
    expected = np.stack([norm.transform(t) for t in raw.numpy()])
    assert np.array_equal(normed.numpy(), expected) and not np.array_equal(normed.numpy(), raw.numpy())
    net = build_model(plain).eval()
    r1 = predict_slide(test_slide_path, net, plain, tmp_path / "a", workers=0, device="cpu", progress=False)
    r2 = predict_slide(test_slide_path, net, macenko, tmp_path / "b", workers=0, device="cpu", progress=False)
    p1 = load_prediction(r1.out_dir)[0]["p_necrosis"].to_numpy()
    p2 = load_prediction(r2.out_dir)[0]["p_necrosis"].to_numpy()
    assert not np.allclose(p1, p2)  # same weights, normalised input: the card's preprocessing was applied


def test_training_records_its_stain_normalisation_in_the_card():
    from histo.train import TrainConfig
    from histo.train.fit import training_normalisation

    cfg = TrainConfig.from_dict({"model": {"backbone": "tiny", "heads": ["necrosis"], "tile_px": 64, "mpp": 1.0},
                                 "data": {"tiles_csv": "x.csv", "normalise": {"method": "reinhard"}}})
    rec = training_normalisation(cfg)
    assert rec["method"] == "reinhard" and len(rec["mean"]) == 3 and len(rec["std"]) == 3
