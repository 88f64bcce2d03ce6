"""`DataConfig`: the `data:` section of a training config (sources, splits, grid, augmentation, loaders)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from histo.annotations import LabelMap
from histo.config import from_dict, load_yaml
from histo.data.transforms import build_pipeline
from histo.errors import ConfigError

Split = Literal["train", "val", "test", "auto"]


@dataclass(frozen=True)
class SlideSource:
    """One annotated slide: its file, its QuPath GeoJSON, and which split it belongs to."""

    path: Path
    annotations: Path | None = None  # None: the slide has no labels (predict or unlabelled use)
    split: Split = "auto"
    mpp: float | None = None  # override of the slide's level-0 µm/px
    group: str | None = None  # case / patient id: slides of one group always share a split
    mitoses_labelled: bool = True  # the GeoJSON lists every mitosis in the slide (else the mitosis loss skips it)


@dataclass(frozen=True)
class PhantomSource:
    """Phantom slides generated with histo.synth from specs and seeds; their truth.geojson labels them."""

    specs: list[Path] = field(default_factory=list)
    seeds: list[int] | None = None  # explicit seeds for every spec ...
    n_per_spec: int | None = None  # ... or seeds 0..n-1
    size_px: tuple[int, int] | None = None  # (width, height) level-0 px; None keeps the spec's size
    cache_dir: Path = Path("data/phantoms")
    overrides: dict[str, Any] = field(default_factory=dict)  # spec overrides, e.g. {mitoses: {per_mm2: 40}}
    workers: int = 1  # render processes per phantom

    def __post_init__(self) -> None:
        if not self.specs:
            raise ValueError("phantoms.specs must list at least one phantom spec file")
        if (self.seeds is None) == (self.n_per_spec is None):
            raise ValueError("phantoms: give exactly one of 'seeds' (a list) or 'n_per_spec' (a count)")
        if self.n_per_spec is not None and self.n_per_spec < 1:
            raise ValueError(f"phantoms.n_per_spec must be >= 1, got {self.n_per_spec}")
        if self.workers < 1:
            raise ValueError(f"phantoms.workers must be >= 1, got {self.workers}")

    def seed_list(self) -> list[int]:
        """The seeds each spec is generated with."""
        return list(self.seeds) if self.seeds is not None else list(range(int(self.n_per_spec or 0)))


@dataclass(frozen=True)
class SplitConfig:
    """How slides marked `auto` are split: fractions of groups (case / patient, else slide) and a seed."""

    val_fraction: float = 0.2
    test_fraction: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise ValueError("split.val_fraction and split.test_fraction must be in [0, 1) with a sum below 1")


@dataclass(frozen=True)
class NormaliseConfig:
    """Stain normalisation applied to every tile before augmentation."""

    method: Literal["none", "macenko", "reinhard"] = "none"
    reference: Path | None = None  # reference tile image; None = built-in reference values


@dataclass(frozen=True)
class DataConfig:
    """Where training tiles come from, how they are labelled, split, augmented and batched.

    Tile size and µm/px come from the model's InputSpec, not from here. Relative paths in this
    section resolve against `root` (default: the working directory); paths inside CSV files resolve
    against the CSV's folder.
    """

    slides: list[SlideSource] | Path = field(default_factory=list)
    tiles_csv: Path | None = None
    tiles_resize: bool = False  # resize CSV tiles whose size is not tile_px (else an error)
    phantoms: PhantomSource | None = None
    root: Path | None = None
    labels: LabelMap = field(default_factory=LabelMap)
    split: SplitConfig = field(default_factory=SplitConfig)
    stride_px: int | None = None  # training grid step in input px (< tile_px overlaps); None = tile_px
    min_tissue_fraction: float = 0.5
    mask_mpp: float = 8.0
    augment: list[dict[str, Any]] = field(default_factory=list)
    normalise: NormaliseConfig = field(default_factory=NormaliseConfig)
    balance: Literal["none", "pattern", "necrosis"] = "none"
    mitosis_oversample: float = 1.0  # sampling weight multiplier of training tiles holding a mitosis
    samples_per_epoch: int | None = None  # training draws per epoch when a sampler is used; None = train size
    batch_size: int = 32
    num_workers: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.slides, list) and not self.slides and self.tiles_csv is None and self.phantoms is None:
            raise ValueError("no data source: give 'slides', 'tiles_csv' or 'phantoms'")
        if self.stride_px is not None and self.stride_px < 1:
            raise ValueError(f"stride_px must be >= 1, got {self.stride_px}")
        if not 0.0 <= self.min_tissue_fraction <= 1.0:
            raise ValueError(f"min_tissue_fraction must be in [0, 1], got {self.min_tissue_fraction}")
        if self.mitosis_oversample < 1.0:
            raise ValueError(f"mitosis_oversample must be >= 1, got {self.mitosis_oversample}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.samples_per_epoch is not None and self.samples_per_epoch < 1:
            raise ValueError(f"samples_per_epoch must be >= 1, got {self.samples_per_epoch}")
        try:
            build_pipeline(self.augment)  # unknown transform or bad arguments fail at load time, naming the entry
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    def resolve(self, path: Path | str) -> Path:
        """A config path made absolute against `root` (or the working directory)."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.root or Path.cwd()) / p


def data_config_from_dict(data: dict[str, Any] | None, source: str = "<dict>", prefix: str = "data.") -> DataConfig:
    """Validate a `data:` mapping into a DataConfig; ConfigError names the dotted key and the source."""
    return from_dict(DataConfig, data, source, prefix=prefix)


def load_data_config(path: str | Path, section: str | None = "data") -> DataConfig:
    """Load the `data:` section (or the whole file with section=None) of a YAML config."""
    raw = load_yaml(path)
    if section is not None:
        raw = raw.get(section) or {}
        return data_config_from_dict(raw, str(path), prefix=f"{section}.")
    return data_config_from_dict(raw, str(path), prefix="")
