"""Per-cell intensity classes (0, 1+, 2+, 3+), percent positive and H-score from a cell table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from histo.errors import HistoError
from histo.ihc.cells import COMPARTMENTS

# QuPath's positive-cell-detection defaults for mean DAB OD: 1+ / 2+ / 3+ lower bounds.
DEFAULT_THRESHOLDS_OD = (0.2, 0.4, 0.6)


def check_thresholds(thresholds_od: Sequence[float]) -> tuple[float, float, float]:
    """Validate three strictly increasing finite DAB OD lower bounds for 1+, 2+, 3+."""
    try:
        t = tuple(float(x) for x in thresholds_od)
    except (TypeError, ValueError):
        raise HistoError(f"thresholds must be three numbers (1+, 2+, 3+), got {thresholds_od!r}") from None
    if len(t) != 3 or not all(np.isfinite(t)) or not (t[0] < t[1] < t[2]):
        raise HistoError(f"thresholds must be three strictly increasing finite numbers (1+, 2+, 3+), got {thresholds_od!r}")
    return t


def classify_intensity(values: np.ndarray, thresholds_od: Sequence[float] = DEFAULT_THRESHOLDS_OD) -> np.ndarray:
    """Intensity class per value: 0 below the 1+ bound, else 1/2/3 (a value equal to a bound takes the higher class); NaN → -1."""
    t = check_thresholds(thresholds_od)
    v = np.asarray(values, dtype=np.float64)
    cls = np.searchsorted(np.asarray(t), v, side="right").astype(np.int8)
    cls[~np.isfinite(v)] = -1
    return cls


def h_score_from_counts(counts: Sequence[int] | np.ndarray) -> float:
    """H-score (0–300) from the numbers of cells in classes 0, 1+, 2+, 3+."""
    c = np.asarray(counts, dtype=np.float64)
    if c.shape != (4,) or np.any(c < 0):
        raise HistoError(f"counts must be four non-negative numbers (0, 1+, 2+, 3+), got {counts!r}")
    total = c.sum()
    if total == 0:
        return float("nan")
    return float(100.0 * (c[1] + 2.0 * c[2] + 3.0 * c[3]) / total)


@dataclass(frozen=True)
class ScoreSummary:
    """Cell counts per class and the derived percent positive (≥1+) and H-score of one compartment."""

    compartment: str
    thresholds_od: tuple[float, float, float]
    n_cells: int  # scored cells (in region, compartment measurable)
    n_unmeasured: int  # cells in region whose compartment had no pixels
    n_outside_region: int
    counts: tuple[int, int, int, int]  # classes 0, 1+, 2+, 3+
    pct_by_class: tuple[float, float, float, float]
    pct_positive: float  # NaN when no cells
    h_score: float  # NaN when no cells
    mean_dab_od: float

    def to_dict(self) -> dict:
        """JSON-ready dict (NaN kept as float NaN; callers writing strict JSON convert it)."""
        return asdict(self)


def cell_classes(
    table: pd.DataFrame, compartment: str, thresholds_od: Sequence[float] = DEFAULT_THRESHOLDS_OD
) -> np.ndarray:
    """Intensity class (-1 unmeasurable, 0..3) of each row of a cell table for one compartment."""
    if compartment not in COMPARTMENTS:
        raise HistoError(f"compartment {compartment!r} is not one of {COMPARTMENTS}")
    col = f"dab_{compartment}"
    if col not in table.columns:
        raise HistoError(f"cell table has no column {col!r} (columns: {list(table.columns)})")
    return classify_intensity(table[col].to_numpy(), thresholds_od)


def in_region(table: pd.DataFrame, region_mask: np.ndarray | None) -> np.ndarray:
    """Bool per cell: its centroid pixel lies inside ``region_mask`` (all True when no mask)."""
    n = len(table)
    if region_mask is None:
        return np.ones(n, bool)
    mask = np.asarray(region_mask)
    if mask.dtype != bool or mask.ndim != 2:
        raise HistoError(f"region_mask must be a 2-D bool array, got {mask.dtype} with shape {mask.shape}")
    if n == 0:
        return np.zeros(0, bool)
    x = np.rint(table["x_px"].to_numpy()).astype(np.int64)
    y = np.rint(table["y_px"].to_numpy()).astype(np.int64)
    ok = (x >= 0) & (y >= 0) & (x < mask.shape[1]) & (y < mask.shape[0])
    out = np.zeros(n, bool)
    out[ok] = mask[y[ok], x[ok]]
    return out


def score_cells(
    table: pd.DataFrame,
    compartment: str,
    thresholds_od: Sequence[float] = DEFAULT_THRESHOLDS_OD,
    region_mask: np.ndarray | None = None,
) -> ScoreSummary:
    """Class counts, % positive and H-score of the cells (optionally only those whose centroid is in ``region_mask``)."""
    t = check_thresholds(thresholds_od)
    cls = cell_classes(table, compartment, t)
    inside = in_region(table, region_mask)
    c = cls[inside]
    measured = c >= 0
    counts = np.bincount(c[measured], minlength=4)[:4]
    n = int(counts.sum())
    if n:
        pct = tuple(float(100.0 * k / n) for k in counts)
        pct_pos = float(100.0 * counts[1:].sum() / n)
        vals = table[f"dab_{compartment}"].to_numpy()[inside][measured]
        mean_dab = float(np.mean(vals))
    else:
        pct = (float("nan"),) * 4
        pct_pos = float("nan")
        mean_dab = float("nan")
    return ScoreSummary(
        compartment=compartment,
        thresholds_od=t,
        n_cells=n,
        n_unmeasured=int((~measured).sum()),
        n_outside_region=int((~inside).sum()),
        counts=tuple(int(k) for k in counts),  # type: ignore[arg-type]
        pct_by_class=pct,  # type: ignore[arg-type]
        pct_positive=pct_pos,
        h_score=h_score_from_counts(counts) if n else float("nan"),
        mean_dab_od=mean_dab,
    )
