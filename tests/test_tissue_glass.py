"""Tissue on any glass (issue 17): grey, tinted and vignetted glass, crops that are all tissue, QC flags."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from histo.tissue import TissueMask, tissue_fraction_warning, tissue_mask


def _scene(glass=(240, 240, 240), vignette=0.0, tissue_frac=0.5, n=400, pale=False, seed=0):
    """Glass (possibly grey, tinted, vignetted) with textured tissue on the left `tissue_frac` of it."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    light = np.array(glass, np.float32)[None, None, :] * np.ones((n, n, 1), np.float32)
    if vignette:
        r = np.hypot(xx - n / 2, yy - n / 2) / (n / 2 * 1.414)
        light = light * (1 - vignette * r[..., None] ** 2)
    img = light + rng.normal(0, 1.5, (n, n, 3))
    truth = xx < n * tissue_frac
    tex = rng.random((n // 4 + 1, n // 4 + 1)).repeat(4, 0).repeat(4, 1)[:n, :n]
    base = np.array((200, 180, 170) if pale else (190, 120, 160), np.float32)
    tissue = base - 30 * tex[..., None] * np.array([0.6, 1, 0.7])
    nuclei = ndi.binary_dilation(rng.random((n, n)) < 0.01, iterations=2)
    tissue[nuclei] = (120, 110, 150)
    tissue = tissue * (light / 240.0)  # the scanner's light dims the tissue as it dims the glass
    img[truth] = tissue[truth]
    return img.clip(0, 255).astype(np.uint8), truth


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.mark.parametrize("kw", [
    {"glass": (200, 200, 200)},  # Olympus-like grey glass: it used to be all "tissue"
    {"glass": (190, 190, 196)},
    {"glass": (236, 224, 246)},  # tinted
    {"vignette": 0.3},
    {"glass": (205, 205, 205), "vignette": 0.25},
    {"glass": (200, 200, 200), "pale": True},
])
def test_tissue_is_found_on_grey_tinted_and_vignetted_glass(kw):
    img, truth = _scene(**kw)
    assert _iou(tissue_mask(img, 8.0), truth) > 0.95


@pytest.mark.parametrize("kw", [{"glass": (195, 195, 195), "vignette": 0.2}, {"glass": (205, 205, 210)}])
def test_empty_grey_glass_is_no_tissue(kw):
    img, _ = _scene(tissue_frac=0.0, **kw)
    assert tissue_mask(img, 8.0).mean() < 0.01


@pytest.mark.parametrize("pale", [False, True])
def test_crop_that_is_all_tissue_is_all_tissue(pale):
    img, _ = _scene(tissue_frac=1.0, pale=pale)
    assert tissue_mask(img, 8.0).mean() > 0.97


def _real(real_data: Path, rel: str) -> np.ndarray:
    return np.asarray(Image.open(real_data / rel).convert("RGB"))


@pytest.mark.real_data
@pytest.mark.parametrize("rel", ["ihc/test_ihc_6_2.png", "ihc/test_ihc_22_2.png"])
def test_real_ki67_crop_on_grey_glass(real_data, rel):
    """A real Ki67 crop (all tissue) on a grey-glass scan: alone it is all tissue; pasted on grey glass the
    mask is the crop, not the glass and not a few dark nuclei."""
    tile = _real(real_data, rel).astype(np.float32) * (200 / 240)  # grey scanner light
    assert tissue_mask(tile.round().astype(np.uint8), 0.5).mean() > 0.9
    rng = np.random.default_rng(1)
    canvas = (200 + rng.normal(0, 1.5, (1024, 1024, 3))).astype(np.float32)
    canvas[256:768, 256:768] = tile
    truth = np.zeros((1024, 1024), bool)
    truth[256:768, 256:768] = True
    mask = tissue_mask(canvas.clip(0, 255).round().astype(np.uint8), 0.5)
    assert mask[truth].mean() > 0.75  # the pale parts of the crop are within ~0.05 OD of this glass
    assert mask[~truth].mean() < 0.02  # the grey glass is not tissue (it all was, before)


def test_implausible_tissue_fraction_is_flagged_for_whole_slides():
    whole = TissueMask(np.ones((1000, 1000), bool), 8.0, 32.0, (32000, 32000))  # 64 mm², all "tissue"
    assert "implausible tissue fraction 100%" in tissue_fraction_warning(whole)
    speck = np.zeros((1000, 1000), bool)
    speck[:2, :2] = True
    assert "implausible tissue area" in tissue_fraction_warning(TissueMask(speck, 8.0, 32.0, (32000, 32000)))
    half = np.zeros((1000, 1000), bool)
    half[:, :500] = True
    assert tissue_fraction_warning(TissueMask(half, 8.0, 32.0, (32000, 32000))) == ""
    crop = TissueMask(np.ones((100, 100), bool), 8.0, 32.0, (3200, 3200))  # 0.64 mm² crop: may be all tissue
    assert tissue_fraction_warning(crop) == ""
