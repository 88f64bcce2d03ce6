"""The grading configuration: dataclasses holding every default and the range checks; histo.config loads it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from histo.config import from_dict, load_yaml, to_dict
from histo.errors import ConfigError
from histo.inputs import DEFAULT_PATTERN_CLASSES

CONFIG_VERSION = 1

#: Named high-power-field areas (mm²). field22_40x: field number 22 through a 40x objective
#: (the issue's default); fnclcc: the 0.1734 mm² HPF of the original FNCLCC grading papers.
HPF_PRESETS_MM2: dict[str, float] = {"field22_40x": 0.237, "fnclcc": 0.1734}


@dataclass(frozen=True)
class TileRules:
    """How a tile's scores become classes."""

    pattern_classes: tuple[str, ...] = DEFAULT_PATTERN_CLASSES
    non_spindle_class: str = "none"
    tumour_min_p: float = 0.5
    necrosis_min_p: float = 0.5  # a tile at or above this seeds a necrotic region
    necrosis_grow_p: float = 0.25  # the region grows through neighbouring tiles at or above this
    necrosis_min_region_mm2: float = 0.05  # smaller regions are dropped (isolated mimics) ...
    necrosis_min_region_pct_of_tissue: float = 5.0  # ... unless at least this % of the tissue (biopsies)


DEFAULT_MITOSIS_THRESHOLD = 0.5  # ModelCard's default mitosis_threshold: what a null min_score means without a card


@dataclass(frozen=True)
class MitosisRules:
    """Which detected mitoses count: those scoring at least ``min_score``.

    ``None`` (the default) means the model card's ``mitosis_threshold``, the operating point histo train
    chose on the validation split; a number overrides it, lower or higher (prediction keeps candidates
    down to histo.predict.CANDIDATE_FLOOR, so a lower value finds weaker candidates).
    """

    min_score: float | None = None


@dataclass(frozen=True)
class HpfRules:
    """The high-power-field area used for every per-HPF figure."""

    preset: Literal["field22_40x", "fnclcc", "custom"] = "field22_40x"
    area_mm2: float | None = None

    @property
    def resolved_area_mm2(self) -> float:
        """The HPF area in mm² after applying the preset."""
        if self.preset != "custom":
            return HPF_PRESETS_MM2[self.preset]
        if self.area_mm2 is None:
            raise ConfigError("hpf.area_mm2 must be set when hpf.preset is 'custom'")
        return float(self.area_mm2)


@dataclass(frozen=True)
class HotspotRules:
    """Shape and search of the densest mitotic window."""

    shape: Literal["square", "circle"] = "square"
    n_hpf: float = 10.0
    grid_step_um: float | None = None


@dataclass(frozen=True)
class MitoticScoreRules:
    """FNCLCC mitotic count score thresholds (mitoses per 10 HPF)."""

    basis: Literal["hotspot", "whole_tumour"] = "hotspot"
    score2_min_per_10hpf: float = 10.0
    score3_min_per_10hpf: float = 20.0


@dataclass(frozen=True)
class NecrosisScoreRules:
    """FNCLCC tumour necrosis score thresholds (% of tumour area)."""

    none_max_pct: float = 0.0
    score2_min_pct: float = 50.0


@dataclass(frozen=True)
class HighGradeRules:
    """Thresholds of the high-grade flag: either criterion passing sets it."""

    mitoses_min_per_10hpf: float = 10.0  # FNCLCC mitotic score >= 2: "elevated mitoses"
    necrosis_min_pct: float = 1.0  # any appreciable tumour necrosis


@dataclass(frozen=True)
class GradingRules:
    """The three grading rules."""

    mitotic_score: MitoticScoreRules = field(default_factory=MitoticScoreRules)
    necrosis_score: NecrosisScoreRules = field(default_factory=NecrosisScoreRules)
    high_grade: HighGradeRules = field(default_factory=HighGradeRules)


@dataclass(frozen=True)
class DomainRules:
    """How the model's training-domain check (tiles.parquet ``in_domain``) limits grading.

    Out-of-domain tiles count neither areas nor mitoses. By tissue area in domain, a slide is ``in_domain``
    (>= partly_below), ``partly_out_of_domain`` or ``out_of_domain`` (< out_below); below ``withhold_below``
    the high-grade flag is not assessable. ``check: false`` turns all of it off (the report says so).
    """

    check: bool = True
    partly_below: float = 0.8
    out_below: float = 0.5
    withhold_below: float = 0.8


@dataclass(frozen=True)
class GradingConfig:
    """Everything histo.aggregate needs besides the tables; the one place its defaults live."""

    version: int = CONFIG_VERSION
    tiles: TileRules = field(default_factory=TileRules)
    mitoses: MitosisRules = field(default_factory=MitosisRules)
    hpf: HpfRules = field(default_factory=HpfRules)
    hotspot: HotspotRules = field(default_factory=HotspotRules)
    grading: GradingRules = field(default_factory=GradingRules)
    domain: DomainRules = field(default_factory=DomainRules)

    @property
    def hpf_area_mm2(self) -> float:
        """The HPF area in mm² used for every per-HPF figure."""
        return self.hpf.resolved_area_mm2

    @property
    def hotspot_area_mm2(self) -> float:
        """Area of the hotspot window: n_hpf high-power fields."""
        return self.hotspot.n_hpf * self.hpf_area_mm2

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML/JSON friendly) of the resolved config."""
        return to_dict(self)

    def for_model(self, mitosis_threshold: float | None, source: str = "the prediction") -> GradingConfig:
        """This config with ``mitoses.min_score`` resolved: the model card's threshold when it is null."""
        if self.mitoses.min_score is not None:
            return self
        if mitosis_threshold is None:
            raise ConfigError(f"mitoses.min_score is null (meaning the model card's mitosis_threshold), but {source} "
                              "does not record the model's threshold; set mitoses.min_score (e.g. --set "
                              "mitoses.min_score=0.5)")
        return dataclasses.replace(self, mitoses=dataclasses.replace(self.mitoses, min_score=float(mitosis_threshold)))

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> GradingConfig:
        """Build and validate a config from a mapping; missing keys take their defaults."""
        cfg = from_dict(cls, data, source)
        _check_values(cfg, source)
        return cfg


def load_grading_config(path: str | Path | None = None) -> GradingConfig:
    """Load and validate a grading YAML file; None gives the built-in defaults."""
    if path is None:
        return GradingConfig()
    return GradingConfig.from_dict(load_yaml(path), source=str(path))


def _check_values(cfg: GradingConfig, source: str) -> None:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{source}: key '{key}' {why}")

    if cfg.version != CONFIG_VERSION:
        raise bad("version", f"must be {CONFIG_VERSION} (this histo reads grading config version {CONFIG_VERSION}), got {cfg.version}")
    t = cfg.tiles
    if len(set(t.pattern_classes)) != len(t.pattern_classes) or any(not c for c in t.pattern_classes):
        raise bad("tiles.pattern_classes", f"must be distinct non-empty names, got {list(t.pattern_classes)}")
    if t.non_spindle_class not in t.pattern_classes:
        raise bad("tiles.non_spindle_class", f"must be one of tiles.pattern_classes {list(t.pattern_classes)}, got {t.non_spindle_class!r}")
    if len(t.pattern_classes) < 2:
        raise bad("tiles.pattern_classes", "needs at least one spindle pattern besides the non-spindle class")
    for key, v in (("tiles.tumour_min_p", t.tumour_min_p), ("tiles.necrosis_min_p", t.necrosis_min_p),
                   ("tiles.necrosis_grow_p", t.necrosis_grow_p), ("mitoses.min_score", cfg.mitoses.min_score)):
        if v is None:
            continue  # min_score null: the model card's threshold, resolved by for_model
        if not 0.0 <= v <= 1.0:
            raise bad(key, f"must be within 0..1, got {v}")
    d = cfg.domain
    for key, v in (("domain.partly_below", d.partly_below), ("domain.out_below", d.out_below),
                   ("domain.withhold_below", d.withhold_below)):
        if not 0.0 <= v <= 1.0:
            raise bad(key, f"must be a fraction within 0..1, got {v}")
    if d.out_below > d.partly_below:
        raise bad("domain.out_below", f"must not exceed domain.partly_below ({d.partly_below}), got {d.out_below}")
    if t.necrosis_grow_p > t.necrosis_min_p:
        raise bad("tiles.necrosis_grow_p", f"must not exceed tiles.necrosis_min_p ({t.necrosis_min_p}), got {t.necrosis_grow_p}")
    if not 0.0 <= t.necrosis_min_region_mm2 < 100.0:
        raise bad("tiles.necrosis_min_region_mm2", f"must be within [0, 100) mm², got {t.necrosis_min_region_mm2}")
    if not 0.0 <= t.necrosis_min_region_pct_of_tissue <= 100.0:
        raise bad("tiles.necrosis_min_region_pct_of_tissue", f"must be within 0..100, got {t.necrosis_min_region_pct_of_tissue}")
    h = cfg.hpf
    if h.preset == "custom":
        if h.area_mm2 is None or not 0.0 < h.area_mm2 < 10.0:
            raise bad("hpf.area_mm2", f"must be a positive area below 10 mm² when hpf.preset is 'custom', got {h.area_mm2}")
    elif h.area_mm2 is not None:
        raise bad("hpf.area_mm2", f"must be null unless hpf.preset is 'custom' (preset {h.preset!r} is {HPF_PRESETS_MM2[h.preset]} mm²)")
    if not cfg.hotspot.n_hpf > 0:
        raise bad("hotspot.n_hpf", f"must be positive, got {cfg.hotspot.n_hpf}")
    if cfg.hotspot.grid_step_um is not None and not cfg.hotspot.grid_step_um > 0:
        raise bad("hotspot.grid_step_um", f"must be positive or null, got {cfg.hotspot.grid_step_um}")
    m = cfg.grading.mitotic_score
    if not 0 < m.score2_min_per_10hpf < m.score3_min_per_10hpf:
        raise bad("grading.mitotic_score.score3_min_per_10hpf",
                  f"must exceed score2_min_per_10hpf > 0, got {m.score2_min_per_10hpf} and {m.score3_min_per_10hpf}")
    n = cfg.grading.necrosis_score
    if not 0.0 <= n.none_max_pct < n.score2_min_pct <= 100.0:
        raise bad("grading.necrosis_score.none_max_pct",
                  f"needs 0 <= none_max_pct < score2_min_pct <= 100, got {n.none_max_pct} and {n.score2_min_pct}")
    g = cfg.grading.high_grade
    if not g.mitoses_min_per_10hpf > 0:
        raise bad("grading.high_grade.mitoses_min_per_10hpf", f"must be positive, got {g.mitoses_min_per_10hpf}")
    if not 0.0 < g.necrosis_min_pct <= 100.0:
        raise bad("grading.high_grade.necrosis_min_pct", f"must be within (0, 100], got {g.necrosis_min_pct}")
