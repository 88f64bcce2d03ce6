"""Cell detection on deconvolved IHC images: nuclei, then cytoplasm and membrane compartments around them.

Nuclei are found on a "nuclear" OD channel: hematoxylin plus DAB by default, because in nuclear
markers (Ki67, ER) a strongly positive nucleus is brown and weak in hematoxylin — detecting on
hematoxylin alone misses exactly the positives (measured on the real Ki67 tiles: see
``scripts/eval_ihc.py``). For cytoplasmic and membranous markers the panel detects on hematoxylin
alone so that brown cytoplasm is not taken for nuclei. Touching nuclei are split by a watershed on
the distance transform; all sizes are in µm and converted with the caller's explicit ``mpp``.

Speed: a slide is ~10^9 pixels, so the per-pixel filters (Gaussian, top-hat, binary opening, distance
transforms) use OpenCV's implementations, several times faster than scipy.ndimage's and equal to them
to float32 rounding (the same kernels and borders; checked in tests/test_ihc_speed.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.morphology import disk
from skimage.segmentation import watershed

from histo.errors import HistoError, MppError
from histo.ihc.compartment_stats import check_statistic, from_order_bits, order_bits
from histo.ihc.compartments import (
    SHARED_MEMBRANE,
    compartment_stats,
    exclude_shared_membrane,
    expand_labels,
    membrane_band,
)
from histo.ihc.deconvolution import StainMaps
from histo.inputs import mpp_is_plausible, mpp_range_text

NuclearChannel = Literal["hematoxylin+dab", "hematoxylin", "od_sum"]
NUCLEAR_CHANNELS = ("hematoxylin+dab", "hematoxylin", "od_sum")
COMPARTMENTS = ("nucleus", "cytoplasm", "membrane", "cell")


@dataclass(frozen=True)
class CellParams:
    """Nucleus segmentation and compartment settings; lengths in µm, areas in µm², intensities in OD."""

    nuclear_channel: NuclearChannel = "hematoxylin+dab"
    smooth_um: float = 0.5  # Gaussian sigma before thresholding: removes chromatin texture, keeps shape
    background_um: float = 10.0  # width of the top-hat that removes haze wider than a nucleus (0 = off)
    otsu_ceiling_od: float = 1.0  # values clipped here for Otsu, so dark positives do not drag it up
    # Nuclear OD above local background that makes a pixel nucleus. A fixed OD, not Otsu, by default:
    # on the real Ki67 tiles Otsu splits brown positives from everything else and loses every pale
    # negative nucleus (recall 0.07 on 22_2); 0.04-0.06 measured best there (scripts/eval_ihc.py).
    threshold_od: float | None = 0.06  # None = Otsu on the smoothed, top-hatted channel
    min_threshold_od: float = 0.04  # floor under Otsu: a tile of pure glass must not yield "nuclei"
    min_area_um2: float = 8.0
    max_area_um2: float = 250.0
    split_min_distance_um: float = 1.5  # two seeds closer than this are one nucleus
    clump_rounds: int = 3  # re-threshold pieces above max_area_um2 this many times
    clump_step: float = 1.5  # factor on the threshold per round
    edge_fraction: float = 0.5  # nucleus edge at this fraction of its own intensity (0 = threshold edge)
    cytoplasm_um: float = 2.0  # ring width around each nucleus
    membrane_um: float = 0.75  # outer part of that ring taken as membrane
    # Membrane pixels within cytoplasm_um + membrane_um of another nucleus hold that neighbour's membrane
    # too: "exclude" measures each cell on the rest of its band (histo.ihc.compartments), "include" on all.
    shared_membrane: Literal["exclude", "include"] = "exclude"  # SHARED_MEMBRANE
    dab_statistic: Literal["mean", "p50", "p75", "p90"] = "mean"  # STATISTICS  # per-compartment DAB value: mean | p50 | p75 | p90 (histo.ihc.compartment_stats)

    def validate(self) -> None:
        """Raise HistoError naming the first invalid setting."""
        if self.nuclear_channel not in NUCLEAR_CHANNELS:
            raise HistoError(f"nuclear_channel {self.nuclear_channel!r} is not one of {NUCLEAR_CHANNELS}")
        for name in ("smooth_um", "background_um", "otsu_ceiling_od", "min_area_um2", "max_area_um2",
                     "split_min_distance_um", "cytoplasm_um", "min_threshold_od"):
            v = getattr(self, name)
            if not np.isfinite(v) or v < 0:
                raise HistoError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.threshold_od is not None and not (np.isfinite(self.threshold_od) and self.threshold_od > 0):
            raise HistoError(f"threshold_od must be a number > 0 or None (Otsu), got {self.threshold_od!r}")
        if not isinstance(self.clump_rounds, int) or self.clump_rounds < 0:
            raise HistoError(f"clump_rounds must be an integer >= 0, got {self.clump_rounds!r}")
        if not 0.0 <= self.edge_fraction < 1.0:
            raise HistoError(f"edge_fraction must lie in [0, 1), got {self.edge_fraction!r}")
        if not np.isfinite(self.clump_step) or self.clump_step <= 1.0:
            raise HistoError(f"clump_step must be > 1, got {self.clump_step!r}")
        if self.max_area_um2 <= self.min_area_um2:
            raise HistoError(f"max_area_um2 ({self.max_area_um2}) must exceed min_area_um2 ({self.min_area_um2})")
        if not 0 <= self.membrane_um <= self.cytoplasm_um:
            raise HistoError(f"membrane_um ({self.membrane_um}) must lie in [0, cytoplasm_um={self.cytoplasm_um}]")
        check_statistic(self.dab_statistic)
        if self.shared_membrane not in SHARED_MEMBRANE:
            raise HistoError(f"shared_membrane {self.shared_membrane!r} is not one of {SHARED_MEMBRANE}")


@dataclass
class CellDetection:
    """Label images of one tile and its per-cell table (one row per nucleus label, ``label`` column)."""

    nuclei: np.ndarray  # (H, W) int32, 0 = none
    cells: np.ndarray  # (H, W) int32, nucleus + cytoplasm ring, same label as its nucleus
    membrane: np.ndarray  # (H, W) int32, outer ring of each cell (label; its private part, see shared_membrane), 0 elsewhere
    table: pd.DataFrame
    mpp: float
    params: CellParams = field(default_factory=CellParams)
    threshold_od: float = float("nan")  # the nuclear-channel threshold actually used


def _check_mpp(mpp: float) -> float:
    try:
        m = float(mpp)
    except (TypeError, ValueError):
        raise MppError(f"mpp must be a number of µm per pixel, got {mpp!r}") from None
    if not mpp_is_plausible(m):
        raise MppError(f"mpp {mpp!r} µm/px is implausible for a cell-level IHC image (expected {mpp_range_text()})")
    return m


def nuclear_channel(maps: StainMaps, channel: str = "hematoxylin+dab") -> np.ndarray:
    """The OD map nuclei are segmented on (float32): H + DAB, H alone, or summed RGB OD."""
    if channel == "hematoxylin+dab":
        # Negative amounts are noise; clipping before the sum keeps one stain from cancelling the other.
        return np.maximum(maps.hematoxylin, 0) + np.maximum(maps.dab, 0)
    if channel == "hematoxylin":
        return np.maximum(maps.hematoxylin, 0)
    if channel == "od_sum":
        return maps.od_sum.astype(np.float32, copy=True)
    raise HistoError(f"nuclear_channel {channel!r} is not one of {NUCLEAR_CHANNELS}")


def _gaussian(img: np.ndarray, sigma: float) -> np.ndarray:
    """``ndi.gaussian_filter(img, sigma)`` (mode 'reflect', truncate 4) in float32, by OpenCV's separable blur."""
    r = int(4.0 * sigma + 0.5)
    src = np.ascontiguousarray(img, dtype=np.float32)
    return cv2.GaussianBlur(src, (2 * r + 1, 2 * r + 1), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)


def _grey_opening(img: np.ndarray, size_px: int) -> np.ndarray:
    """``ndi.grey_opening(img, size=(size_px, size_px))`` in float32 by OpenCV (same result, several times faster).

    scipy mirrors the window of the dilation: for an even size the erosion window is centred at
    ``size // 2`` and the dilation window at ``(size - 1) // 2``. A min/max filter ignores the border
    with mode 'reflect' as with OpenCV's replicate.
    """
    k = np.ones((size_px, size_px), np.uint8)
    a, b = size_px // 2, (size_px - 1) // 2
    er = cv2.erode(np.ascontiguousarray(img, dtype=np.float32), k, anchor=(a, a), borderType=cv2.BORDER_REPLICATE)
    return cv2.dilate(er, k, anchor=(b, b), borderType=cv2.BORDER_REPLICATE)


def _fill_holes(fg: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels of the holes of ``fg`` (4-connected background not reaching the image edge) and their count.

    The same holes as ``ndi.binary_fill_holes`` finds, from one labelling instead of its iterated
    dilation (which took a tenth of a tile's time).
    """
    bl, nb = ndi.label(~fg)
    if nb == 0:
        return bl, 0
    hole = np.ones(nb + 1, bool)
    hole[0] = False
    hole[bl[0]] = hole[bl[-1]] = hole[bl[:, 0]] = hole[bl[:, -1]] = False
    lut = np.zeros(nb + 1, np.int32)
    lut[hole] = np.arange(1, int(hole.sum()) + 1, dtype=np.int32)
    return lut[bl], int(hole.sum())


def _binary_opening(fg: np.ndarray, radius_px: int) -> np.ndarray:
    """``ndi.binary_opening(fg, disk(radius_px))`` (pixels outside the image count as background)."""
    k = disk(radius_px).astype(np.uint8)
    u8 = np.ascontiguousarray(fg).view(np.uint8)
    er = cv2.erode(u8, k, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.dilate(er, k, borderType=cv2.BORDER_CONSTANT, borderValue=0).view(bool)


def _foreground(sm: np.ndarray, t: float, m: float, max_hole_px: float) -> np.ndarray:
    """Pixels above ``t``, opened (removes specks and hairlines) with nucleus-sized holes filled."""
    fg = sm > t
    if not fg.any():
        return fg
    fg = _binary_opening(fg, max(int(round(0.5 / m)), 1))
    # Fill holes (pale nuclear centres) only up to a nucleus' size: a ring of nuclei around a gland
    # lumen must not become one giant blob.
    hl, nh = _fill_holes(fg)
    if nh:
        small = np.bincount(hl.ravel(), minlength=nh + 1) <= max_hole_px
        small[0] = False
        fg |= small[hl]
    return fg


def _split(fg: np.ndarray, min_d_px: int, m: float) -> np.ndarray:
    """Watershed of a foreground on its (smoothed) distance transform, one seed per local maximum."""
    cc, ncc = ndi.label(fg)
    if ncc == 0:
        return np.zeros(fg.shape, np.int32)
    # Smooth the distance map a little so ragged outlines do not seed spurious splits. (OpenCV's
    # DIST_MASK_PRECISE is the exact Euclidean transform, as scipy's, in float32.)
    dist = cv2.distanceTransform(np.ascontiguousarray(fg).view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    dist = _gaussian(dist, max(0.25 / m, 0.5))
    # One global peak search (not per label: skimage loops over labels in Python, which dominated the
    # time on dense tiles). A component whose peak was suppressed by a closer neighbour's still gets a
    # seed below, so every component is kept.
    peaks = peak_local_max(dist, min_distance=min_d_px, threshold_abs=1e-6, exclude_border=False)
    flat_cc = cc.ravel()
    seed_px = np.ravel_multi_index(tuple(peaks.T), fg.shape) if len(peaks) else np.zeros(0, np.intp)
    # Every component gets at least one seed (flat blobs may have no strict local maximum).
    seeded = np.zeros(ncc + 1, bool)
    seeded[flat_cc[seed_px]] = True
    missing = np.flatnonzero(~seeded[1:]) + 1
    if missing.size:
        # The first maximum of each seedless component (as ndi.maximum_position, which sorts the whole
        # image and took a third of a dense tile's time): sort only those components' pixels.
        pix = np.flatnonzero((~seeded)[flat_cc] & (flat_cc > 0))
        labs = flat_cc[pix]
        order = np.lexsort((-dist.ravel()[pix], labs))
        first = np.concatenate([[True], labs[order][1:] != labs[order][:-1]])
        seed_px = np.concatenate([seed_px, pix[order[first]]])
    seed_val = np.arange(1, len(seed_px) + 1, dtype=np.int32)  # peaks first, then the added seeds
    seed_cc = flat_cc[seed_px]
    # A component with one seed is that seed's label as it stands: only components with several seeds
    # go through the watershed (on their bounding box), which floods each component on its own, so
    # the result is the same as one watershed of the whole tile.
    n_seeds = np.bincount(seed_cc, minlength=ncc + 1)
    single = n_seeds == 1
    lut = np.zeros(ncc + 1, np.int32)
    one = single[seed_cc]
    lut[seed_cc[one]] = seed_val[one]
    out = lut[cc]
    multi = n_seeds > 1
    if multi.any():
        mask = multi[cc]
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        markers = np.zeros(fg.shape, np.int32)
        markers.ravel()[seed_px[~one]] = seed_val[~one]
        mb = mask[box]
        ws = watershed(-dist[box], markers[box], mask=mb)
        sub = out[box]
        np.copyto(sub, ws.astype(np.int32, copy=False), where=mb)
    return out


def segment_nuclei(channel: np.ndarray, mpp: float, params: CellParams | None = None) -> tuple[np.ndarray, float]:
    """Label nuclei on a nuclear OD channel; returns (int32 labels 1..n, threshold used).

    Smooth, remove background haze (top-hat), threshold (fixed OD above local background, or Otsu),
    split touching nuclei by a distance-transform watershed, then drop pieces outside the µm² limits.
    A piece larger than ``max_area_um2`` is a clump of nuclei in stained haze: it is re-thresholded
    inside itself at ``clump_step`` times the threshold (up to ``clump_rounds`` times) before giving up.
    """
    p = params or CellParams()
    p.validate()
    m = _check_mpp(mpp)
    ch = np.asarray(channel, dtype=np.float32)
    if ch.ndim != 2:
        raise HistoError(f"nuclear channel must be 2-D, got shape {ch.shape}")
    sigma_px = p.smooth_um / m
    sm = _gaussian(ch, sigma_px) if sigma_px > 0.3 else ch
    bg_px = int(round(p.background_um / m))
    if bg_px >= 3:
        # White top-hat with a square (separable min/max filters, fast): keeps objects narrower than
        # background_um, removes a stained haze under packed nuclei that would merge them into one blob.
        sm = sm - _grey_opening(sm, bg_px)
    if p.threshold_od is not None:
        t = float(p.threshold_od)
    else:
        finite = np.minimum(sm[np.isfinite(sm)], p.otsu_ceiling_od)
        t = float(threshold_otsu(finite)) if finite.size and np.ptp(finite) > 0 else np.inf
        t = max(t, p.min_threshold_od)
    px_area = m * m
    max_px = p.max_area_um2 / px_area
    min_d = max(int(round(p.split_min_distance_um / m)), 1)
    out = np.zeros(ch.shape, np.int32)
    n_out = 0
    region: np.ndarray | None = None  # None = the whole image (first round)
    box = (slice(0, ch.shape[0]), slice(0, ch.shape[1]))
    level = t
    # Later rounds only look inside the clumps: work on their bounding box (plus a margin wider than the
    # opening and the distance-map smoothing) instead of the whole tile; the clumps are a small part of it.
    pad = max(int(round(0.5 / m)), 1) + 6
    for _round in range(p.clump_rounds + 1):
        fg = _foreground(sm[box], level, m, max_px)
        if region is not None:
            fg &= region[box]
        labels = _split(fg, min_d, m)
        areas = np.bincount(labels.ravel())
        keep = (areas * px_area >= p.min_area_um2) & (areas <= max_px)
        keep[0] = False
        lut = np.zeros(areas.size, np.int32)
        lut[keep] = np.arange(n_out + 1, n_out + int(keep.sum()) + 1, dtype=np.int32)
        new = lut[labels]
        sub = out[box]
        np.copyto(sub, new, where=new > 0)
        n_out += int(keep.sum())
        clump = areas > max_px
        clump[0] = False
        if not clump.any():
            break
        full = np.zeros(ch.shape, bool)
        full[box] = clump[labels]
        region = full
        rows = np.flatnonzero(region.any(axis=1))
        cols = np.flatnonzero(region.any(axis=0))
        box = (slice(max(rows[0] - pad, 0), min(rows[-1] + pad + 1, ch.shape[0])),
               slice(max(cols[0] - pad, 0), min(cols[-1] + pad + 1, ch.shape[1])))
        level *= p.clump_step
    if p.edge_fraction > 0 and n_out:
        out = _refine_edges(out, sm, n_out, p.edge_fraction, p.min_area_um2 / px_area)
    return out, t


def _refine_edges(labels: np.ndarray, sm: np.ndarray, n: int, fraction: float, min_px: float) -> np.ndarray:
    """Trim each nucleus to pixels above ``fraction`` of its own 95th-percentile intensity (a local half-max edge).

    The detection threshold is low so pale nuclei are found at all; for a dark nucleus that low level
    lies in the blur outside it, which would make nuclei too big and leak cytoplasm into them.
    """
    idx = np.arange(1, n + 1)
    p95 = np.zeros(n + 1, np.float32)
    # All percentiles in one sort by (label, value). One int64 key per pixel (label in the high word,
    # the float32 value's bits made order-preserving in the low word) sorts several times faster than
    # np.lexsort on the pair and gives the same order.
    sel = np.flatnonzero(labels.ravel())
    lab = labels.ravel()[sel].astype(np.int64)
    keys = np.sort((lab << 32) + order_bits(np.ascontiguousarray(sm, dtype=np.float32).ravel()[sel]))
    lab = keys >> 32
    starts = np.searchsorted(lab, idx)
    ends = np.searchsorted(lab, idx, side="right")
    pos = np.minimum(starts + ((ends - starts - 1) * 0.95).astype(np.int64), np.maximum(ends - 1, starts))
    pos = np.minimum(pos, max(keys.size - 1, 0))
    if keys.size:
        p95[1:] = np.where(ends > starts, from_order_bits(keys[pos] & 0xFFFFFFFF), 0)
    keep = (labels > 0) & (sm >= fraction * p95[labels])
    trimmed = np.where(keep, labels, 0)
    # Holes punched in a nucleus by chromatin texture go back to it.
    hl, nh = _fill_holes(trimmed > 0)
    filled = (trimmed > 0) | ((hl > 0) & (labels > 0)) if nh else trimmed > 0
    trimmed = np.where(filled, labels, 0)
    areas = np.bincount(trimmed.ravel(), minlength=n + 1)
    ok = areas >= min_px
    ok[0] = False
    lut = np.zeros(n + 1, np.int32)
    lut[ok] = np.arange(1, int(ok.sum()) + 1, dtype=np.int32)
    return lut[trimmed]


def detect_cells(
    maps: StainMaps,
    mpp: float,
    params: CellParams | None = None,
    tissue_mask: np.ndarray | None = None,
) -> CellDetection:
    """Segment nuclei, grow cytoplasm and membrane compartments, and measure H and DAB per compartment.

    The cytoplasm is a ring ``cytoplasm_um`` wide around each nucleus that never enters another
    nucleus or another cell's ring (rings meet half-way). ``tissue_mask`` (bool, same shape), when
    given, clips rings to tissue so glass does not dilute cytoplasmic means. Table columns: ``label,
    x_px, y_px`` (nucleus centroid), ``area_um2`` (nucleus), ``cell_area_um2``, and for each of
    nucleus/cytoplasm/membrane/cell ``dab_<c>`` (``params.dab_statistic`` of the compartment's DAB:
    mean, or a percentile), ``h_<c>`` (mean) — NaN where the compartment is empty — and ``n_px_<c>``.
    """
    p = params or CellParams()
    p.validate()
    m = _check_mpp(mpp)
    shape = maps.dab.shape
    if tissue_mask is not None:
        tissue_mask = np.asarray(tissue_mask)
        if tissue_mask.shape != shape or tissue_mask.dtype != bool:
            raise HistoError(f"tissue_mask must be a bool array of shape {shape}, got {tissue_mask.dtype} {tissue_mask.shape}")
    nuclei, t = segment_nuclei(nuclear_channel(maps, p.nuclear_channel), m, p)
    ring_px = int(round(p.cytoplasm_um / m))
    cells = expand_labels(nuclei, ring_px) if ring_px > 0 else nuclei.copy()
    if tissue_mask is not None:
        cells = np.where((nuclei > 0) | tissue_mask, cells, 0).astype(np.int32)
    membrane = membrane_band(cells, nuclei, int(round(p.membrane_um / m)))
    if p.shared_membrane == "exclude":
        membrane = exclude_shared_membrane(membrane, nuclei, int(round((p.cytoplasm_um + p.membrane_um) / m)))
    n = int(nuclei.max())
    table: dict[str, np.ndarray] = {"label": np.arange(1, n + 1, dtype=np.int32)}
    if n:
        ys, xs = np.nonzero(nuclei)
        lab = nuclei[ys, xs]
        cnt = np.bincount(lab, minlength=n + 1)[1:]
        table["x_px"] = np.bincount(lab, weights=xs, minlength=n + 1)[1:] / cnt
        table["y_px"] = np.bincount(lab, weights=ys, minlength=n + 1)[1:] / cnt
    else:
        table["x_px"] = np.zeros(0)
        table["y_px"] = np.zeros(0)
    means = compartment_stats(nuclei, cells, membrane, maps.dab, maps.hematoxylin, n, p.dab_statistic)
    for name in ("nucleus", "cytoplasm", "membrane", "cell"):
        dab, h, cnt = means[name]
        if name == "nucleus":
            table["area_um2"] = cnt * m * m
        if name == "cell":
            table["cell_area_um2"] = cnt * m * m
        table[f"dab_{name}"] = dab
        table[f"h_{name}"] = h
        table[f"n_px_{name}"] = cnt
    return CellDetection(
        nuclei=nuclei,
        cells=cells.astype(np.int32, copy=False),
        membrane=membrane,
        table=pd.DataFrame(table),
        mpp=m,
        params=p,
        threshold_od=t,
    )
