"""The mitotic hotspot: the placement of a fixed-area window (square or circle) holding most points.

Search: candidate centres are the counted mitoses themselves plus a grid over tumour (the caller
passes both); every candidate's count comes from a bucket grid whose bucket is as wide as the
window, so a window touches at most 2x2 buckets and counting is linear in the points near it.
The grid's best count is then a lower bound, and an exact sweep finds, per anchor point, the best
window with that point on its boundary wherever it could beat the bound (squares: x-slab plus
sorted y; circles: angular sweep of neighbour arcs), O(n m log m) for n points, m per window reach. The count is therefore exact (the true maximum) whenever the best placement's centre
lies over tumour. Finally the window is re-centred on the centroid of the points it holds while
(or part of the way) keeps the count and the centre stays over tumour, so among equally dense placements the
reported one is centred on the mitoses rather than on a grid node or an edge.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

_PAIRS_PER_CHUNK = 2_000_000
_RECENTRE_ROUNDS = 10


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

    def inside(self, cx: np.ndarray, cy: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
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
        half = self.size / 2.0
        # lowest bucket the window can touch; with bucket width == window extent it spans <= 2
        b0x = np.floor((cx - half - self.bx0) / self.size).astype(np.int64)
        b0y = np.floor((cy - half - self.by0) / self.size).astype(np.int64)
        spans = []
        for ox in (0, 1):
            for oy in (0, 1):
                bx, by = b0x + ox, b0y + oy
                ok = (bx >= 0) & (bx < self.nbx) & (by >= 0) & (by < self.nby)
                b = np.where(ok, by * self.nbx + bx, 0)
                s = np.where(ok, self.starts[b], 0)
                e = np.where(ok, self.starts[b + 1], 0)
                spans.append((s, e))
        n_pairs = sum(e - s for s, e in spans)
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


def find_hotspot(
    x_um: np.ndarray,
    y_um: np.ndarray,
    cand_x_um: np.ndarray,
    cand_y_um: np.ndarray,
    window: Window,
    allowed: Callable[[np.ndarray, np.ndarray], np.ndarray],
    grid_step_um: float,
) -> HotspotResult | None:
    """Densest placement of the window over the allowed region; None when there is no candidate."""
    counter = PointCounter(x_um, y_um, window)
    cx = np.concatenate([np.asarray(x_um, float), np.asarray(cand_x_um, float)])
    cy = np.concatenate([np.asarray(y_um, float), np.asarray(cand_y_um, float)])
    if len(cx) == 0:
        return None
    counts = counter.count(cx, cy)
    i = int(np.argmax(counts))
    bx, by, best = float(cx[i]), float(cy[i]), int(counts[i])
    # placements with points on the window boundary contain every optimum; only those that could
    # beat the grid's best are generated, and they must still be over tumour
    ex, ey, ec = _boundary_candidates(counter, best)
    if len(ex):
        ok = allowed(ex, ey)
        if ok.any():
            j = int(np.flatnonzero(ok)[np.argmax(ec[ok])])
            # recount with the same closed-window test used everywhere else
            c = int(counter.count(ex[j : j + 1], ey[j : j + 1])[0])
            if c > best:
                bx, by, best = float(ex[j]), float(ey[j]), c
    for _ in range(_RECENTRE_ROUNDS):
        moved = False
        # fine local grid: recovers most of what the coarse grid step can miss
        offs = np.linspace(-grid_step_um, grid_step_um, 9)
        gx, gy = np.meshgrid(bx + offs, by + offs)
        gx, gy = gx.ravel(), gy.ravel()
        ok = allowed(gx, gy)
        if ok.any():
            c = counter.count(gx[ok], gy[ok])
            j = int(np.argmax(c))
            if c[j] > best:
                bx, by, best, moved = float(gx[ok][j]), float(gy[ok][j]), int(c[j]), True
        if best > 0:
            m = counter.members(bx, by)
            mx, my = float(counter.x[m].mean()), float(counter.y[m].mean())
            # go as far towards the centroid as keeps the count: all the way, or half, quarter, ...
            for t in (1.0, 0.5, 0.25, 0.125):
                qx, qy = bx + t * (mx - bx), by + t * (my - by)
                shift = math.hypot(qx - bx, qy - by)
                if shift < 0.5 or not allowed(np.array([qx]), np.array([qy]))[0]:
                    continue
                c = int(counter.count(np.array([qx]), np.array([qy]))[0])
                if c >= best:
                    bx, by, best, moved = qx, qy, c, True
                    break
        if not moved:
            break
    return HotspotResult(bx, by, best)


def _boundary_candidates(counter: PointCounter, lower: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best boundary-touching placement per anchor point that may beat lower: centres x, y and counts."""
    if counter.window.shape == "square":
        found = _square_sweep(counter.x, counter.y, counter.size, lower)
    else:
        found = _circle_sweep(counter.x, counter.y, counter.size / 2.0, lower)
    if not found:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
    arr = np.array(found, dtype=np.float64)
    return arr[:, 0], arr[:, 1], arr[:, 2].astype(np.int64)


def _square_sweep(x: np.ndarray, y: np.ndarray, side: float, lower: int) -> list[tuple[float, float, int]]:
    """Per x-slab [x_i, x_i + side], the square whose top edge touches a point holding most points.

    Every optimal square can be shifted right and down until its left and top edges touch points
    without losing any, so the best of these is the true maximum. O(n m log m), m points per slab.
    """
    order = np.argsort(x, kind="stable")
    xs, ys_all = x[order], y[order]
    lo = np.unique(np.searchsorted(xs, xs, side="left"))
    hi = np.searchsorted(xs, xs[lo] + side, side="right")
    found = []
    for start, stop in zip(lo[hi - lo > lower], hi[hi - lo > lower]):
        ys = np.sort(ys_all[start:stop])
        c = np.searchsorted(ys, ys + side, side="right") - np.arange(len(ys))
        k = int(np.argmax(c))
        if c[k] > lower:
            found.append((xs[start] + side / 2.0, ys[k] + side / 2.0, int(c[k])))
    return found


def _circle_sweep(x: np.ndarray, y: np.ndarray, r: float, lower: int) -> list[tuple[float, float, int]]:
    """Per point, the circle with that point on its boundary holding most points (angular sweep).

    Every optimal circle can be moved until a point lies on its boundary without losing any; a
    neighbour j within 2r is inside for centre angles phi_j +- arccos(d / 2r). O(n m log m).
    """
    order = np.argsort(x, kind="stable")
    xs, ys = x[order], y[order]
    lo = np.searchsorted(xs, xs - 2.0 * r, side="left")
    hi = np.searchsorted(xs, xs + 2.0 * r, side="right")
    found = []
    for i in np.flatnonzero(hi - lo > lower):
        dx, dy = xs[lo[i] : hi[i]] - xs[i], ys[lo[i] : hi[i]] - ys[i]
        d = np.hypot(dx, dy)
        same = d == 0  # i itself and exact duplicates: inside at every angle
        near = (d <= 2.0 * r) & ~same
        base = int(same.sum())
        if base + int(near.sum()) <= lower:
            continue
        if not near.any():
            found.append((xs[i] + r, ys[i], base))
            continue
        phi = np.arctan2(dy[near], dx[near])
        alpha = np.arccos(np.clip(d[near] / (2.0 * r), 0.0, 1.0))
        a, b = phi - alpha, phi + alpha
        # duplicate the arcs one turn on so arcs crossing the +-pi seam overlap correctly
        ang = np.concatenate([a, b, a + 2 * np.pi, b + 2 * np.pi])
        kind = np.concatenate([np.zeros(len(a)), np.ones(len(a)), np.zeros(len(a)), np.ones(len(a))])
        delta = np.where(kind == 0, 1, -1)
        ev = np.lexsort((kind, ang))  # starts before ends at equal angle: closed arcs
        running = np.cumsum(delta[ev])
        k = int(np.argmax(running))
        theta = float(ang[ev][k])
        found.append((xs[i] + r * np.cos(theta), ys[i] + r * np.sin(theta), base + int(running[k])))
    return found
