"""Phantom realism features a user relies on: no texture repeat, nuclear pleomorphism and chromatin,
IHC artefacts on the IHC slide with their truth in truth_ihc.geojson."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import shapely

from histo.synth.phantom import build_phantom, geojson, load_spec, replace_size, spec_from_dict
from histo.synth.phantom.cells import N_SIZE, SPINDLE, SpriteBank
from histo.synth.phantom.layout import STROMA
from histo.synth.phantom.stain import deconvolve

PRESETS = Path(__file__).resolve().parents[1] / "configs" / "synth"


def _quiet(spec):
    """The same spec without sensor noise (texture, not noise, is under test)."""
    return dataclasses.replace(spec, stain=dataclasses.replace(spec.stain, noise_sd=0.0))


def test_stroma_texture_does_not_repeat_at_the_texture_period():
    # Almost all stroma, no cells: the collagen texture alone, over a strip 3 texture periods long.
    spec = _quiet(spec_from_dict({
        "name": "stroma", "seed": 21, "width_px": 4096, "height_px": 4096,
        "tissue": {"coverage": 0.9, "roughness": 0.1}, "tumour": {"fraction_of_tissue": 0.0},
        "inflammation": {"fraction_of_tissue": 0.0, "scattered_per_mm2": 0.0},
        "stroma": {"fibroblast_density_per_mm2": 0.0},
    }))
    ph = build_phantom(spec)
    x0, y0, w, h = 500, 1950, 3100, 192
    gx, gy = np.meshgrid(np.arange(x0, x0 + w, 50), np.arange(y0, y0 + h, 32))
    assert (ph.layout.labels_at(gx.ravel(), gy.ravel()) == STROMA).all()
    g = ph.render_he(x0, y0, w, h)[..., 1].astype(np.float64)
    g -= g.mean(axis=1, keepdims=True)

    def corr(lag: int) -> float:
        a, b = g[:, :-lag], g[:, lag:]
        return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))

    period = 1024  # px: 256 µm at 0.25 µm/px, the period of the texture banks
    at = corr(period)
    around = np.array([corr(period + d) for d in (-160, -120, -80, -40, 40, 80, 120, 160)])
    assert at < 0.15, f"autocorrelation {at:.3f} at the texture period"
    assert at < around.mean() + 4 * around.std() + 0.03, (at, around)


def test_nuclear_size_spread_follows_pleomorphism():
    def areas(pleo: float) -> list[float]:
        spec = load_spec(PRESETS / "demo_small.yaml")
        spec = dataclasses.replace(spec, tumour=dataclasses.replace(spec.tumour, pleomorphism=pleo))
        bank = SpriteBank(spec)
        return [float((bank.sprite(SPINDLE, s, 1, 0.3).shape.astype(np.float32) > 0.5).sum()) * spec.mpp**2
                for s in range(N_SIZE)]

    low, high = areas(0.0), areas(0.6)
    assert all(a < b for a, b in zip(high, high[1:]))  # bins are ordered by size
    assert high[-1] / high[0] > 1.5 * (low[-1] / low[0])  # more pleomorphic: a wider spread
    length = 2 * np.sqrt(np.array(high) / np.pi * 13.0 / 3.4)  # ellipse of the spec's aspect ratio
    assert length.min() >= 5 and length.max() <= 16, length  # realistic nuclear sizes (µm)


def test_nuclei_have_chromatin_texture_and_vary_in_outline(tmp_path):
    ph = build_phantom(_quiet(replace_size(load_spec(PRESETS / "demo_small.yaml"), 4096, 4096)))
    c = ph.cells
    bank = ph.renderer.bank
    idx = np.nonzero((c.kind == SPINDLE) & (c.stretch == 1.0))[0][:40]
    cvs, outlines = [], set()
    for i in idx:
        s = bank.sprite(int(c.kind[i]), int(c.size[i]), int(c.variant[i]), float(c.angle[i]), float(c.stretch[i]))
        x0, y0 = int(np.floor(c.x[i])) - s.half, int(np.floor(c.y[i])) - s.half
        h_od = deconvolve(ph.render_he(x0, y0, 2 * s.half + 1, 2 * s.half + 1))[..., 0]
        core = s.shape.astype(np.float32) > 0.95
        if core.sum() < 60:
            continue
        v = h_od[core]
        cvs.append(v.std() / v.mean())
        outlines.add((s.shape.astype(np.float32) > 0.5).tobytes())
    assert len(cvs) >= 20
    # Granular chromatin: H OD varies inside a nucleus (a flat fill would give ~0 after no sensor noise).
    assert np.median(cvs) > 0.08, np.median(cvs)
    assert len(outlines) >= 10  # outlines differ from cell to cell


def test_ihc_artefacts_are_on_the_ihc_slide_and_in_its_truth():
    spec = _quiet(replace_size(load_spec(PRESETS / "artefacts.yaml"), 6000, 6000))
    ph = build_phantom(spec)
    gj = geojson(ph, "ihc")
    by = {}
    for f in gj["features"]:
        by.setdefault(f["properties"]["classification"]["name"], []).append(shapely.geometry.shape(f["geometry"]))
    for name in ("Pen", "Blur", "Fold"):
        assert name in by, f"{name} missing from the IHC truth"
    polys = ph.layout.polygons
    # The IHC slide's artefacts are its own, not a copy of the H&E ones.
    assert not by["Pen"][0].equals(polys["Pen"])
    assert by["Pen"][0].equals(shapely.set_precision(polys["IHC pen"], 0.01))
    pen = polys["IHC pen"].buffer(-20).difference(polys["Tissue"].buffer(50))
    assert not pen.is_empty
    p = pen.representative_point()
    box = (int(p.x) - 16, int(p.y) - 16, 32, 32)
    ink = ph.render_ihc(*box).reshape(-1, 3).astype(float).mean(0)
    glass = ph.render_he(*box).reshape(-1, 3).astype(float).mean(0)
    assert ink.mean() < glass.mean() - 40, (ink, glass)  # ink on the IHC slide, bare glass on the H&E
    # Out of focus on the IHC slide inside its Blur polygon: less pixel-to-pixel detail than without.
    q = polys["IHC blur"].buffer(-100).intersection(polys["Tissue"].buffer(-100)).representative_point()
    box = (int(q.x) - 64, int(q.y) - 64, 128, 128)
    sharp = build_phantom(dataclasses.replace(spec, artefacts=dataclasses.replace(spec.artefacts, ihc_blur_patches=0)))
    detail = lambda a: np.abs(np.diff(a.astype(float)[..., 2], axis=1)).mean()  # noqa: E731
    assert detail(ph.render_ihc(*box)) < 0.5 * detail(sharp.render_ihc(*box))
    # No IHC artefact asked for: none in the IHC truth.
    plain = build_phantom(replace_size(load_spec(PRESETS / "demo_small.yaml"), 2048, 2048))
    names = {f["properties"]["classification"]["name"] for f in geojson(plain, "ihc")["features"]}
    assert not names & {"Pen", "Blur", "Fold"}
