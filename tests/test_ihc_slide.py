"""Slide-level IHC: score_slide on written slides (synthetic cells and a phantom), regions, QC, contract-D outputs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from histo.errors import HistoError
from histo.ihc import (
    FrameMismatchError,
    calibrate_thresholds,
    compose_rgb,
    load_panel,
    mask_from_geojson,
    score_slide,
    tumour_mask_from_tiles,
    write_ihc_outputs,
)
from histo.slide import open_slide
from histo.tissue import TissueMask

MPP = 0.25  # level-0 µm/px of the written slides; analysis at 0.5
SIDE = 2048
BG = (242.0, 241.0, 245.0)
# Cells on a 128 px (level-0) lattice through 512, 1024, 1536: the borders of a 256-analysis-px tile grid,
# so many cells (and one at a tile corner) straddle tiles and must be counted once.
LATTICE = [(x, y) for y in range(384, 1700, 128) for x in range(384, 1700, 128)]
BORDER: list = []


def _cells_render(positive: bool):
    centres = np.array(LATTICE + BORDER, float)
    cls = np.arange(len(centres)) % 4 if positive else np.zeros(len(centres), int)
    dab_of_class = np.array([0.0, 0.3, 0.5, 0.9])

    def render(x, y, w, h):
        ys = np.arange(y, y + h, dtype=np.float32) + 0.5
        xs = np.arange(x, x + w, dtype=np.float32) + 0.5
        hmap = np.zeros((h, w), np.float32)
        dmap = np.zeros((h, w), np.float32)
        hmap[np.ix_((ys > 300) & (ys < 1800), (xs > 300) & (xs < 1800))] = 0.12  # counterstained tissue
        for (cx, cy), k in zip(centres, cls):
            # each cell is painted in its own 50 px window of the chunk (a ring of radius 24 px fits in it)
            r0, r1 = max(int(cy) - 25 - y, 0), min(int(cy) + 26 - y, h)
            c0, c1 = max(int(cx) - 25 - x, 0), min(int(cx) + 26 - x, w)
            if r0 >= r1 or c0 >= c1:
                continue
            r2 = (ys[r0:r1, None] - cy) ** 2 + (xs[None, c0:c1] - cx) ** 2
            hmap[r0:r1, c0:c1][r2 <= 14 ** 2] = 0.7  # nucleus radius 3.5 µm
            dmap[r0:r1, c0:c1][(r2 > 14 ** 2) & (r2 <= 24 ** 2)] = dab_of_class[k]
        return compose_rgb(hmap, dmap, background_rgb=BG)

    return render, centres, cls


@pytest.fixture(scope="module")
def cells_slide(tmp_path_factory):
    from histo.synth.tiff_writer import write_pyramidal_tiff

    render, centres, cls = _cells_render(True)
    path = tmp_path_factory.mktemp("ihc") / "cells_IHC_ALK.tiff"
    write_pyramidal_tiff(path, SIDE, SIDE, MPP, render, tile_px=256, chunk_px=512, jpeg_quality=95)
    return path, centres, cls


@pytest.fixture(scope="module")
def hema_only_slide(tmp_path_factory):
    from histo.synth.tiff_writer import write_pyramidal_tiff

    render, _, _ = _cells_render(False)
    path = tmp_path_factory.mktemp("ihc") / "hema_only.tiff"
    return write_pyramidal_tiff(path, SIDE, SIDE, MPP, render, tile_px=256, chunk_px=512, jpeg_quality=95)


@pytest.fixture(scope="module")
def alk():
    return load_panel()["ALK"]


def test_every_cell_found_once_whatever_the_tiling(cells_slide, alk):
    path, centres, cls = cells_slide
    small = score_slide(path, alk, tile_px=256, workers=2)
    big = score_slide(path, alk, tile_px=1024, workers=0)
    assert len(small.tiles) > 4  # really tiled: border cells lie on tile edges
    for r in (small, big):
        xy = r.cells[["x", "y"]].to_numpy()
        d = np.hypot(xy[:, None, 0] - centres[None, :, 0], xy[:, None, 1] - centres[None, :, 1])
        # each drawn cell has exactly one detection within 2 µm, and no detection is spare
        assert (d.min(axis=0) < 8).all(), "a drawn cell was missed"
        assert ((d < 8).sum(axis=0) == 1).all(), "a cell was counted twice"
        assert len(r.cells) == len(centres)
    # same cells, same measurements in both tilings
    a = small.cells.sort_values(["y", "x"]).reset_index(drop=True)
    b = big.cells.sort_values(["y", "x"]).reset_index(drop=True)
    assert np.allclose(a[["x", "y"]], b[["x", "y"]], atol=0.01)
    assert np.allclose(a["dab_od"], b["dab_od"], atol=1e-4)


def test_classes_counts_h_score_and_call(cells_slide, alk):
    path, centres, cls = cells_slide
    r = score_slide(path, alk, tile_px=512, workers=0)
    truth = np.bincount(cls, minlength=4)
    assert r.region == "tissue"
    assert list(r.score.counts) == list(truth)
    h = 100 * (truth[1] + 2 * truth[2] + 3 * truth[3]) / truth.sum()
    assert r.score.h_score == pytest.approx(h)
    assert r.score.pct_positive == pytest.approx(100 * truth[1:].sum() / truth.sum())
    assert r.call.call == "positive"
    assert r.sentence == f"ALK positive (H-score {h:.0f}; {r.score.pct_positive:.0f} % of cells ≥ 1+)"
    assert r.qc == []
    # per-tile counts add up to the slide's
    assert int(r.tiles["n_cells"].sum()) == r.score.n_cells


def test_tumour_mask_restricts_counting(cells_slide, alk):
    path, centres, cls = cells_slide
    with open_slide(path) as s:
        ds = 8.0 / s.mpp
        m = np.zeros((round(SIDE / ds), round(SIDE / ds)), bool)
        m[:, : m.shape[1] // 2] = True  # left half of the slide (level-0 x < 1024)
        tm = TissueMask(m, 8.0, ds, (SIDE, SIDE))
        r = score_slide(s, alk, tumour_mask=tm, tile_px=512, workers=0)
    assert r.region == "tumour"
    counted = r.cells[r.cells["in_region"]]
    assert (counted["x"] < 1024).all() and counted["in_tumour"].all()
    expected = int((centres[:, 0] < 1024).sum())
    assert r.score.n_cells == expected == len(counted)
    assert r.score.n_outside_region == len(r.cells) - expected
    assert r.sentence.endswith("% of tumour cells ≥ 1+)")


def test_frame_mismatch_is_refused_unless_allowed(cells_slide, alk):
    path, _, _ = cells_slide
    m = np.ones((300, 300), bool)
    other = TissueMask(m, 8.0, 2400 / 300, (2400, 2400))  # made on a slide 17% larger
    with pytest.raises(FrameMismatchError, match="registration"):
        score_slide(path, alk, tumour_mask=other, workers=0)
    r = score_slide(path, alk, tumour_mask=other, workers=0, allow_frame_mismatch=True)
    assert "frame_mismatch" in [f.name for f in r.qc]


def test_no_dab_slide_is_flagged_but_still_called(hema_only_slide, alk):
    r = score_slide(hema_only_slide, alk, workers=0)
    assert "no_dab_detected" in [f.name for f in r.qc]
    flag = next(f for f in r.qc if f.name == "no_dab_detected")
    assert flag.severity == "warning" and "DAB" in flag.message
    assert r.call.call == "negative" and r.score.pct_positive == 0.0


def test_blank_slide_has_no_tissue(blank_slide_path, alk, tmp_path):
    r = score_slide(blank_slide_path, alk, workers=0)
    names = [f.name for f in r.qc]
    assert "no_tissue" in names and r.score.n_cells == 0 and len(r.tiles) == 0
    assert r.call.call == "insufficient_cells"
    d = write_ihc_outputs(r, tmp_path / "blank")
    assert d["pct_positive"] is None and d["h_score"] is None  # strict JSON: no NaN
    json.loads((tmp_path / "blank" / "ihc.json").read_text())


def test_estimated_stains_agree_with_defaults(cells_slide, alk):
    path, _, cls = cells_slide
    r = score_slide(path, alk, stain="estimate", tile_px=512, workers=2)
    assert r.summary["stain"]["method"] == "estimate"
    assert r.stains.source.startswith("macenko")
    assert r.score.n_cells == len(cls)
    assert abs(r.score.pct_positive - 75.0) < 5


@pytest.mark.slow
def test_process_pool_gives_the_same_cells(cells_slide, alk):
    path, _, _ = cells_slide
    a = score_slide(path, alk, tile_px=512, workers=2, pool="process")
    b = score_slide(path, alk, tile_px=512, workers=0)
    assert a.cells.equals(b.cells)


def test_panel_analysis_mpp_is_used_but_never_finer_than_the_slide(cells_slide, alk):
    """A marker's panel resolution is honoured when the slide has it; on a coarser slide it is read at the
    slide's own (flagged), while an explicit analysis_mpp is always honoured (flagged when upsampled)."""
    path, _, _ = cells_slide  # level 0 at 0.25 µm/px
    as_panel = dataclasses.replace(alk, analysis_mpp=0.25)
    r = score_slide(path, as_panel, tile_px=1024, workers=0)
    assert r.mpp_analysis == 0.25 and not r.qc
    with open_slide(path, mpp=0.5) as coarse:  # the same pixels declared as a 0.5 µm/px scan
        r = score_slide(coarse, as_panel, tile_px=1024, workers=0)
        assert r.mpp_analysis == 0.5
        assert [f.name for f in r.qc] == ["coarser_than_panel"]
        assert "0.25" in r.qc[0].message
        r = score_slide(coarse, as_panel, analysis_mpp=0.25, tile_px=1024, workers=0)
        assert r.mpp_analysis == 0.25 and [f.name for f in r.qc] == ["upsampled"]
    assert score_slide(path, alk, tile_px=1024, workers=0).mpp_analysis == 0.5  # no panel value: the default


def test_bad_arguments(cells_slide, alk):
    path, _, _ = cells_slide
    with pytest.raises(HistoError, match="stain"):
        score_slide(path, alk, stain="magic")
    with pytest.raises(HistoError, match="analysis_mpp"):
        score_slide(path, alk, analysis_mpp=4.0)
    with pytest.raises(HistoError, match="MarkerSpec"):
        score_slide(path, "ALK")


def test_outputs_match_contract_d(cells_slide, alk, tmp_path):
    path, _, _ = cells_slide
    r = score_slide(path, alk, tile_px=512, workers=0)
    d = write_ihc_outputs(r, tmp_path / "s", max_features=20)
    for f in ("ihc_cells.parquet", "ihc_tiles.parquet", "ihc_cells.geojson", "ihc_heatmap.png", "ihc.json"):
        assert (tmp_path / "s" / f).is_file(), f
    j = json.loads((tmp_path / "s" / "ihc.json").read_text())
    assert j == d
    for k in ("schema", "slide", "marker", "compartment", "region", "n_cells", "counts", "pct_positive", "h_score",
              "call", "qc", "mpp_analysis", "seconds"):
        assert k in j, k
    assert j["schema"] == "histo.ihc/1" and j["marker"] == "ALK" and j["compartment"] == "cytoplasm"
    assert j["call"]["label"] == "positive" and "reason" in j["call"] and j["call"]["min_percent_positive"] == 10.0
    assert sum(j["counts"]) == j["n_cells"] and j["mpp_analysis"] == 0.5
    cells = pd.read_parquet(tmp_path / "s" / "ihc_cells.parquet")
    assert {"x_um", "y_um", "x", "y", "area_um2", "dab_od", "ihc_class", "in_tumour"} <= set(cells.columns)
    assert cells["ihc_class"].between(0, 3).all() and len(cells) == len(r.cells)
    assert np.allclose(cells["x_um"], cells["x"] * 0.25)
    tiles = pd.read_parquet(tmp_path / "s" / "ihc_tiles.parquet")
    assert {"x", "y", "w", "h", "n_cells", "n_positive", "pct_positive", "h_score"} <= set(tiles.columns)
    gj = json.loads((tmp_path / "s" / "ihc_cells.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == 20
    assert gj["histo"]["sampled"] is True and j["geojson"]["sampled"] is True
    f0 = gj["features"][0]
    assert f0["properties"]["objectType"] == "detection"
    assert f0["properties"]["classification"]["name"] in ("0", "1+", "2+", "3+")
    from PIL import Image

    with Image.open(tmp_path / "s" / "ihc_heatmap.png") as im:
        assert im.size[0] > 200


def test_tumour_mask_from_tiles_keeps_viable_spindle_tiles():
    rows = []
    for i, (top, nec) in enumerate([("fascicular", 0.1), ("none", 0.0), ("haphazard", 0.9), ("haphazard", 0.2)]):
        p = {c: 0.1 for c in ("none", "fascicular", "haphazard")}
        p[top] = 0.8
        rows.append({"x": 512.0 * i, "y": 0.0, "w": 512.0, "h": 512.0, "tissue_fraction": 1.0, "p_necrosis": nec,
                     **{f"p_pattern_{c}": v for c, v in p.items()}})
    m = tumour_mask_from_tiles(pd.DataFrame(rows), (2048, 1024), slide_mpp=0.25, mask_mpp=8.0)
    assert m.mask.shape == (32, 64) and m.slide_dimensions == (2048, 1024)
    cols = m.mask[0]
    assert cols[:16].all() and not cols[16:48].any() and cols[48:].all()
    assert not m.mask[16:].any()
    with pytest.raises(FrameMismatchError, match="frame"):
        tumour_mask_from_tiles(pd.DataFrame(rows), (1024, 512), slide_mpp=0.25)
    with pytest.raises(HistoError, match="non_spindle_class"):
        tumour_mask_from_tiles(pd.DataFrame(rows), (2048, 1024), slide_mpp=0.25, non_spindle_class="stroma")
    # The necrotic regions the H&E grading measured replace the per-tile threshold: tile 3 (p 0.2, at the
    # edge of a necrotic zone) is left out, tile 2 (p 0.9, a mimic the region rule dropped) is counted.
    m = tumour_mask_from_tiles(pd.DataFrame(rows), (2048, 1024), slide_mpp=0.25, mask_mpp=8.0,
                               necrotic=np.array([False, False, False, True]))
    cols = m.mask[0]
    assert cols[:16].all() and not cols[16:32].any() and cols[32:48].all() and not cols[48:].any()
    with pytest.raises(HistoError, match="one value per tile"):
        tumour_mask_from_tiles(pd.DataFrame(rows), (2048, 1024), slide_mpp=0.25, necrotic=np.ones(3, bool))


def test_calibrate_thresholds_recovers_cuts():
    rng = np.random.default_rng(0)
    cls = rng.integers(0, 4, 400)
    od = np.array([0.05, 0.15, 0.3, 0.5])[cls] + rng.normal(0, 0.01, 400)
    t = calibrate_thresholds(od, cls)
    assert t[0] == pytest.approx(0.10, abs=0.03) and t[1] == pytest.approx(0.225, abs=0.04) and t[2] == pytest.approx(0.4, abs=0.05)


@pytest.mark.slow
def test_phantom_alk_slide_near_truth(tmp_path):
    """A phantom IHC slide scored in its viable-tumour polygons: % positive and H-score near the exact truth.

    Thresholds are calibrated on an independently seeded twin (the phantom's classes are set on a
    nominal stain amount whose scale differs from the measured compartment mean; see scripts/eval_ihc.py).
    """
    from pathlib import Path

    from histo.synth.phantom import build_phantom, geojson, load_spec, replace_size, summary, write_slide

    presets = Path(__file__).resolve().parents[1] / "configs" / "synth"
    spec = load_panel()["ALK"]
    base = replace_size(load_spec(presets / "high_grade_alk_positive.yaml"), 1536, 1536)

    def scored(sp, thresholds=None):
        ph = build_phantom(sp)
        p = write_slide(ph, tmp_path / f"{sp.name}_{sp.seed}.tiff", "ihc")
        with open_slide(p) as s:
            tm = mask_from_geojson(geojson(ph, "ihc", max_cells=0), s.dimensions, slide_mpp=s.mpp,
                                   include=["Tumor-fascicular", "Tumor-haphazard"], exclude=["Necrosis"], mask_mpp=2.0)
            ms = dataclasses.replace(spec, thresholds_od=thresholds) if thresholds else spec
            return ph, summary(ph)["ihc"], score_slide(s, ms, tumour_mask=tm, workers=2)

    twin = dataclasses.replace(base, seed=base.seed + 1000, ihc=dataclasses.replace(base.ihc, class_fractions=(0.25,) * 4))
    ph, _, r = scored(twin)
    from scipy.spatial import cKDTree

    c = ph.cells
    ok = c.ihc_class >= 0
    tree = cKDTree(np.column_stack([c.x[ok], c.y[ok]]))
    inreg = r.cells[r.cells["in_region"]]
    dist, idx = tree.query(inreg[["x", "y"]].to_numpy(), distance_upper_bound=16)
    hit = np.isfinite(dist)
    thr = calibrate_thresholds(inreg["dab_od"].to_numpy()[hit], c.ihc_class[ok][idx[hit]])
    _, truth, r = scored(base, thr)
    assert r.region == "tumour" and r.score.n_cells > 200
    assert abs(r.score.pct_positive - truth["pct_positive"]) <= 6
    assert abs(r.score.h_score - truth["h_score"]) <= 25
    assert r.call.call == truth["call"] == "positive"
