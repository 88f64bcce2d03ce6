"""Intensity thresholds calibrated against reference cells (phantom truth or pathologist-scored cells).

The panel's 1+/2+/3+ bounds are OD values of the measured compartment mean. A reference whose classes
were assigned on another scale (a phantom's nominal stain amounts, or a pathologist's eye) needs its own
bounds; :func:`calibrate_thresholds` finds, for each pair of neighbouring classes, the measured-OD cut
that misclassifies the fewest reference cells of those two classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from histo.errors import HistoError
from histo.ihc.scoring import check_thresholds


def _best_cut(lo_vals: np.ndarray, hi_vals: np.ndarray) -> float:
    """The cut t minimising #(lo >= t) + #(hi < t), mid-way between the two values it falls between."""
    v = np.concatenate([lo_vals, hi_vals])
    is_hi = np.concatenate([np.zeros(lo_vals.size, bool), np.ones(hi_vals.size, bool)])
    order = np.argsort(v, kind="stable")
    v, is_hi = v[order], is_hi[order]
    # errors when the cut is just above position i (i values below it): lo above the cut + hi below it
    hi_below = np.concatenate([[0], np.cumsum(is_hi)])
    lo_above = lo_vals.size - np.concatenate([[0], np.cumsum(~is_hi)])
    err = hi_below + lo_above
    i = int(np.argmin(err))
    if i == 0:
        return float(v[0])
    if i == v.size:
        return float(v[-1]) + 1e-6
    return float((v[i - 1] + v[i]) / 2.0)


def calibrate_thresholds(measured_od: Sequence[float], reference_class: Sequence[int], *, min_cells: int = 10) -> tuple[float, float, float]:
    """1+/2+/3+ lower bounds (measured OD) that best reproduce the reference classes 0..3 of the same cells.

    Raises HistoError when a class has fewer than ``min_cells`` reference cells or the cuts are not increasing.
    """
    m = np.asarray(measured_od, np.float64)
    c = np.asarray(reference_class, np.int64)
    if m.shape != c.shape or m.ndim != 1:
        raise HistoError(f"measured_od and reference_class must be equal-length 1-D, got {m.shape} and {c.shape}")
    ok = np.isfinite(m) & (c >= 0) & (c <= 3)
    m, c = m[ok], c[ok]
    cuts = []
    for k in (1, 2, 3):
        lo, hi = m[c == k - 1], m[c == k]
        if lo.size < min_cells or hi.size < min_cells:
            raise HistoError(f"calibration needs >= {min_cells} reference cells in classes {k - 1} and {k}, "
                             f"got {lo.size} and {hi.size}")
        cuts.append(_best_cut(lo, hi))
    try:
        return check_thresholds(cuts)
    except HistoError:
        raise HistoError(f"calibrated cuts {cuts} are not increasing: the measured OD does not order the reference classes") from None
