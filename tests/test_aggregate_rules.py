"""histo.aggregate grading rules: FNCLCC score boundaries, the high-grade flag and its evidence, JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from aggregate_tables import make_tiles, points

from histo.aggregate import (
    SCHEMA_VERSION,
    AreaMethod,
    GradingConfig,
    HotspotMeasurement,
    MitosisMeasurements,
    PatternMeasurements,
    SlideMeasurements,
    assess_slide,
    grade,
)
from histo.errors import ConfigError


def meas(hotspot: float | None = 5.0, whole: float | None = 5.0, necrosis_pct: float | None = 0.0) -> SlideMeasurements:
    """Measurements with the given mitoses per 10 HPF (hotspot and whole tumour) and necrosis %."""
    hs = None
    if hotspot is not None:
        hs = HotspotMeasurement("square", 10.0, 2.37, int(hotspot), hotspot, 1500.0, 2500.0,
                                (730.0, 1730.0, 2270.0, 3270.0), 2.3, 0.97, False)
    tumour = 0.0 if necrosis_pct is None else 10.0
    return SlideMeasurements(
        mpp=0.5, n_tiles=100, n_tumour_tiles=50, n_necrotic_tiles=0, tumour_source="p_tumour",
        area_method=AreaMethod("coverage_raster_nearest_centre", 100.0, True),
        tissue_area_mm2=20.0, tumour_area_mm2=tumour,
        viable_tumour_area_mm2=0.0 if hotspot is None else tumour * (1 - (necrosis_pct or 0) / 100),
        necrosis_area_mm2=tumour * (necrosis_pct or 0) / 100, necrosis_pct_of_tumour=necrosis_pct,
        pattern=PatternMeasurements(None, None, None),
        mitoses=MitosisMeasurements(0.5, 0, 0, 0, None if whole is None else 1.0, whole, "field22_40x", 0.237, hs),
    )


@pytest.mark.parametrize("value,score", [(0, 1), (9, 1), (9.999, 1), (10, 2), (19, 2), (19.5, 2), (20, 3), (45, 3)])
def test_mitotic_score_boundaries_on_hotspot(value, score):
    r = grade(meas(hotspot=value, whole=0.0)).mitotic_score
    assert r.score == score and r.assessable
    assert r.evidence.value == value
    assert r.evidence.thresholds == {"score2_min_per_10hpf": 10.0, "score3_min_per_10hpf": 20.0}


def test_mitotic_score_on_whole_tumour_basis():
    cfg = GradingConfig.from_dict({"grading": {"mitotic_score": {"basis": "whole_tumour"}}})
    assert grade(meas(hotspot=30, whole=9.5), cfg).mitotic_score.score == 1
    assert grade(meas(hotspot=30, whole=10.0), cfg).mitotic_score.score == 2
    # float sums that land a hair under a threshold still reach it
    assert grade(meas(hotspot=0, whole=19.999999999999996), cfg).mitotic_score.score == 3
    assert "whole viable tumour" in grade(meas(), cfg).mitotic_score.evidence.rule


@pytest.mark.parametrize("k,score", [(9, 1), (10, 2), (19, 2), (20, 3)])
def test_mitotic_score_boundaries_end_to_end(k, score):
    # k mitoses in a tight cluster on 10.24 mm square of tumour; the hotspot holds exactly k
    xy = np.random.default_rng(k).uniform(3000, 3400, size=(k, 2))
    a = assess_slide(make_tiles(40, 40, 512), points(xy), 0.5)
    assert a.measurements.mitoses.hotspot.count == k
    assert a.grading.mitotic_score.score == score


@pytest.mark.parametrize("pct,score", [(0.0, 0), (0.01, 1), (49.9, 1), (50.0, 2), (49.99999999999999, 2), (100.0, 2)])
def test_necrosis_score_boundaries(pct, score):
    r = grade(meas(necrosis_pct=pct)).necrosis_score
    assert r.score == score
    assert r.evidence.thresholds == {"none_max_pct": 0.0, "score2_min_pct": 50.0}


def test_necrosis_none_tolerance_is_configurable():
    cfg = GradingConfig.from_dict({"grading": {"necrosis_score": {"none_max_pct": 1.0}}})
    assert grade(meas(necrosis_pct=0.8), cfg).necrosis_score.score == 0
    assert grade(meas(necrosis_pct=1.0), cfg).necrosis_score.score == 0
    assert grade(meas(necrosis_pct=1.2), cfg).necrosis_score.score == 1


@pytest.mark.parametrize("necrotic_cols,score", [(set(), 0), ({0}, 1), ({0, 1}, 2)])
def test_necrosis_score_end_to_end(necrotic_cols, score):
    tiles = make_tiles(4, 1, 200, necrosis=lambda r, c: c in necrotic_cols)
    a = assess_slide(tiles, None, 0.5)
    assert a.measurements.necrosis_pct_of_tumour == pytest.approx(25.0 * len(necrotic_cols))
    assert a.grading.necrosis_score.score == score


# FNCLCC-score-3 / necrosis-score-2 thresholds, stated explicitly (the defaults are lower: see below)
STRICT = GradingConfig.from_dict({"grading": {"high_grade": {"mitoses_min_per_10hpf": 20, "necrosis_min_pct": 50}}})


def test_default_high_grade_rule_is_elevated_mitoses_or_any_necrosis():
    """Defaults: >= 10 mitoses per 10 HPF (mitotic score >= 2) or tumour necrosis >= 1 % -> high grade."""
    assert grade(meas(hotspot=10, necrosis_pct=0.0)).high_grade.high_grade is True
    assert grade(meas(hotspot=9, necrosis_pct=1.0)).high_grade.high_grade is True
    low = grade(meas(hotspot=9, necrosis_pct=0.5)).high_grade
    assert low.high_grade is False and "10" in low.rule and "1 %" in low.rule


def test_high_grade_from_mitoses_carries_evidence():
    g = grade(meas(hotspot=20, whole=3.0, necrosis_pct=10.0), STRICT)
    hg = g.high_grade
    assert hg.high_grade is True and hg.assessable
    mit, nec = hg.criteria
    assert (mit.name, mit.passed, nec.name, nec.passed) == ("mitotic_activity", True, "tumour_necrosis", False)
    assert mit.evidence.value == 20 and mit.evidence.thresholds == {"mitoses_min_per_10hpf": 20.0}
    assert ">= 20 per 10 HPF" in mit.evidence.rule and "hotspot" in mit.evidence.basis
    assert mit.evidence.hpf_area_mm2 == 0.237
    assert mit.evidence.hotspot["centre_x_um"] == 1500.0 and mit.evidence.hotspot["box_um"] == [730.0, 1730.0, 2270.0, 3270.0]
    assert nec.evidence.value == 10.0 and nec.evidence.thresholds == {"necrosis_min_pct": 50.0}
    assert "20" in hg.rule and "50" in hg.rule


def test_high_grade_from_necrosis_and_negative_case():
    assert grade(meas(hotspot=19, necrosis_pct=50.0), STRICT).high_grade.high_grade is True
    neg = grade(meas(hotspot=19, necrosis_pct=49.0), STRICT).high_grade
    assert neg.high_grade is False and [c.passed for c in neg.criteria] == [False, False]


def test_high_grade_thresholds_come_from_config():
    cfg = GradingConfig.from_dict({"grading": {"high_grade": {"mitoses_min_per_10hpf": 10, "necrosis_min_pct": 5}}})
    assert grade(meas(hotspot=10, necrosis_pct=0.0), cfg).high_grade.high_grade is True
    assert grade(meas(hotspot=5, necrosis_pct=5.0), cfg).high_grade.high_grade is True
    assert grade(meas(hotspot=9, necrosis_pct=4.0), cfg).high_grade.high_grade is False


def test_partially_assessable_flag():
    # fully necrotic tumour: no viable tumour for mitoses, necrosis 100 %
    full = grade(meas(hotspot=None, whole=None, necrosis_pct=100.0))
    assert full.status == "partially_assessable"
    assert full.mitotic_score.score is None and "viable tumour" in full.mitotic_score.reason
    assert full.high_grade.high_grade is True  # necrosis alone passes
    unknown = grade(meas(hotspot=None, whole=None, necrosis_pct=10.0), STRICT)
    assert unknown.high_grade.high_grade is None and not unknown.high_grade.assessable


def test_fully_necrotic_slide_end_to_end():
    a = assess_slide(make_tiles(2, 2, 200, necrosis=lambda r, c: True), points([[50, 50]]), 0.5)
    assert a.measurements.necrosis_pct_of_tumour == pytest.approx(100.0)
    assert a.measurements.mitoses.count == 0 and a.measurements.mitoses.hotspot is None
    assert a.grading.status == "partially_assessable"
    assert a.grading.necrosis_score.score == 2


def test_assessment_serialises_to_versioned_json():
    xy = np.random.default_rng(0).uniform(0, 5000, size=(40, 2))
    a = assess_slide(make_tiles(10, 10, 1000, necrosis=lambda r, c: c == 0), points(xy), 0.5)
    d = json.loads(a.to_json())
    assert d["schema_version"] == SCHEMA_VERSION == 1
    assert d["measurements"]["mitoses"]["hpf_area_mm2"] == 0.237
    assert d["grading"]["mitotic_score"]["evidence"]["hotspot"]["box_um"] == list(a.measurements.mitoses.hotspot.box_um)
    assert d["grading"]["necrosis_score"]["score"] == 1
    # the recorded config is the one applied: a null min_score resolved to the card's threshold (0.5 without a card)
    assert d["config"] == GradingConfig().for_model(0.5).to_dict() and d["config"]["mitoses"]["min_score"] == 0.5
    assert GradingConfig.from_dict(d["config"]) == GradingConfig().for_model(0.5)


def test_one_mitosis_threshold_null_min_score_is_the_cards():
    """min_score null follows the card's threshold; a number overrides it in both directions."""
    tiles = make_tiles(4, 4, 500)
    mit = points([[100, 100], [400, 400], [700, 700]]).assign(score=[0.3, 0.45, 0.9])  # µm, inside the tiles
    count = lambda **kw: assess_slide(tiles, mit, 0.5, kw.pop("cfg", None), **kw).measurements.mitoses.count  # noqa: E731
    assert GradingConfig().mitoses.min_score is None
    assert count(mitosis_threshold=0.5) == 1
    assert count(mitosis_threshold=0.4) == 2  # a card with a lower threshold counts more
    assert count(mitosis_threshold=0.4, cfg=GradingConfig.from_dict({"mitoses": {"min_score": 0.2}})) == 3
    assert count(mitosis_threshold=0.4, cfg=GradingConfig.from_dict({"mitoses": {"min_score": 0.95}})) == 0
    with pytest.raises(ConfigError, match="does not record the model's threshold"):
        GradingConfig().for_model(None)
