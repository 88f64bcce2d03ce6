"""Phantom generator: spec validation, determinism, truth matching the pixels, files written, CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import shapely

from histo.errors import ConfigError
from histo.synth.phantom import build_phantom, geojson, load_spec, make_phantom, replace_size, spec_from_dict, summary
from histo.synth.phantom.cells import MITOSIS, SpriteBank
from histo.synth.phantom.stain import deconvolve

REPO = Path(__file__).resolve().parents[1]
PRESETS = REPO / "configs" / "synth"


@pytest.fixture(scope="module")
def demo():
    """The demo_small phantom (4096 px square), built once for the module."""
    return build_phantom(load_spec(PRESETS / "demo_small.yaml"))


# --- spec ------------------------------------------------------------------------------------


def test_unknown_key_names_key_and_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\ntumor:\n  fraktion_of_tissue: 0.5\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*unknown key 'tumour\.fraktion_of_tissue'"):
        load_spec(p)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"mpp": "fine"}, r"'mpp' must be float"),
        ({"ihc": {"compartment": "golgi"}}, r"'ihc\.compartment' must be one of cytoplasmic, nuclear, membranous"),
        ({"necrosis": {"fraction_of_tumour": 1.5}}, r"necrosis\.fraction_of_tumour"),
        ({"ihc": {"class_fractions": [0.5, 0.5]}}, r"class_fractions"),
        ({"ihc": {"class_bounds_od": [0.4, 0.2, 0.6]}}, r"'ihc\.class_bounds_od' must be 3 increasing"),
        ({"ihc": {"class_dab_od": [0.0, 0.1, 0.5, 0.8]}}, r"'ihc\.class_dab_od' must lie inside its class band"),
        ({"width_px": 5000, "width_um": 100}, r"not both"),
        ({"tumour": 3}, r"'tumour' must be a mapping"),
    ],
)
def test_bad_values_are_config_errors(data, message):
    with pytest.raises(ConfigError, match=message):
        spec_from_dict(data, "x.yaml")


def test_missing_spec_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml.*not found"):
        load_spec(tmp_path / "nope.yaml")


def test_presets_load():
    names = {p.stem for p in PRESETS.glob("*.yaml")}
    assert {"low_grade_alk_positive", "high_grade_alk_positive", "alk_negative", "artefacts", "demo_small"} <= names
    for p in PRESETS.glob("*.yaml"):
        assert load_spec(p).name == p.stem


# --- determinism -----------------------------------------------------------------------------


@pytest.mark.slow
def test_same_seed_same_pixels_and_chunk_independent(demo):
    x, y, w, h = 1700, 1900, 300, 260
    a = demo.render_he(x, y, w, h)
    again = build_phantom(load_spec(PRESETS / "demo_small.yaml")).render_he(x, y, w, h)
    assert np.array_equal(a, again)
    # Cut the same box into four uneven pieces: the stitched pixels must be identical.
    sx, sy = 117, 93
    parts = np.zeros_like(a)
    for (px, pw) in ((0, sx), (sx, w - sx)):
        for (py, ph) in ((0, sy), (sy, h - sy)):
            parts[py:py + ph, px:px + pw] = demo.render_he(x + px, y + py, pw, ph)
    assert np.array_equal(a, parts)
    b = demo.render_ihc(x, y, w, h)
    assert np.array_equal(b[:, :sx], demo.render_ihc(x, y, sx, h))


def test_round_cells_are_drawn_the_same_whatever_came_first(demo):
    """Lymphocyte sprites are cached without their orientation: the sprite must not depend on the first
    request's angle, else a chunk's pixels would depend on the chunks rendered before it."""
    from histo.synth.phantom.cells import LYMPHOCYTE

    one, two = SpriteBank(demo.spec), SpriteBank(demo.spec)
    a = one.sprite(LYMPHOCYTE, 2, 1, angle=0.0)
    b = two.sprite(LYMPHOCYTE, 2, 1, angle=1.3)
    assert np.array_equal(a.nuc, b.nuc) and np.array_equal(a.body, b.body)
    # And end to end: a box rendered first equals the same box rendered after others.
    box = (1700, 1900, 300, 260)
    first = build_phantom(demo.spec).render_ihc(*box)
    ph = build_phantom(demo.spec)
    ph.render_he(0, 0, 2048, 2048)
    assert np.array_equal(ph.render_ihc(*box), first)


def test_other_seed_other_slide():
    s1 = load_spec(PRESETS / "demo_small.yaml")
    s2 = spec_from_dict({**s1.to_dict(), "seed": 8})
    p1, p2 = build_phantom(s1), build_phantom(s2)
    assert len(p1.cells) != len(p2.cells) or not np.array_equal(p1.cells.x, p2.cells.x)


# --- truth matches pixels --------------------------------------------------------------------


def test_every_mitosis_point_lies_on_a_dark_figure(demo):
    c = demo.cells
    idx = np.nonzero(c.kind == MITOSIS)[0]
    assert idx.size >= 2
    r = 40
    for i in idx:
        cx, cy = int(c.x[i]), int(c.y[i])
        od = deconvolve(demo.render_he(cx - r, cy - r, 2 * r + 1, 2 * r + 1))[..., 0]
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        near = od[(xx**2 + yy**2) <= 8**2]  # within 2 µm of the point
        ring = od[((xx**2 + yy**2) >= 26**2) & ((xx**2 + yy**2) <= 30**2)]  # ~7 µm: the clear halo
        assert np.percentile(near, 90) > 0.9, f"mitosis {i} at ({cx},{cy}): H OD {np.percentile(near, 90):.2f}"
        assert np.percentile(near, 90) > 3 * np.median(ring)


def test_truth_dab_od_lies_inside_the_class_bounds(demo):
    # The truth class of a tumour cell is where its DAB OD lies between ihc.class_bounds_od (the
    # panel's convention), with a guard so no cell sits on a bound.
    c = demo.cells
    b = (0.0,) + tuple(demo.spec.ihc.class_bounds_od) + (np.inf,)
    assert np.all(c.dab_od[c.ihc_class == 0] == 0)
    for k in (1, 2, 3):
        v = c.dab_od[c.ihc_class == k]
        assert v.size >= 30 and v.min() > b[k] + 0.02 and v.max() < b[k + 1] - 0.02, (k, v.min(), v.max())


@pytest.mark.slow
def test_mean_dab_rises_with_class(demo):
    c = demo.cells
    bank = SpriteBank(demo.spec)
    rng = np.random.default_rng(0)
    means = []
    for k in range(4):
        idx = np.nonzero(c.ihc_class == k)[0]
        assert idx.size >= 30
        vals = []
        for i in rng.choice(idx, 30, replace=False):
            _, body, half = bank.get(int(c.kind[i]), int(c.size[i]), int(c.variant[i]), float(c.angle[i]), float(c.stretch[i]))
            x0, y0 = int(np.floor(c.x[i])) - half, int(np.floor(c.y[i])) - half
            dab = deconvolve(demo.render_ihc(x0, y0, 2 * half + 1, 2 * half + 1))[..., 2]
            vals.append(float((dab * body).sum() / body.sum()))
        means.append(np.mean(vals))
    assert all(a < b for a, b in zip(means, means[1:])), means
    assert means[0] < 0.2 and means[3] - means[0] > 0.2, means


def test_regions_paint_where_the_polygons_say(demo):
    lay = demo.layout
    rng = np.random.default_rng(1)
    for name, lab in (("Necrosis", 4), ("Tumor-fascicular", 2), ("Stroma", 1)):
        poly = lay.polygons[name]
        shapely.prepare(poly)
        x0, y0, x1, y1 = poly.bounds
        px, py = rng.uniform(x0, x1, 4000), rng.uniform(y0, y1, 4000)
        inside = shapely.contains_xy(poly, px, py)
        # Points clearly inside (not on the border) get the region's label from the fields.
        deep = inside & shapely.contains_xy(poly.buffer(-8), px, py)
        assert deep.sum() > 50
        assert (lay.labels_at(px[deep], py[deep]) == lab).mean() > 0.999


def test_summary_is_computed_from_the_objects(demo):
    s = summary(demo)
    a = s["areas_mm2"]
    assert a["tissue"] == pytest.approx(a["stroma"] + a["tumour"] + a["inflammation"], rel=1e-3)
    assert a["tumour"] == pytest.approx(a["tumour_fascicular"] + a["tumour_haphazard"] + a["necrosis"], rel=1e-3)
    assert s["necrosis_pct_of_tumour"] == pytest.approx(100 * a["necrosis"] / a["tumour"], abs=0.01)
    n_mit = int((demo.cells.kind == MITOSIS).sum())
    assert s["mitoses"]["count"] == n_mit
    assert s["mitoses"]["per_10hpf"] == pytest.approx(n_mit / a["tumour_viable"] * 10 * 0.237, rel=1e-3)
    cnt = s["ihc"]["counts"]
    n = sum(cnt.values())
    assert n == s["ihc"]["n_scored_cells"] == int((demo.cells.ihc_class >= 0).sum())
    assert s["ihc"]["h_score"] == pytest.approx((cnt["1+"] + 2 * cnt["2+"] + 3 * cnt["3+"]) * 100 / n, abs=0.01)


def test_geojson_has_classes_and_points(demo):
    he, ihc = geojson(demo, "he"), geojson(demo, "ihc")
    json.loads(json.dumps(he))
    names = {f["properties"]["classification"]["name"] for f in he["features"]}
    assert {"Tissue", "Stroma", "Tumor-fascicular", "Tumor-haphazard", "Necrosis", "Inflammation", "Mitosis"} <= names
    for f in he["features"]:
        assert f["properties"]["objectType"] in ("annotation", "detection")
        g = shapely.geometry.shape(f["geometry"])
        assert g.is_valid and not g.is_empty
    mit = [f for f in he["features"] if f["properties"]["classification"]["name"] == "Mitosis"]
    assert len(mit) == int((demo.cells.kind == MITOSIS).sum())
    cells = [f for f in ihc["features"] if f["properties"]["objectType"] == "detection"]
    assert {f["properties"]["classification"]["name"] for f in cells} == {"0", "1+", "2+", "3+"}
    assert len(cells) == int((demo.cells.ihc_class >= 0).sum())
    capped = geojson(demo, "ihc", max_cells=100)
    assert sum(f["properties"]["objectType"] == "detection" for f in capped["features"]) == 100


def test_negative_slide_has_no_dab():
    spec = replace_size(load_spec(PRESETS / "alk_negative.yaml"), 3072, 3072)
    ph = build_phantom(spec)
    s = summary(ph)
    assert s["ihc"]["pct_positive"] == 0 and s["ihc"]["call"] == "negative"
    c = ph.cells
    i = np.nonzero(c.ihc_class == 0)[0][0]
    dab = deconvolve(ph.render_ihc(int(c.x[i]) - 100, int(c.y[i]) - 100, 200, 200))[..., 2]
    assert np.percentile(dab, 99) < 0.1


# --- files -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_make_phantom_writes_openslide_readable_pair(tmp_path):
    openslide = pytest.importorskip("openslide")
    out = make_phantom(PRESETS / "demo_small.yaml", tmp_path, size_px=(1536, 1280), workers=1)
    assert out.he_path.name == "demo_small_HE.tiff" and out.ihc_path.name == "demo_small_IHC_ALK.tiff"
    for p in (out.he_path, out.ihc_path):
        with openslide.OpenSlide(str(p)) as s:
            assert s.dimensions == (1536, 1280)
            assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.25)
    summ = json.loads(out.summary_path.read_text())
    assert summ["width_px"] == 1536 and summ["files"]["he"] == out.he_path.name
    gj = json.loads(out.geojson_path.read_text())
    assert gj["type"] == "FeatureCollection"
    import pandas as pd

    cells = pd.read_parquet(out.cells_path)
    assert len(cells) == summ["cells"]["total"]
    assert (cells["ihc_class"] >= 0).sum() == summ["ihc"]["n_scored_cells"]
    assert load_spec(out.spec_path).width_px == 1536
    assert not list(out.folder.glob(".*tmp"))


def test_cli_synth(tmp_path, capsys):
    from histo.cli import main

    rc = main(["synth", "-c", str(PRESETS / "demo_small.yaml"), "--out", str(tmp_path), "--size-px", "1024", "1024",
               "--workers", "1", "--no-ihc", "--seed", "3"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "demo_small_HE.tiff" in out and "verdict" in out
    assert json.loads((tmp_path / "demo_small" / "summary.json").read_text())["seed"] == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("colour: red\n")
    rc = main(["synth", "-c", str(bad), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown key 'colour'" in err and len(err.strip().splitlines()) == 1


def test_artefacts_are_painted_where_the_truth_says():
    spec = replace_size(load_spec(PRESETS / "artefacts.yaml"), 6000, 6000)
    spec = dataclasses.replace(spec, stain=dataclasses.replace(spec.stain, noise_sd=0.0))  # detail, not sensor noise
    ph = build_phantom(spec)
    polys = ph.layout.polygons
    assert ph.layout.pen_colors[0] == "green"
    pen = polys["Pen"].buffer(-20)
    p = pen.representative_point()
    rgb = ph.render_he(int(p.x) - 16, int(p.y) - 16, 32, 32).reshape(-1, 3).astype(float)
    assert rgb[:, 1].mean() > rgb[:, 0].mean() + 30  # green ink absorbs red
    fold = polys["Fold"].buffer(-10)
    assert not fold.is_empty
    # Blurred patches lose fine detail: compare pixel-to-pixel differences inside and well outside one.
    blur = polys["Blur"].buffer(-100)
    q = blur.representative_point()
    box = (int(q.x) - 64, int(q.y) - 64, 128, 128)
    blurred = ph.render_he(*box).astype(float)
    sharp_spec = dataclasses.replace(ph.spec, artefacts=dataclasses.replace(ph.spec.artefacts, blur_patches=0))
    sharp = build_phantom(sharp_spec).render_he(*box).astype(float)
    detail = lambda a: np.abs(np.diff(a[..., 1], axis=1)).mean()  # noqa: E731
    assert detail(blurred) < 0.5 * detail(sharp), (detail(blurred), detail(sharp))
