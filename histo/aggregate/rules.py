"""Grading rules on slide measurements: FNCLCC mitotic and necrosis scores and a high-grade flag."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from histo.aggregate.config import DEFAULT_MITOSIS_THRESHOLD, GradingConfig
from histo.aggregate.domain import DomainSummary, in_domain_tiles, summarise_domain
from histo.aggregate.measure import SlideMeasurements, measure_slide
from histo.jsonsafe import json_safe

#: Version of the JSON written by SlideAssessment.to_dict; bump on any incompatible change.
SCHEMA_VERSION = 1

# measured values are sums of float areas: 50 % can come out as 49.99999999999999
_REL_TOL = 1e-9

DIFFERENTIATION_NOTE = (
    "The FNCLCC grade adds a tumour differentiation score that histo does not assess; these are its "
    "mitotic and necrosis components and a high-grade flag only. Research use, not a diagnosis."
)


@dataclass(frozen=True)
class Evidence:
    """What a score or flag rests on: the measured value, the thresholds and the rule applied."""

    rule: str
    value: float | None
    unit: str
    thresholds: dict[str, float]
    basis: str
    hpf_area_mm2: float | None = None
    hotspot: dict[str, Any] | None = None  # shape, area_mm2, count, centre_x_um, centre_y_um, box_um, counted_in
    count: int | None = None  # the raw count a per-10-HPF value is computed from
    counted_area_mm2: float | None = None  # the area it was counted in (value = count / area × 10 × HPF area)


@dataclass(frozen=True)
class ScoreResult:
    """One FNCLCC component score; None with a reason when it cannot be assessed."""

    name: str
    score: int | None
    assessable: bool
    reason: str | None
    evidence: Evidence


@dataclass(frozen=True)
class Criterion:
    """One criterion of the high-grade flag; passed is None when it cannot be assessed."""

    name: str
    passed: bool | None
    reason: str | None
    evidence: Evidence


@dataclass(frozen=True)
class HighGradeFlag:
    """True when any criterion passes, False when all are assessed and none passes, else None.

    ``reason`` says why the flag is withheld when it is (e.g. the slide is unlike the model's training data).
    """

    high_grade: bool | None
    assessable: bool
    rule: str
    criteria: tuple[Criterion, ...]
    reason: str | None = None


@dataclass(frozen=True)
class Grading:
    """The rule results of one slide. status: 'assessed', 'partially_assessable' or 'not_assessable'."""

    status: str
    mitotic_score: ScoreResult
    necrosis_score: ScoreResult
    high_grade: HighGradeFlag
    note: str = DIFFERENTIATION_NOTE


@dataclass(frozen=True)
class SlideAssessment:
    """Measurements, grading and the resolved config of one slide, serialisable to versioned JSON."""

    measurements: SlideMeasurements
    grading: Grading
    config: GradingConfig
    schema_version: int = SCHEMA_VERSION
    domain: DomainSummary | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable dict with schema_version first."""
        return {
            "schema_version": self.schema_version,
            "measurements": self.measurements.to_dict(),
            "grading": json_safe(dataclasses.asdict(self.grading), non_finite="keep"),
            "config": self.config.to_dict(),
            "domain": self.domain.to_dict() if self.domain is not None else None,
        }

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text of to_dict (no NaN: missing values are null)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False, ensure_ascii=False)


def assess_slide(
    tiles: pd.DataFrame, mitoses: pd.DataFrame | None, mpp: float, config: GradingConfig | None = None,
    slide_size_px: tuple[int, int] | None = None, *, mitosis_threshold: float | None = None,
    not_measured: Mapping[str, str] | None = None, domain_method: str | None = None,
) -> SlideAssessment:
    """Measure a slide from its prediction tables and apply the grading rules (slide_size_px: see measure_slide).

    ``mitosis_threshold`` is the model card's; it is what a null ``mitoses.min_score`` means (without one,
    ModelCard's default 0.5). The assessment records the resolved value.

    Tiles with ``in_domain`` False (the model's training-domain check) count neither areas nor mitoses, and
    below ``domain.withhold_below`` of the tissue in domain the high-grade flag is withheld. ``not_measured``
    names heads that did not run (head → why): their score and criterion are unknown, never zero.
    """
    cfg = (config or GradingConfig()).for_model(DEFAULT_MITOSIS_THRESHOLD if mitosis_threshold is None
                                                else mitosis_threshold)
    dom = summarise_domain(tiles, cfg.domain, domain_method)
    # Out-of-domain tiles count neither areas nor mitoses (a mitosis counts only inside a counted tumour tile).
    meas = measure_slide(in_domain_tiles(tiles, cfg.domain), mitoses, mpp, cfg, slide_size_px)
    graded = grade(meas, cfg)
    for head, why in (not_measured or {}).items():
        graded = _not_measured(graded, head, why)
    if dom.withheld:
        frac = dom.in_domain_fraction or 0.0
        graded = _withhold(graded, f"Not assessable by this model: {100 * (1 - frac):.0f} % of the tissue is unlike its "
                                   f"training data (in domain {100 * frac:.0f} %, below the "
                                   f"{100 * cfg.domain.withhold_below:.0f} % a verdict needs)")
    return SlideAssessment(meas, graded, cfg, domain=dom)


def _withhold(g: Grading, reason: str) -> Grading:
    """The grading with its high-grade flag withheld (None, not assessable) for ``reason``."""
    hg = dataclasses.replace(g.high_grade, high_grade=None, assessable=False, reason=reason)
    return dataclasses.replace(g, high_grade=hg, status="not_assessable")


def _not_measured(g: Grading, head: str, why: str) -> Grading:
    """The grading after a head the slide could not feed: its score and criterion unknown, never zero."""
    if head == "mitosis":
        reason = f"mitoses not measured: {why}"
        mit = dataclasses.replace(g.mitotic_score, score=None, assessable=False, reason=reason)
        crits = tuple(dataclasses.replace(c, passed=None, reason=reason) if c.name == "mitotic_activity" else c
                      for c in g.high_grade.criteria)
    elif head == "necrosis":
        reason = f"necrosis not measured: {why}"
        mit = g.mitotic_score
        g = dataclasses.replace(g, necrosis_score=dataclasses.replace(g.necrosis_score, score=None, assessable=False,
                                                                      reason=reason))
        crits = tuple(dataclasses.replace(c, passed=None, reason=reason) if c.name == "tumour_necrosis" else c
                      for c in g.high_grade.criteria)
    else:
        return g
    passed = [c.passed for c in crits]
    flag = True if True in passed else (False if None not in passed else None)
    hg = dataclasses.replace(g.high_grade, criteria=crits, high_grade=flag, assessable=flag is not None)
    n_ok = mit.assessable + g.necrosis_score.assessable
    status = "assessed" if n_ok == 2 else ("partially_assessable" if n_ok == 1 else "not_assessable")
    return dataclasses.replace(g, mitotic_score=mit, high_grade=hg, status=status)


def grade(measurements: SlideMeasurements, config: GradingConfig | None = None) -> Grading:
    """Apply the FNCLCC mitotic and necrosis scores and the high-grade flag to measurements."""
    cfg = config or GradingConfig()
    mit_value, mit_evidence, mit_reason = _mitotic_value(measurements, cfg)
    nec_value = measurements.necrosis_pct_of_tumour
    nec_reason = None if nec_value is not None else "no tumour tiles (tumour area is 0)"

    ms = cfg.grading.mitotic_score
    mitotic = ScoreResult(
        "fnclcc_mitotic_score",
        None if mit_value is None else 1 + _ge(mit_value, ms.score2_min_per_10hpf) + _ge(mit_value, ms.score3_min_per_10hpf),
        mit_value is not None,
        mit_reason,
        dataclasses.replace(
            mit_evidence,
            rule=(
                f"FNCLCC mitotic count score: 1 if < {ms.score2_min_per_10hpf:g}, 2 if {ms.score2_min_per_10hpf:g} "
                f"to < {ms.score3_min_per_10hpf:g}, 3 if >= {ms.score3_min_per_10hpf:g} mitoses per 10 HPF "
                f"({mit_evidence.basis}, HPF {cfg.hpf_area_mm2:g} mm²)"
            ),
            thresholds={"score2_min_per_10hpf": ms.score2_min_per_10hpf, "score3_min_per_10hpf": ms.score3_min_per_10hpf},
        ),
    )

    ns = cfg.grading.necrosis_score
    necrosis = ScoreResult(
        "fnclcc_necrosis_score",
        None if nec_value is None else _necrosis_score(nec_value, ns.none_max_pct, ns.score2_min_pct),
        nec_value is not None,
        nec_reason,
        Evidence(
            rule=(
                f"FNCLCC tumour necrosis score: 0 if necrosis <= {ns.none_max_pct:g} % of tumour (none), "
                f"1 if < {ns.score2_min_pct:g} %, 2 if >= {ns.score2_min_pct:g} % (tumour area includes necrosis)"
            ),
            value=nec_value,
            unit="% of tumour area",
            thresholds={"none_max_pct": ns.none_max_pct, "score2_min_pct": ns.score2_min_pct},
            basis="whole_tumour",
        ),
    )

    hg = cfg.grading.high_grade
    mit_crit = Criterion(
        "mitotic_activity",
        None if mit_value is None else _ge(mit_value, hg.mitoses_min_per_10hpf),
        mit_reason,
        dataclasses.replace(
            mit_evidence,
            rule=f"mitoses >= {hg.mitoses_min_per_10hpf:g} per 10 HPF ({mit_evidence.basis}, HPF {cfg.hpf_area_mm2:g} mm²)",
            thresholds={"mitoses_min_per_10hpf": hg.mitoses_min_per_10hpf},
        ),
    )
    nec_crit = Criterion(
        "tumour_necrosis",
        None if nec_value is None else _ge(nec_value, hg.necrosis_min_pct),
        nec_reason,
        dataclasses.replace(
            necrosis.evidence,
            rule=f"tumour necrosis >= {hg.necrosis_min_pct:g} % of tumour area",
            thresholds={"necrosis_min_pct": hg.necrosis_min_pct},
        ),
    )
    passed = [c.passed for c in (mit_crit, nec_crit)]
    flag = True if True in passed else (False if None not in passed else None)
    high = HighGradeFlag(
        high_grade=flag,
        assessable=flag is not None,
        rule=(
            f"high grade if mitoses >= {hg.mitoses_min_per_10hpf:g} per 10 HPF ({mit_evidence.basis}) "
            f"or tumour necrosis >= {hg.necrosis_min_pct:g} % of tumour area"
        ),
        criteria=(mit_crit, nec_crit),
    )
    n_ok = mitotic.assessable + necrosis.assessable
    status = "assessed" if n_ok == 2 else ("partially_assessable" if n_ok == 1 else "not_assessable")
    return Grading(status, mitotic, necrosis, high)


def _mitotic_value(meas: SlideMeasurements, cfg: GradingConfig) -> tuple[float | None, Evidence, str | None]:
    """The mitoses per 10 HPF on the configured basis, its evidence skeleton and why it may be missing."""
    mit = meas.mitoses
    basis = cfg.grading.mitotic_score.basis
    hs = mit.hotspot
    hotspot = None
    if hs is not None:
        hotspot = {
            "shape": hs.shape, "n_hpf": hs.n_hpf, "area_mm2": hs.area_mm2, "count": hs.count,
            "window_count": hs.window_count, "counted_in": hs.counted_in, "counted_area_mm2": hs.counted_area_mm2,
            "centre_x_um": hs.centre_x_um, "centre_y_um": hs.centre_y_um,
            "box_um": None if hs.box_um is None else list(hs.box_um),
            "tumour_fraction": hs.tumour_fraction, "window_exceeds_tumour": hs.window_exceeds_tumour,
        }
    if basis == "hotspot":
        value = None if hs is None else hs.per_10hpf
        count = None if hs is None else hs.count
        area = None if hs is None else hs.counted_area_mm2
        if hs is not None and hs.counted_in == "whole_viable_tumour":
            basis_text = f"hotspot = whole viable tumour, as no {cfg.hotspot.n_hpf:g}-HPF window is denser"
            if hs.window_exceeds_tumour:
                basis_text = f"hotspot = whole viable tumour, smaller than the {cfg.hotspot.n_hpf:g}-HPF window"
        else:
            basis_text = f"hotspot of {cfg.hotspot.n_hpf:g} HPF"
    else:
        value, count, area = mit.per_10hpf, mit.count, mit.counted_area_mm2
        basis_text = "whole viable tumour"
    reason = None if value is not None else "no viable tumour tiles (mitoses are counted in non-necrotic tumour)"
    ev = Evidence(rule="", value=value, unit="mitoses per 10 HPF", thresholds={}, basis=basis_text,
                  hpf_area_mm2=mit.hpf_area_mm2, hotspot=hotspot, count=count, counted_area_mm2=area)
    return value, ev, reason


def _ge(value: float, threshold: float) -> bool:
    return value >= threshold - _REL_TOL * max(1.0, abs(threshold))


def _necrosis_score(pct: float, none_max_pct: float, score2_min_pct: float) -> int:
    if pct <= none_max_pct + _REL_TOL * max(1.0, none_max_pct):
        return 0
    return 2 if _ge(pct, score2_min_pct) else 1
