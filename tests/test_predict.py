"""histo.predict: contract C tables, mitosis point mapping, mpp checks, no tissue, resume, worker determinism."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TEST_SLIDE_H, TEST_SLIDE_W, TISSUE_BOX
from torch import nn

from histo.aggregate.tables import validate_mitosis_table, validate_tile_table
from histo.errors import ConfigError, ModelError, MppError
from histo.models import ModelCard, MultiTaskNet, load_model, save_model
from histo.predict import (
    SCHEMA,
    TileBatchDataset,
    dedup_points,
    load_prediction,
    plan_batches,
    predict_slide,
    resolve_device,
    tiles_metadata,
)
from histo.predict.engine import candidate_threshold
from histo.predict.outputs import mitoses_frame
from histo.predict.run import predict_tiling
from histo.slide import open_slide
from histo.tiling import plan_grid

CLASSES = ["none", "fascicular", "haphazard"]
HEADS = {"pattern": {"classes": CLASSES}, "necrosis": None, "mitosis": {"stride_px": 4}}
TILE_PX, MODEL_MPP, SLIDE_MPP = 64, 0.5, 0.25  # a tile covers 128 level-0 px of the test slide


def _card(**kw) -> ModelCard:
    return ModelCard(name=kw.pop("name", "tiny-test"), backbone="tiny", heads=kw.pop("heads", HEADS),
                     tile_px=TILE_PX, mpp=MODEL_MPP, **kw)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A saved tiny MultiTaskNet with random weights (mitosis bias 0 so some points pass the threshold)."""
    torch.manual_seed(0)
    net = MultiTaskNet("tiny", HEADS)
    with torch.no_grad():
        net.mitosis.out.bias.fill_(0.0)
    folder = tmp_path_factory.mktemp("model")
    save_model(net, _card(), folder / "tiny-test")
    return load_model(folder / "tiny-test")


class PeakNet(nn.Module):
    """Fake model: uniform pattern/necrosis logits and one sharp mitosis peak at heatmap cell (row, col)."""

    def __init__(self, row: int, col: int, stride: int = 4, every: int = 1):
        super().__init__()
        self.row, self.col, self.stride, self.every = row, col, stride, every
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        n, _, h, w = x.shape
        hm = torch.full((n, 1, h // self.stride, w // self.stride), -10.0)
        hm[:: self.every, :, self.row, self.col] = 10.0  # a peak in every `every`-th tile of the batch
        return {"pattern": torch.zeros(n, 3), "necrosis": torch.zeros(n), "mitosis": hm}


def _run(slide, model, card, out, **kw):
    kw.setdefault("workers", 0)
    kw.setdefault("device", "cpu")
    kw.setdefault("progress", False)
    return predict_slide(slide, model, card, out, **kw)


def test_tables_match_contract_c(test_slide_path, tiny_model, tmp_path):
    model, card = tiny_model
    r = _run(test_slide_path, model, card, tmp_path, batch_size=16)
    folder = tmp_path / test_slide_path.stem
    assert r.status == "ok" and r.out_dir == str(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["mitoses.parquet", "prediction.json", "tiles.parquet"]
    tiles, mitoses, info = load_prediction(folder)
    assert list(tiles.columns) == ["col", "row", "x", "y", "w", "h", "tissue_fraction", "p_necrosis",
                                   *[f"p_pattern_{c}" for c in CLASSES]]
    # the 1024 x 1024 level-0 tissue box holds 8 x 8 tiles of 128 level-0 px
    assert len(tiles) == r.n_tiles == 64
    assert (tiles[["w", "h"]] == 128.0).all().all()
    x0, y0, x1, y1 = TISSUE_BOX
    assert tiles["x"].min() >= x0 and (tiles["x"] + tiles["w"]).max() <= x1
    assert tiles["y"].min() >= y0 and (tiles["y"] + tiles["h"]).max() <= y1
    assert (tiles["x"] + tiles["w"] <= TEST_SLIDE_W).all() and (tiles["y"] + tiles["h"] <= TEST_SLIDE_H).all()
    probs = tiles[[f"p_pattern_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert ((tiles["p_necrosis"] > 0) & (tiles["p_necrosis"] < 1)).all()
    # the consumer's own contract checks accept the tables unchanged
    validate_tile_table(tiles, CLASSES)
    validate_mitosis_table(mitoses)
    # mitoses.parquet keeps every candidate down to the candidate floor; n_mitoses counts those at the card's threshold
    assert list(mitoses.columns) == ["x_um", "y_um", "score", "x", "y"]
    assert int((mitoses["score"] >= card.mitosis_threshold).sum()) == r.n_mitoses
    assert (mitoses["score"] >= candidate_threshold(card)).all()
    np.testing.assert_allclose(mitoses["x_um"], mitoses["x"] * SLIDE_MPP)

    meta = tiles_metadata(folder / "tiles.parquet")
    assert meta == {"slide": str(test_slide_path.resolve()), "slide_mpp": SLIDE_MPP, "model_name": "tiny-test",
                    "slide_dimensions": [2048, 1536],
                    "model_weights_sha256": card.weights_sha256, "tile_px": TILE_PX, "mpp": MODEL_MPP,
                    "classes": CLASSES, "histo_version": meta["histo_version"]}
    assert info["schema"] == SCHEMA and info["slide"] == str(test_slide_path.resolve())
    assert info["slide_mpp"] == SLIDE_MPP and info["n_tiles"] == 64 and info["status"] == "ok"
    assert info["model"]["weights_sha256"] == card.weights_sha256 and info["model"]["classes"] == CLASSES
    assert info["seconds"] > 0


def test_mitosis_peak_maps_to_exact_level0_and_um(test_slide_path, tmp_path):
    # peak at heatmap cell row 5, col 3 (stride 4) → tile px (3.5 * 4, 5.5 * 4) = (14, 22)
    # → level-0 (x + 28, y + 44) at 2 level-0 px per tile px; µm = level-0 px * 0.25
    r = _run(test_slide_path, PeakNet(row=5, col=3), _card(), tmp_path, batch_size=7)
    tiles, mitoses, _ = load_prediction(tmp_path / test_slide_path.stem)
    assert r.n_mitoses == len(mitoses) == len(tiles) == 64
    got = mitoses.sort_values(["y", "x"]).reset_index(drop=True)
    want = pd.DataFrame({"x": tiles["x"] + 28.0, "y": tiles["y"] + 44.0}).sort_values(["y", "x"]).reset_index(drop=True)
    np.testing.assert_allclose(got["x"], want["x"], atol=1e-3)
    np.testing.assert_allclose(got["y"], want["y"], atol=1e-3)
    np.testing.assert_allclose(got["x_um"], want["x"] * 0.25, atol=1e-3)
    np.testing.assert_allclose(got["y_um"], want["y"] * 0.25, atol=1e-3)
    np.testing.assert_allclose(mitoses["score"], 1 / (1 + math.exp(-10.0)), rtol=1e-5)
    np.testing.assert_allclose(tiles[[f"p_pattern_{c}" for c in CLASSES]], 1 / 3, atol=1e-6)
    np.testing.assert_allclose(tiles["p_necrosis"], 0.5)


def test_points_of_sparse_hot_tiles_land_in_their_own_tiles(test_slide_path, tmp_path):
    # peaks only in tiles 0, 3, 6 of each batch of 7: tiles without a candidate are skipped before peak
    # finding, and the points must still be attributed to the right tiles
    _run(test_slide_path, PeakNet(row=5, col=3, every=3), _card(), tmp_path, batch_size=7)
    tiles, mitoses, _ = load_prediction(tmp_path / test_slide_path.stem)
    hot = [i for i in range(64) if (i % 7) % 3 == 0]
    want = sorted(zip(tiles["x"][hot] + 28.0, tiles["y"][hot] + 44.0))
    assert sorted(zip(mitoses["x"].round(3), mitoses["y"].round(3))) == want


def test_points_seen_by_overlapping_tiles_are_kept_once():
    # two tiles 64 level-0 px apart (overlap): the same mitosis at level-0 (100, 50) seen by both,
    # at tile px 50 in the first (x 0) and 18 in the second (x 64); 2 level-0 px per tile px
    grid = pd.DataFrame({"x": [0.0, 64.0], "y": [0.0, 0.0], "w": [128.0, 128.0], "h": [128.0, 128.0]})
    pts = np.array([[0, 50.0, 25.0, 0.7], [1, 18.0, 25.0, 0.9], [1, 40.0, 60.0, 0.6]])
    m = mitoses_frame(pts, grid, tile_px=64, slide_mpp=0.25, min_distance_um=4.0)
    assert m[["x", "y", "score"]].to_numpy().tolist() == [[100.0, 50.0, 0.9], [144.0, 120.0, 0.6]]
    assert m["x_um"].tolist() == [25.0, 36.0]


def test_dedup_keeps_best_within_min_distance():
    x = np.array([0.0, 3.0, 10.0, 10.0, 20.0])
    y = np.zeros(5)
    s = np.array([0.5, 0.9, 0.8, 0.7, 0.6])
    # 1 beats 0 (3 apart); 2 beats 3 (same place); 4 is exactly 10 from 2: the rule is strict (< 10 removed)
    assert dedup_points(x, y, s, 4.0).tolist() == [1, 2, 4]
    assert sorted(dedup_points(x, y, s, 10.0).tolist()) == [1, 4]
    assert dedup_points(x, y, s, 0.0).tolist() == [1, 2, 3, 4, 0]


def test_slide_coarser_than_model_is_refused_and_nothing_written(test_slide_path, tiny_model, tmp_path):
    model, card = tiny_model
    from histo.slide import forced_mpp

    # 8x the file's own µm/px: refused unless forced (issue 17), so force it to reach the model's check
    with pytest.raises(ModelError, match=r"test_slide.*2 µm/px is coarser than model 'tiny-test'"):
        _run(test_slide_path, model, card, tmp_path / "out", mpp=forced_mpp(2.0))
    assert not (tmp_path / "out").exists()


def test_slide_without_mpp_is_an_mpp_error(tiny_model, tmp_path):
    from PIL import Image

    png = tmp_path / "plain.png"
    Image.fromarray(np.full((256, 256, 3), 200, np.uint8)).save(png)
    model, card = tiny_model
    with pytest.raises(MppError, match="--mpp"):
        _run(png, model, card, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_blank_slide_is_no_tissue_with_empty_valid_tables(blank_slide_path, tiny_model, tmp_path):
    model, card = tiny_model
    r = _run(blank_slide_path, model, card, tmp_path)
    assert r.status == "no_tissue" and r.n_tiles == 0 and "no tissue" in r.reason
    tiles, mitoses, info = load_prediction(tmp_path / "blank")
    assert len(tiles) == 0 and len(mitoses) == 0 and info["status"] == "no_tissue"
    assert "p_pattern_haphazard" in tiles.columns and list(mitoses.columns) == ["x_um", "y_um", "score", "x", "y"]
    validate_tile_table(tiles, CLASSES)
    # a rerun skips it too, keeping the status it had
    again = _run(blank_slide_path, model, card, tmp_path)
    assert again.status == "skipped" and "no_tissue" in again.reason


def test_rerun_skips_same_weights_and_redoes_other_weights(test_slide_path, tiny_model, tmp_path):
    model, card = tiny_model
    first = _run(test_slide_path, model, card, tmp_path)
    pj = tmp_path / test_slide_path.stem / "prediction.json"
    stamp = pj.stat().st_mtime_ns
    again = _run(test_slide_path, model, card, tmp_path)
    assert again.status == "skipped" and again.n_tiles == first.n_tiles and pj.stat().st_mtime_ns == stamp
    assert _run(test_slide_path, model, card, tmp_path, overwrite=True).status == "ok"
    torch.manual_seed(1)
    other = MultiTaskNet("tiny", HEADS)  # different weights, card without a digest: computed from the weights
    r = _run(test_slide_path, other, _card(), tmp_path)
    assert r.status == "ok"
    sha = json.loads(pj.read_text())["model"]["weights_sha256"]
    assert len(sha) == 64 and sha != card.weights_sha256


def test_two_reader_workers_give_identical_tables(test_slide_path, tiny_model, tmp_path):
    model, card = tiny_model
    _run(test_slide_path, model, card, tmp_path / "w0", workers=0, batch_size=12)
    _run(test_slide_path, model, card, tmp_path / "w2", workers=2, batch_size=12)
    t0, m0, _ = load_prediction(tmp_path / "w0" / test_slide_path.stem)
    t2, m2, _ = load_prediction(tmp_path / "w2" / test_slide_path.stem)
    pd.testing.assert_frame_equal(t0, t2)
    pd.testing.assert_frame_equal(m0, m2)
    assert len(m0) > 0  # the comparison covers points, not only empty tables


def test_batches_are_exact_and_cover_every_tile_once(test_slide_path):
    card = _card()
    with open_slide(test_slide_path) as s:
        grid, _ = plan_grid(s, predict_tiling(card))
    batches = plan_batches(grid, 10)
    sizes = [sum(r[3] for r in b) for b in batches]
    assert sizes == [10] * 6 + [4]
    index = [i for b in batches for first, _, _, n in b for i in range(first, first + n)]
    assert index == list(range(64))
    t = grid.table
    for b in batches:
        for first, x, y, n in b:
            assert (x, y) == (t["x"][first], t["y"][first])
            assert (t["row"][first : first + n].nunique() == 1) and (np.diff(t["col"][first : first + n]) == 1).all()

    ds = TileBatchDataset(str(test_slide_path), None, grid, 10)
    index0, tiles0 = ds[0]
    assert tiles0.shape == (10, TILE_PX, TILE_PX, 3) and tiles0.dtype == torch.uint8
    clone = pickle.loads(pickle.dumps(ds))  # what a worker receives: no open handle travels
    assert clone._slide is None
    index1, tiles1 = clone[0]
    assert torch.equal(index0, index1) and torch.equal(tiles0, tiles1)
    ds.close()
    clone.close()


def test_bad_options_are_config_errors(test_slide_path, tiny_model, tmp_path):
    model, card = tiny_model
    with pytest.raises(ConfigError, match="batch_size"):
        _run(test_slide_path, model, card, tmp_path, batch_size=0)
    with pytest.raises(ConfigError, match="overlap_px"):
        _run(test_slide_path, model, card, tmp_path, overlap_px=TILE_PX)
    with pytest.raises(ConfigError, match="device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda")
    assert not (tmp_path / test_slide_path.stem).exists()


def test_overlapping_tiles_read_at_stride_and_points_deduplicated(test_slide_path, tmp_path):
    # overlap 32 of 64 input px: tile origins 64 level-0 px apart; each tile reports the same tile-relative
    # peak, so neighbours' points are 64 px apart, closer than the 20 µm = 80 level-0 px minimum distance
    card = _card(mitosis_min_distance_um=20.0)
    r = _run(test_slide_path, PeakNet(row=5, col=3), card, tmp_path, overlap_px=32, batch_size=32)
    tiles, mitoses, info = load_prediction(tmp_path / test_slide_path.stem)
    assert info["tiling"]["stride_px"] == 32 and info["tiling"]["grid"]["overlap_px"] == 32
    assert set(np.diff(np.sort(tiles["x"].unique()))) == {64.0}
    assert 0 < len(mitoses) < len(tiles) == r.n_tiles
    xy = mitoses[["x", "y"]].to_numpy()
    d = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(d, np.inf)
    assert d.min() >= 80.0
    # every kept point is still a tile's peak: 28, 44 level-0 px from some tile origin
    origins = set(zip(tiles["x"], tiles["y"]))
    assert all((x - 28.0, y - 44.0) in origins for x, y in xy.round(3))
