"""The mitotic hotspot: the placement of a fixed-area window (square or circle) holding most points.

The placements considered are every window whose centre lies over the region (the closed union of
the region's raster cells: a centre on the edge of a region cell counts as over it). The search is
exact: it returns the maximum count over all of them, not over a grid.

Why a finite candidate set suffices: for the points an optimal window holds, the centres that hold
all of them form R, the intersection of the windows centred on those points (a rectangle for squares,
an intersection of discs for circles). R meets the region K. Then either R lies inside K (R's corners,
or the point itself when R is a single disc, are in K), or K's part lies inside R (a vertex of K's
boundary is in R), or R crosses K's boundary (a point where a window boundary meets a raster grid line
on K's boundary is in R). So the best count among these candidates, kept to those over the region, is
the true maximum: window vertices (square corners or circle-circle intersections of point pairs, and
the points themselves), window boundaries on grid lines, and grid vertices on the region's boundary.
Counting uses a bucket grid as wide as the window, so each count touches at most 2x2 buckets.

Among placements holding the maximum, the window is finally moved towards the centroid of the points
it holds while that keeps the count and the centre over the region, so the one reported is centred on
the mitoses rather than on a boundary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_PAIRS_PER_CHUNK = 2_000_000
_RECENTRE_ROUNDS = 10
# candidates lie exactly on window and cell boundaries; this (in cells) keeps them despite rounding
_EDGE_TOL = 1e-9


@dataclass(frozen=True)
class Window:
    """Shape and size of the hotspot window, in µm."""

    shape: str  # 'square' | 'circle'
    area_um2: float

    @property
    def extent_um(self) -> float:
        """Side of the square, or diameter of the circle."""
        if self.shape == "square":
            return math.sqrt(self.area_um2)
        return 2.0 * math.sqrt(self.area_um2 / math.pi)

    def box_um(self, cx: float, cy: float) -> tuple[float, float, float, float]:
        """Bounding box (x0, y0, x1, y1) of the window centred at (cx, cy)."""
        half = self.extent_um / 2.0
        return (cx - half, cy - half, cx + half, cy + half)


@dataclass(frozen=True)
class HotspotResult:
    """Where the densest window sits and how many points it holds."""

    centre_x_um: float
    centre_y_um: float
    count: int


@dataclass(frozen=True)
class CellRegion:
    """A closed region made of the True cells of a raster; the grid and cell size in µm."""

    origin_x_um: float
    origin_y_um: float
    cell_um: float
    mask: np.ndarray  # (rows, cols) bool

    def contains(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """Whether each point lies in the closed region (on a region cell or on its edge)."""
        x = (np.asarray(x_um, dtype=np.float64) - self.origin_x_um) / self.cell_um
        y = (np.asarray(y_um, dtype=np.float64) - self.origin_y_um) / self.cell_um
        rows, cols = self.mask.shape
        out = np.zeros(x.shape, dtype=bool)
        for dx in (-_EDGE_TOL, _EDGE_TOL):
            c = np.floor(x + dx).astype(np.int64)
            for dy in (-_EDGE_TOL, _EDGE_TOL):
                r = np.floor(y + dy).astype(np.int64)
                ok = (c >= 0) & (c < cols) & (r >= 0) & (r < rows)
                out[ok] |= self.mask[r[ok], c[ok]]
        return out

    def boundary_vertices(self) -> tuple[np.ndarray, np.ndarray]:
        """Grid vertices (µm) on the region's boundary: where the four cells around differ."""
        m = np.pad(self.mask, 1)
        quad = m[:-1, :-1].astype(np.int8) + m[:-1, 1:] + m[1:, :-1] + m[1:, 1:]
        r, c = np.nonzero((quad > 0) & (quad < 4))
        return self.origin_x_um + c * self.cell_um, self.origin_y_um + r * self.cell_um

    def bounds_um(self) -> tuple[float, float, float, float] | None:
        """Bounding box (x0, y0, x1, y1) of the region's cells; None when it is empty."""
        rows, cols = np.nonzero(self.mask)
        if len(rows) == 0:
            return None
        s = self.cell_um
        return (self.origin_x_um + cols.min() * s, self.origin_y_um + rows.min() * s,
                self.origin_x_um + (cols.max() + 1) * s, self.origin_y_um + (rows.max() + 1) * s)


class PointCounter:
    """Counts points inside a window placed at many candidate centres."""

    def __init__(self, x_um: np.ndarray, y_um: np.ndarray, window: Window) -> None:
        """Bucket the points for fast window counts."""
        self.window = window
        self.x = np.asarray(x_um, dtype=np.float64)
        self.y = np.asarray(y_um, dtype=np.float64)
        self.size = window.extent_um
        self.bx0 = float(self.x.min()) if len(self.x) else 0.0
        self.by0 = float(self.y.min()) if len(self.y) else 0.0
        bx = np.floor((self.x - self.bx0) / self.size).astype(np.int64)
        by = np.floor((self.y - self.by0) / self.size).astype(np.int64)
        self.nbx = int(bx.max()) + 1 if len(bx) else 1
        self.nby = int(by.max()) + 1 if len(by) else 1
        bucket = by * self.nbx + bx
        self.order = np.argsort(bucket, kind="stable")
        self.starts = np.searchsorted(bucket[self.order], np.arange(self.nbx * self.nby + 1))

    def inside(self, cx: np.ndarray | float, cy: np.ndarray | float, px: np.ndarray, py: np.ndarray) -> np.ndarray:
        """Whether point (px, py) is in the window centred at (cx, cy); closed boundary."""
        # exact candidates put points on the boundary; the tolerance keeps them despite rounding
        half = self.size / 2.0 * (1.0 + 1e-12) + 1e-9
        if self.window.shape == "square":
            return (np.abs(px - cx) <= half) & (np.abs(py - cy) <= half)
        return (px - cx) ** 2 + (py - cy) ** 2 <= half * half

    def count(self, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
        """Number of points inside the window at each candidate centre."""
        cx = np.asarray(cx, dtype=np.float64)
        cy = np.asarray(cy, dtype=np.float64)
        out = np.zeros(len(cx), dtype=np.int64)
        if len(self.x) == 0 or len(cx) == 0:
            return out
        half = self.size / 2.0 * (1.0 + 1e-12) + 1e-9
        # lowest bucket the window can touch; with bucket width == window extent it spans <= 2 (the
        # tolerance can reach a third bucket by 1e-9 µm: scan up to 3 so boundary points are never lost)
        b0x = np.floor((cx - half - self.bx0) / self.size).astype(np.int64)
        b0y = np.floor((cy - half - self.by0) / self.size).astype(np.int64)
        b1x = np.floor((cx + half - self.bx0) / self.size).astype(np.int64)
        b1y = np.floor((cy + half - self.by0) / self.size).astype(np.int64)
        spans = []
        for ox in (0, 1, 2):
            for oy in (0, 1, 2):
                bx, by = b0x + ox, b0y + oy
                ok = (bx >= 0) & (bx < self.nbx) & (by >= 0) & (by < self.nby) & (bx <= b1x) & (by <= b1y)
                b = np.where(ok, by * self.nbx + bx, 0)
                s = np.where(ok, self.starts[b], 0)
                e = np.where(ok, self.starts[b + 1], 0)
                spans.append((s, e))
        n_pairs = np.sum([e - s for s, e in spans], axis=0)
        start = 0
        while start < len(cx):
            cum = np.cumsum(n_pairs[start:])
            stop = start + max(1, int(np.searchsorted(cum, _PAIRS_PER_CHUNK, side="right")))
            sel = slice(start, stop)
            for s, e in spans:
                cnt = (e[sel] - s[sel])
                total = int(cnt.sum())
                if total == 0:
                    continue
                cand = np.repeat(np.arange(start, stop), cnt)
                local = np.arange(total) - np.repeat(np.cumsum(cnt) - cnt, cnt)
                pts = self.order[np.repeat(s[sel], cnt) + local]
                hit = self.inside(cx[cand], cy[cand], self.x[pts], self.y[pts])
                out += np.bincount(cand[hit], minlength=len(cx))
            start = stop
        return out

    def members(self, cx: float, cy: float) -> np.ndarray:
        """Indices of the points inside the window centred at (cx, cy)."""
        return np.flatnonzero(self.inside(cx, cy, self.x, self.y))


def find_hotspot(x_um: np.ndarray, y_um: np.ndarray, window: Window, region: CellRegion) -> HotspotResult | None:
    """The placement, centred over the region, whose window holds most points (exact); None without points or region."""
    x = np.asarray(x_um, dtype=np.float64)
    y = np.asarray(y_um, dtype=np.float64)
    if len(x) == 0 or not region.mask.any():
        return None
    counter = PointCounter(x, y, window)
    best_x, best_y, best = np.nan, np.nan, -1
    for cx, cy in _candidates(counter, region):
        ok = region.contains(cx, cy)
        if not ok.any():
            continue
        cx, cy = cx[ok], cy[ok]
        c = counter.count(cx, cy)
        j = int(np.argmax(c))
        if c[j] > best:
            best_x, best_y, best = float(cx[j]), float(cy[j]), int(c[j])
    if best < 0:  # no candidate over the region: impossible for a non-empty region (its vertices)
        return None
    bx, by = _recentre(counter, region, best_x, best_y, best)
    return HotspotResult(bx, by, best)


def _candidates(counter: PointCounter, region: CellRegion):
    """Batches (x, y) of candidate centres that together contain an optimal one (see the module doc)."""
    x, y = counter.x, counter.y
    yield x, y
    yield region.boundary_vertices()
    ii, jj = _pairs(x, y, counter.size)
    if counter.window.shape == "square":
        h = counter.size / 2.0
        for sx in (-h, h):
            for sy in (-h, h):
                yield x[ii] + sx, y[jj] + sy
    else:
        yield from _circle_intersections(x, y, ii, jj, counter.size / 2.0)
    yield from _boundary_on_grid(counter, region)


def _pairs(x: np.ndarray, y: np.ndarray, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j), i == j included, with |x_i - x_j| <= reach and |y_i - y_j| <= reach."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    lo = np.searchsorted(xs, xs - reach * (1 + 1e-12) - 1e-9, side="left")
    hi = np.searchsorted(xs, xs + reach * (1 + 1e-12) + 1e-9, side="right")
    cnt = hi - lo
    i = np.repeat(np.arange(len(xs)), cnt)
    j = np.repeat(lo, cnt) + (np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt))
    i, j = order[i], order[j]
    keep = np.abs(y[i] - y[j]) <= reach * (1 + 1e-12) + 1e-9
    return i[keep], j[keep]


def _circle_intersections(x: np.ndarray, y: np.ndarray, ii: np.ndarray, jj: np.ndarray, r: float):
    """Both intersection points of the radius-r circles around each pair of points closer than 2r."""
    sel = ii < jj
    i, j = ii[sel], jj[sel]
    dx, dy = x[j] - x[i], y[j] - y[i]
    d = np.hypot(dx, dy)
    ok = (d > 0) & (d <= 2.0 * r * (1 + 1e-12))
    i, j, dx, dy, d = i[ok], j[ok], dx[ok], dy[ok], d[ok]
    mx, my = (x[i] + x[j]) / 2.0, (y[i] + y[j]) / 2.0
    k = np.sqrt(np.clip(r * r - (d / 2.0) ** 2, 0.0, None)) / d
    yield mx - k * dy, my + k * dx
    yield mx + k * dy, my - k * dx


def _boundary_on_grid(counter: PointCounter, region: CellRegion):
    """Where each point's window boundary meets the region's vertical and horizontal grid lines."""
    bounds = region.bounds_um()
    if bounds is None:
        return
    x0, y0, x1, y1 = bounds
    s = region.cell_um
    h = counter.size / 2.0
    for horizontal in (False, True):
        # grid lines x = const (horizontal False) or y = const (True); p is the coordinate across them
        p, q = (counter.y, counter.x) if horizontal else (counter.x, counter.y)
        g0, g1, origin = (y0, y1, region.origin_y_um) if horizontal else (x0, x1, region.origin_x_um)
        first = np.ceil((np.maximum(p - h, g0) - origin) / s - _EDGE_TOL).astype(np.int64)
        last = np.floor((np.minimum(p + h, g1) - origin) / s + _EDGE_TOL).astype(np.int64)
        cnt = np.clip(last - first + 1, 0, None)
        if cnt.sum() == 0:
            continue
        idx = np.repeat(np.arange(len(p)), cnt)
        line = origin + s * (np.repeat(first, cnt) + np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt))
        if counter.window.shape == "square":
            offs = (np.full(len(idx), h), np.full(len(idx), -h))  # the two edges parallel to the line
        else:
            half_chord = np.sqrt(np.clip(h * h - (line - p[idx]) ** 2, 0.0, None))
            offs = (half_chord, -half_chord)
        for off in offs:
            along = q[idx] + off
            yield (along, line) if horizontal else (line, along)


def _recentre(counter: PointCounter, region: CellRegion, bx: float, by: float, best: int) -> tuple[float, float]:
    """Move the centre towards the centroid of the points it holds while the count and region allow."""
    if best <= 0:
        return bx, by
    for _ in range(_RECENTRE_ROUNDS):
        m = counter.members(bx, by)
        mx, my = float(counter.x[m].mean()), float(counter.y[m].mean())
        moved = False
        # go as far towards the centroid as keeps the count: all the way, or half, quarter, ...
        for t in (1.0, 0.5, 0.25, 0.125):
            qx, qy = bx + t * (mx - bx), by + t * (my - by)
            if math.hypot(qx - bx, qy - by) < 0.5 or not region.contains(np.array([qx]), np.array([qy]))[0]:
                continue
            if int(counter.count(np.array([qx]), np.array([qy]))[0]) >= best:
                bx, by, moved = qx, qy, True
                break
        if not moved:
            break
    return bx, by
