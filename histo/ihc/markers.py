"""The IHC marker panel: per-marker compartment, intensity thresholds and call rule, loaded from validated YAML."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from histo.config import from_dict, load_yaml
from histo.errors import ConfigError, HistoError
from histo.ihc.cells import CellParams
from histo.ihc.scoring import ScoreSummary, check_thresholds

CallType = Literal["threshold", "index"]
Combine = Literal["any", "all"]
Compartment = Literal["nucleus", "cytoplasm", "membrane", "cell"]
CALL_TYPES: tuple[str, ...] = get_args(CallType)
ANALYSIS_MPP_RANGE = (0.1, 1.0)  # µm/px a cell-level IHC analysis may run at
COMBINES: tuple[str, ...] = get_args(Combine)


def default_panel_path() -> Path:
    """configs/markers/panel.yaml of the source tree this package sits in."""
    return Path(__file__).resolve().parents[2] / "configs" / "markers" / "panel.yaml"


@dataclass(frozen=True)
class CallRule:
    """How a marker is called from its score: ``threshold`` (positive/negative) or ``index`` (a number, no call)."""

    type: CallType = "threshold"
    min_percent_positive: float | None = None  # positive when % cells >= 1+ reaches this
    min_h_score: float | None = None  # positive when the H-score reaches this
    combine: Combine = "any"  # "any": one criterion suffices; "all": every given criterion must hold
    min_cells: int = 50  # fewer scored cells than this → "insufficient_cells", never a call


@dataclass(frozen=True)
class MarkerSpec:
    """One marker of the panel: where it stains, its 1+/2+/3+ DAB OD bounds, its call rule and cell settings."""

    name: str
    compartment: str
    thresholds_od: tuple[float, float, float]
    call: CallRule
    cell_params: CellParams = field(default_factory=CellParams)
    description: str = ""
    # µm/px this marker is read at; None = the caller's default (histo.ihc.slide.DEFAULT_ANALYSIS_MPP).
    # Never finer than the slide itself (a thinner line is not in the pixels): see score_slide.
    analysis_mpp: float | None = None


@dataclass(frozen=True)
class MarkerCall:
    """The call for one marker and the evidence it rests on (values and the thresholds they were held to)."""

    marker: str
    call: str  # "positive" | "negative" | "index" | "insufficient_cells"
    reason: str
    evidence: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class _MarkerEntry:
    """One marker as written in the panel YAML (`cells` holds overrides of the panel's cell settings)."""

    compartment: Compartment
    thresholds_od: tuple[float, float, float]
    call: CallRule
    cells: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    analysis_mpp: float | None = None


@dataclass(frozen=True)
class _PanelFile:
    """The panel YAML: its version, the cell settings every marker starts from, and the markers."""

    markers: dict[str, _MarkerEntry]
    version: int = 1
    cells: dict[str, Any] = field(default_factory=dict)


def _err(path: Path | str, where: str, msg: str) -> ConfigError:
    return ConfigError(f"{path}: {where}: {msg}")


def _cell_params(d: dict[str, Any], path: Path | str, where: str) -> CellParams:
    cp = from_dict(CellParams, d, str(path), prefix=f"{where}.")
    try:
        cp.validate()
    except HistoError as e:
        raise _err(path, where, str(e)) from None
    return cp


def _check_call(rule: CallRule, path: Path | str, where: str) -> CallRule:
    for key, v in (("min_percent_positive", rule.min_percent_positive), ("min_h_score", rule.min_h_score)):
        if v is not None and not v >= 0:
            raise _err(path, f"{where}.{key}", f"must be >= 0, got {v!r}")
    if rule.min_percent_positive is not None and rule.min_percent_positive > 100:
        raise _err(path, f"{where}.min_percent_positive", f"must be <= 100, got {rule.min_percent_positive}")
    if rule.min_h_score is not None and rule.min_h_score > 300:
        raise _err(path, f"{where}.min_h_score", f"must be <= 300, got {rule.min_h_score}")
    if rule.min_cells < 1:
        raise _err(path, f"{where}.min_cells", f"expected an integer >= 1, got {rule.min_cells!r}")
    has_rule = rule.min_percent_positive is not None or rule.min_h_score is not None
    if rule.type == "threshold" and not has_rule:
        raise _err(path, where, "a threshold call needs min_percent_positive and/or min_h_score")
    if rule.type == "index" and has_rule:
        raise _err(path, where, "an index marker reports a value and takes no min_percent_positive/min_h_score")
    return rule


def parse_panel(data: Any, path: Path | str = "<panel>") -> dict[str, MarkerSpec]:
    """Validate a loaded panel mapping (through histo.config); raises ConfigError naming the file and the key."""
    panel = from_dict(_PanelFile, data, str(path))
    if panel.version != 1:
        raise _err(path, "version", f"unsupported panel version {panel.version!r} (this histo reads 1)")
    if not panel.markers:
        raise _err(path, "markers", "expected a non-empty mapping of marker name → settings")
    _cell_params(panel.cells, path, "cells")
    out: dict[str, MarkerSpec] = {}
    for name, m in panel.markers.items():
        where = f"markers.{name}"
        try:
            thr = check_thresholds(m.thresholds_od)
        except HistoError as e:
            raise _err(path, f"{where}.thresholds_od", str(e)) from None
        lo, hi = ANALYSIS_MPP_RANGE
        amp = m.analysis_mpp
        if amp is not None and not lo <= amp <= hi:
            raise _err(path, f"{where}.analysis_mpp", f"must be a cell-resolution µm/px within {lo:.1f}-{hi:.1f}, got {amp}")
        out[str(name)] = MarkerSpec(
            name=str(name),
            compartment=m.compartment,
            thresholds_od=thr,
            call=_check_call(m.call, path, f"{where}.call"),
            cell_params=_cell_params({**panel.cells, **m.cells}, path, f"{where}.cells"),
            description=m.description,
            analysis_mpp=amp,
        )
    return out


def load_panel(path: Path | str | None = None) -> dict[str, MarkerSpec]:
    """Load and validate a marker panel YAML (default: configs/markers/panel.yaml); name → MarkerSpec."""
    p = Path(path) if path is not None else default_panel_path()
    data = load_yaml(p)
    return parse_panel(data, p)


def call_marker(spec: MarkerSpec, summary: ScoreSummary) -> MarkerCall:
    """Call a marker from its scored cells by the panel rule; the evidence holds every value and threshold used."""
    if summary.compartment != spec.compartment or tuple(summary.thresholds_od) != tuple(spec.thresholds_od):
        raise HistoError(
            f"{spec.name}: the summary was scored on {summary.compartment} with thresholds {summary.thresholds_od}, "
            f"the panel asks for {spec.compartment} with {spec.thresholds_od}"
        )
    rule = spec.call
    evidence: dict[str, Any] = {
        "compartment": spec.compartment,
        "thresholds_od": list(spec.thresholds_od),
        "n_cells": summary.n_cells,
        "counts_0_1_2_3": list(summary.counts),
        "pct_positive": summary.pct_positive,
        "h_score": summary.h_score,
        "mean_dab_od": summary.mean_dab_od,
        "rule": asdict(rule),
    }
    if summary.n_cells < rule.min_cells:
        return MarkerCall(spec.name, "insufficient_cells",
                          f"{summary.n_cells} scored cells < min_cells {rule.min_cells}", evidence)
    if rule.type == "index":
        return MarkerCall(spec.name, "index",
                          f"{spec.name} index {summary.pct_positive:.1f}% of {summary.n_cells} cells (no call)", evidence)
    checks: list[tuple[str, bool]] = []
    if rule.min_percent_positive is not None:
        ok = summary.pct_positive >= rule.min_percent_positive
        checks.append((f"% positive {summary.pct_positive:.1f} {'>=' if ok else '<'} {rule.min_percent_positive:g}", ok))
    if rule.min_h_score is not None:
        ok = summary.h_score >= rule.min_h_score
        checks.append((f"H-score {summary.h_score:.1f} {'>=' if ok else '<'} {rule.min_h_score:g}", ok))
    met = any(ok for _, ok in checks) if rule.combine == "any" else all(ok for _, ok in checks)
    joiner = " or " if rule.combine == "any" else " and "
    return MarkerCall(spec.name, "positive" if met else "negative", joiner.join(t for t, _ in checks), evidence)
