"""`DataConfig`: the `data:` section of a training config (sources, splits, grid, augmentation, loaders)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from histo.annotations import LabelMap
from histo.config import from_dict, load_yaml
from histo.data.transforms import build_pipeline
from histo.errors import ConfigError
from histo.inputs import mpp_is_plausible, mpp_range_text

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
class FrameSource:
    """Frames (JPEG/PNG at a known µm/px) with mitoses marked as points or boxes; unmarked cells are negatives.

    The group (slide, case, patient) of each frame is the first capture group of `group_regex` searched in
    its file name; frames of one group always share a split.
    """

    name: str
    images: Path  # folder of the frame images
    annotations: Path  # voc: folder of one XML per frame; csv: a file (image, x, y[, class]); coco: a JSON file
    format: Literal["voc", "csv", "coco"]
    mpp: float  # µm/px of the frames as scanned (resampled to the model's mpp)
    group_regex: str
    mitosis_classes: list[str] = field(default_factory=lambda: ["mitosis", "mitotic figure"])
    negative_classes: list[str] = field(default_factory=lambda: ["non-mitotic figure", "hard negative"])
    mitoses_labelled: bool = True  # every mitosis of a frame is marked, so its unmarked area is a labelled negative
    split: Split = "auto"  # split of every group not named in val_groups / test_groups
    val_groups: list[str] = field(default_factory=list)  # when val or test groups are given, the others train
    test_groups: list[str] = field(default_factory=list)
    stride_px: int | None = None  # training tile step in model px; None = data.stride_px (validation never overlaps)
    min_tissue_fraction: float = 0.0  # tiles with less tissue are dropped
    limit: int | None = None  # first N frames only (smoke runs)

    def __post_init__(self) -> None:
        _check_source(self)


@dataclass(frozen=True)
class ImageSource:
    """Class-labelled images (tiles or crops): the class is the folder name or a file-name prefix, and
    `label_map` says what each class means for each head, e.g. {Non-Viable-Tumor: {necrosis: 1}}.

    Label keys: necrosis (0 or 1), pattern (a model pattern class), mitosis (0: mitoses labelled, none present).
    Images larger than the model input are cut into model tiles.
    """

    name: str
    root: Path
    mpp: float  # µm/px of the images (resampled to the model's mpp)
    group_regex: str  # first capture group searched in the file name = slide / case / patient
    label_map: dict[str, dict[str, Any]]
    glob: str = "**/*"  # image files under root (image suffixes only)
    class_from: Literal["prefix", "folder"] = "prefix"
    prefix_regex: str = r"^([^_]+?)_"  # the class of 'prefix': first capture group searched in the file name
    ignore: list[str] = field(default_factory=list)  # classes skipped without complaint
    split: Split = "auto"
    val_groups: list[str] = field(default_factory=list)
    test_groups: list[str] = field(default_factory=list)
    stride_px: int | None = None
    min_tissue_fraction: float = 0.0
    limit: int | None = None

    def __post_init__(self) -> None:
        _check_source(self)
        for cls, labels in self.label_map.items():
            if not isinstance(labels, dict):
                raise ValueError(f"label_map.{cls} must be a mapping of head to label, e.g. {{necrosis: 1}}, got {labels!r}")
            bad = sorted(set(labels) - {"necrosis", "pattern", "mitosis"})
            if bad:
                raise ValueError(f"label_map.{cls}: unknown head {bad[0]!r} (allowed: mitosis, necrosis, pattern)")
            if "necrosis" in labels and labels["necrosis"] not in (0, 1):
                raise ValueError(f"label_map.{cls}.necrosis must be 0 or 1, got {labels['necrosis']!r}")
            if "mitosis" in labels and labels["mitosis"] != 0:
                raise ValueError(f"label_map.{cls}.mitosis must be 0 (mitoses labelled, none present): an image "
                                 "class cannot say where a mitosis is; use a frames source with points")
            if "pattern" in labels and not isinstance(labels["pattern"], str):
                raise ValueError(f"label_map.{cls}.pattern must be a pattern class name, got {labels['pattern']!r}")


def _check_source(s: Any) -> None:
    import re

    if not s.name:
        raise ValueError("a source needs a non-empty name")
    if not mpp_is_plausible(s.mpp):
        raise ValueError(f"mpp must be a plausible µm/px in {mpp_range_text()}, got {s.mpp}")
    for key in ("group_regex", *(("prefix_regex",) if hasattr(s, "prefix_regex") else ())):
        try:
            re.compile(getattr(s, key))
        except re.error as exc:
            raise ValueError(f"{key} {getattr(s, key)!r} is not a regular expression ({exc})") from None
    both = sorted(set(s.val_groups) & set(s.test_groups))
    if both:
        raise ValueError(f"group {both[0]!r} is in both val_groups and test_groups")
    if s.stride_px is not None and s.stride_px < 1:
        raise ValueError(f"stride_px must be >= 1, got {s.stride_px}")
    if not 0.0 <= s.min_tissue_fraction <= 1.0:
        raise ValueError(f"min_tissue_fraction must be in [0, 1], got {s.min_tissue_fraction}")
    if s.limit is not None and s.limit < 1:
        raise ValueError(f"limit must be >= 1, got {s.limit}")


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
    frames: list[FrameSource] = field(default_factory=list)
    images: list[ImageSource] = field(default_factory=list)
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
    image_cache_mb: int = 4096  # frames/images kept resampled in memory, per worker process and split
    seed: int = 0
    # Annotations of unknown class, outside their image or only on glass are errors before training; true
    # lists them as warnings and leaves them out.
    allow_label_problems: bool = False

    def __post_init__(self) -> None:
        if (isinstance(self.slides, list) and not self.slides and self.tiles_csv is None and self.phantoms is None
                and not self.frames and not self.images):
            raise ValueError("no data source: give 'slides', 'tiles_csv', 'phantoms', 'frames' or 'images'")
        names = [s.name for s in self.frames] + [s.name for s in self.images]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"source name {dup[0]!r} is used twice in frames/images: names must be unique")
        if self.stride_px is not None and self.stride_px < 1:
            raise ValueError(f"stride_px must be >= 1, got {self.stride_px}")
        if not 0.0 <= self.min_tissue_fraction <= 1.0:
            raise ValueError(f"min_tissue_fraction must be in [0, 1], got {self.min_tissue_fraction}")
        if self.mitosis_oversample < 1.0:
            raise ValueError(f"mitosis_oversample must be >= 1, got {self.mitosis_oversample}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.image_cache_mb < 0:
            raise ValueError(f"image_cache_mb must be >= 0, got {self.image_cache_mb}")
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
