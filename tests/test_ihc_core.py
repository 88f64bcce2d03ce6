"""histo.ihc array core: deconvolution round trip, cell detection and compartments, scoring maths, QC flags."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from histo.errors import HistoError, MppError
from histo.ihc import (
    CellParams,
    StainEstimationError,
    StainMatrix,
    classify_intensity,
    compose_rgb,
    deconvolve,
    detect_cells,
    estimate_background_rgb,
    estimate_stain_matrix,
    h_score_from_counts,
    ihc_qc,
    rgb_to_od,
    ruifrok_hdab,
    score_cells,
)

MPP = 0.5


def _disc(shape, cy, cx, r):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


# ---------------------------------------------------------------- deconvolution

def test_stain_matrix_rows_are_unit_and_ruifrok():
    st = ruifrok_hdab()
    assert np.allclose(np.linalg.norm(st.matrix, axis=1), 1.0)
    h = np.array([0.650, 0.704, 0.286])
    assert np.allclose(st.hematoxylin, h / np.linalg.norm(h))
    assert np.allclose(st.inverse @ st.matrix, np.eye(3), atol=1e-9)


def test_round_trip_recovers_known_concentrations():
    rng = np.random.default_rng(0)
    h = rng.uniform(0.0, 1.0, (64, 64))
    d = rng.uniform(0.0, 1.0, (64, 64))
    for bg in [(255, 255, 255), (230, 225, 215)]:
        rgb = compose_rgb(h, d, background_rgb=bg)
        maps = deconvolve(rgb, background_rgb=bg)
        assert maps.hematoxylin.dtype == np.float32 and maps.dab.dtype == np.float32
        # uint8 quantisation is the only error: below ~0.03 OD for OD up to ~1.7 per channel
        assert np.abs(maps.hematoxylin - h).max() < 0.04
        assert np.abs(maps.dab - d).max() < 0.04
        assert np.abs(maps.residual).max() < 0.04
        assert abs(float(maps.dab.mean()) - d.mean()) < 0.005


def test_od_formula_and_background():
    rgb = np.array([[[255, 255, 255], [0, 0, 0], [127, 127, 127]]], np.uint8)
    od = rgb_to_od(rgb)
    assert np.allclose(od[0, 0], 0.0)
    assert np.allclose(od[0, 1], np.log10(256.0))
    assert np.allclose(od[0, 2], -np.log10(128 / 256), atol=1e-6)
    # pixels brighter than the given glass intensity are background, never negative OD
    assert rgb_to_od(rgb, (200, 200, 200))[0, 0].max() == 0.0


def test_estimate_background_from_glass_and_fallback():
    rgb = np.full((50, 50, 3), (120, 80, 160), np.uint8)
    rgb[:10] = (228, 224, 214)
    assert estimate_background_rgb(rgb) == (228.0, 224.0, 214.0)
    full_tissue = np.full((20, 20, 3), (120, 80, 160), np.uint8)
    assert estimate_background_rgb(full_tissue) == (255.0, 255.0, 255.0)


def test_macenko_estimate_recovers_shifted_vectors():
    true = StainMatrix.from_vectors((0.60, 0.74, 0.30), (0.30, 0.55, 0.78))
    rng = np.random.default_rng(1)
    # a quarter of the pixels pure H, a quarter pure DAB, a quarter mixed (Macenko needs pure extremes)
    h = rng.uniform(0.3, 1.2, (80, 80)) * (rng.random((80, 80)) < 0.5)
    d = rng.uniform(0.3, 1.2, (80, 80)) * (rng.random((80, 80)) < 0.5)
    rgb = compose_rgb(h, d, stains=true)
    est = estimate_stain_matrix(rgb)
    assert "H estimated" in est.source and "DAB estimated" in est.source
    ang = lambda a, b: np.degrees(np.arccos(np.clip(np.dot(a, b), -1, 1)))  # noqa: E731
    assert ang(est.hematoxylin, true.hematoxylin) < 3.0
    assert ang(est.dab, true.dab) < 3.0


def test_macenko_needs_stained_pixels():
    with pytest.raises(StainEstimationError, match="stained pixels"):
        estimate_stain_matrix(np.full((30, 30, 3), 250, np.uint8))


def test_deconvolve_rejects_bad_input():
    with pytest.raises(HistoError, match="RGB"):
        deconvolve(np.zeros((10, 10), np.uint8))
    with pytest.raises(HistoError, match="background_rgb"):
        deconvolve(np.zeros((4, 4, 3), np.uint8), background_rgb="white")


# ---------------------------------------------------------------- cells

def _cells_image(dab_levels, h_nucleus=0.5, ring_dab=True, nuclear_dab=False, shape=(120, 400)):
    """Row of round nuclei (r=5 µm) 18 µm apart; DAB painted in a 2 µm ring (or the nucleus) at each level."""
    h = np.zeros(shape)
    d = np.zeros(shape)
    centres = []
    r_px = 5.0 / MPP
    for i, lvl in enumerate(dab_levels):
        cy, cx = shape[0] // 2, int(20 + i * 18 / MPP)
        nuc = _disc(shape, cy, cx, r_px)
        ring = _disc(shape, cy, cx, r_px + 2.0 / MPP) & ~nuc
        h[nuc] = h_nucleus
        if ring_dab:
            d[ring] = lvl
        if nuclear_dab:
            d[nuc] = lvl
        centres.append((cx, cy))
    return compose_rgb(h, d, background_rgb=(240, 238, 235)), centres


def test_detect_cells_finds_nuclei_with_centroid_and_area():
    rgb, centres = _cells_image([0.0, 0.3, 0.6])
    det = detect_cells(deconvolve(rgb, background_rgb=(240, 238, 235)), MPP, CellParams(nuclear_channel="hematoxylin"))
    t = det.table.sort_values("x_px").reset_index(drop=True)
    assert len(t) == 3
    assert np.allclose(t[["x_px", "y_px"]].to_numpy(), np.array(centres), atol=1.0)
    assert np.allclose(t["area_um2"], np.pi * 25, rtol=0.15)  # r = 5 µm disc
    assert det.nuclei.dtype == np.int32 and det.cells.dtype == np.int32
    # cytoplasm ring: about the 2 µm annulus, and never inside a nucleus
    assert np.all(det.cells[det.nuclei > 0] == det.nuclei[det.nuclei > 0])
    assert np.allclose(t["cell_area_um2"] - t["area_um2"], np.pi * (49 - 25), rtol=0.2)


def test_dab_mean_rises_with_painted_intensity():
    levels = [0.0, 0.15, 0.3, 0.5, 0.8]
    rgb, _ = _cells_image(levels, shape=(100, 560))
    det = detect_cells(deconvolve(rgb, background_rgb=(240, 238, 235)), MPP, CellParams(nuclear_channel="hematoxylin"))
    t = det.table.sort_values("x_px")
    cyto = t["dab_cytoplasm"].to_numpy()
    assert len(cyto) == len(levels)
    assert np.all(np.diff(cyto) > 0.05)
    assert np.allclose(cyto, levels, atol=0.06)
    assert np.all(np.abs(t["dab_nucleus"]) < 0.05)  # the stain is in the ring, not the nucleus
    mem = t["dab_membrane"].to_numpy()
    assert np.all(np.diff(mem) > 0.05)


def _touching_pair(mpp: float = 0.25):
    """A membrane-positive cell (a 0.75 µm DAB line round it) touching a negative one; nuclei r=4 µm, 10 µm apart."""
    shape = (int(30 / mpp), int(44 / mpp))
    cy = shape[0] // 2
    cx_pos, cx_neg = int(14 / mpp), int(24 / mpp)
    h = np.zeros(shape)
    d = np.zeros(shape)
    r = 4.0 / mpp
    h[_disc(shape, cy, cx_pos, r) | _disc(shape, cy, cx_neg, r)] = 0.5
    line = _disc(shape, cy, cx_pos, r + 2.0 / mpp) & ~_disc(shape, cy, cx_pos, r + 1.25 / mpp)
    d[line] = 0.8
    return deconvolve(compose_rgb(h, d)), (cx_pos, cx_neg)


def test_negative_cell_beside_a_membrane_positive_one_reads_negative():
    """The stained line where two cells touch lies in both membrane bands; the negative cell is measured on
    the part of its band no other nucleus is near ('exclude'), and reads positive on the whole band."""
    maps, (cx_pos, cx_neg) = _touching_pair()
    reads = {}
    for mode in ("exclude", "include"):
        t = detect_cells(maps, 0.25, CellParams(nuclear_channel="hematoxylin", dab_statistic="p90",
                                                 shared_membrane=mode)).table.sort_values("x_px")
        assert len(t) == 2
        reads[mode] = t["dab_membrane"].to_numpy()
    assert reads["include"][1] > 0.4  # the neighbour's line, read as this cell's
    assert reads["exclude"][1] < 0.1
    assert reads["exclude"][0] > 0.6 and reads["include"][0] > 0.6  # the positive cell keeps its own line
    with pytest.raises(HistoError, match="shared_membrane"):
        CellParams(shared_membrane="ignore").validate()


def test_boxed_in_cell_keeps_its_whole_membrane_band():
    """A cell with (almost) no private band is measured on all of it rather than on a few pixels."""
    from histo.ihc.compartments import exclude_shared_membrane

    nuclei = np.zeros((9, 9), np.int32)
    nuclei[4, 4] = 1
    nuclei[0, :] = 2
    nuclei[8, :] = 3
    nuclei[:, 0] = 4
    nuclei[:, 8] = 5
    membrane = np.zeros_like(nuclei)
    membrane[2:7, 2:7] = 1
    membrane[3:6, 3:6] = 0
    assert np.array_equal(exclude_shared_membrane(membrane, nuclei, 2), membrane)
    # with the neighbours far enough away, the band is private and kept whole as well
    assert np.array_equal(exclude_shared_membrane(membrane, np.where(nuclei == 1, 1, 0), 2), membrane)
    # one neighbour on the left: only the left column of the band goes
    one = np.where((nuclei == 1) | (nuclei == 4), nuclei, 0)
    got = exclude_shared_membrane(membrane, one, 2)
    assert not got[:, 2].any() and np.array_equal(got[:, 3:], membrane[:, 3:])


def test_touching_nuclei_are_split():
    shape = (80, 80)
    h = np.zeros(shape)
    h[_disc(shape, 40, 30, 10) | _disc(shape, 40, 48, 10)] = 0.5  # 10 px = 5 µm radius, overlapping
    det = detect_cells(deconvolve(compose_rgb(h, np.zeros(shape))), MPP, CellParams(nuclear_channel="hematoxylin"))
    assert len(det.table) == 2


def test_dab_stained_nucleus_needs_the_combined_channel():
    """Ki67-style: a brown nucleus with little hematoxylin is found on H+DAB, missed on H alone."""
    shape = (80, 120)
    h = np.zeros(shape)
    d = np.zeros(shape)
    h[_disc(shape, 40, 30, 10)] = 0.5  # negative nucleus
    pos = _disc(shape, 40, 85, 10)
    h[pos] = 0.02
    d[pos] = 0.9  # positive nucleus
    maps = deconvolve(compose_rgb(h, d))
    both = detect_cells(maps, MPP, CellParams(nuclear_channel="hematoxylin+dab")).table
    h_only = detect_cells(maps, MPP, CellParams(nuclear_channel="hematoxylin")).table
    assert len(both) == 2 and len(h_only) == 1
    assert sorted(np.round(both["dab_nucleus"], 1)) == [0.0, 0.9]


def test_size_limits_in_um2_follow_mpp():
    shape = (60, 60)
    h = np.zeros(shape)
    h[_disc(shape, 30, 30, 6)] = 0.5  # 113 px²
    maps = deconvolve(compose_rgb(h, np.zeros(shape)))
    p = CellParams(nuclear_channel="hematoxylin", min_area_um2=20.0)
    assert len(detect_cells(maps, 0.5, p).table) == 1  # 28 µm²
    assert len(detect_cells(maps, 0.25, p).table) == 0  # 7 µm²: too small to be a nucleus


def test_blank_image_has_no_cells_and_bad_mpp_raises():
    maps = deconvolve(np.full((64, 64, 3), 255, np.uint8))
    assert len(detect_cells(maps, MPP).table) == 0
    with pytest.raises(MppError):
        detect_cells(maps, 0.0)
    with pytest.raises(HistoError, match="nuclear_channel"):
        detect_cells(maps, MPP, CellParams(nuclear_channel="eosin"))


def test_tissue_mask_clips_the_ring():
    rgb, _ = _cells_image([0.5])
    maps = deconvolve(rgb, background_rgb=(240, 238, 235))
    p = CellParams(nuclear_channel="hematoxylin")
    full = detect_cells(maps, MPP, p)
    tissue = maps.hematoxylin > 0.25  # the nucleus only: the painted ring is "glass" here
    clipped = detect_cells(maps, MPP, p, tissue_mask=tissue)
    ring = (clipped.cells > 0) & (clipped.nuclei == 0)
    assert np.all(tissue[ring])
    assert clipped.table["n_px_cytoplasm"].iloc[0] < 0.05 * full.table["n_px_cytoplasm"].iloc[0]
    with pytest.raises(HistoError, match="tissue_mask"):
        detect_cells(maps, MPP, p, tissue_mask=tissue.astype(np.uint8))


# ---------------------------------------------------------------- scoring

def test_class_thresholds_bounds_go_up():
    v = np.array([0.0, 0.19, 0.2, 0.39, 0.4, 0.59, 0.6, 2.0, np.nan])
    assert classify_intensity(v, (0.2, 0.4, 0.6)).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, -1]
    with pytest.raises(HistoError, match="increasing"):
        classify_intensity(v, (0.4, 0.2, 0.6))


def test_h_score_exact_on_constructed_table():
    # 10 cells: 4 negative, 3 at 1+, 2 at 2+, 1 at 3+  → H = 30 + 40 + 30 = 100, 60 % positive
    dab = [0.0, 0.1, 0.1, 0.15, 0.25, 0.3, 0.35, 0.45, 0.5, 0.9]
    t = pd.DataFrame({"x_px": np.arange(10) * 10.0, "y_px": np.full(10, 5.0), "dab_nucleus": dab})
    s = score_cells(t, "nucleus", (0.2, 0.4, 0.6))
    assert s.counts == (4, 3, 2, 1)
    assert s.h_score == pytest.approx(100.0)
    assert s.pct_positive == pytest.approx(60.0)
    assert s.pct_by_class == pytest.approx((40.0, 30.0, 20.0, 10.0))
    assert h_score_from_counts([0, 0, 0, 5]) == 300.0
    assert h_score_from_counts([5, 0, 0, 0]) == 0.0
    assert np.isnan(h_score_from_counts([0, 0, 0, 0]))


def test_region_mask_restricts_scoring():
    dab = [0.0, 0.1, 0.1, 0.15, 0.25, 0.3, 0.35, 0.45, 0.5, 0.9]
    t = pd.DataFrame({"x_px": np.arange(10) * 10.0, "y_px": np.full(10, 5.0), "dab_nucleus": dab})
    region = np.zeros((20, 100), bool)
    region[:, 65:] = True  # cells at x = 70, 80, 90 → 1+ ... 3+: 2+, 2+, 3+
    s = score_cells(t, "nucleus", (0.2, 0.4, 0.6), region_mask=region)
    assert s.counts == (0, 0, 2, 1) and s.n_outside_region == 7
    assert s.h_score == pytest.approx(700 / 3)
    empty = score_cells(t, "nucleus", (0.2, 0.4, 0.6), region_mask=np.zeros((20, 100), bool))
    assert empty.n_cells == 0 and np.isnan(empty.h_score)
    with pytest.raises(HistoError, match="bool"):
        score_cells(t, "nucleus", region_mask=region.astype(np.uint8))
    with pytest.raises(HistoError, match="compartment"):
        score_cells(t, "nuclei")


# ---------------------------------------------------------------- QC

def test_qc_flags_blank_white_image():
    q = ihc_qc(deconvolve(np.full((64, 64, 3), 255, np.uint8)))
    names = {f.name for f in q.flags}
    assert names == {"no_tissue", "no_dab"}
    assert not q.ok and q.tissue_fraction == 0.0


def test_qc_flags_hematoxylin_only_tissue_as_no_dab():
    h = np.full((64, 64), 0.4)
    q = ihc_qc(deconvolve(compose_rgb(h, np.zeros_like(h))))
    assert [f.name for f in q.flags] == ["no_dab"]
    assert q.flags[0].value < q.flags[0].limit


def test_qc_flags_saturated_stain_with_value():
    d = np.full((64, 64), 0.3)
    d[:, :16] = 3.0  # a quarter of the tissue near black
    q = ihc_qc(deconvolve(compose_rgb(np.full_like(d, 0.2), d)))
    flag = {f.name: f for f in q.flags}["saturated_stain"]
    assert flag.value == pytest.approx(0.25, abs=0.01) and flag.limit == 0.05
    assert "no_dab" not in {f.name for f in q.flags}


def test_qc_passes_normal_stain():
    d = np.zeros((64, 64))
    d[10:30, 10:30] = 0.5
    q = ihc_qc(deconvolve(compose_rgb(np.full_like(d, 0.3), d)))
    assert q.ok and q.dab_fraction == pytest.approx(400 / 4096, abs=0.01)
