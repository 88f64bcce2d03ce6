"""The mitotic hotspot search against brute force, and the rule that a hotspot is never below the tumour rate."""

from __future__ import annotations

import numpy as np
import pytest
from aggregate_tables import make_tiles, points

from histo.aggregate import GradingConfig, assess_slide, measure_slide
from histo.aggregate.hotspot import CellRegion, PointCounter, Window, find_hotspot

TILE = 20  # px = µm at mpp 1


def _cfg(side_um: float, shape: str = "square") -> GradingConfig:
    """A 10-HPF window of the given side (square) or with the area of that square (circle)."""
    return GradingConfig.from_dict({"hpf": {"preset": "custom", "area_mm2": side_um ** 2 / 1e7},
                                    "hotspot": {"shape": shape}})


def _closed_member(mask: np.ndarray, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    """Centre over the closed union of viable tiles (on a viable tile or on its edge)."""
    rows, cols = mask.shape
    out = np.zeros(cx.shape, dtype=bool)
    for dx in (-1e-6, 1e-6):
        for dy in (-1e-6, 1e-6):
            c = np.floor((cx + dx) / TILE).astype(int)
            r = np.floor((cy + dy) / TILE).astype(int)
            ok = (c >= 0) & (c < cols) & (r >= 0) & (r < rows)
            out[ok] |= mask[r[ok], c[ok]]
    return out


def _count(px, py, cx, cy, side, shape):
    """Direct closed-window count at each centre (no buckets, no candidates)."""
    dx = np.abs(px[None, :] - cx[:, None])
    dy = np.abs(py[None, :] - cy[:, None])
    if shape == "square":
        return ((dx <= side / 2 + 1e-7) & (dy <= side / 2 + 1e-7)).sum(axis=1)
    r = side / np.sqrt(np.pi)  # the circle with the square's area
    return (dx ** 2 + dy ** 2 <= (r + 1e-7) ** 2).sum(axis=1)


def _case(seed: int, nx: int, ny: int, n_points: int, p_viable: float):
    rng = np.random.default_rng(seed)
    mask = rng.random((ny, nx)) < p_viable
    if not mask.any():
        mask[rng.integers(ny), rng.integers(nx)] = True
    # integer µm positions, many outside viable tiles (those are not counted)
    xy = np.column_stack([rng.integers(0, nx * TILE, n_points), rng.integers(0, ny * TILE, n_points)]).astype(float)
    tiles = make_tiles(nx, ny, TILE, tumour=lambda r, c: bool(mask[r, c]))
    keep = mask[(xy[:, 1] // TILE).astype(int), (xy[:, 0] // TILE).astype(int)]
    return mask, tiles, xy, xy[keep]


def _brute_max(mask, counted, side, shape, nx, ny):
    """Max count over every integer centre over the closed viable region; exact for squares of even integer side."""
    gx, gy = np.meshgrid(np.arange(0, nx * TILE + 1, dtype=float), np.arange(0, ny * TILE + 1, dtype=float))
    gx, gy = gx.ravel(), gy.ravel()
    ok = _closed_member(mask, gx, gy)
    return int(_count(counted[:, 0], counted[:, 1], gx[ok], gy[ok], side, shape).max())


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("side", [40, 100, 400])
def test_square_hotspot_is_the_brute_force_maximum(seed, side):
    # 8 x 8 tiles (160 µm): side 400 is a window larger than the slide; random masks put tumour at
    # the slide edge. All candidate coordinates are integers here, so the integer brute force is exact.
    nx = ny = 8
    mask, tiles, xy, counted = _case(seed, nx, ny, 70, 0.35 + 0.05 * (seed % 5))
    hs = measure_slide(tiles, points(xy), 1.0, _cfg(side)).mitoses.hotspot
    if len(counted) == 0:
        assert hs.window_count == 0
        return
    truth = _brute_max(mask, counted, side, "square", nx, ny)
    assert hs.window_count == truth
    # the reported centre is over viable tumour and really holds that many
    c = np.array([hs.centre_x_um]), np.array([hs.centre_y_um])
    assert _closed_member(mask, *c)[0]
    assert _count(counted[:, 0], counted[:, 1], *c, side, "square")[0] == truth


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("side", [40, 100, 400])
def test_circle_hotspot_is_at_least_every_brute_force_placement(seed, side):
    nx = ny = 8
    mask, tiles, xy, counted = _case(100 + seed, nx, ny, 70, 0.4)
    hs = measure_slide(tiles, points(xy), 1.0, _cfg(side, "circle")).mitoses.hotspot
    if len(counted) == 0:
        return
    assert hs.window_count >= _brute_max(mask, counted, side, "circle", nx, ny)
    c = np.array([hs.centre_x_um]), np.array([hs.centre_y_um])
    assert _closed_member(mask, *c)[0]
    assert _count(counted[:, 0], counted[:, 1], *c, side, "circle")[0] == hs.window_count


@pytest.mark.parametrize("shape", ["square", "circle"])
def test_find_hotspot_beats_any_placement_point_counter_finds(shape):
    # Unit level: random real-valued points and an irregular region; every placement PointCounter
    # evaluates on a fine grid over the region holds no more than find_hotspot's answer.
    rng = np.random.default_rng(7)
    mask = rng.random((30, 30)) < 0.3
    region = CellRegion(-5.0, 3.0, 7.0, mask)
    x, y = rng.uniform(-20, 230, 400), rng.uniform(-20, 230, 400)
    window = Window(shape, 45.0 ** 2)
    best = find_hotspot(x, y, window, region)
    counter = PointCounter(x, y, window)
    gx, gy = np.meshgrid(np.arange(-5, 215, 0.5), np.arange(3, 223, 0.5))
    gx, gy = gx.ravel(), gy.ravel()
    ok = region.contains(gx, gy)
    assert ok.any()
    assert best.count >= int(counter.count(gx[ok], gy[ok]).max())
    assert region.contains(np.array([best.centre_x_um]), np.array([best.centre_y_um]))[0]
    assert int(counter.count(np.array([best.centre_x_um]), np.array([best.centre_y_um]))[0]) == best.count


def test_hotspot_rate_is_never_below_the_whole_tumour_rate():
    for seed in range(20):
        _, tiles, xy, counted = _case(300 + seed, 10, 10, 60, 0.5)
        for side in (30, 60, 150):
            mit = measure_slide(tiles, points(xy), 1.0, _cfg(side)).mitoses
            if mit.hotspot is None:
                continue
            assert mit.hotspot.per_10hpf >= mit.per_10hpf - 1e-9
            hs = mit.hotspot
            # the figure is always its raw count over the area it was counted in
            assert hs.per_10hpf == pytest.approx(hs.count / hs.counted_area_mm2 * 10 * hs.hpf_area_mm2)


def test_tumour_smaller_than_window_is_graded_as_the_whole_tumour():
    # The issue's numbers: 1.97 mm² of viable tumour, 10 HPF of 0.237 mm² = 2.37 mm². 17 mitoses over
    # the tumour = 20.45 per 10 HPF (FNCLCC score 3); the densest window holds only part of them.
    # 1.97 mm² = 197 tiles of 100 µm: a 20 x 10 block minus 3 tiles, at 0.5 µm/px (tile 200 px).
    skip = {(9, 19), (9, 18), (9, 17)}
    tiles = make_tiles(20, 10, 200, tumour=lambda r, c: (r, c) not in skip)
    rng = np.random.default_rng(1)
    # 12 mitoses packed in the left, 5 spread in the right end (2 mm wide tumour > 1.54 mm window side)
    xy = np.concatenate([np.column_stack([rng.uniform(10, 600, 12), rng.uniform(10, 990, 12)]),
                         np.column_stack([rng.uniform(1700, 1890, 5), rng.uniform(10, 890, 5)])])
    a = assess_slide(tiles, points(xy), 0.5)
    mit = a.measurements.mitoses
    assert a.measurements.viable_tumour_area_mm2 == pytest.approx(1.97)
    hs = mit.hotspot
    assert hs.window_exceeds_tumour and hs.counted_in == "whole_viable_tumour"
    assert hs.window_count < 17 and hs.count == mit.count == 17
    assert hs.counted_area_mm2 == pytest.approx(1.97)
    assert hs.per_10hpf == pytest.approx(17 / 1.97 * 2.37) == pytest.approx(mit.per_10hpf)
    assert a.grading.mitotic_score.score == 3
    assert a.grading.mitotic_score.evidence.count == 17
    assert a.grading.mitotic_score.evidence.counted_area_mm2 == pytest.approx(1.97)
    assert "whole viable tumour" in a.grading.mitotic_score.evidence.basis
    d = a.to_dict()["measurements"]["mitoses"]["hotspot"]
    assert d["counted_in"] == "whole_viable_tumour" and d["window_count"] == hs.window_count


def test_thin_tumour_no_window_denser_than_whole_uses_whole_tumour():
    # A 1-tile-high strip of 100 µm x 4 mm (0.4 mm² ... made 40 mm long for area > window): every 10-HPF
    # window covers only a sliver of it, so no window is as dense per area as the strip itself.
    tiles = make_tiles(300, 1, 200, tumour=lambda r, c: True)  # 30 mm x 0.1 mm = 3 mm² at 0.5 µm/px
    xy = np.column_stack([np.linspace(50, 29950, 100), np.full(100, 50.0)])
    mit = measure_slide(tiles, points(xy), 0.5).mitoses
    hs = mit.hotspot
    assert not hs.window_exceeds_tumour
    assert hs.counted_in == "whole_viable_tumour" and hs.count == 100
    assert hs.per_10hpf == pytest.approx(mit.per_10hpf)


def test_hotspot_box_is_clipped_to_the_slide():
    # tumour in the left column at the slide edge: the window centred there reaches x < 0
    # tiles only where tissue is (2 columns, 400 µm): they say nothing about where the slide ends
    tiles = make_tiles(2, 10, 400, tumour=lambda r, c: c == 0)  # 200 µm tiles at 0.5 µm/px
    xy = [(20.0 + i, 1000.0 + 5 * i) for i in range(6)]
    hs = measure_slide(tiles, points(xy), 0.5).mitoses.hotspot
    x0, y0, x1, y1 = hs.box_um
    assert x0 == 0.0 and y0 >= 0.0
    assert x1 == pytest.approx(hs.centre_x_um + 0.5 * 2370 ** 0.5 * 1000 ** 0.5)
    assert x1 > 400.0  # not cut at the tiles' extent
    # with the slide size, the far edges are cut too
    hs2 = measure_slide(tiles, points(xy), 0.5, slide_size_px=(1500, 3000)).mitoses.hotspot
    assert hs2.box_um[2] <= 750.0 and hs2.box_um[3] <= 1500.0
