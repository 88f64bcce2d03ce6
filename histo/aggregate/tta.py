"""The spread of a slide's measurements over test-time augmentation (``histo predict --tta``).

A TTA run scores every tile under the 8 flips and turns of the square; the main tables hold the mean of
the 8. Here each variant alone is graded with the same rules, and the report shows how far its
measurements move: a figure that changes with the orientation of the glass is not one to trust to the
last digit, and a verdict that flips between variants is borderline. The spread is of the model's
answers to the same tissue, not a confidence interval for the true value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

# measurement name -> (how to read it from SlideAssessment.to_dict(), unit)
_MEASURES: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {
    "mitoses_per_10hpf": (lambda a: a["measurements"]["mitoses"]["per_10hpf"], "per 10 HPF"),
    "mitoses_per_mm2": (lambda a: a["measurements"]["mitoses"]["per_mm2"], "per mm²"),
    "mitoses_count": (lambda a: a["measurements"]["mitoses"]["count"], "mitoses"),
    "necrosis_pct_of_tumour": (lambda a: a["measurements"]["necrosis_pct_of_tumour"], "% of tumour"),
    "tumour_area_mm2": (lambda a: a["measurements"]["tumour_area_mm2"], "mm²"),
    "spindle_fraction": (lambda a: a["measurements"]["pattern"]["spindle_fraction"], "fraction of tumour"),
}


def _value(a: dict[str, Any], get: Callable[[dict[str, Any]], Any]) -> float | None:
    try:
        v = get(a)
    except (KeyError, TypeError):
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        return None
    return float(v)


def variant_tables(tiles: pd.DataFrame, tta_tiles: pd.DataFrame, tta_mitoses: pd.DataFrame,
                   variant: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(tiles, mitoses) of one TTA variant: the tile table with that variant's probabilities swapped in."""
    rows = tta_tiles[tta_tiles["variant"] == variant].sort_values("tile")
    out = tiles.copy()
    idx = rows["tile"].to_numpy()
    for col in rows.columns:
        if col in ("tile", "variant") or col not in out.columns:
            continue
        values = out[col].to_numpy(copy=True)
        values[idx] = rows[col].to_numpy()
        out[col] = values
    mit = tta_mitoses[tta_mitoses["variant"] == variant].drop(columns=["variant"]).reset_index(drop=True)
    return out, mit


def tta_spread(tiles: pd.DataFrame, tta_tiles: pd.DataFrame, tta_mitoses: pd.DataFrame,
               assess: Callable[[pd.DataFrame, pd.DataFrame], Any], *, main: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """report.json's ``tta``: each measurement's min, max, mean and SD over the variants, and the verdicts.

    ``assess(tiles, mitoses)`` grades one variant with the slide's own rules and returns a SlideAssessment
    (or its dict); ``main`` is the assessment dict of the mean tables (the figures the report quotes).
    """
    names = list(dict.fromkeys(tta_tiles["variant"].astype(str)))
    per_variant: list[dict[str, Any]] = []
    verdicts: list[Any] = []
    for name in names:
        t, m = variant_tables(tiles, tta_tiles, tta_mitoses, name)
        res = assess(t, m)
        a = res.to_dict() if hasattr(res, "to_dict") else dict(res)
        row: dict[str, Any] = {"variant": name}
        for key, (get, _) in _MEASURES.items():
            row[key] = _value(a, get)
        hg = a.get("grading", {}).get("high_grade", {})
        row["high_grade"] = hg.get("high_grade")
        verdicts.append(row["high_grade"])
        per_variant.append(row)
    measures: dict[str, Any] = {}
    for key, (get, unit) in _MEASURES.items():
        vals = np.array([r[key] for r in per_variant if r[key] is not None], float)
        if not len(vals):
            continue
        entry = {"unit": unit, "n": len(vals), "min": float(vals.min()), "max": float(vals.max()),
                 "mean": float(vals.mean()), "sd": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0}
        if main is not None:
            entry["reported"] = _value(dict(main), get)
        measures[key] = entry
    agree = {str(v): verdicts.count(v) for v in dict.fromkeys(verdicts)}
    return {
        "enabled": True,
        "transforms": names,
        "n_variants": len(names),
        "method": "each tile scored under the 8 flips and turns of the square; the report's figures use the mean "
                  "probabilities and heatmap; each variant alone is graded with the same rules for the spread",
        "measurements": measures,
        "high_grade_votes": agree,
        "verdict_stable": len(agree) <= 1,
        "variants": per_variant,
    }


__all__ = ["tta_spread", "variant_tables"]
