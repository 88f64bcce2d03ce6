"""One config loader: every YAML config of histo goes through histo.config (same checks, same messages)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

import pytest

from histo.aggregate import config as grading_config
from histo.config import apply_overrides, from_dict, merge
from histo.errors import ConfigError
from histo.synth.phantom import spec as phantom_spec


@dataclass(frozen=True)
class _Inner:
    kind: Literal["a", "b"] = "a"
    values: tuple[float, ...] = (1.0, 2.0)


@dataclass(frozen=True)
class _Outer:
    name: str = "x"
    inner: _Inner = field(default_factory=_Inner)


def test_grading_and_phantom_configs_use_the_one_loader() -> None:
    # no private copies of the YAML-to-dataclass machinery are left beside the dataclasses
    for module in (grading_config, phantom_spec):
        assert not hasattr(module, "_build") and not hasattr(module, "_convert") and not hasattr(module, "_coerce")
    assert not hasattr(phantom_spec, "merge_overrides")


def test_list_of_plain_values_names_the_list() -> None:
    with pytest.raises(ConfigError, match=r"'inner\.values' must be a list of numbers, got \[1, 'two'\]"):
        from_dict(_Outer, {"inner": {"values": [1, "two"]}}, "c.yaml")


def test_literal_lists_its_choices_and_refuses_bools() -> None:
    with pytest.raises(ConfigError, match=r"c\.yaml: 'inner\.kind' must be one of a, b, got 'c'"):
        from_dict(_Outer, {"inner": {"kind": "c"}}, "c.yaml")


def test_phantom_spec_takes_set_overrides_like_every_config() -> None:
    data = apply_overrides({}, ["tumour.haphazard_stroma=myxoid", "mpp=0.5"])
    spec = phantom_spec.spec_from_dict(data, "--set")
    assert spec.tumour.haphazard_stroma == "myxoid" and spec.mpp == 0.5
    with pytest.raises(ConfigError, match=r"'tumour\.haphazard_stroma' must be one of hyalinised, myxoid"):
        phantom_spec.spec_from_dict(apply_overrides({}, ["tumour.haphazard_stroma=wavy"]), "--set")


def test_merge_is_deep_copies_and_none_restores_the_default() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 4}
    out = merge(base, {"a": {"b": 2}, "d": None})
    assert out == {"a": {"b": 2, "c": [1, 2]}}
    out["a"]["c"].append(3)
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 4}


def test_tissue_config_reports_like_every_config() -> None:
    from histo.tissue import TissueConfig

    with pytest.raises(ConfigError, match=r"^t\.yaml: unknown key 'closing_radius' \(allowed here: .*closing_um"):
        TissueConfig.from_dict({"closing_radius": 8}, source="t.yaml")
    with pytest.raises(ConfigError, match=r"^t\.yaml: 'remove_pen' must be true or false, got 'yes'"):
        TissueConfig.from_dict({"remove_pen": "yes"}, source="t.yaml")
    with pytest.raises(ConfigError, match=r"^t\.yaml: .*min_od"):  # range checks keep naming the file
        TissueConfig.from_dict({"min_od": 0.2, "max_od": 0.1}, source="t.yaml")


def test_marker_panel_loads_through_the_one_loader(tmp_path) -> None:
    from typing import get_args

    from histo.ihc import cells, compartment_stats, compartments, markers

    assert not hasattr(markers, "_check_keys") and not hasattr(markers, "_number")
    assert get_args(cells.NuclearChannel) == cells.NUCLEAR_CHANNELS
    assert get_args(markers.Compartment) == cells.COMPARTMENTS
    hints = __import__("typing").get_type_hints(cells.CellParams)
    assert get_args(hints["dab_statistic"]) == compartment_stats.STATISTICS
    assert get_args(hints["shared_membrane"]) == compartments.SHARED_MEMBRANE
    good = {"compartment": "nucleus", "thresholds_od": [0.2, 0.4, 0.6], "call": {"min_percent_positive": 10}}
    with pytest.raises(ConfigError, match=r"p\.yaml: 'markers\.KI67': missing key 'compartment'"):
        markers.parse_panel({"markers": {"KI67": {k: v for k, v in good.items() if k != "compartment"}}}, "p.yaml")
    with pytest.raises(ConfigError, match=r"'markers\.KI67\.call\.min_cells' must be an integer"):
        markers.parse_panel({"markers": {"KI67": {**good, "call": {"min_percent_positive": 10, "min_cells": 2.5}}}},
                            "p.yaml")
    panel = markers.parse_panel({"cells": {"min_area_um2": 10.0}, "markers": {"KI67": {**good, "cells": {"smooth_um": 1}}}},
                                "p.yaml")
    assert panel["KI67"].cell_params.min_area_um2 == 10.0 and panel["KI67"].cell_params.smooth_um == 1.0


@dataclass(frozen=True)
class _Table:
    scores: dict[str, float] = field(default_factory=dict)
    heads: dict[str, dict[str, int] | None] = field(default_factory=dict)
    inner: dict[str, _Inner] = field(default_factory=dict)


def test_mapping_values_are_checked_under_their_dotted_key() -> None:
    table = from_dict(_Table, {"scores": {"a": 1, "b": 0.5}, "heads": {"x": None, "y": {"n": 2}},
                               "inner": {"p": {"kind": "b"}}}, "c.yaml")
    assert table.scores == {"a": 1.0, "b": 0.5} and isinstance(table.scores["a"], float)
    assert table.heads == {"x": None, "y": {"n": 2}} and table.inner["p"] == _Inner(kind="b")
    with pytest.raises(ConfigError, match=r"^c\.yaml: 'scores\.b' must be float, got 'high'"):
        from_dict(_Table, {"scores": {"a": 1, "b": "high"}}, "c.yaml")
    with pytest.raises(ConfigError, match=r"^c\.yaml: 'heads\.y' must be a mapping, got int"):
        from_dict(_Table, {"heads": {"y": 5}}, "c.yaml")
    with pytest.raises(ConfigError, match=r"^c\.yaml: 'heads\.y\.n' must be an integer, got 'two'"):
        from_dict(_Table, {"heads": {"y": {"n": "two"}}}, "c.yaml")
    with pytest.raises(ConfigError, match=r"^c\.yaml: unknown key 'inner\.p\.colour'"):
        from_dict(_Table, {"inner": {"p": {"colour": 1}}}, "c.yaml")


def test_model_card_loads_through_the_one_loader() -> None:
    import typing

    from histo.errors import ModelError
    from histo.models import card as card_module
    from histo.models import card_schema
    from histo.models.card import ModelCard

    # no hand-written key/type checks are left in the card module: its file layout is dataclasses
    assert not hasattr(card_module, "_validate") and not hasattr(card_module, "_scale")
    assert not hasattr(ModelCard, "_from_v1")
    file_fields = tuple(f.name for f in fields(card_schema.CardFields))
    # the card's typed attributes are the file's fields, with each scale checked into a ScaleSpec
    file_types = typing.get_type_hints(card_schema.CardFields)
    card_types = {k: v for k, v in typing.get_type_hints(ModelCard).items() if k in file_types}
    assert card_types == {**file_types, "scales": dict[str, card_schema.ScaleSpec]}
    assert file_fields == ModelCard.FIELDS == (
        "name", "scales", "mitosis_threshold", "mitosis_min_distance_um", "threshold_selection", "preprocessing",
        "metrics", "provenance", "domain", "config_digest", "weights_sha256", "histo_version", "created",
        "schema_version")
    scale = {"backbone": "tiny", "tile_px": 64, "mpp": 0.5, "heads": ["necrosis"], "mean": [0.5] * 3, "std": [0.2] * 3}
    with pytest.raises(ConfigError) as loader_err:
        from_dict(card_schema.ScaleFields, {**scale, "tile_px": "64"}, "model card m.json", prefix="scales.main.")
    with pytest.raises(ModelError) as card_err:
        ModelCard("m", scales={"main": {**scale, "tile_px": "64"}}, source="m.json")
    assert str(card_err.value) == str(loader_err.value)  # the loader's own words, as the card's ModelError
    assert isinstance(card_err.value.__cause__, ConfigError)
