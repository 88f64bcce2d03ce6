""""Tumour" has one spelling in histo's own keys; specs and summaries written with "tumor" still read."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from histo.errors import ConfigError
from histo.synth.phantom import load_spec, read_summary, spec_from_dict, upgrade_summary
from histo.synth.phantom.truth import SCHEMA

ROOT = Path(__file__).resolve().parents[1]


def test_old_spec_keys_load_and_the_new_ones_are_written(tmp_path: Path) -> None:
    old = {"name": "x", "tumor": {"fraction_of_tissue": 0.3}, "necrosis": {"fraction_of_tumor": 0.2}}
    spec = spec_from_dict(old)
    assert spec.tumour.fraction_of_tissue == 0.3 and spec.necrosis.fraction_of_tumour == 0.2
    written = spec.to_dict()
    assert "tumour" in written and "tumor" not in written
    assert written["necrosis"] == {"fraction_of_tumour": 0.2}
    assert spec_from_dict(written) == spec
    assert old == {"name": "x", "tumor": {"fraction_of_tissue": 0.3}, "necrosis": {"fraction_of_tumor": 0.2}}


def test_old_override_keys_apply_on_a_new_spec_file(tmp_path: Path) -> None:
    """A training config's phantom overrides spelled the old way still change the preset."""
    p = tmp_path / "s.yaml"
    p.write_text("name: x\ntumour: {fraction_of_tissue: 0.3, ovoid_fraction: 0.1}\n", encoding="utf-8")
    spec = load_spec(p, {"tumor": {"fraction_of_tissue": 0.4}, "necrosis": {"fraction_of_tumor": 0.25}})
    assert spec.tumour.fraction_of_tissue == 0.4 and spec.tumour.ovoid_fraction == 0.1
    assert spec.necrosis.fraction_of_tumour == 0.25


@pytest.mark.parametrize("data, name", [
    ({"tumor": {}, "tumour": {}}, "tumour"),
    ({"necrosis": {"fraction_of_tumor": 0.1, "fraction_of_tumour": 0.2}}, "necrosis.fraction_of_tumour"),
])
def test_both_spellings_is_an_error(data: dict, name: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"give '{name}'")):
        spec_from_dict(data, "s.yaml")


def test_old_summary_reads_with_new_keys(tmp_path: Path) -> None:
    old = {"schema": "histo.synth.phantom.summary/1", "necrosis_pct_of_tumor": 12.5,
           "areas_mm2": {"tissue": 4.0, "tumor": 2.0, "tumor_viable": 1.75, "tumor_fascicular": 1.0,
                         "tumor_haphazard": 0.75, "necrosis": 0.25},
           "cells": {"total": 10, "tumor": 7, "by_kind": {"spindle": 7}}}
    p = tmp_path / "summary.json"
    p.write_text(json.dumps(old), encoding="utf-8")
    s = read_summary(p)
    assert s["schema"] == SCHEMA and s["necrosis_pct_of_tumour"] == 12.5
    assert s["areas_mm2"] == {"tissue": 4.0, "tumour": 2.0, "tumour_viable": 1.75, "tumour_fascicular": 1.0,
                              "tumour_haphazard": 0.75, "necrosis": 0.25}
    assert s["cells"] == {"total": 10, "tumour": 7, "by_kind": {"spindle": 7}}
    assert upgrade_summary(s) == s


def test_shipped_configs_use_one_spelling() -> None:
    for f in sorted((ROOT / "configs" / "synth").glob("*.yaml")) + [ROOT / "configs" / "train" / "phantom_multitask.yaml",
                                                                   ROOT / "configs" / "train" / "default_multitask.yaml"]:
        text = f.read_text(encoding="utf-8")
        assert not re.search(r"\btumor\b|_tumor\b", text), f"{f.name} spells 'tumor'"
        yaml.safe_load(text)
