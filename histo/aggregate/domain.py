"""Whether a slide is like the data the model learned from, from the tile table's ``in_domain`` column.

Pure numpy/pandas. The per-tile decision is the model's (histo.models.domain: ood_score <= 1); here it
becomes a tissue-area fraction, a slide status, and the tiles grading may use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from histo.aggregate.config import DomainRules

STATUSES = ("in_domain", "partly_out_of_domain", "out_of_domain", "unchecked", "check_off")


@dataclass(frozen=True)
class DomainSummary:
    """A slide's domain status: in_domain_fraction is of tissue area; withheld: no high-grade verdict."""

    status: str
    in_domain_fraction: float | None
    withheld: bool
    thresholds: dict[str, float]
    method: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict: status, in_domain_fraction, withheld, method, thresholds, notes."""
        return {"status": self.status, "in_domain_fraction": self.in_domain_fraction, "withheld": self.withheld,
                "method": self.method, "thresholds": dict(self.thresholds), "notes": list(self.notes)}


def tissue_area_px2(tiles: pd.DataFrame) -> np.ndarray:
    """Tissue area of each tile in level-0 px² (box area × tissue fraction)."""
    return (tiles["w"].to_numpy(float) * tiles["h"].to_numpy(float)
            * tiles["tissue_fraction"].to_numpy(float))


def summarise_domain(tiles: pd.DataFrame, rules: DomainRules | None = None, method: str | None = None) -> DomainSummary:
    """The slide's domain status from ``in_domain`` per tile (tissue-area weighted)."""
    r = rules or DomainRules()
    thresholds = {"partly_below": r.partly_below, "out_below": r.out_below, "withhold_below": r.withhold_below}
    if not r.check:
        return DomainSummary("check_off", None, False, thresholds, method,
                             ["the training-domain check was turned off (domain.check: false): the verdict does "
                              "not say whether this slide is like the model's training data"])
    if "in_domain" not in tiles.columns:
        return DomainSummary("unchecked", None, False, thresholds, method,
                             ["this model card has no training-domain statistics: histo cannot say whether the "
                              "slide is like the data the model learned from"])
    area = tissue_area_px2(tiles)
    total = float(area.sum())
    if total <= 0:
        return DomainSummary("in_domain", None, False, thresholds, method, ["no tissue"])
    frac = float(area[tiles["in_domain"].to_numpy(bool)].sum() / total)
    status = ("in_domain" if frac >= r.partly_below else
              "partly_out_of_domain" if frac >= r.out_below else "out_of_domain")
    withheld = frac < r.withhold_below
    notes = []
    if status != "in_domain":
        notes.append(f"{100 * (1 - frac):.0f} % of the tissue is unlike the model's training data "
                     "(those tiles count neither areas nor mitoses)")
    return DomainSummary(status, round(frac, 4), withheld, thresholds, method, notes)


def in_domain_tiles(tiles: pd.DataFrame, rules: DomainRules | None = None) -> pd.DataFrame:
    """The tiles grading may use: all of them, or only those in domain when the check is on and known."""
    r = rules or DomainRules()
    if not r.check or "in_domain" not in tiles.columns:
        return tiles
    return tiles[tiles["in_domain"].to_numpy(bool)].reset_index(drop=True)
