"""histo.aggregate measurements: exact areas on constructed grids, overlap, patterns, mitoses, hotspot."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from aggregate_tables import make_tiles, points

from histo.aggregate import GradingConfig, assess_slide, measure_slide


def test_areas_exact_on_non_overlapping_grid():
    # 5 x 4 tiles of 200 px at 0.5 µm/px: each tile is 100 µm square = 0.01 mm²
    tiles = make_tiles(
        5, 4, 200,
        tissue=lambda r, c: 0.5 if c == 0 else 1.0,
        tumour=lambda r, c: r <= 1,
        necrosis=lambda r, c: (r, c) in {(0, 0), (0, 1), (3, 4)},
    )
    m = measure_slide(tiles, None, 0.5)
    assert m.tissue_area_mm2 == pytest.approx(0.18, abs=1e-12)  # 4 half-tissue + 16 full tiles
    # tumour = 10 tumour tiles (2 at half tissue) + the necrotic non-tumour tile (3, 4)
    assert m.tumour_area_mm2 == pytest.approx(0.10, abs=1e-12)
    assert m.necrosis_area_mm2 == pytest.approx(0.025, abs=1e-12)
    assert m.viable_tumour_area_mm2 == pytest.approx(0.075, abs=1e-12)
    assert m.necrosis_pct_of_tumour == pytest.approx(25.0, abs=1e-9)
    assert (m.n_tiles, m.n_tumour_tiles, m.n_necrotic_tiles) == (20, 11, 3)
    assert m.area_method.exact


def test_overlapping_tiles_are_not_double_counted():
    # 3 x 3 tiles of 512 px at stride 256 and 0.25 µm/px: union is 1024 px = 256 µm square
    tiles = make_tiles(3, 3, 512, 256, tumour=lambda r, c: (r, c) == (1, 1))
    m = measure_slide(tiles, None, 0.25)
    naive = 9 * (512 * 0.25) ** 2 / 1e6
    assert naive == pytest.approx(0.147456)
    assert m.tissue_area_mm2 == pytest.approx(0.065536, abs=1e-12)
    # the centre tile owns exactly its 256 px stride cell centred on it: 64 µm square
    assert m.tumour_area_mm2 == pytest.approx(0.004096, abs=1e-12)
    # a corner tile owns its stride cell plus the uncovered margin: 384 px = 96 µm square
    corner = measure_slide(make_tiles(3, 3, 512, 256, tumour=lambda r, c: (r, c) == (0, 0)), None, 0.25)
    assert corner.tumour_area_mm2 == pytest.approx(0.009216, abs=1e-12)


def test_overlap_with_unaligned_tiles_counts_union_once():
    # two 300 px tiles overlapping by 100 px at an odd offset; union = 500 x 300 px at 1 µm/px
    base = make_tiles(1, 1, 300)
    tiles = pd.concat([base, base.assign(x=200)], ignore_index=True)
    m = measure_slide(tiles.assign(x=tiles["x"] + 7, y=tiles["y"] + 13), None, 1.0)
    assert m.tissue_area_mm2 == pytest.approx(0.15, abs=1e-12)


def test_mitosis_in_overlap_belongs_to_nearest_tile():
    # tile A (tumour) at x 0..512, tile B (not tumour) at x 256..768; midline between centres x = 384 px
    tiles = make_tiles(2, 1, 512, 256, tumour=lambda r, c: c == 0)
    mpp = 0.5
    near_a = (380 * mpp, 100 * mpp)
    near_b = (390 * mpp, 100 * mpp)
    assert measure_slide(tiles, points([near_a]), mpp).mitoses.count == 1
    assert measure_slide(tiles, points([near_b]), mpp).mitoses.count == 0


def test_pattern_fraction_shares_and_dominant():
    pats = {0: "fascicular", 1: "fascicular", 2: "haphazard", 3: "none"}
    tiles = make_tiles(4, 1, 200, pattern=lambda r, c: pats[c])
    p = measure_slide(tiles, None, 0.5).pattern
    assert p.spindle_fraction == pytest.approx(0.75)
    assert p.shares == pytest.approx({"fascicular": 2 / 3, "haphazard": 1 / 3})
    assert p.dominant == "fascicular"
    # without p_tumour, tumour is "top pattern is not none": the 'none' tile leaves the tumour
    m = measure_slide(make_tiles(4, 1, 200, pattern=lambda r, c: pats[c], with_p_tumour=False), None, 0.5)
    assert m.tumour_source == "pattern"
    assert m.tumour_area_mm2 == pytest.approx(0.03)
    assert m.pattern.spindle_fraction == pytest.approx(1.0)


def test_mitotic_counts_per_mm2_and_per_10hpf_with_both_hpf_areas():
    # 10 x 10 tiles of 1000 px at 0.5 µm/px = 500 µm, 0.25 mm² each: 25 mm² of tumour
    tiles = make_tiles(10, 10, 1000)
    rng = np.random.default_rng(3)
    inside = rng.uniform(0, 5000, size=(50, 2))
    mit = pd.concat([
        points(inside, 0.9),
        points(rng.uniform(0, 5000, size=(10, 2)), 0.2),  # below the score threshold
        points([[6000, 100], [-50, 10]], 0.9),             # outside every tile
    ], ignore_index=True)
    m = measure_slide(tiles, mit, 0.5).mitoses
    assert (m.n_detections, m.n_above_threshold, m.count) == (62, 52, 50)
    assert m.per_mm2 == pytest.approx(2.0)
    assert m.hpf_area_mm2 == 0.237
    assert m.per_10hpf == pytest.approx(2.0 * 10 * 0.237)
    fn = measure_slide(tiles, mit, 0.5, GradingConfig.from_dict({"hpf": {"preset": "fnclcc"}})).mitoses
    assert fn.hpf_area_mm2 == 0.1734
    assert fn.per_10hpf == pytest.approx(2.0 * 10 * 0.1734)
    assert fn.hotspot.area_mm2 == pytest.approx(1.734)
    low = measure_slide(tiles, mit, 0.5, GradingConfig.from_dict({"mitoses": {"min_score": 0.1}})).mitoses
    assert low.count == 60


def test_mitoses_in_necrosis_are_not_counted_but_necrosis_is_tumour():
    tiles = make_tiles(2, 1, 1000, necrosis=lambda r, c: c == 1)
    m = measure_slide(tiles, points([[250, 250], [750, 250]]), 0.5)
    assert m.mitoses.count == 1
    assert m.tumour_area_mm2 == pytest.approx(0.5)
    assert m.viable_tumour_area_mm2 == pytest.approx(0.25)
    assert m.mitoses.per_mm2 == pytest.approx(4.0)


def _cluster_slide(centre, n_cluster=25, seed=0):
    # 40 x 40 tumour tiles of 512 px at 0.5 µm/px: 256 µm tiles, 10.24 mm square
    rng = np.random.default_rng(seed)
    background = rng.uniform(0, 10240, size=(300, 2))
    # no background within reach of a window holding the cluster, so the densest window is the
    # cluster alone and its centre is well defined (elsewhere ~5 background points per window)
    background = background[np.hypot(*(background - centre).T) > 2300.0][:200]
    cluster = rng.normal(centre, 80.0, size=(n_cluster, 2))
    return make_tiles(40, 40, 512), points(np.vstack([background, cluster]))


@pytest.mark.parametrize("shape", ["square", "circle"])
def test_hotspot_finds_planted_cluster(shape):
    centre = (7000.0, 3000.0)
    tiles, mit = _cluster_slide(centre)
    cfg = GradingConfig.from_dict({"hotspot": {"shape": shape}})
    hs = measure_slide(tiles, mit, 0.5, cfg).mitoses.hotspot
    assert math.hypot(hs.centre_x_um - centre[0], hs.centre_y_um - centre[1]) <= 256.0
    assert hs.count >= 25  # the whole cluster (sigma 80 µm) is far inside a 1.5 mm window
    assert hs.area_mm2 == pytest.approx(2.37)
    x0, y0, x1, y1 = hs.box_um
    extent = math.sqrt(2.37e6) if shape == "square" else 2 * math.sqrt(2.37e6 / math.pi)
    assert (x1 - x0, y1 - y0) == pytest.approx((extent, extent))
    assert ((x0 + x1) / 2, (y0 + y1) / 2) == pytest.approx((hs.centre_x_um, hs.centre_y_um))
    assert hs.tumour_fraction == pytest.approx(1.0, abs=0.05)
    assert not hs.window_exceeds_tumour


def _exact_max(x, y, shape, area_um2):
    """Brute-force maximum: every optimum can be moved until points touch its boundary."""
    if shape == "square":
        side, best = math.sqrt(area_um2), 0
        for i in range(len(x)):  # left edge on point i, top edge on each point of its slab
            ys = np.sort(y[(x >= x[i]) & (x <= x[i] + side)])
            best = max(best, int((np.searchsorted(ys, ys + side, side="right") - np.arange(len(ys))).max()))
        return best
    r = math.sqrt(area_um2 / math.pi)
    i, j = np.triu_indices(len(x), 1)
    dx, dy = x[j] - x[i], y[j] - y[i]
    d = np.hypot(dx, dy)
    ok = (d <= 2 * r) & (d > 0)
    i, j, dx, dy, d = i[ok], j[ok], dx[ok], dy[ok], d[ok]
    h = np.sqrt(r * r - d * d / 4)
    cx = np.concatenate([x[i] + dx / 2 - h * dy / d, x[i] + dx / 2 + h * dy / d])
    cy = np.concatenate([y[i] + dy / 2 + h * dx / d, y[i] + dy / 2 - h * dx / d])
    inside = (x[None, :] - cx[:, None]) ** 2 + (y[None, :] - cy[:, None]) ** 2 <= r * r * (1 + 1e-9)
    return int(inside.sum(axis=1).max())


@pytest.mark.parametrize("shape", ["square", "circle"])
def test_hotspot_count_is_the_true_maximum(shape):
    cfg = GradingConfig.from_dict({"hotspot": {"shape": shape}})
    tiles = make_tiles(40, 40, 512)
    for seed in range(6):
        rng = np.random.default_rng(seed)
        xy = np.vstack([rng.uniform(0, 10240, size=(120, 2)), rng.uniform(4000, 6500, size=(30, 2))])
        hs = measure_slide(tiles, points(xy), 0.5, cfg).mitoses.hotspot
        assert hs.count == _exact_max(xy[:, 0], xy[:, 1], shape, 2.37e6), f"seed {seed}"


def test_hotspot_centre_stays_over_tumour():
    # tumour only in the left half; a dense cluster sits just inside its right border
    tiles = make_tiles(40, 20, 512, tumour=lambda r, c: c < 20)
    xy = np.random.default_rng(1).uniform((4950.0, 2500.0), (5100.0, 2600.0), size=(20, 2))
    hs = measure_slide(tiles, points(xy), 0.5).mitoses.hotspot
    assert hs.count == 20
    assert hs.centre_x_um < 5120.0
    assert 0.4 < hs.tumour_fraction < 1.0


def test_empty_tile_table_gives_zero_measurements_and_not_assessable():
    empty = make_tiles(1, 1, 200).iloc[0:0]
    a = assess_slide(empty, None, 0.5)
    m = a.measurements
    assert (m.tissue_area_mm2, m.tumour_area_mm2, m.necrosis_area_mm2) == (0.0, 0.0, 0.0)
    assert m.necrosis_pct_of_tumour is None and m.pattern.spindle_fraction is None
    assert (m.mitoses.count, m.mitoses.per_mm2, m.mitoses.per_10hpf, m.mitoses.hotspot) == (0, None, None, None)
    assert a.grading.status == "not_assessable"
    assert a.grading.high_grade.high_grade is None
    assert json.loads(a.to_json())["measurements"]["tumour_area_mm2"] == 0.0


def test_tissue_without_tumour_is_not_assessable():
    tiles = make_tiles(3, 3, 200, tumour=lambda r, c: False)
    a = assess_slide(tiles, points([[50, 50]]), 0.5)
    assert a.measurements.tissue_area_mm2 == pytest.approx(0.09)
    assert a.measurements.tumour_area_mm2 == 0.0
    assert a.measurements.mitoses.count == 0
    assert a.grading.status == "not_assessable"
    assert a.grading.mitotic_score.reason and a.grading.necrosis_score.reason


def test_tumour_without_mitoses_has_zero_hotspot_without_location():
    a = assess_slide(make_tiles(3, 3, 200), None, 0.5)
    hs = a.measurements.mitoses.hotspot
    assert hs.count == 0 and hs.centre_x_um is None and hs.box_um is None
    assert hs.window_exceeds_tumour  # 0.09 mm² of tumour < 2.37 mm² window
    assert a.grading.mitotic_score.score == 1


def test_small_tumour_hotspot_is_scaled_to_ten_fields_of_tumour():
    # 0.09 mm² of viable tumour (3 x 3 tiles of 100 µm) holding 3 mitoses: far fewer than 10 HPF of tumour
    # exist, so the hotspot value is the rate per 10 HPF of that tumour, not the raw count of 3.
    a = assess_slide(make_tiles(3, 3, 200), points([[50, 50], [150, 150], [250, 250]]), 0.5)
    mit = a.measurements.mitoses
    assert mit.hotspot.window_exceeds_tumour and mit.hotspot.count == 3
    assert mit.hotspot.per_10hpf == pytest.approx(3 / 0.09 * 2.37)
    assert mit.hotspot.per_10hpf == pytest.approx(mit.per_10hpf)
    assert a.grading.high_grade.high_grade  # 79 per 10 HPF, not 3
