"""The IHC marker panel: per-marker compartment, intensity thresholds and call rule, loaded from validated YAML."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from histo.config import load_yaml
from histo.errors import ConfigError, HistoError
from histo.ihc.cells import COMPARTMENTS, NUCLEAR_CHANNELS, CellParams
from histo.ihc.compartment_stats import STATISTICS
from histo.ihc.compartments import SHARED_MEMBRANE
from histo.ihc.scoring import ScoreSummary, check_thresholds

CALL_TYPES = ("threshold", "index")
ANALYSIS_MPP_RANGE = (0.1, 1.0)  # µm/px a cell-level IHC analysis may run at
COMBINES = ("any", "all")
_TOP_KEYS = {"version", "cells", "markers"}
_MARKER_KEYS = {"description", "compartment", "thresholds_od", "call", "cells", "analysis_mpp"}
_CALL_KEYS = {"type", "min_percent_positive", "min_h_score", "combine", "min_cells"}
_CELL_KEYS = {f.name for f in fields(CellParams)}


def default_panel_path() -> Path:
    """configs/markers/panel.yaml of the source tree this package sits in."""
    return Path(__file__).resolve().parents[2] / "configs" / "markers" / "panel.yaml"


@dataclass(frozen=True)
class CallRule:
    """How a marker is called from its score: ``threshold`` (positive/negative) or ``index`` (a number, no call)."""

    type: str = "threshold"
    min_percent_positive: float | None = None  # positive when % cells >= 1+ reaches this
    min_h_score: float | None = None  # positive when the H-score reaches this
    combine: str = "any"  # "any": one criterion suffices; "all": every given criterion must hold
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


def _err(path: Path | str, where: str, msg: str) -> ConfigError:
    return ConfigError(f"{path}: {where}: {msg}")


def _check_keys(d: Any, allowed: set[str], path: Path | str, where: str) -> dict:
    if not isinstance(d, dict):
        raise _err(path, where, f"expected a mapping, got {type(d).__name__}")
    unknown = sorted(set(map(str, d)) - allowed)
    if unknown:
        raise _err(path, where, f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")
    return d


def _number(v: Any, path: Path | str, where: str, *, lo: float | None = None, allow_none: bool = False) -> float | None:
    if v is None and allow_none:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise _err(path, where, f"expected a number, got {v!r}")
    if lo is not None and float(v) < lo:
        raise _err(path, where, f"must be >= {lo}, got {v!r}")
    return float(v)


def _cell_params(d: Any, base: CellParams, path: Path | str, where: str) -> CellParams:
    d = _check_keys(d or {}, _CELL_KEYS, path, where)
    kw: dict[str, Any] = {}
    for k, v in d.items():
        if k == "nuclear_channel":
            if v not in NUCLEAR_CHANNELS:
                raise _err(path, f"{where}.{k}", f"{v!r} is not one of {', '.join(NUCLEAR_CHANNELS)}")
            kw[k] = v
        elif k == "threshold_od":
            kw[k] = _number(v, path, f"{where}.{k}", lo=0.0, allow_none=True)
        elif k == "dab_statistic":
            if v not in STATISTICS:
                raise _err(path, f"{where}.{k}", f"{v!r} is not one of {', '.join(STATISTICS)}")
            kw[k] = v
        elif k == "shared_membrane":
            if v not in SHARED_MEMBRANE:
                raise _err(path, f"{where}.{k}", f"{v!r} is not one of {', '.join(SHARED_MEMBRANE)}")
            kw[k] = v
        elif k == "clump_rounds":
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise _err(path, f"{where}.{k}", f"expected an integer >= 0, got {v!r}")
            kw[k] = v
        else:
            kw[k] = _number(v, path, f"{where}.{k}", lo=0.0)
    cp = replace(base, **kw)
    try:
        cp.validate()
    except HistoError as e:
        raise _err(path, where, str(e)) from None
    return cp


def _call_rule(d: Any, path: Path | str, where: str) -> CallRule:
    d = _check_keys(d, _CALL_KEYS, path, where)
    typ = d.get("type", "threshold")
    if typ not in CALL_TYPES:
        raise _err(path, f"{where}.type", f"{typ!r} is not one of {', '.join(CALL_TYPES)}")
    combine = d.get("combine", "any")
    if combine not in COMBINES:
        raise _err(path, f"{where}.combine", f"{combine!r} is not one of {', '.join(COMBINES)}")
    pct = _number(d.get("min_percent_positive"), path, f"{where}.min_percent_positive", lo=0.0, allow_none=True)
    hs = _number(d.get("min_h_score"), path, f"{where}.min_h_score", lo=0.0, allow_none=True)
    if pct is not None and pct > 100:
        raise _err(path, f"{where}.min_percent_positive", f"must be <= 100, got {pct}")
    if hs is not None and hs > 300:
        raise _err(path, f"{where}.min_h_score", f"must be <= 300, got {hs}")
    mc = d.get("min_cells", 50)
    if isinstance(mc, bool) or not isinstance(mc, int) or mc < 1:
        raise _err(path, f"{where}.min_cells", f"expected an integer >= 1, got {mc!r}")
    if typ == "threshold" and pct is None and hs is None:
        raise _err(path, where, "a threshold call needs min_percent_positive and/or min_h_score")
    if typ == "index" and (pct is not None or hs is not None):
        raise _err(path, where, "an index marker reports a value and takes no min_percent_positive/min_h_score")
    return CallRule(typ, pct, hs, combine, mc)


def parse_panel(data: Any, path: Path | str = "<panel>") -> dict[str, MarkerSpec]:
    """Validate a loaded panel mapping; raises ConfigError naming the file and the offending key."""
    data = _check_keys(data, _TOP_KEYS, path, "top level")
    if data.get("version", 1) != 1:
        raise _err(path, "version", f"unsupported panel version {data.get('version')!r} (this histo reads 1)")
    base = _cell_params(data.get("cells"), CellParams(), path, "cells")
    markers = data.get("markers")
    if not isinstance(markers, dict) or not markers:
        raise _err(path, "markers", "expected a non-empty mapping of marker name → settings")
    out: dict[str, MarkerSpec] = {}
    for name, m in markers.items():
        where = f"markers.{name}"
        m = _check_keys(m, _MARKER_KEYS, path, where)
        for req in ("compartment", "thresholds_od", "call"):
            if req not in m:
                raise _err(path, where, f"missing key {req!r}")
        comp = m["compartment"]
        if comp not in COMPARTMENTS:
            raise _err(path, f"{where}.compartment", f"{comp!r} is not one of {', '.join(COMPARTMENTS)}")
        try:
            thr = check_thresholds(m["thresholds_od"])
        except HistoError as e:
            raise _err(path, f"{where}.thresholds_od", str(e)) from None
        desc = m.get("description", "")
        lo, hi = ANALYSIS_MPP_RANGE
        amp = _number(m.get("analysis_mpp"), path, f"{where}.analysis_mpp", lo=lo, allow_none=True)
        if amp is not None and amp > hi:
            raise _err(path, f"{where}.analysis_mpp", f"must be a cell-resolution µm/px within {lo:.1f}-{hi:.1f}, got {amp}")
        if not isinstance(desc, str):
            raise _err(path, f"{where}.description", f"expected text, got {desc!r}")
        out[str(name)] = MarkerSpec(
            name=str(name),
            compartment=comp,
            thresholds_od=thr,
            call=_call_rule(m["call"], path, f"{where}.call"),
            cell_params=_cell_params(m.get("cells"), base, path, f"{where}.cells"),
            description=desc,
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
