"""Per-cell statistics of a stain channel over labelled compartments (mean or a percentile).

A compartment's mean DAB mixes the stained cytoplasm with whatever else its pixels cover: the blurred
edge of the nucleus, gaps between cells, glass. The thinner the stained structure (a membrane, a rim
of cytoplasm round a spindle nucleus), the lower the mean reads against the stain a pathologist sees.
An upper percentile of the compartment ("p75": the value three quarters of its pixels stay below)
follows the stained part and is barely moved by a minority of unstained pixels, which is why the
marker panel can choose it per marker (``cells.dab_statistic``).
"""

from __future__ import annotations

import numpy as np

from histo.errors import HistoError

STATISTICS = ("mean", "p50", "p75", "p90")


def order_bits(v: np.ndarray) -> np.ndarray:
    """float32 values as int64 in [0, 2^32) with the same order (negatives flipped): sortable inside an int64 key."""
    bits = np.ascontiguousarray(v, dtype=np.float32).view(np.int32)
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).astype(np.int64) + 2**31


def from_order_bits(u: np.ndarray) -> np.ndarray:
    """Inverse of :func:`order_bits` (float32)."""
    m = (np.asarray(u, np.int64) - 2**31).astype(np.int32)
    return (m ^ ((m >> 31) & 0x7FFFFFFF)).view(np.float32)


def check_statistic(name: str) -> str:
    """Return ``name`` if it is a known statistic, else raise HistoError listing the choices."""
    if name not in STATISTICS:
        raise HistoError(f"dab_statistic {name!r} is not one of {', '.join(STATISTICS)}")
    return name


def label_statistic(values: np.ndarray, labels: np.ndarray, n: int, statistic: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """(statistic, pixel count) of ``values`` over each label 1..n of ``labels``; NaN where a label has no pixels.

    Percentiles use the "lower" rule (an actual pixel value, no interpolation) so they are exact and
    cheap: one sort of the labelled pixels by (label, value).
    """
    check_statistic(statistic)
    lab = labels.ravel()
    cnt = np.bincount(lab, minlength=n + 1)[1 : n + 1]
    if statistic == "mean":
        s = np.bincount(lab, weights=values.ravel().astype(np.float64), minlength=n + 1)[1 : n + 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(cnt > 0, s / np.maximum(cnt, 1), np.nan), cnt
    q = int(statistic[1:]) / 100.0
    inside = lab > 0
    lv = lab[inside]
    vv = values.ravel()[inside]
    order = np.lexsort((vv, lv))  # by label, then by value within a label
    vs = vv[order]
    start = np.concatenate([[0], np.cumsum(cnt)[:-1]])
    idx = start + np.floor(q * np.maximum(cnt - 1, 0)).astype(np.int64)
    out = np.full(n, np.nan)
    has = cnt > 0
    out[has] = vs[idx[has]]
    return out, cnt
