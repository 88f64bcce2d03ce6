"""TrainConfig: the YAML of `histo train`, as nested frozen dataclasses validated on load.

Defaults live here. Loading goes through :func:`histo.config.from_dict` (unknown key or wrong type →
ConfigError naming the dotted key and the file); cross-field checks (heads, backbone, files that must
exist) run in :meth:`TrainConfig.from_dict`, so a bad config fails before any training starts.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from histo.config import apply_overrides, from_dict, load_yaml, to_dict
from histo.errors import ConfigError, ModelError
from histo.inputs import mpp_is_plausible, mpp_range_text
from histo.jsonsafe import json_safe
from histo.models import IMAGENET_MEAN, IMAGENET_STD, config_digest, list_backbones, resolve_heads


def data_config_class() -> type | None:
    """histo.data.DataConfig when that module is installed, else None (the data section stays a mapping)."""
    try:
        mod = importlib.import_module("histo.data")
    except ModuleNotFoundError as exc:
        if exc.name in ("histo.data", "histo.annotations"):
            return None
        raise
    return getattr(mod, "DataConfig", None)


def _data_section(raw: Any, source: str) -> Any:
    """The data section as histo.data's DataConfig (None when absent: fit then needs a datamodule)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: 'data' must be a mapping, got {type(raw).__name__}")
    if data_config_class() is None:
        return dict(raw)  # histo.data not installed: kept as given, fit() reports it
    from histo.data import data_config_from_dict

    return data_config_from_dict(raw, source, prefix="data.")


def _check_input(tile_px: int, mpp: float, std: tuple[float, float, float], pretrained: bool | str) -> None:
    if pretrained is True:
        raise ValueError("pretrained: true is ambiguous; use false, imagenet, or a path to .safetensors")
    if tile_px < 32 or tile_px % 32:
        raise ValueError(f"tile_px must be a multiple of 32 (the backbone stride), got {tile_px}")
    if not mpp_is_plausible(mpp):
        raise ValueError(f"mpp must be a plausible µm/px in {mpp_range_text()}, got {mpp}")
    if min(std) <= 0:
        raise ValueError(f"std must be positive, got {list(std)}")


@dataclass(frozen=True)
class ScaleSection:
    """One input scale of a multi-scale model: its backbone, the heads it feeds, its input, and its data.

    ``data`` is a full data section for this scale (default: the top-level ``data``), so each scale
    trains on the sources that label its heads; ``max_epochs`` overrides trainer.max_epochs for it.
    """

    heads: dict[str, Any] | list[str]
    backbone: str = "small"
    pretrained: bool | str = False
    tile_px: int = 128
    mpp: float = 0.5
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    data: Any = None
    max_epochs: int | None = None
    # what this scale's best checkpoint and early stopping watch (default: checkpoint.monitor / early_stop.monitor)
    monitor: str | None = None
    mode: Literal["min", "max"] | None = None

    def __post_init__(self) -> None:
        _check_input(self.tile_px, self.mpp, self.std, self.pretrained)
        if (self.monitor is None) != (self.mode is None):
            raise ValueError("give monitor and mode together (e.g. monitor: val/mitosis_f1, mode: max)")
        if self.max_epochs is not None and self.max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, got {self.max_epochs}")


@dataclass(frozen=True)
class ModelSection:
    """The net: backbone, initial weights, heads, and the input it is fed (tile size, µm/px, normalisation).

    A one-scale model sets backbone/heads/tile_px/mpp here. A model whose heads read at several
    resolutions lists them under ``scales`` instead (name → ScaleSection), e.g. the mitosis head at
    0.25 µm/px and the pattern and necrosis heads at 1 µm/px; then the flat input keys stay unset.
    """

    backbone: str = "resnet18"
    pretrained: bool | str = False  # false | imagenet | path to a local .safetensors file
    # head name -> options (see histo.models.resolve_heads), or a list of head names with default options
    heads: dict[str, Any] | list[str] = field(default_factory=lambda: {"pattern": {}, "necrosis": {}, "mitosis": {}})
    tile_px: int = 256
    mpp: float = 0.5
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    mitosis_threshold: float = 0.5  # heatmap probability a peak needs to count as a mitosis (see threshold)
    # how the exported operating point is chosen: f1_optimal on the validation split, or this config's value
    threshold: Literal["f1_optimal", "config"] = "f1_optimal"
    mitosis_min_distance_um: float = 4.0  # closer peaks are one mitosis
    scales: dict[str, ScaleSection] | None = None
    # the training domain stored in the card (histo.models.domain): thresholds at this percentile of the
    # validation tiles' distances; null = no domain (reports then cannot say whether a slide is like the data)
    domain_percentile: float | None = 99.0

    def __post_init__(self) -> None:
        _check_input(self.tile_px, self.mpp, self.std, self.pretrained)
        if not 0 < self.mitosis_threshold < 1:
            raise ValueError(f"mitosis_threshold must be in (0, 1), got {self.mitosis_threshold}")
        if self.mitosis_min_distance_um < 0:
            raise ValueError(f"mitosis_min_distance_um must be >= 0, got {self.mitosis_min_distance_um}")
        if self.scales is not None and not self.scales:
            raise ValueError("scales must name at least one scale")
        if self.domain_percentile is not None and not 50.0 <= self.domain_percentile < 100.0:
            raise ValueError(f"domain_percentile must be in [50, 100), got {self.domain_percentile}")

    def scale_sections(self) -> dict[str, ScaleSection]:
        """Every scale of the model: ``scales``, or the flat keys as one scale named ``main``."""
        if self.scales:
            return dict(self.scales)
        return {"main": ScaleSection(heads=self.heads, backbone=self.backbone, pretrained=self.pretrained,
                                     tile_px=self.tile_px, mpp=self.mpp, mean=self.mean, std=self.std)}


@dataclass(frozen=True)
class OptimSection:
    """AdamW with an optional linear warm-up then cosine decay to zero, stepped every batch."""

    lr: float = 1e-3
    weight_decay: float = 1e-4
    scheduler: Literal["cosine", "none"] = "cosine"
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0 or self.warmup_steps < 0:
            raise ValueError("weight_decay and warmup_steps must be >= 0")


@dataclass(frozen=True)
class LossWeights:
    """Weight of each task's loss in the total (a head not in the model is ignored)."""

    pattern: float = 1.0
    necrosis: float = 1.0
    mitosis: float = 1.0

    def __post_init__(self) -> None:
        if min(self.pattern, self.necrosis, self.mitosis) < 0:
            raise ValueError("loss weights must be >= 0")


@dataclass(frozen=True)
class MitosisLoss:
    """Heatmap loss: focal (BCE × |target − p|^gamma, positives × alpha, per positive) or BCE with pos_weight."""

    kind: Literal["focal", "bce"] = "focal"
    pos_weight: float = 20.0  # bce: weight of the positive term (mitosis pixels are rare)
    alpha: float = 0.75  # focal: share of the weight on the positive term
    gamma: float = 2.0  # focal: down-weights pixels already predicted well

    def __post_init__(self) -> None:
        if not self.pos_weight > 0 or not 0 < self.alpha < 1 or self.gamma < 0:
            raise ValueError("mitosis loss needs pos_weight > 0, alpha in (0, 1), gamma >= 0")


@dataclass(frozen=True)
class LossSection:
    """Per-task weights, optional pattern class weights, and the mitosis heatmap loss."""

    weights: LossWeights = field(default_factory=LossWeights)
    pattern_class_weights: list[float] | None = None  # one per pattern class, or null for equal weights
    mitosis: MitosisLoss = field(default_factory=MitosisLoss)


@dataclass(frozen=True)
class TrainerSection:
    """Lightning Trainer settings; 'auto' picks GPU + mixed precision when present, CPU + fp32 otherwise."""

    max_epochs: int = 20
    max_steps: int = -1  # -1 = no step limit
    accelerator: str = "auto"  # auto | cpu | gpu
    devices: int | str = "auto"  # auto or a count
    strategy: str = "auto"  # auto | ddp | ddp_spawn | ...
    precision: str = "auto"  # auto | 32-true | 16-mixed | bf16-mixed
    limit_train_batches: int | float = 1.0
    limit_val_batches: int | float = 1.0
    val_check_interval: int | float = 1.0
    log_every_n_steps: int = 10
    deterministic: bool = False
    gradient_clip_val: float | None = None
    progress_bar: bool = True

    def __post_init__(self) -> None:
        if self.max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, got {self.max_epochs}")
        if self.accelerator not in ("auto", "cpu", "gpu", "cuda", "mps"):
            raise ValueError(f"accelerator must be auto, cpu, gpu, cuda or mps, got {self.accelerator!r}")
        if isinstance(self.devices, str) and self.devices != "auto":
            raise ValueError(f"devices must be auto or a positive count, got {self.devices!r}")
        if isinstance(self.devices, int) and self.devices < 1:
            raise ValueError(f"devices must be >= 1, got {self.devices}")
        if self.precision not in ("auto", "32-true", "32", "16-mixed", "bf16-mixed", "64-true"):
            raise ValueError(f"precision must be auto, 32-true, 16-mixed or bf16-mixed, got {self.precision!r}")
        if self.log_every_n_steps < 1:
            raise ValueError("log_every_n_steps must be >= 1")


@dataclass(frozen=True)
class EarlyStopSection:
    """Stop when ``monitor`` has not improved for ``patience`` validations (patience 0 = off)."""

    monitor: str = "val/loss"
    mode: Literal["min", "max"] = "min"
    patience: int = 5

    def __post_init__(self) -> None:
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")


@dataclass(frozen=True)
class CheckpointSection:
    """Which checkpoint is 'best' (it is the one exported) and how many to keep."""

    monitor: str = "val/loss"
    mode: Literal["min", "max"] = "min"
    save_top_k: int = 1

    def __post_init__(self) -> None:
        if self.save_top_k < 1:
            raise ValueError(f"save_top_k must be >= 1 (the best checkpoint is exported), got {self.save_top_k}")


@dataclass(frozen=True)
class OutputSection:
    """Runs go to ``dir/name/version_N/``; ``name`` also names the exported model."""

    dir: Path = Path("runs")
    name: str = "histo-model"

    def __post_init__(self) -> None:
        import re

        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", self.name):
            raise ValueError(f"name must be a file-name-safe word (letters, digits, . _ -), got {self.name!r}")


@dataclass(frozen=True)
class SourceInfo:
    """What a data source is, for the model card's provenance: description, licence, real tissue or not."""

    description: str = ""
    licence: str = ""
    real: bool = True


@dataclass(frozen=True)
class ProvenanceSection:
    """Descriptions of the data sources by name (frames/images source names, 'phantoms', 'slide', 'tiles_csv')."""

    sources: dict[str, SourceInfo] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    """Everything `histo train` needs; ``data`` is histo.data's DataConfig (None: pass a datamodule to fit)."""

    seed: int = 0
    model: ModelSection = field(default_factory=ModelSection)
    data: Any = None
    optim: OptimSection = field(default_factory=OptimSection)
    loss: LossSection = field(default_factory=LossSection)
    trainer: TrainerSection = field(default_factory=TrainerSection)
    early_stop: EarlyStopSection = field(default_factory=EarlyStopSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    output: OutputSection = field(default_factory=OutputSection)
    provenance: ProvenanceSection = field(default_factory=ProvenanceSection)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = (), *,
                  check_init_weights: bool = True) -> TrainConfig:
        """Load, apply ``key=value`` overrides, validate; relative paths resolve against the working folder.

        ``check_init_weights=False`` skips the check that a ``pretrained`` weights file exists: for reading the
        config of a model already trained (its data and inputs), where the initial weights are no longer needed.
        """
        data = load_yaml(path)
        source = str(path)
        if overrides:
            data = apply_overrides(data, list(overrides))
            source = f"{path} with --set {' '.join(overrides)}"
        return cls.from_dict(data, source, check_init_weights=check_init_weights)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>", *, check_init_weights: bool = True) -> TrainConfig:
        """Validate a mapping: unknown keys, wrong types, bad heads and missing files are ConfigErrors naming the key."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: the top level must be a mapping")
        rest = {k: v for k, v in data.items() if k != "data"}
        cfg = from_dict(cls, rest, source)
        section = _data_section(data.get("data"), source)
        cfg = dataclasses.replace(cfg, data=section)
        if cfg.model.scales:
            scales = {name: dataclasses.replace(sc, data=_data_section(sc.data, f"{source} (model.scales.{name}.data)"))
                      for name, sc in cfg.model.scales.items()}
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, scales=scales))
        _check(cfg, source, check_init_weights)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain values (paths as strings), as saved beside the outputs."""
        return json_safe(to_dict(self), non_finite="text")  # ±inf/nan as text, as the saved config has always had

    def to_yaml(self) -> str:
        """The resolved config as YAML text (its sha256 is the model card's config_digest)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def digest(self) -> str:
        """sha256 of :meth:`to_yaml`."""
        return config_digest(self.to_yaml())

    @property
    def heads(self) -> dict[str, dict[str, Any]]:
        """The model heads (of every scale) with defaults filled in."""
        merged: dict[str, Any] = {}
        for sc in self.model.scale_sections().values():
            merged.update(resolve_heads(sc.heads))
        return resolve_heads(merged)


def _check(cfg: TrainConfig, source: str, check_init_weights: bool = True) -> None:
    """Cross-field checks that the dataclasses cannot do alone."""
    m = cfg.model
    if m.scales:
        changed = [k for k in ("backbone", "pretrained", "heads", "tile_px", "mpp", "mean", "std")
                   if getattr(m, k) != getattr(ModelSection(), k)]
        if changed:
            raise ConfigError(f"{source}: 'model.scales' is set, so 'model.{changed[0]}' must be given per scale "
                              f"(model.scales.<name>.{changed[0]})")
    seen: dict[str, str] = {}
    allowed: set[str] | None = None
    all_heads: dict[str, Any] = {}
    for name, sc in m.scale_sections().items():
        key = f"model.scales.{name}" if m.scales else "model"
        if sc.backbone not in list_backbones():
            raise ConfigError(f"{source}: '{key}.backbone' is {sc.backbone!r}; registered backbones: "
                              f"{', '.join(list_backbones())}")
        if check_init_weights and isinstance(sc.pretrained, str) and sc.pretrained != "imagenet":
            p = Path(sc.pretrained)
            if not p.is_file():
                raise ConfigError(f"{source}: '{key}.pretrained': weights file {p} not found "
                                  "(use false, imagenet, or a path to a local .safetensors file)")
            if p.suffix.lower() != ".safetensors":
                raise ConfigError(f"{source}: '{key}.pretrained': {p} is not a .safetensors file; histo never "
                                  "unpickles weights (convert once with safetensors.torch.save_file)")
        try:
            heads = resolve_heads(sc.heads, source=f"{key}.heads")
        except ModelError as exc:
            raise ConfigError(f"{source}: {exc}") from exc
        for h in heads:
            if h in seen:
                raise ConfigError(f"{source}: head {h!r} is in scales {seen[h]!r} and {name!r}: one scale per head")
            seen[h] = name
        all_heads.update(heads)
        if "mitosis" in heads:
            stride = heads["mitosis"]["stride_px"]
            if sc.tile_px % stride:
                raise ConfigError(f"{source}: '{key}.tile_px' ({sc.tile_px}) must be a multiple of "
                                  f"{key}.heads.mitosis.stride_px ({stride})")
        names = set(monitorable(heads))
        if sc.monitor is not None:
            if sc.monitor not in names:
                raise ConfigError(f"{source}: '{key}.monitor' is {sc.monitor!r}; with heads {list(heads)} it must be "
                                  f"one of {', '.join(monitorable(heads))}")
            continue  # this scale watches its own metric
        allowed = names if allowed is None else allowed & names
    cw = cfg.loss.pattern_class_weights
    if cw is not None:
        n = len(all_heads.get("pattern", {}).get("classes", []))
        if "pattern" not in all_heads:
            raise ConfigError(f"{source}: 'loss.pattern_class_weights' is set but the model has no pattern head")
        if len(cw) != n or min(cw) <= 0:
            raise ConfigError(f"{source}: 'loss.pattern_class_weights' needs {n} positive numbers (one per "
                              f"pattern class), got {cw}")
    ordered = [x for x in monitorable(all_heads) if allowed is None or x in allowed]
    for sec, key in ((cfg.early_stop, "early_stop"), (cfg.checkpoint, "checkpoint")):
        if sec.monitor not in ordered:
            what = "every scale's heads" if m.scales else f"heads {list(all_heads)}"
            raise ConfigError(f"{source}: '{key}.monitor' is {sec.monitor!r}; with {what} it must "
                              f"be one of {', '.join(ordered)}")


# Metrics each head logs in validation (histo.train.module logs exactly these names).
HEAD_METRICS = {
    "pattern": ("val/pattern_bacc", "val/pattern_auroc"),
    "necrosis": ("val/necrosis_auroc",),
    "mitosis": ("val/mitosis_f1", "val/mitosis_precision", "val/mitosis_recall", "val/mitosis_f1_best"),
}


def monitorable(heads: dict[str, Any]) -> list[str]:
    """Names early stopping and checkpointing may monitor for these heads."""
    names = ["val/loss"]
    for h in heads:
        names += [f"val/loss_{h}", *HEAD_METRICS[h]]
    return names


def load_train_config(path: str | Path, overrides: list[str] | tuple[str, ...] = (), *,
                      check_init_weights: bool = True) -> TrainConfig:
    """Read and validate a train config file with optional ``key=value`` overrides.

    Scripts that evaluate or calibrate a trained model pass ``check_init_weights=False``: they need the config's
    data and inputs, not the ``pretrained`` file the training started from (stage 2 of the default model starts
    from stage 1's backbones, which a fresh machine does not have).
    """
    return TrainConfig.from_yaml(path, overrides, check_init_weights=check_init_weights)
