"""Necrosis as confluent regions: hysteresis growth from seed tiles and the minimum region area."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from histo.aggregate import GradingConfig, measure_slide

MPP = 0.25
TILE_PX = 256  # 64 µm tiles: 0.004096 mm² each


def grid(p: np.ndarray) -> pd.DataFrame:
    """A tumour tile table on a regular grid whose p_necrosis is the given (rows, cols) array."""
    r, c = np.indices(p.shape)
    n = p.size
    return pd.DataFrame({
        "x": c.ravel() * TILE_PX, "y": r.ravel() * TILE_PX, "w": TILE_PX, "h": TILE_PX,
        "tissue_fraction": np.ones(n), "p_necrosis": p.ravel(), "p_tumour": np.full(n, 0.9),
        "p_pattern_none": 0.0, "p_pattern_fascicular": 1.0, "p_pattern_haphazard": 0.0,
    })


TILE_MM2 = (TILE_PX * MPP / 1000) ** 2


def test_a_necrotic_zone_takes_its_ragged_edge_but_not_a_faint_halo():
    p = np.full((40, 40), 0.05)
    p[10:20, 10:20] = 0.9  # the necrotic core: 100 tiles
    edge = np.zeros_like(p, bool)
    edge[9:21, 9:21] = True
    edge[10:20, 10:20] = False
    p[edge] = 0.35  # its ragged edge, under the 0.5 seed threshold: 44 tiles
    m = measure_slide(grid(p), None, MPP)
    assert m.n_necrotic_tiles == 144
    assert m.necrosis_area_mm2 == pytest.approx(144 * TILE_MM2)
    p[edge] = 0.2  # a faint halo under necrosis_grow_p does not join
    assert measure_slide(grid(p), None, MPP).n_necrotic_tiles == 100


def test_weak_tiles_without_a_seed_are_not_necrosis():
    p = np.full((30, 30), 0.05)
    p[5:15, 5:15] = 0.45  # a large zone, never >= necrosis_min_p
    assert measure_slide(grid(p), None, MPP).n_necrotic_tiles == 0


def test_isolated_mimic_tiles_are_dropped_on_a_large_slide_but_kept_in_a_small_biopsy():
    p = np.full((60, 60), 0.05)  # 14.7 mm² of tissue
    p[30, 30] = p[10, 45] = 0.9  # two lone tiles (collagen mimics): 0.004 mm² each < 0.05 mm²
    p[40:44, 5:8] = 0.9  # 12 tiles = 0.049 mm²: still under the minimum region
    m = measure_slide(grid(p), None, MPP)
    assert m.n_necrotic_tiles == 0 and m.necrosis_pct_of_tumour == 0
    p[40:44, 5:9] = 0.9  # 16 tiles = 0.066 mm²: a real focus
    assert measure_slide(grid(p), None, MPP).n_necrotic_tiles == 16
    small = np.full((4, 4), 0.05)  # a 0.066 mm² biopsy: one necrotic tile is 6 % of it and counts
    small[1, 1] = 0.9
    assert measure_slide(grid(small), None, MPP).n_necrotic_tiles == 1


def test_per_tile_rule_is_one_config_away():
    rng = np.random.default_rng(3)
    p = rng.random((25, 25))
    cfg = GradingConfig.from_dict({"tiles": {"necrosis_grow_p": 0.5, "necrosis_min_region_mm2": 0.0}})
    m = measure_slide(grid(p), None, MPP, cfg)
    assert m.n_necrotic_tiles == int((p >= 0.5).sum())


def test_overlapping_tiles_use_the_stride_grid():
    # tiles of 256 px at a 128 px stride: neighbours are one stride apart, and a 5x5-stride block holds
    # 0.0256 mm² of owned area — under 0.05 mm², so with the per-slide floor out of reach it is dropped
    p = np.full((50, 50), 0.05)
    p[20:25, 20:25] = 0.9
    t = grid(p)
    t["x"] //= 2
    t["y"] //= 2
    m = measure_slide(t, None, MPP)
    assert m.n_necrotic_tiles == 0
    p[20:32, 20:32] = 0.9  # 12x12 strides: 0.147 mm²
    t = grid(p)
    t["x"] //= 2
    t["y"] //= 2
    assert measure_slide(t, None, MPP).n_necrotic_tiles == 144
