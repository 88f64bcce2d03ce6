"""Each named phantom preset's summary holds (computed from the placed objects at the preset's full size;
no pixels are rendered, so this takes about half a second a preset)."""

from __future__ import annotations

from pathlib import Path

from histo.synth.phantom import build_phantom, load_spec, summary

PRESETS = Path(__file__).resolve().parents[1] / "configs" / "synth"


def _summary(name: str) -> dict:
    return summary(build_phantom(load_spec(PRESETS / f"{name}.yaml")))


def test_low_grade_alk_positive():
    s = _summary("low_grade_alk_positive")
    assert s["width_px"] == s["height_px"] == 20000
    assert 0.5 <= s["mitoses"]["per_10hpf"] <= 4
    assert s["necrosis_pct_of_tumour"] == 0 and s["areas_mm2"]["necrosis"] == 0
    assert s["grading"]["mitotic_score"] == 1 and s["grading"]["verdict"] == "low grade"
    assert s["ihc"]["call"] == "positive" and s["ihc"]["pct_positive"] > 80
    assert s["ihc"]["compartment"] == "cytoplasmic" and s["ihc"]["marker"] == "ALK"
    assert s["areas_mm2"]["tumour_fascicular"] > 0 and s["areas_mm2"]["tumour_haphazard"] > 0


def test_high_grade_alk_positive():
    s = _summary("high_grade_alk_positive")
    assert s["mitoses"]["per_10hpf"] >= 20
    assert s["mitoses"]["hotspot_per_10hpf"] >= 20
    assert 20 <= s["necrosis_pct_of_tumour"] <= 30
    assert s["grading"]["mitotic_score"] == 3 and s["grading"]["necrosis_score"] == 1
    assert s["grading"]["verdict"] == "high grade"
    assert s["ihc"]["call"] == "positive" and s["ihc"]["h_score"] > 200


def test_alk_negative():
    s = _summary("alk_negative")
    assert s["ihc"]["pct_positive"] == 0 and s["ihc"]["h_score"] == 0 and s["ihc"]["call"] == "negative"
    assert s["ihc"]["n_scored_cells"] > 10000
    assert s["grading"]["verdict"] == "low grade"


def test_artefacts():
    s = _summary("artefacts")
    a = s["artefacts"]
    assert a["pen_mm2"] > 0.1 and a["blur_mm2"] > 0.1 and a["fold_mm2"] > 0.05
    i = a["ihc"]  # the IHC companion carries its own artefacts
    assert i["pen_mm2"] > 0.05 and i["blur_mm2"] > 0.1 and i["fold_mm2"] > 0.02 and len(i["pen_colors"]) == 1
    assert s["grading"]["verdict"] == "low grade"
