"""Matching detected cells to ground-truth nuclei (real masks or phantom labels) for evaluation."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from histo.errors import HistoError


def nuclei_from_colour_mask(
    mask_rgb: np.ndarray,
    positive_rgb: tuple[int, int, int] = (255, 0, 0),
    negative_rgb: tuple[int, int, int] = (0, 0, 255),
    min_area_px: int = 20,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ground-truth nuclei from a colour-coded mask: (int32 labels, bool positive per label, (x, y) centroids).

    Each connected region of exactly ``positive_rgb`` / ``negative_rgb`` is one nucleus (DeepLIIF masks:
    red positive, blue negative, green boundaries between them); regions under ``min_area_px`` are specks.
    """
    m = np.asarray(mask_rgb)
    if m.ndim != 3 or m.shape[2] < 3:
        raise HistoError(f"expected an (H, W, 3) colour mask, got shape {m.shape}")
    m = m[..., :3]
    labels = np.zeros(m.shape[:2], np.int32)
    positive: list[bool] = []
    for colour, pos in ((positive_rgb, True), (negative_rgb, False)):
        lab, n = ndi.label(np.all(m == np.asarray(colour, m.dtype), axis=-1))
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        ok = sizes >= min_area_px
        ok[0] = False
        lut = np.zeros(n + 1, np.int32)
        k = int(ok.sum())
        lut[ok] = np.arange(len(positive) + 1, len(positive) + k + 1, dtype=np.int32)
        labels = np.where(lut[lab] > 0, lut[lab], labels)
        positive += [pos] * k
    n = len(positive)
    if n == 0:
        return labels, np.zeros(0, bool), np.zeros((0, 2))
    com = np.array(ndi.center_of_mass(labels > 0, labels, np.arange(1, n + 1)))  # (y, x)
    return labels, np.array(positive, bool), com[:, ::-1].copy()


def match_cells(
    det_xy: np.ndarray, gt_labels: np.ndarray, gt_xy: np.ndarray, radius_px: float, grow_px: int = 0
) -> list[tuple[int, int]]:
    """One-to-one (detection index, GT index) pairs.

    A detection whose centroid lies inside a GT nucleus (grown by ``grow_px`` to cover its drawn
    boundary) pairs with it first; otherwise with the nearest unpaired GT centroid within
    ``radius_px``. Pairs are taken greedily, inside-first then by distance, so each side is used once.
    """
    det_xy = np.asarray(det_xy, dtype=np.float64).reshape(-1, 2)
    gt_xy = np.asarray(gt_xy, dtype=np.float64).reshape(-1, 2)
    grown = ndi.grey_dilation(gt_labels, size=(2 * grow_px + 1,) * 2) if grow_px > 0 else gt_labels
    grown = np.where(gt_labels > 0, gt_labels, grown)
    h, w = gt_labels.shape
    cand: list[tuple[int, float, int, int]] = []  # (0 = centroid inside the GT nucleus, distance, det, gt)
    for i, (x, y) in enumerate(det_xy):
        if not len(gt_xy):
            break
        xi, yi = int(round(x)), int(round(y))
        inside = int(grown[yi, xi]) if (0 <= xi < w and 0 <= yi < h) else 0
        d = np.hypot(gt_xy[:, 0] - x, gt_xy[:, 1] - y)
        for j in np.flatnonzero(d <= radius_px):
            cand.append((0 if j + 1 == inside else 1, float(d[j]), i, int(j)))
        if inside and d[inside - 1] > radius_px:
            cand.append((0, float(d[inside - 1]), i, inside - 1))
    cand.sort()
    used_d: set[int] = set()
    used_g: set[int] = set()
    pairs = []
    for _, _, det, gt in cand:
        if det not in used_d and gt not in used_g:
            used_d.add(det)
            used_g.add(gt)
            pairs.append((det, gt))
    return pairs
