"""histo.data: contract-B batches from phantom slides, splits by slide, targets, loaders, config errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from histo.data import (
    MAX_POINTS,
    InputSpec,
    SampleMaker,
    TileDataModule,
    assign_splits,
    build_pipeline,
    data_config_from_dict,
    heatmap_target,
    sample_weights,
    tiny_data_config,
    tiny_datamodule,
)
from histo.data.config import SplitConfig
from histo.errors import ConfigError

CLASSES = ["none", "fascicular", "haphazard"]


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """Two 1024 px phantoms, written once for this module."""
    cache = tmp_path_factory.mktemp("phantoms")
    tiny_datamodule(cache, size_px=(1024, 1024))
    return cache


@pytest.fixture(scope="module")
def dm(tiny_cache):
    return tiny_datamodule(tiny_cache, size_px=(1024, 1024))


def test_batch_contract_shapes_dtypes_and_masks(dm):
    ds = dm.datasets["train"]
    assert len(ds) > 4 and (ds.pattern >= 0).any() and (ds.necrosis != -1).any()
    batch = next(iter(dm._loader(ds, shuffle=False)))
    n = len(batch["image"])
    assert batch["image"].shape == (n, 3, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["pattern"].shape == (n,) and batch["pattern"].dtype == torch.int64
    assert batch["necrosis"].shape == (n,) and batch["necrosis"].dtype == torch.float32
    assert batch["mitosis_heatmap"].shape == (n, 1, 16, 16) and batch["mitosis_heatmap"].dtype == torch.float32
    assert batch["mitosis_labelled"].dtype == torch.bool and batch["mitosis_labelled"].all()  # phantom truth is exhaustive
    assert batch["mitosis_points"].shape == (n, MAX_POINTS, 2) and batch["mitosis_points"].dtype == torch.float32
    assert isinstance(batch["slide"], list) and all(s.startswith("tiny_s") for s in batch["slide"])
    assert set(batch["pattern"].tolist()) <= {-1, 0, 1, 2}
    assert set(batch["necrosis"].tolist()) <= {-1.0, 0.0, 1.0}
    # Heatmaps are zero exactly where a tile has no points, and peak at 1 where it has.
    n_pts = (~torch.isnan(batch["mitosis_points"][..., 0])).sum(1)
    peaks = batch["mitosis_heatmap"].amax((1, 2, 3))
    assert torch.equal(n_pts > 0, peaks == 1.0) and torch.all(peaks[n_pts == 0] == 0)
    # The image is the tile scaled to [0, 1] then normalised with the spec's mean/std.
    rgb = ds.read(0).copy()
    want = (torch.from_numpy(rgb).permute(2, 0, 1).float() / 255 - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) \
        / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    torch.testing.assert_close(batch["image"][0], want)


def test_mitosis_points_match_truth(dm, tiny_cache):
    from histo.annotations import read_geojson

    ds = dm.datasets["train"]
    ref = ds.slides[0]
    truth = read_geojson(next(tiny_cache.glob(f"{ref.name[:-3]}/truth.geojson"))).points["Mitosis"]
    assert (ds.n_mitoses > 0).any(), "the tiny phantoms should have mitoses in some tiles"
    for i in np.flatnonzero(ds.slide_index == 0):
        x, y, w, h = ds.boxes[i]
        inside = truth[(truth[:, 0] >= x) & (truth[:, 0] < x + w) & (truth[:, 1] >= y) & (truth[:, 1] < y + h)]
        np.testing.assert_allclose(ds.points(i), (inside - [x, y]) * 64 / w)


def test_split_by_slide_never_mixes(dm):
    names = {s: {ref.name for ref in ds.slides} for s, ds in dm.datasets.items()}
    assert names["train"] and names["val"]
    assert not names["train"] & names["val"]
    table = dm.split_table
    assert table.groupby("name")["split"].nunique().max() == 1


def test_assign_splits_groups_fractions_and_conflicts():
    groups = [f"case{i // 3}" for i in range(30)]  # 10 cases of 3 slides
    splits = assign_splits(groups, ["auto"] * 30, SplitConfig(val_fraction=0.2, test_fraction=0.1, seed=3))
    per_case = {}
    for g, s in zip(groups, splits):
        per_case.setdefault(g, set()).add(s)
    assert all(len(v) == 1 for v in per_case.values())
    counts = {s: sum(1 for v in per_case.values() if s in v) for s in ("train", "val", "test")}
    assert counts == {"train": 7, "val": 2, "test": 1}
    assert splits == assign_splits(groups, ["auto"] * 30, SplitConfig(val_fraction=0.2, test_fraction=0.1, seed=3))
    # An explicit split on one slide carries its whole case; two explicit splits in one case are refused.
    explicit = ["auto"] * 30
    explicit[4] = "test"
    s2 = assign_splits(groups, explicit, SplitConfig(val_fraction=0.2, seed=3))
    assert s2[3] == s2[4] == s2[5] == "test"
    explicit[5] = "train"
    with pytest.raises(ConfigError, match="case1"):
        assign_splits(groups, explicit, SplitConfig())
    # Two slides with a val fraction: one of each; one slide: train only.
    assert sorted(assign_splits(["a", "b"], ["auto", "auto"], SplitConfig(val_fraction=0.2))) == ["train", "val"]
    assert assign_splits(["a"], ["auto"], SplitConfig(val_fraction=0.2)) == ["train"]


def test_heatmap_target_peak_and_flip():
    h = heatmap_target(np.array([[21.0, 42.5]]), 64, 4)
    assert h.shape == (16, 16) and h.dtype == np.float32
    assert np.unravel_index(h.argmax(), h.shape) == (10, 5) and h.max() == 1.0  # row = y // 4, col = x // 4
    assert h[10, 6] == pytest.approx(np.exp(-0.5), rel=1e-6)
    assert heatmap_target(np.zeros((0, 2)), 64, 4).sum() == 0
    spec = InputSpec(tile_px=64, mpp=1.0, mitosis_stride_px=4, pattern_classes=CLASSES)
    rgb = np.full((64, 64, 3), 200, np.uint8)
    rgb[40:45, 19:24] = 30  # a dark blob around the point (21.5, 42.5)
    flip = SampleMaker(spec, build_pipeline([{"name": "HorizontalFlip", "p": 1.0}]))
    s = flip(rgb, np.array([[21.5, 42.5]]), 1, 0.0, True, "s")
    np.testing.assert_allclose(s["mitosis_points"][0].numpy(), [64 - 21.5, 42.5], atol=1e-4)
    hm = s["mitosis_heatmap"][0].numpy()
    assert np.unravel_index(hm.argmax(), hm.shape) == (10, 10)
    img = s["image"][0].numpy()
    dark = np.argwhere(img < img.mean() - 1)
    assert dark[:, 1].min() == 64 - 24 and dark[:, 1].max() == 64 - 20  # the blob moved with the point
    assert torch.isnan(s["mitosis_points"][1:]).all()


def test_unlabelled_mitoses_and_no_mitosis_head():
    spec = InputSpec(tile_px=32, mpp=1.0, mitosis_stride_px=None, pattern_classes=CLASSES)
    s = SampleMaker(spec)(np.zeros((32, 32, 3), np.uint8), np.array([[3.0, 3.0]]), -1, -1.0, True, "x")
    assert s["mitosis_labelled"].item() is False and s["mitosis_heatmap"].shape == (1, 0, 0)
    assert np.isnan(s["mitosis_points"].numpy()).all()


def test_sample_weights_balance_and_oversample():
    pattern = np.array([0, 0, 0, 1, -1])
    w = sample_weights(pattern, np.full(5, -1.0), np.array([0, 0, 0, 0, 2]), "pattern", 3.0)
    assert w[:3].sum() == pytest.approx(w[3])  # each labelled class gets equal mass
    assert w[:4].sum() == pytest.approx(4.0) and w[4] == 3.0
    assert np.all(sample_weights(pattern, np.full(5, -1.0), np.zeros(5), "none", 1.0) == 1.0)


def test_balanced_train_loader_draws_samples_per_epoch(tiny_cache):
    dm2 = tiny_datamodule(tiny_cache, size_px=(1024, 1024), balance="pattern", samples_per_epoch=24, batch_size=8)
    n = sum(len(b["image"]) for b in dm2.train_dataloader())
    assert n == 24


def test_workers_open_their_own_handles(dm):
    ds = dm.datasets["val"]
    ds.close()
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    got = torch.cat([b["image"] for b in loader])
    assert got.shape[0] == len(ds)
    assert ds.open_handles() == 0  # reading happened in the workers only
    torch.testing.assert_close(got[0], ds[0]["image"])  # same pixels as a read in this process
    assert ds.open_handles() == 1
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.open_handles() == 0 and "_handles" not in clone.__dict__


def test_tiles_csv_dataset(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["path,pattern,necrosis,slide"]
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / f"t{i}.png")
        rows.append(f"t{i}.png,{['fascicular', '', 'none'][i % 3]},{['1', '0', ''][i % 3]},slide{i % 2}")
    (tmp_path / "tiles.csv").write_text("\n".join(rows) + "\n")
    cfg = data_config_from_dict({"tiles_csv": str(tmp_path / "tiles.csv"), "num_workers": 0, "batch_size": 3,
                                 "split": {"val_fraction": 0.5}})
    dm = TileDataModule(cfg, InputSpec(tile_px=32, mpp=0.5, mitosis_stride_px=4, pattern_classes=CLASSES))
    dm.prepare_data()
    dm.setup("fit")
    assert {len(dm.datasets["train"]), len(dm.datasets["val"])} == {3}
    b = next(iter(dm.val_dataloader()))
    assert b["mitosis_labelled"].tolist() == [False] * 3
    assert torch.all(b["mitosis_heatmap"] == 0)
    assert sorted(b["pattern"].tolist()) == sorted([1, -1, 0])
    assert sorted(b["necrosis"].tolist()) == [-1.0, 0.0, 1.0]
    bad = InputSpec(tile_px=64, mpp=0.5, pattern_classes=CLASSES)
    dm_bad = TileDataModule(cfg, bad)
    dm_bad.setup()
    with pytest.raises(Exception, match="tiles_resize"):
        dm_bad.datasets["train"][0]


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"phantoms": {"specs": ["a.yaml"], "n_per_spec": 1, "sizepx": [8, 8]}}, "unknown key 'data.phantoms.sizepx'"),
        ({"slides": [{"path": "a.svs", "split": "trian"}]}, "'data.slides[0].split' must be one of"),
        ({"slides": "s.csv", "augment": [{"name": "HorizontalFlip"}, {"name": "Flipz"}]}, "augment[1]': unknown transform 'Flipz'"),
        ({"slides": "s.csv", "augment": [{"name": "HEDJitter", "sigmaa": 0.1}]}, "HEDJitter' has no argument 'sigmaa'"),
        ({"slides": "s.csv", "balance": "patern"}, "'data.balance' must be one of"),
        ({}, "no data source"),
    ],
)
def test_config_errors_name_the_key(data, fragment):
    with pytest.raises(ConfigError, match="train.yaml") as exc:
        data_config_from_dict(data, "train.yaml")
    assert fragment in str(exc.value)


def test_missing_files_fail_before_training(tmp_path):
    ann = tmp_path / "a.geojson"
    ann.write_text("[]")
    cfg = data_config_from_dict({"slides": [{"path": str(tmp_path / "missing.svs"), "annotations": str(ann)}]})
    dm = TileDataModule(cfg, InputSpec(tile_px=64, mpp=1.0))
    with pytest.raises(ConfigError, match=r"data.slides\[0\].path: slide file not found: .*missing.svs"):
        dm.prepare_data()
    cfg = data_config_from_dict({"phantoms": {"specs": [str(tmp_path / "nope.yaml")], "seeds": [1]}})
    with pytest.raises(ConfigError, match=r"data.phantoms.specs\[0\].*nope.yaml"):
        TileDataModule(cfg, InputSpec(tile_px=64, mpp=1.0)).prepare_data()


def test_tiny_config_reuses_cached_phantoms(tiny_cache):
    from histo.data.sources import phantom_records

    cfg = tiny_data_config(tiny_cache, size_px=(1024, 1024))
    recs = phantom_records(cfg, generate=False)  # already written: no error, no rendering
    assert [r.path.name for r in recs] == ["tiny_s0_1024x1024_HE.tiff", "tiny_s1_1024x1024_HE.tiff"]
    assert all(r.annotations.name == "truth.geojson" for r in recs)


def test_phantom_rendered_by_other_code_is_not_reused(tmp_path):
    """A cached phantom whose summary names another renderer digest is stale: setup refuses it, prepare redraws it."""
    import json

    from histo.data.sources import phantom_records
    from histo.synth.phantom import code_digest

    cfg = tiny_data_config(tmp_path, n_slides=1, size_px=(512, 512))
    rec = phantom_records(cfg, generate=True)[0]
    summary = rec.path.parent / "summary.json"
    assert json.loads(summary.read_text(encoding="utf-8"))["renderer_digest"] == code_digest()
    stale = json.loads(summary.read_text(encoding="utf-8"))
    stale["renderer_digest"] = "0" * 12
    summary.write_text(json.dumps(stale), encoding="utf-8")
    with pytest.raises(ConfigError, match="another spec or phantom code"):
        phantom_records(cfg, generate=False)
    phantom_records(cfg, generate=True)
    assert json.loads(summary.read_text(encoding="utf-8"))["renderer_digest"] == code_digest()
