"""The result of scoring one IHC slide: cell and tile tables, the score, the call, QC flags and the ihc.json dict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from histo.ihc.deconvolution import StainMatrix
from histo.ihc.markers import MarkerCall, MarkerSpec
from histo.ihc.scoring import ScoreSummary
from histo.jsonsafe import json_safe

SCHEMA = "histo.ihc/1"
CELL_COLUMNS = ("x", "y", "x_um", "y_um", "area_um2", "cell_area_um2", "dab_od", "h_od", "ihc_class", "in_tumour",
                "in_region", "tile")
TILE_COLUMNS = ("col", "row", "x", "y", "w", "h", "tissue_fraction", "tumour_fraction", "n_cells", "n_positive",
                "pct_positive", "h_score", "n_detected")
CLASS_NAMES = ("0", "1+", "2+", "3+")


@dataclass(frozen=True)
class SlideQCFlag:
    """A slide-level IHC QC finding: ``severity`` is 'warning' (look at it) or 'error' (the score means nothing)."""

    name: str
    severity: str
    value: float
    limit: float
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {k: json_safe(v) for k, v in asdict(self).items()}


def call_sentence(marker: str, call: str, score: ScoreSummary, region: str, min_cells: int) -> str:
    """One human sentence for the call, e.g. 'ALK positive (H-score 180; 72 % of tumour cells ≥ 1+)'."""
    who = "tumour cells" if region == "tumour" else "cells"
    if call == "insufficient_cells":
        return f"{marker}: insufficient cells ({score.n_cells} scored {who} < {min_cells})"
    if call == "no_tissue":
        return f"{marker}: no tissue detected"
    pct = score.pct_positive
    hs = score.h_score
    if call == "index":
        return f"{marker} index {pct:.0f} % ({score.n_cells} {who}; H-score {hs:.0f})"
    return f"{marker} {call} (H-score {hs:.0f}; {pct:.0f} % of {who} ≥ 1+)"


@dataclass
class SlideIHCResult:
    """One IHC slide scored for one marker: per-cell and per-tile tables, the score, the call and QC."""

    slide: str
    slide_path: str
    spec: MarkerSpec
    region: str  # "tumour" | "tissue"
    cells: pd.DataFrame  # CELL_COLUMNS, one row per measurable detected cell (all regions)
    tiles: pd.DataFrame  # TILE_COLUMNS, one row per analysed tile
    score: ScoreSummary
    call: MarkerCall
    qc: list[SlideQCFlag]
    qc_values: dict[str, Any]
    stains: StainMatrix
    stain_method: str
    background_rgb: tuple[float, float, float]
    mpp_analysis: float
    slide_mpp: float
    slide_dimensions: tuple[int, int]
    tile_px: int
    margin_px: int
    seconds: float
    timing: dict[str, float] = field(default_factory=dict)
    tissue_mask: Any = None  # histo.tissue.TissueMask of the slide
    tumour_mask: Any = None  # the TissueMask counted in, when region == "tumour"

    @property
    def sentence(self) -> str:
        """The call as one sentence, e.g. 'ALK positive (H-score 180; 72 % of tumour cells ≥ 1+)'."""
        label = self.call.call
        if any(f.name == "no_tissue" for f in self.qc):
            label = "no_tissue"
        return call_sentence(self.spec.name, label, self.score, self.region, self.spec.call.min_cells)

    @property
    def summary(self) -> dict[str, Any]:
        """Contract D (ihc.json): schema histo.ihc/1, counts, % positive, H-score, call, QC; JSON-ready."""
        import histo

        s = self.score
        rule = self.spec.call
        return json_safe({
            "schema": SCHEMA,
            "slide": self.slide,
            "slide_path": self.slide_path,
            "marker": self.spec.name,
            "compartment": self.spec.compartment,
            "region": self.region,
            "n_cells": s.n_cells,
            "counts": list(s.counts),
            "class_names": list(CLASS_NAMES),
            "pct_by_class": list(s.pct_by_class),
            "pct_positive": s.pct_positive,
            "h_score": s.h_score,
            "mean_dab_od": s.mean_dab_od,
            "call": {
                "label": self.call.call,
                "reason": self.call.reason,
                "sentence": self.sentence,
                "type": rule.type,
                "min_percent_positive": rule.min_percent_positive,
                "min_h_score": rule.min_h_score,
                "combine": rule.combine,
                "min_cells": rule.min_cells,
                "thresholds_od": list(self.spec.thresholds_od),
            },
            "qc": [f.name for f in self.qc],
            "qc_details": [f.to_dict() for f in self.qc],
            "qc_values": self.qc_values,
            "n_cells_detected": int(len(self.cells)),
            "n_unmeasured": s.n_unmeasured,
            "n_outside_region": s.n_outside_region,
            "n_tiles": int(len(self.tiles)),
            "mpp_analysis": self.mpp_analysis,
            "slide_mpp": self.slide_mpp,
            "slide_dimensions": list(self.slide_dimensions),
            "tile_px": self.tile_px,
            "margin_px": self.margin_px,
            "stain": {
                "method": self.stain_method,
                "source": self.stains.source,
                "hematoxylin": list(self.stains.hematoxylin),
                "dab": list(self.stains.dab),
                "background_rgb": list(self.background_rgb),
            },
            "cell_params": asdict(self.spec.cell_params),
            "seconds": round(self.seconds, 3),
            "timing_s": {k: round(v, 3) for k, v in self.timing.items()},
            "histo_version": histo.__version__,
        })

    def to_dict(self) -> dict[str, Any]:
        """Same as :attr:`summary` (ihc.json, docs/formats.md)."""
        return self.summary
