"""Overlap-aware tile areas: a coverage raster in which each cell belongs to exactly one tile.

Tiles may overlap (stride < tile size). Summing whole boxes would count overlapped tissue twice, so
the union of the tile boxes is rasterised and every raster cell is owned by the covering tile whose
centre is nearest (ties: the earlier row). On a regular grid this gives interior tiles exactly their
stride cell and edge tiles their stride cell plus the uncovered margin, so the union is counted once.
A tile's owned area times its ``tissue_fraction`` is its tissue area (tissue is assumed evenly spread
over the tile box, the only assumption a per-tile fraction allows).

The cell size is half the greatest common divisor of the integer box edges (x, y relative to the
grid origin, w, h), which makes every area exact for grid-aligned tiles and puts the midlines
between regular-grid tile centres on cell boundaries; otherwise (or if the GCD is tiny) it is 1/16
of the smallest tile side, and areas are exact to within that quantisation at the
boundary of the union. The raster is capped at MAX_CELLS cells; the cell grows to fit the cap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_CELLS = 4_000_000
# pairs (tile, covered cell) handled at once while painting: bounds memory to ~100 MB
_PAIRS_PER_CHUNK = 2_000_000


@dataclass(frozen=True)
class CoverageRaster:
    """Ownership raster of the tile union in level-0 pixels."""

    origin_x: float
    origin_y: float
    cell_px: float
    owner: np.ndarray  # (rows, cols) int64 tile row index, -1 where no tile covers the cell
    exact: bool  # True when the cell divides every box edge (areas exact)

    @property
    def cell_area_px2(self) -> float:
        """Area of one raster cell in level-0 px²."""
        return self.cell_px * self.cell_px

    def owned_area_px2(self, n_tiles: int) -> np.ndarray:
        """Area owned by each tile (level-0 px²), length n_tiles."""
        owned = self.owner[self.owner >= 0]
        return np.bincount(owned, minlength=n_tiles).astype(np.float64) * self.cell_area_px2

    def owner_at(self, x_px: np.ndarray, y_px: np.ndarray) -> np.ndarray:
        """Owning tile row index at level-0 pixel positions; -1 outside every tile."""
        x_px = np.asarray(x_px, dtype=np.float64)
        y_px = np.asarray(y_px, dtype=np.float64)
        rows, cols = self.owner.shape
        c = np.floor((x_px - self.origin_x) / self.cell_px).astype(np.int64)
        r = np.floor((y_px - self.origin_y) / self.cell_px).astype(np.int64)
        inside = (c >= 0) & (c < cols) & (r >= 0) & (r < rows)
        out = np.full(x_px.shape, -1, dtype=np.int64)
        out[inside] = self.owner[r[inside], c[inside]]
        return out

    def cell_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 pixel x and y of the cell centres along columns and rows."""
        rows, cols = self.owner.shape
        xs = self.origin_x + (np.arange(cols) + 0.5) * self.cell_px
        ys = self.origin_y + (np.arange(rows) + 0.5) * self.cell_px
        return xs, ys


def build_coverage(x: np.ndarray, y: np.ndarray, w: np.ndarray, h: np.ndarray) -> CoverageRaster:
    """Rasterise the union of tile boxes and give each cell to the nearest-centred covering tile."""
    n = len(x)
    if n == 0:
        return CoverageRaster(0.0, 0.0, 1.0, np.full((0, 0), -1, dtype=np.int64), True)
    x0, y0 = float(x.min()), float(y.min())
    width = float((x + w).max()) - x0
    height = float((y + h).max()) - y0
    min_side = float(min(w.min(), h.min()))
    cell, exact = _cell_size(x - x0, y - y0, w, h, min_side)
    if math.ceil(width / cell) * math.ceil(height / cell) > MAX_CELLS:
        cell = math.sqrt(width * height / MAX_CELLS) * 1.01
        exact = False
    cols, rows = math.ceil(width / cell), math.ceil(height / cell)
    # a cell belongs to a box when its centre lies in [x, x+w): index range ceil(edge/cell - 1/2)
    c0 = np.ceil((x - x0) / cell - 0.5).astype(np.int64)
    c1 = np.ceil((x + w - x0) / cell - 0.5).astype(np.int64)
    r0 = np.ceil((y - y0) / cell - 0.5).astype(np.int64)
    r1 = np.ceil((y + h - y0) / cell - 0.5).astype(np.int64)
    c0, r0 = np.clip(c0, 0, cols), np.clip(r0, 0, rows)
    c1, r1 = np.clip(c1, c0, cols), np.clip(r1, r0, rows)
    ncols, nrows = c1 - c0, r1 - r0
    counts = ncols * nrows
    cx, cy = x + w / 2.0, y + h / 2.0

    best = np.full(rows * cols, np.inf)
    owner = np.full(rows * cols, -1, dtype=np.int64)
    start = 0
    while start < n:
        # grow the chunk until it holds about _PAIRS_PER_CHUNK (tile, cell) pairs
        cum = np.cumsum(counts[start:])
        stop = start + max(1, int(np.searchsorted(cum, _PAIRS_PER_CHUNK, side="right")))
        _paint(slice(start, stop), c0, r0, ncols, counts, cx, cy, x0, y0, cell, cols, best, owner)
        start = stop
    return CoverageRaster(x0, y0, cell, owner.reshape(rows, cols), exact)


def _cell_size(dx: np.ndarray, dy: np.ndarray, w: np.ndarray, h: np.ndarray, min_side: float) -> tuple[float, bool]:
    fallback = max(min_side / 16.0, 1e-9)
    edges = np.concatenate([dx, dy, w, h])
    if not np.all(edges == np.round(edges)):
        return fallback, False
    # half the GCD: on a regular grid the midlines between tile centres then fall on cell
    # boundaries, so no cell centre is equidistant from two tiles and ownership is symmetric
    half_g = int(np.gcd.reduce(np.round(edges).astype(np.int64))) / 2.0
    if half_g >= fallback:
        return half_g, True
    return fallback, False


def _paint(sel: slice, c0, r0, ncols, counts, cx, cy, x0, y0, cell, cols, best, owner) -> None:
    idx = np.arange(sel.start, sel.stop)
    cnt = counts[idx]
    total = int(cnt.sum())
    if total == 0:
        return
    tile = np.repeat(idx, cnt)
    # position of each pair within its tile's block of cells
    local = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    nc = ncols[tile]
    col = c0[tile] + local % nc
    row = r0[tile] + local // nc
    d2 = (x0 + (col + 0.5) * cell - cx[tile]) ** 2 + (y0 + (row + 0.5) * cell - cy[tile]) ** 2
    flat = row * cols + col
    # per cell, the nearest tile of this chunk (stable: the earlier row wins ties)
    order = np.lexsort((tile, d2, flat))
    flat, d2, tile = flat[order], d2[order], tile[order]
    first = np.ones(len(flat), dtype=bool)
    first[1:] = flat[1:] != flat[:-1]
    flat, d2, tile = flat[first], d2[first], tile[first]
    # strict < keeps tiles of earlier chunks on ties, so ties always go to the earlier row
    better = d2 < best[flat]
    best[flat[better]] = d2[better]
    owner[flat[better]] = tile[better]
