"""The phantom spec: a validated YAML description of one synthetic case (sizes, regions, cells, stains)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from histo.config import from_dict, load_yaml, merge, to_dict
from histo.errors import ConfigError


@dataclass(frozen=True)
class TissueSpec:
    """Tissue outline on the glass."""

    coverage: float = 0.45  # fraction of the slide area covered by tissue
    roughness: float = 0.5  # 0 = smooth ellipse-like outline, 1 = very ragged
    outline_scale_um: float = 0.0  # size of outline bumps; 0 = a quarter of the slide's short side


@dataclass(frozen=True)
class TumourSpec:
    """Tumour regions and their cells."""

    fraction_of_tissue: float = 0.55
    fascicular_fraction: float = 0.6  # of the tumour area; the rest is haphazard
    haphazard_stroma: Literal["hyalinised", "myxoid"] = "hyalinised"
    region_scale_um: float = 600.0  # size of tumour islands and of the fascicular/haphazard patches
    fascicle_width_um: float = 45.0  # width of one fascicle (band of aligned cells)
    orientation_scale_um: float = 900.0  # how far a fascicle sweeps before it turns
    fascicular_density_per_mm2: float = 8000.0
    haphazard_density_per_mm2: float = 4200.0
    ovoid_fraction: float = 0.15  # of tumour cells: ovoid rather than spindle nuclei
    nuclear_length_um: float = 13.0  # spindle nucleus length (mean)
    nuclear_width_um: float = 3.4
    pleomorphism: float = 0.25  # relative spread of nuclear size and darkness


@dataclass(frozen=True)
class MitosesSpec:
    """Mitotic figures, placed in viable tumour at a set density."""

    per_mm2: float = 1.0  # per mm² of viable tumour (tumour minus necrosis)
    atypical_fraction: float = 0.3  # irregular clumps rather than metaphase plates


@dataclass(frozen=True)
class NecrosisSpec:
    """Coagulative tumour necrosis."""

    fraction_of_tumour: float = 0.0


@dataclass(frozen=True)
class InflammationSpec:
    """Inflammatory cells: dense patches in stroma and scattered cells everywhere."""

    fraction_of_tissue: float = 0.05
    patch_density_per_mm2: float = 16000.0
    scattered_per_mm2: float = 250.0
    plasma_fraction: float = 0.2


@dataclass(frozen=True)
class StromaSpec:
    """Collagenous stroma."""

    fibroblast_density_per_mm2: float = 900.0


@dataclass(frozen=True)
class IHCSpec:
    """The IHC companion slide: DAB in tumour cells by per-cell intensity class."""

    enabled: bool = True
    marker: str = "ALK"
    compartment: Literal["cytoplasmic", "nuclear", "membranous"] = "cytoplasmic"
    class_fractions: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4)  # of tumour cells in classes 0, 1+, 2+, 3+
    # A tumour cell's truth class is where its DAB optical density (the mean chromogen OD painted in its
    # stained compartment, on the glass) lies between these lower bounds of 1+, 2+ and 3+: the same
    # convention and default bounds as histo's marker panel (configs/markers/panel.yaml).
    class_bounds_od: tuple[float, ...] = (0.2, 0.4, 0.6)
    class_dab_od: tuple[float, ...] = (0.0, 0.3, 0.5, 0.8)  # typical DAB OD of each class (inside its band)
    positive_pct_min: float = 10.0  # marker call: positive when % positive cells >= this


@dataclass(frozen=True)
class StainSpec:
    """Physical stain model parameters and per-slide variation."""

    vector_jitter: float = 0.03  # sd of per-slide random perturbation of each stain vector component
    intensity_jitter: float = 0.08  # sd (log) of per-slide stain strength
    hematoxylin: float = 1.0  # stain strength multipliers
    eosin: float = 1.0
    dab: float = 1.0
    noise_sd: float = 2.0  # sensor noise, 8-bit levels
    blur_sigma_px: float = 1.0  # optics, at mpp 0.25
    jpeg_quality: int = 90


@dataclass(frozen=True)
class ArtefactSpec:
    """Optional QC artefacts; the H&E slide and its IHC companion each carry their own."""

    pen_marks: int = 0  # on the H&E slide
    blur_patches: int = 0
    folds: int = 0
    ihc_pen_marks: int = 0  # on the IHC slide (other places: a serial section is handled on its own)
    ihc_blur_patches: int = 0
    ihc_folds: int = 0


@dataclass(frozen=True)
class GradingSpec:
    """Parameters of the default grading rules the summary's verdict follows."""

    hpf_mm2: float = 0.237
    mitotic_score_thresholds_per_10hpf: tuple[float, ...] = (10.0, 20.0)  # score 1 below the first, 3 at or above the second
    necrosis_score_thresholds_pct: tuple[float, ...] = (0.0, 50.0)  # score 0 at none, 1 below 50 %, 2 at or above
    # high grade when mitoses >= this per 10 HPF (FNCLCC mitotic score >= 2) ... (same numbers as the
    # default grading rules in configs/grading/default.yaml: grading.high_grade)
    high_grade_min_mitoses_per_10hpf: float = 10.0
    high_grade_min_necrosis_pct: float = 1.0  # ... or tumour necrosis >= this % of tumour area
    # The mitotic count the score and flag use: the hotspot (densest 10-HPF window, FNCLCC practice and
    # histo's default grading.mitotic_score.basis) or the whole viable tumour (falls back to it when the
    # tumour is smaller than one 10-HPF window).
    mitotic_count_basis: str = "hotspot"


@dataclass(frozen=True)
class PhantomSpec:
    """One synthetic case."""

    name: str = "phantom"
    seed: int = 0
    mpp: float = 0.25
    width_um: float = 5000.0
    height_um: float = 5000.0
    width_px: int | None = None  # when set, overrides width_um
    height_px: int | None = None
    layout_mpp: float = 8.0  # resolution of the region layout map
    tissue: TissueSpec = field(default_factory=TissueSpec)
    tumour: TumourSpec = field(default_factory=TumourSpec)
    mitoses: MitosesSpec = field(default_factory=MitosesSpec)
    necrosis: NecrosisSpec = field(default_factory=NecrosisSpec)
    inflammation: InflammationSpec = field(default_factory=InflammationSpec)
    stroma: StromaSpec = field(default_factory=StromaSpec)
    ihc: IHCSpec = field(default_factory=IHCSpec)
    stain: StainSpec = field(default_factory=StainSpec)
    artefacts: ArtefactSpec = field(default_factory=ArtefactSpec)
    grading: GradingSpec = field(default_factory=GradingSpec)

    @property
    def slide_width_px(self) -> int:
        """Level-0 width in pixels."""
        return int(self.width_px) if self.width_px else int(round(self.width_um / self.mpp))

    @property
    def slide_height_px(self) -> int:
        """Level-0 height in pixels."""
        return int(self.height_px) if self.height_px else int(round(self.height_um / self.mpp))

    def to_dict(self) -> dict:
        """The resolved spec as plain YAML-able data (loads back to an equal spec)."""
        d = to_dict(self)
        for ax in ("width", "height"):
            d.pop(f"{ax}_um" if d[f"{ax}_px"] is not None else f"{ax}_px")
        return d


def _check_values(spec: PhantomSpec, source: str) -> None:
    """Range checks a type check cannot make."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ConfigError(f"{source}: {what}")

    need(0.05 <= spec.mpp <= 10, f"'mpp' must be within 0.05..10 µm/px, got {spec.mpp}")
    w, h = spec.slide_width_px, spec.slide_height_px
    need(64 <= w <= 400_000 and 64 <= h <= 400_000, f"slide size must be 64..400000 px a side, got {w}x{h}")
    need(spec.width_px is None or spec.width_px > 0, "'width_px' must be positive")
    need(spec.height_px is None or spec.height_px > 0, "'height_px' must be positive")
    need(spec.mpp * 4 <= spec.layout_mpp <= 50, f"'layout_mpp' must be within 4*mpp..50, got {spec.layout_mpp}")
    for key, v in (
        ("tissue.coverage", spec.tissue.coverage),
        ("tumour.fraction_of_tissue", spec.tumour.fraction_of_tissue),
        ("tumour.fascicular_fraction", spec.tumour.fascicular_fraction),
        ("tumour.ovoid_fraction", spec.tumour.ovoid_fraction),
        ("necrosis.fraction_of_tumour", spec.necrosis.fraction_of_tumour),
        ("inflammation.fraction_of_tissue", spec.inflammation.fraction_of_tissue),
        ("inflammation.plasma_fraction", spec.inflammation.plasma_fraction),
        ("mitoses.atypical_fraction", spec.mitoses.atypical_fraction),
        ("tissue.roughness", spec.tissue.roughness),
    ):
        need(0.0 <= v <= 1.0, f"'{key}' must be within 0..1, got {v}")
    need(0.05 <= spec.tissue.coverage <= 0.9, f"'tissue.coverage' must be within 0.05..0.9, got {spec.tissue.coverage}")
    need(spec.tumour.fraction_of_tissue + spec.inflammation.fraction_of_tissue <= 0.95,
         "'tumour.fraction_of_tissue' + 'inflammation.fraction_of_tissue' must leave some stroma (<= 0.95)")
    need(spec.necrosis.fraction_of_tumour <= 0.8, "'necrosis.fraction_of_tumour' must be <= 0.8")
    for key, v in (
        ("mitoses.per_mm2", spec.mitoses.per_mm2),
        ("tumour.fascicular_density_per_mm2", spec.tumour.fascicular_density_per_mm2),
        ("tumour.haphazard_density_per_mm2", spec.tumour.haphazard_density_per_mm2),
        ("inflammation.patch_density_per_mm2", spec.inflammation.patch_density_per_mm2),
        ("inflammation.scattered_per_mm2", spec.inflammation.scattered_per_mm2),
        ("stroma.fibroblast_density_per_mm2", spec.stroma.fibroblast_density_per_mm2),
    ):
        need(v >= 0, f"'{key}' must be >= 0, got {v}")
    need(spec.mitoses.per_mm2 <= 200, f"'mitoses.per_mm2' must be <= 200, got {spec.mitoses.per_mm2}")
    dens = max(spec.tumour.fascicular_density_per_mm2, spec.tumour.haphazard_density_per_mm2,
               spec.inflammation.patch_density_per_mm2)
    need(dens <= 30000, f"cell densities must be <= 30000 per mm², got {dens}")
    need(2 <= spec.tumour.nuclear_length_um <= 30, "'tumour.nuclear_length_um' must be within 2..30")
    need(1 <= spec.tumour.nuclear_width_um <= spec.tumour.nuclear_length_um,
         "'tumour.nuclear_width_um' must be within 1..nuclear_length_um")
    need(0 <= spec.tumour.pleomorphism <= 1, "'tumour.pleomorphism' must be within 0..1")
    need(spec.tumour.fascicle_width_um > 5 and spec.tumour.orientation_scale_um > 50 and spec.tumour.region_scale_um > 50,
         "tumour scales must be positive (fascicle_width_um > 5, orientation_scale_um and region_scale_um > 50)")
    fr = spec.ihc.class_fractions
    need(len(fr) == 4 and all(x >= 0 for x in fr) and sum(fr) > 0,
         f"'ihc.class_fractions' must be 4 non-negative numbers (classes 0, 1+, 2+, 3+), got {list(fr)}")
    od = spec.ihc.class_dab_od
    need(len(od) == 4 and all(0 <= x <= 3 for x in od) and list(od) == sorted(od),
         f"'ihc.class_dab_od' must be 4 increasing optical densities within 0..3, got {list(od)}")
    b = spec.ihc.class_bounds_od
    need(len(b) == 3 and 0 < b[0] < b[1] < b[2] <= 3,
         f"'ihc.class_bounds_od' must be 3 increasing optical densities within 0..3 (1+, 2+, 3+), got {list(b)}")
    if len(b) == 3 and len(od) == 4:
        need(od[0] < b[0] and b[0] < od[1] < b[1] and b[1] < od[2] < b[2] and od[3] > b[2],
             f"each 'ihc.class_dab_od' must lie inside its class band {list(b)}, got {list(od)}")
    need(spec.ihc.marker.replace("-", "").replace("_", "").isalnum(), f"'ihc.marker' must be a plain name, got {spec.ihc.marker!r}")
    st = spec.stain
    need(0 <= st.vector_jitter <= 0.2 and 0 <= st.intensity_jitter <= 0.5, "stain jitters must be small (vector <= 0.2, intensity <= 0.5)")
    need(0 <= st.noise_sd <= 20 and 0 <= st.blur_sigma_px <= 3, "'stain.noise_sd' must be 0..20 and 'stain.blur_sigma_px' 0..3")
    need(all(0 < v <= 3 for v in (st.hematoxylin, st.eosin, st.dab)), "stain strengths must be within 0..3")
    need(1 <= st.jpeg_quality <= 100, "'stain.jpeg_quality' must be 1..100")
    a = spec.artefacts
    need(all(0 <= v <= 20 for v in (a.pen_marks, a.blur_patches, a.folds, a.ihc_pen_marks, a.ihc_blur_patches, a.ihc_folds)),
         "artefact counts must be 0..20")
    g = spec.grading
    need(g.hpf_mm2 > 0, "'grading.hpf_mm2' must be > 0")
    need(g.mitotic_count_basis in ("hotspot", "whole_tumour"),
         f"'grading.mitotic_count_basis' must be hotspot or whole_tumour, got {g.mitotic_count_basis!r}")
    need(len(g.mitotic_score_thresholds_per_10hpf) == 2, "'grading.mitotic_score_thresholds_per_10hpf' needs 2 numbers")
    need(len(g.necrosis_score_thresholds_pct) == 2, "'grading.necrosis_score_thresholds_pct' needs 2 numbers")


#: Keys renamed to the one spelling "tumour": (section or None for the top level, old key, new key).
_RENAMED_KEYS = ((None, "tumor", "tumour"), ("necrosis", "fraction_of_tumor", "fraction_of_tumour"))


def upgrade_spec_keys(data: dict, source: str = "<spec>") -> dict:
    """A spec mapping with the old spellings (``tumor:``, ``necrosis.fraction_of_tumor``) read as the new ones;
    ConfigError when a mapping gives both. Other keys are left for the loader to check."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for section, old, new in _RENAMED_KEYS:
        holder = out if section is None else out.get(section)
        if not isinstance(holder, dict) or old not in holder:
            continue
        name = old if section is None else f"{section}.{old}"
        if new in holder:
            raise ConfigError(f"{source}: give '{name.replace(old, new)}' (or its old spelling '{name}'), not both")
        holder = {(new if k == old else k): v for k, v in holder.items()}
        if section is None:
            out = holder
        else:
            out[section] = holder
    return out


def spec_from_dict(data: dict, source: str = "<spec>") -> PhantomSpec:
    """Validate a spec mapping (as read from YAML) into a PhantomSpec; ConfigError names the key and source.
    The old spellings ``tumor:`` and ``necrosis.fraction_of_tumor`` still load (``to_dict`` writes the new ones)."""
    if data is None:
        data = {}
    data = upgrade_spec_keys(data, source)
    spec = from_dict(PhantomSpec, data, source)
    if spec.width_px is not None and "width_um" in data:
        raise ConfigError(f"{source}: give 'width_um' or 'width_px', not both")
    if spec.height_px is not None and "height_um" in data:
        raise ConfigError(f"{source}: give 'height_um' or 'height_px', not both")
    _check_values(spec, source)
    return spec


def load_spec(path: str | Path, overrides: dict | None = None) -> PhantomSpec:
    """Read and validate a phantom spec YAML file; `overrides` (nested mapping) replace its values."""
    p = Path(path)
    data = upgrade_spec_keys(load_yaml(p), str(p))
    if overrides:
        data = merge(data, upgrade_spec_keys(overrides, f"{p} (overrides)"))
    return spec_from_dict(data, str(p))


def replace_size(spec: PhantomSpec, width_px: int, height_px: int) -> PhantomSpec:
    """The same spec at another size (for tests and quick previews)."""
    return dataclasses.replace(spec, width_px=int(width_px), height_px=int(height_px))
