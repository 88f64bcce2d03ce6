"""The fast IHC cell-detection paths (OpenCV filters, label-based hole filling, one-sort statistics) give the
same results as the scipy / scikit-image operations they replace."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.morphology import disk
from skimage.segmentation import expand_labels, watershed

from histo.ihc import deconvolve, ruifrok_hdab
from histo.ihc.cells import _binary_opening, _fill_holes, _gaussian, _grey_opening, _split
from histo.ihc.compartment_stats import STATISTICS, from_order_bits, label_statistic, order_bits
from histo.ihc.compartments import compartment_stats
from histo.ihc.compartments import expand_labels as fast_expand_labels


def _blobs(shape=(97, 131), n=40, seed=0, r=(3, 7)) -> np.ndarray:
    """Random discs (some touching each other and the image edge)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    fg = np.zeros(shape, bool)
    for _ in range(n):
        cy, cx = rng.uniform(-3, shape[0] + 3), rng.uniform(-3, shape[1] + 3)
        fg |= (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(*r) ** 2
    return fg


def test_gaussian_matches_scipy():
    img = np.random.default_rng(1).random((61, 83)).astype(np.float32)
    for sigma in (0.5, 1.0, 2.3):
        ref = ndi.gaussian_filter(img, sigma)
        assert np.abs(_gaussian(img, sigma) - ref).max() < 1e-5


@pytest.mark.parametrize("size", [3, 4, 20, 21])
def test_grey_opening_matches_scipy_for_odd_and_even_sizes(size):
    img = np.random.default_rng(size).random((70, 90)).astype(np.float32)
    assert np.array_equal(_grey_opening(img, size), ndi.grey_opening(img, size=(size, size)))


@pytest.mark.parametrize("radius", [1, 2])
def test_binary_opening_matches_scipy_at_the_border_too(radius):
    fg = _blobs(seed=radius) | (np.random.default_rng(radius).random((97, 131)) < 0.05)
    assert np.array_equal(_binary_opening(fg, radius), ndi.binary_opening(fg, structure=disk(radius)))


def test_fill_holes_finds_the_same_holes_as_scipy():
    fg = ~_blobs(n=60, seed=3, r=(2, 6))  # background discs: many holes, some open to the edge
    hl, nh = _fill_holes(fg)
    assert nh > 10
    assert np.array_equal(fg | (hl > 0), ndi.binary_fill_holes(fg))
    # each hole is one 4-connected component of the background
    ref, nref = ndi.label(ndi.binary_fill_holes(fg) & ~fg)
    assert nh == nref


def _labels_of(fg: np.ndarray) -> np.ndarray:
    return ndi.label(fg)[0].astype(np.int32)


@pytest.mark.parametrize("distance", [2, 4, 9])
def test_expand_labels_equals_skimage_when_no_two_nuclei_compete(distance):
    # Nuclei further apart than 2 * distance: no pixel lies within reach of two of them.
    nuc = np.zeros((120, 140), np.int32)
    rng = np.random.default_rng(distance)
    k = 0
    for cy in range(12, 120, 2 * distance + 14):
        for cx in range(12, 140, 2 * distance + 14):
            yy, xx = np.ogrid[:120, :140]
            k += 1
            nuc[(yy - cy) ** 2 + (xx - cx - rng.uniform(-1, 1)) ** 2 <= rng.uniform(2, 5) ** 2] = k
    assert np.array_equal(fast_expand_labels(nuc, distance), expand_labels(nuc, distance))


def test_expand_labels_on_packed_nuclei_differs_only_at_ties():
    nuc = _labels_of(_binary_opening(_blobs(n=120, seed=5, r=(2, 4)), 1))
    ref = expand_labels(nuc, 4)
    got = fast_expand_labels(nuc, 4)
    assert np.array_equal(got > 0, ref > 0)  # the same ring pixels (exact Euclidean cut)
    assert np.array_equal(got[nuc > 0], nuc[nuc > 0])
    ring = (ref > 0) & (nuc == 0)
    assert (got[ring] != ref[ring]).mean() < 0.01  # only near-equidistant pixels may go to the other nucleus
    assert np.array_equal(fast_expand_labels(np.zeros((5, 6), np.int32), 4), np.zeros((5, 6), np.int32))


def test_split_equals_one_watershed_of_the_whole_image():
    fg = _blobs(n=50, seed=7, r=(4, 8))
    got = _split(fg, 3, 0.5)
    # The previous implementation: scipy distance map, every component through one global watershed.
    cc, ncc = ndi.label(fg)
    dist = ndi.gaussian_filter(ndi.distance_transform_edt(fg), 0.5)
    peaks = peak_local_max(dist, min_distance=3, threshold_abs=1e-6, exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    ref = watershed(-dist, markers, mask=fg)
    assert got.max() > ncc  # some components were split
    assert np.array_equal(got > 0, fg)
    same = (got == ref)[fg].mean()
    assert same > 0.99  # float32 vs float64 distance maps may move a few tie pixels


def test_order_bits_sort_like_the_floats_and_round_trip():
    v = np.concatenate([np.random.default_rng(2).normal(0, 1, 500), [0.0, -1e-30, 1e-30, 3.4e38, -3.4e38]]).astype(np.float32)
    u = order_bits(v)
    assert u.min() >= 0 and u.max() < 2**32
    assert np.array_equal(np.sort(v), v[np.argsort(u, kind="stable")])
    assert np.array_equal(from_order_bits(u), v)


@pytest.mark.parametrize("statistic", STATISTICS)
def test_compartment_statistics_equal_label_statistic(statistic):
    rng = np.random.default_rng(4)
    n = 9
    cells = rng.integers(0, n + 1, size=(40, 50)).astype(np.int32)
    cells[cells == 5] = 0  # a label without pixels
    nuclei = np.where(rng.random(cells.shape) < 0.3, cells, 0)
    membrane = np.where((nuclei == 0) & (rng.random(cells.shape) < 0.4), cells, 0)
    dab = np.round(rng.normal(0.2, 0.3, cells.shape), 1).astype(np.float32)  # ties and negatives
    hema = rng.random(cells.shape).astype(np.float32)
    got = compartment_stats(nuclei, cells, membrane, dab, hema, n, statistic)
    comps = {"nucleus": nuclei, "cytoplasm": np.where(nuclei == 0, cells, 0), "membrane": membrane, "cell": cells}
    for name, img in comps.items():
        ref, cnt = label_statistic(dab, img, n, statistic)
        ref_h, _ = label_statistic(hema, img, n, "mean")
        d, h, c = got[name]
        assert np.array_equal(c, cnt)
        assert np.allclose(d, ref, rtol=1e-9, atol=1e-12, equal_nan=True)
        assert np.allclose(h, ref_h, equal_nan=True)
        assert np.isnan(d[4]) and np.isnan(h[4]) and c[4] == 0


def test_uint8_deconvolution_equals_the_float_path():
    rgb = np.random.default_rng(6).integers(0, 256, (37, 41, 3)).astype(np.uint8)
    bg = (241.0, 238.0, 243.0)
    fast = deconvolve(rgb, ruifrok_hdab(), bg)
    ref = deconvolve(rgb.astype(np.float32), ruifrok_hdab(), bg)
    for f in ("hematoxylin", "dab", "residual", "od_sum", "od_max"):
        a, b = getattr(fast, f), getattr(ref, f)
        assert a.dtype == np.float32 and a.shape == rgb.shape[:2] and a.flags["C_CONTIGUOUS"]
        assert np.abs(a - b).max() < 1e-5, f
    # non-contiguous and RGBA input
    view = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])[:, ::2]
    assert np.allclose(deconvolve(view, ruifrok_hdab(), bg).dab, fast.dab[:, ::2], atol=1e-6)
