"""Validation of the input contract: the tile table, the mitosis table and the slide mpp."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from histo.errors import HistoError, MppError
from histo.inputs import mpp_is_plausible, mpp_range_text

TILE_BOX_COLUMNS = ("x", "y", "w", "h")
MITOSIS_COLUMNS = ("x_um", "y_um", "score")
PATTERN_PREFIX = "p_pattern_"
# softmax outputs saved as float16/float32 drift from 1 by ~1e-3; more than this is a wrong column
PATTERN_SUM_ATOL = 0.01


class TableError(HistoError, ValueError):
    """A prediction table breaks the input contract: missing column, wrong type or out-of-range value."""


def pattern_column(name: str) -> str:
    """Column name of a pattern class probability."""
    return f"{PATTERN_PREFIX}{name}"


def validate_tile_table(tiles: pd.DataFrame, pattern_classes: Sequence[str]) -> pd.DataFrame:
    """Check a tile table against the contract and return its contract columns as float64."""
    if not isinstance(tiles, pd.DataFrame):
        raise TableError(f"tile table must be a pandas DataFrame, got {type(tiles).__name__}")
    pattern_cols = [pattern_column(c) for c in pattern_classes]
    required = [*TILE_BOX_COLUMNS, "tissue_fraction", "p_necrosis", *pattern_cols]
    missing = [c for c in required if c not in tiles.columns]
    if missing:
        raise TableError(
            f"tile table is missing column(s) {', '.join(missing)} "
            f"(needs {', '.join(required)}, optional p_tumour; has {', '.join(map(str, tiles.columns)) or 'none'})"
        )
    extra = [c for c in tiles.columns if isinstance(c, str) and c.startswith(PATTERN_PREFIX) and c not in pattern_cols]
    if extra:
        raise TableError(
            f"tile table has pattern column(s) {', '.join(extra)} that are not in the configured "
            f"pattern classes {list(pattern_classes)} (tiles.pattern_classes)"
        )
    cols = required + (["p_tumour"] if "p_tumour" in tiles.columns else [])
    out = pd.DataFrame(index=pd.RangeIndex(len(tiles)))
    for c in cols:
        out[c] = _numeric(tiles[c], "tile table", c)
    if (out["w"] <= 0).any() or (out["h"] <= 0).any():
        raise TableError(f"tile table has {int(((out['w'] <= 0) | (out['h'] <= 0)).sum())} tile(s) with w or h <= 0")
    for c in cols:
        if c == "tissue_fraction" or c.startswith("p_"):
            _in_unit_range(out[c], "tile table", c)
    if len(out):
        sums = out[pattern_cols].sum(axis=1).to_numpy()
        off = np.abs(sums - 1.0) > PATTERN_SUM_ATOL
        if off.any():
            first = int(np.flatnonzero(off)[0])
            raise TableError(
                f"tile table pattern probabilities ({', '.join(pattern_cols)}) must sum to 1: "
                f"{int(off.sum())} row(s) do not, first is row {first} (sum {sums[first]:.4f})"
            )
    return out


def validate_mitosis_table(mitoses: pd.DataFrame | None) -> pd.DataFrame:
    """Check a mitosis points table (None means no detections) and return its columns as float64."""
    if mitoses is None:
        return pd.DataFrame({c: np.zeros(0) for c in MITOSIS_COLUMNS})
    if not isinstance(mitoses, pd.DataFrame):
        raise TableError(f"mitosis table must be a pandas DataFrame or None, got {type(mitoses).__name__}")
    missing = [c for c in MITOSIS_COLUMNS if c not in mitoses.columns]
    if missing:
        raise TableError(
            f"mitosis table is missing column(s) {', '.join(missing)} "
            f"(needs {', '.join(MITOSIS_COLUMNS)}; has {', '.join(map(str, mitoses.columns)) or 'none'})"
        )
    out = pd.DataFrame(index=pd.RangeIndex(len(mitoses)))
    for c in MITOSIS_COLUMNS:
        out[c] = _numeric(mitoses[c], "mitosis table", c)
    return out


def validate_mpp(mpp: float) -> float:
    """Check the slide's level-0 µm per pixel: a finite positive number in a plausible range."""
    if isinstance(mpp, bool) or not isinstance(mpp, (int, float, np.floating, np.integer)):
        raise MppError(f"level-0 mpp must be a number (µm per pixel), got {type(mpp).__name__} {mpp!r}")
    mpp = float(mpp)
    if not mpp_is_plausible(mpp):
        raise MppError(f"level-0 mpp {mpp} µm/px is implausible (expected {mpp_range_text()}; typical 0.25 at 40x, "
                       "0.5 at 20x)")
    return mpp


def _numeric(series: pd.Series, table: str, column: str) -> np.ndarray:
    try:
        values = pd.to_numeric(series, errors="raise").to_numpy(dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise TableError(f"{table} column {column} must be numeric: {exc}") from exc
    bad = ~np.isfinite(values)
    if bad.any():
        raise TableError(f"{table} column {column} has {int(bad.sum())} missing or non-finite value(s), first at row {int(np.flatnonzero(bad)[0])}")
    return values


def _in_unit_range(values: pd.Series, table: str, column: str) -> None:
    bad = (values < 0.0) | (values > 1.0)
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        raise TableError(f"{table} column {column} must be within 0..1: {int(bad.sum())} value(s) are not, first is row {first} ({values.iloc[first]})")
