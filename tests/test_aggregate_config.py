"""histo.aggregate grading config: the YAML default, validation errors naming key and file."""

from __future__ import annotations

from pathlib import Path

import pytest

from histo.aggregate import HPF_PRESETS_MM2, GradingConfig, load_grading_config
from histo.errors import ConfigError

DEFAULT_YAML = Path(__file__).resolve().parents[1] / "configs" / "grading" / "default.yaml"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "grading.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def test_default_yaml_matches_built_in_defaults():
    cfg = load_grading_config(DEFAULT_YAML)
    assert cfg == GradingConfig() == load_grading_config(None)
    assert cfg.hpf_area_mm2 == 0.237 and cfg.hotspot_area_mm2 == pytest.approx(2.37)
    assert cfg.grading.mitotic_score.basis == "hotspot"


def test_partial_file_takes_defaults_and_fnclcc_preset(tmp_path):
    cfg = load_grading_config(write(tmp_path, "hpf:\n  preset: fnclcc\n"))
    assert cfg.hpf_area_mm2 == HPF_PRESETS_MM2["fnclcc"] == 0.1734
    assert cfg.tiles == GradingConfig().tiles
    custom = load_grading_config(write(tmp_path, "hpf: {preset: custom, area_mm2: 0.2}\n"))
    assert custom.hpf_area_mm2 == 0.2
    assert load_grading_config(write(tmp_path, "")) == GradingConfig()


@pytest.mark.parametrize("text,key", [
    ("colour: red\n", "'colour'"),
    ("grading:\n  necrosis_score:\n    none_pct: 1\n", "'grading.necrosis_score.none_pct'"),
    ("hotspot:\n  n_hfp: 10\n", "'hotspot.n_hfp'"),
])
def test_unknown_key_names_key_and_file(tmp_path, text, key):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError, match="unknown key") as e:
        load_grading_config(p)
    assert key in str(e.value) and str(p) in str(e.value)


@pytest.mark.parametrize("text,key,what", [
    ("grading:\n  mitotic_score:\n    score2_min_per_10hpf: ten\n", "grading.mitotic_score.score2_min_per_10hpf", "must be a number"),
    ("mitoses:\n  min_score: yes\n", "mitoses.min_score", "must be a number"),
    ("tiles:\n  pattern_classes: [none, 3]\n", "tiles.pattern_classes", "list of strings"),
    ("version: 1.0\n", "version", "must be an integer"),
    ("hotspot:\n  shape: hexagon\n", "hotspot.shape", "must be one of"),
    ("grading: 3\n", "grading", "must be a mapping"),
    ("tiles:\n  non_spindle_class: 5\n", "tiles.non_spindle_class", "must be a string"),
])
def test_wrong_type_names_key_and_file(tmp_path, text, key, what):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError, match=what) as e:
        load_grading_config(p)
    assert f"'{key}'" in str(e.value) and str(p) in str(e.value)


@pytest.mark.parametrize("text,key", [
    ("version: 2\n", "version"),
    ("hpf: {preset: custom}\n", "hpf.area_mm2"),
    ("hpf: {preset: fnclcc, area_mm2: 0.2}\n", "hpf.area_mm2"),
    ("grading: {mitotic_score: {score2_min_per_10hpf: 20, score3_min_per_10hpf: 10}}\n", "grading.mitotic_score.score3_min_per_10hpf"),
    ("grading: {necrosis_score: {none_max_pct: 60}}\n", "grading.necrosis_score.none_max_pct"),
    ("tiles: {necrosis_min_p: 1.5}\n", "tiles.necrosis_min_p"),
    ("tiles: {necrosis_grow_p: 0.7}\n", "tiles.necrosis_grow_p"),
    ("tiles: {necrosis_min_region_mm2: -1}\n", "tiles.necrosis_min_region_mm2"),
    ("tiles: {necrosis_min_region_pct_of_tissue: 150}\n", "tiles.necrosis_min_region_pct_of_tissue"),
    ("tiles: {non_spindle_class: background}\n", "tiles.non_spindle_class"),
    ("tiles: {pattern_classes: [none, none]}\n", "tiles.pattern_classes"),
    ("hotspot: {n_hpf: 0}\n", "hotspot.n_hpf"),
    ("grading: {high_grade: {necrosis_min_pct: 0}}\n", "grading.high_grade.necrosis_min_pct"),
])
def test_bad_values_name_key_and_file(tmp_path, text, key):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_grading_config(p)
    assert f"'{key}'" in str(e.value) and str(p) in str(e.value)


def test_missing_or_unparsable_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_grading_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_grading_config(write(tmp_path, "grading: [unclosed\n"))
    with pytest.raises(ConfigError, match="top level"):
        load_grading_config(write(tmp_path, "- a\n- b\n"))
