"""Necrotic tiles as confluent regions: a hysteresis threshold on p_necrosis and a minimum region area.

Tumour necrosis is a confluent area, and a tile classifier sees it as a block of neighbouring tiles.
Scored tile by tile at one threshold it errs both ways: tiles at the ragged edge of a necrotic zone
(part necrosis, part viable tumour) fall just under the threshold and the zone is under-measured,
while single tiles of necrosis mimics (paucicellular hyalinised collagen, fibrin, crush) pass it and
add false necrosis that alone can flag a slide high grade. So (``tiles`` rules of the grading config):

- a tile with ``p_necrosis >= necrosis_min_p`` seeds a region;
- the region grows through 8-connected neighbouring tiles with ``p_necrosis >= necrosis_grow_p``;
- a region whose tissue area is below ``necrosis_min_region_mm2`` is dropped, unless it is at least
  ``necrosis_min_region_pct_of_tissue`` % of the slide's tissue (in a small biopsy a small focus of
  necrosis is still a real part of it).

``necrosis_grow_p = necrosis_min_p`` and ``necrosis_min_region_mm2 = 0`` give the plain per-tile rule.
"""

from __future__ import annotations

import numpy as np


def _grid_index(pos: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Integer grid index of tile origins: the step is the smallest spacing between distinct origins
    (the tiling stride), or the tile size when there is a single column or row."""
    u = np.unique(pos)
    d = np.diff(u)
    step = float(d[d > 0].min()) if d.size and (d > 0).any() else float(np.median(size))
    return np.rint((pos - u[0]) / max(step, 1e-9)).astype(np.int64)


def necrotic_tiles(x: np.ndarray, y: np.ndarray, w: np.ndarray, h: np.ndarray, p_necrosis: np.ndarray,
                   tissue_mm2: np.ndarray, min_p: float, grow_p: float, min_region_mm2: float,
                   min_region_pct_of_tissue: float = 5.0) -> np.ndarray:
    """Boolean mask of tiles in necrotic regions (see the module docstring); inputs are per-tile arrays."""
    p = np.asarray(p_necrosis, np.float64)
    n = p.size
    if n == 0:
        return np.zeros(0, bool)
    cand = p >= min(grow_p, min_p)
    if not cand.any():
        return np.zeros(n, bool)
    col = _grid_index(np.asarray(x, np.float64), np.asarray(w, np.float64))
    row = _grid_index(np.asarray(y, np.float64), np.asarray(h, np.float64))
    mask_grid = np.zeros((int(row.max()) + 1, int(col.max()) + 1), bool)
    mask_grid[row[cand], col[cand]] = True
    comp = _components(mask_grid)
    lab = comp[row, col]  # region of each tile (-1: not a candidate)
    n_lab = int(comp.max()) + 1
    ok = lab >= 0
    seeded = np.zeros(n_lab, bool)
    seeded[lab[ok & (p >= min_p)]] = True
    area = np.bincount(lab[ok], weights=np.asarray(tissue_mm2, np.float64)[ok], minlength=n_lab)
    tissue = np.asarray(tissue_mm2, np.float64)
    floor = min(min_region_mm2, min_region_pct_of_tissue / 100.0 * float(tissue.sum()))
    keep = seeded & (area >= floor - 1e-12)  # a region of exactly the floor area is kept
    return ok & keep[np.where(ok, lab, 0)]


def _components(mask: np.ndarray) -> np.ndarray:
    """8-connected components of a boolean grid: ids 0..k-1 (-1 outside), numpy only (histo.aggregate
    stays free of scipy). Min-label propagation with pointer jumping: each round takes the smallest
    label among a cell's neighbours, then every label follows the chain to its root."""
    h, w = mask.shape
    big = np.int64(h * w)
    lab = np.where(mask, np.arange(h * w, dtype=np.int64).reshape(h, w), big)
    while True:
        pad = np.pad(lab, 1, constant_values=big)
        m = lab.copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                np.minimum(m, pad[dy:dy + h, dx:dx + w], out=m)
        m = np.where(mask, m, big)
        flat = np.append(m.ravel(), big)
        while True:  # pointer jumping: a label is a cell index; follow it to that cell's label
            nxt = flat[np.minimum(flat, big)]
            if np.array_equal(nxt, flat):
                break
            flat = nxt
        m = flat[:-1].reshape(h, w)
        if np.array_equal(m, lab):
            break
        lab = m
    out = np.full((h, w), -1, np.int64)
    roots, inv = np.unique(lab[mask], return_inverse=True)
    out[mask] = inv.ravel()
    return out
