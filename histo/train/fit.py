"""`fit(config)`: seed, build data and model, train with Lightning, export the best checkpoint as a histo model.

A run writes ``output.dir/output.name/version_N/``:
  config.yaml            the resolved config (its sha256 is the model card's config_digest)
  checkpoints/*.ckpt     Lightning checkpoints, for ``resume_from`` only. They are pickles written by this
                         run; histo never loads a .ckpt handed in from elsewhere as a model (see load_model)
  metrics.csv            CSVLogger; tensorboard/ holds the TensorBoard event files
  model/<name>.safetensors + <name>.card.json   the exported best model (load with histo.models.load_model)
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from torch import nn

from histo.atomic import write_text
from histo.config import apply_overrides
from histo.errors import ConfigError
from histo.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelCard,
    MultiScaleNet,
    MultiTaskNet,
    resolve_heads,
    save_model,
    scale_nets,
)
from histo.train.config import TrainConfig, TrainerSection, data_config_class
from histo.train.module import MultiTaskModule

_VERSION_ENV = "HISTO_TRAIN_RUN_VERSION"  # lets DDP child processes (re-launched scripts) share rank 0's run folder


@dataclass
class FitResult:
    """Where a training run put its outputs, and how it ended."""

    run_dir: Path
    model_dir: Path | None  # None on non-zero DDP ranks (rank 0 exports)
    weights_path: Path | None
    card_path: Path | None
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    metrics: dict[str, float] = field(default_factory=dict)  # of the best checkpoint, names without "val/"
    global_step: int = 0
    epochs: int = 0
    seconds: float = 0.0
    accelerator: str = "cpu"
    precision: str = "32-true"
    config_digest: str = ""


def resolve_trainer_args(t: TrainerSection) -> dict[str, Any]:
    """accelerator/devices/strategy/precision with 'auto' resolved: CUDA + mixed precision when present, CPU fp32 otherwise."""
    cuda = torch.cuda.is_available()
    acc = t.accelerator
    if acc == "auto":
        acc = "gpu" if cuda else "cpu"
    if acc in ("gpu", "cuda") and not cuda:
        raise ConfigError("trainer.accelerator is 'gpu' but no CUDA GPU is available; use auto or cpu")
    precision = t.precision
    if precision == "auto":
        if acc in ("gpu", "cuda"):
            precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        else:
            precision = "32-true"
    elif precision == "32":
        precision = "32-true"
    devices: int | str = t.devices
    if devices == "auto":
        devices = 1 if acc == "cpu" else "auto"  # several CPU 'devices' only when asked (DDP on CPU)
    return {"accelerator": acc, "devices": devices, "strategy": t.strategy, "precision": precision}


def input_spec(config: TrainConfig, scale: str | None = None) -> Any:
    """histo.data.InputSpec of one scale (default: the only one): tile size, µm/px, normalisation, stride, classes."""
    from histo.data import InputSpec

    sections = config.model.scale_sections()
    sc = sections[scale or next(iter(sections))]
    heads = resolve_heads(sc.heads)
    return InputSpec(
        tile_px=sc.tile_px,
        mpp=sc.mpp,
        mean=(float(sc.mean[0]), float(sc.mean[1]), float(sc.mean[2])),
        std=(float(sc.std[0]), float(sc.std[1]), float(sc.std[2])),
        mitosis_stride_px=heads["mitosis"]["stride_px"] if "mitosis" in heads else None,
        pattern_classes=list(heads.get("pattern", {}).get("classes", [])),
    )


def scale_data(config: TrainConfig, scale: str) -> Any:
    """The data section a scale trains on: its own ``data``, else the top-level one."""
    sc = config.model.scale_sections()[scale]
    return sc.data if sc.data is not None else config.data


def build_datamodule(config: TrainConfig, scale: str | None = None) -> pl.LightningDataModule:
    """histo.data.TileDataModule for one scale's data section (default: the only scale)."""
    if data_config_class() is None:
        raise ConfigError("the data section needs histo.data (TileDataModule), which is not installed")
    name = scale or next(iter(config.model.scale_sections()))
    data = scale_data(config, name)
    if data is None:
        raise ConfigError("the config has no 'data' section: say where the training tiles come from "
                          "(data.slides, data.tiles_csv, data.phantoms, data.frames or data.images; see "
                          "configs/train/lab_template.yaml)")
    from histo.data import TileDataModule

    return TileDataModule(data, input_spec(config, name))


def check_data_files(config: TrainConfig) -> None:
    """ConfigError naming the key and file for a listed slide, annotation or phantom spec that is missing."""
    if data_config_class() is None:
        return
    from histo.data.sources import check_slide_files, slide_records

    sections = [config.data] + [sc.data for sc in config.model.scale_sections().values()]
    for d in (x for x in sections if x is not None):
        check_slide_files(slide_records(d))
        if d.tiles_csv is not None and not d.resolve(d.tiles_csv).is_file():
            raise ConfigError(f"data.tiles_csv: file not found: {d.resolve(d.tiles_csv)}")
        for i, spec in enumerate(d.phantoms.specs if d.phantoms is not None else []):
            if not d.resolve(spec).is_file():
                raise ConfigError(f"data.phantoms.specs[{i}]: phantom spec file not found: {d.resolve(spec)}")
        ref = d.normalise.reference
        if ref is not None and not d.resolve(ref).is_file():
            raise ConfigError(f"data.normalise.reference: reference tile not found: {d.resolve(ref)}")


def build_net(config: TrainConfig, scale: str | None = None) -> MultiTaskNet:
    """The MultiTaskNet of one scale (default: the only one), pretrained weights loaded when asked."""
    sections = config.model.scale_sections()
    sc = sections[scale or next(iter(sections))]
    return MultiTaskNet(sc.backbone, resolve_heads(sc.heads), pretrained=sc.pretrained)


def build_module(config: TrainConfig, net: MultiTaskNet | None = None, scale: str | None = None) -> MultiTaskModule:
    """The LightningModule wrapping ``net`` (built from the config when not given) for one scale."""
    m = config.model
    sections = m.scale_sections()
    sc = sections[scale or next(iter(sections))]
    return MultiTaskModule(net if net is not None else build_net(config, scale), mpp=sc.mpp, optim=config.optim,
                           loss=config.loss, mitosis_threshold=m.mitosis_threshold,
                           mitosis_min_distance_um=m.mitosis_min_distance_um)


_CHECKPOINT_KEYS = ("state_dict", "epoch", "global_step", "pytorch-lightning_version")


def check_checkpoint(path: str | Path) -> None:
    """Raise ConfigError unless ``path`` is a Lightning checkpoint of tensors and plain values (as histo train
    writes). It is read with ``torch.load(weights_only=True)``, which refuses to run code from a pickle."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"checkpoint to resume from {p} not found")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types (UnpicklingError, EOFError, ...)
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{p} is not a checkpoint histo train wrote (a Lightning .ckpt of tensors); it was not "
                          f"loaded, and no code in it ran ({type(exc).__name__}: {first})") from None
    missing = [k for k in _CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ConfigError(f"{p} is not a Lightning checkpoint of histo train (no {', '.join(missing)})")


def _next_version(root: Path) -> int:
    nums = [int(m.group(1)) for p in root.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))]
    return max(nums, default=-1) + 1


def fit(config: TrainConfig | str | Path, *, resume_from: str | Path | None = None,
        overrides: Sequence[str] = (), datamodule: pl.LightningDataModule | None = None,
        callbacks: Sequence[Callback] = (), export: bool = True) -> FitResult:
    """Train a model from a config (file or TrainConfig, plus ``key=value`` overrides) and export the best checkpoint.

    ``datamodule`` replaces the one the data section describes (tests, benchmarks); ``resume_from`` is a
    Lightning checkpoint written by an earlier run of this function (a pickle: only pass your own).
    """
    t0 = time.perf_counter()
    if isinstance(config, (str, Path)):
        config = TrainConfig.from_yaml(config, tuple(overrides))
    elif overrides:
        config = TrainConfig.from_dict(apply_overrides(config.to_dict(), list(overrides)),
                                       f"<config> with --set {' '.join(overrides)}")
    if resume_from is not None:
        resume_from = Path(resume_from)
        check_checkpoint(resume_from)  # before any run folder is made
    text = config.to_yaml()
    digest = config.digest
    sections = config.model.scale_sections()
    multi = len(sections) > 1
    if multi and (resume_from is not None or datamodule is not None):
        raise ConfigError("resume_from and a given datamodule work with one-scale models only; a multi-scale model "
                          "trains each scale on its own data section")

    pl.seed_everything(config.seed, workers=True, verbose=False)
    trainer_args = resolve_trainer_args(config.trainer)
    if trainer_args["accelerator"] == "gpu":
        torch.set_float32_matmul_precision("high")
    root = Path(config.output.dir) / config.output.name
    version = int(os.environ.get(_VERSION_ENV) or _next_version(root))
    run_dir = root / f"version_{version}"
    if datamodule is None:
        check_data_files(config)  # fail on a missing file before any folder is made or phantom rendered
    runs: dict[str, _ScaleRun] = {}
    is_zero = True
    try:
        for name in sections:
            pl.seed_everything(config.seed, workers=True, verbose=False)
            run = _fit_scale(config, name, run_dir, version, multi, trainer_args, text, datamodule=datamodule,
                             resume_from=resume_from, callbacks=callbacks)
            runs[name] = run
            is_zero = run.is_global_zero
    finally:
        os.environ.pop(_VERSION_ENV, None)

    metrics: dict[str, float] = {}
    for name, run in runs.items():
        for k, v in run.metrics.items():
            metrics[f"{name}_{k}" if multi and k.startswith("loss") else k] = v
    first = next(iter(runs.values()))
    result = FitResult(run_dir=run_dir, model_dir=None, weights_path=None, card_path=None,
                       best_checkpoint=first.best, last_checkpoint=first.last, metrics=metrics,
                       global_step=sum(r.step for r in runs.values()), epochs=max(r.epochs for r in runs.values()),
                       accelerator=trainer_args["accelerator"], precision=str(trainer_args["precision"]),
                       config_digest=digest)
    if export and is_zero:
        model_dir = run_dir / "model"
        domain = _calibrate(config, runs)
        nets = {k: r.module.net for k, r in runs.items()}
        net: nn.Module = nets[next(iter(nets))] if not multi else _combine(nets)
        extras = _card_extras(config, runs)
        if domain is not None:
            extras["domain"] = domain
        weights, card = export_model(net, config, metrics, model_dir, **extras)
        result = dataclasses.replace(result, model_dir=model_dir, weights_path=weights, card_path=card)
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


@dataclass
class _ScaleRun:
    """One scale's finished Lightning run."""

    module: MultiTaskModule
    datamodule: Any
    best: Path | None
    last: Path | None
    metrics: dict[str, float]
    step: int
    epochs: int
    is_global_zero: bool


def _fit_scale(config: TrainConfig, scale: str, run_dir: Path, version: int, multi: bool,
               trainer_args: dict[str, Any], text: str, *, datamodule: pl.LightningDataModule | None,
               resume_from: Path | None, callbacks: Sequence[Callback]) -> _ScaleRun:
    """Train one scale's net (in ``run_dir``, or ``run_dir/<scale>`` for a multi-scale model)."""
    sub = run_dir / scale if multi else run_dir
    dm = datamodule if datamodule is not None else build_datamodule(config, scale)
    if datamodule is None:  # label counts saved into the run; bad labels, empty heads or no val split stop here
        from histo.train.checks import check_datamodule

        sc_ = config.model.scale_sections()[scale]
        monitors = ([sc_.monitor] if sc_.monitor else
                    [config.checkpoint.monitor] + ([config.early_stop.monitor] if config.early_stop.patience > 0 else []))
        data = scale_data(config, scale)
        check_datamodule(dm, list(resolve_heads(config.model.scale_sections()[scale].heads)), sub,
                         allow_label_problems=bool(getattr(data, "allow_label_problems", False)),
                         needs_val=any(str(m).startswith("val/") for m in monitors))
    module = build_module(config, scale=scale)
    sc = config.model.scale_sections()[scale]
    # a scale's monitor comes with its mode (ScaleSection checks both are given or neither)
    ck_monitor, ck_mode = (sc.monitor, sc.mode or "min") if sc.monitor else (config.checkpoint.monitor, config.checkpoint.mode)
    es_monitor, es_mode = (sc.monitor, sc.mode or "min") if sc.monitor else (config.early_stop.monitor, config.early_stop.mode)
    ckpt = ModelCheckpoint(dirpath=sub / "checkpoints", filename="epoch{epoch:03d}-step{step:06d}",
                           auto_insert_metric_name=False, monitor=ck_monitor,
                           mode=ck_mode, save_top_k=config.checkpoint.save_top_k, save_last=True)
    cbs: list[Callback] = [ckpt, LearningRateMonitor(logging_interval="step"), *callbacks]
    if config.early_stop.patience > 0:
        cbs.append(EarlyStopping(monitor=es_monitor, mode=es_mode, patience=config.early_stop.patience))
    if multi:
        loggers = [CSVLogger(str(run_dir), name=scale, version=""),
                   TensorBoardLogger(str(run_dir), name=scale, version="", sub_dir="tensorboard",
                                     default_hp_metric=False)]
    else:
        loggers = [CSVLogger(config.output.dir, name=config.output.name, version=version),
                   TensorBoardLogger(config.output.dir, name=config.output.name, version=version,
                                     sub_dir="tensorboard", default_hp_metric=False)]
    t = config.trainer
    max_epochs = config.model.scale_sections()[scale].max_epochs or t.max_epochs
    trainer = pl.Trainer(
        **trainer_args, max_epochs=max_epochs, max_steps=t.max_steps, callbacks=cbs, logger=loggers,
        limit_train_batches=t.limit_train_batches, limit_val_batches=t.limit_val_batches,
        val_check_interval=t.val_check_interval, log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic, gradient_clip_val=t.gradient_clip_val,
        enable_progress_bar=t.progress_bar, enable_model_summary=False, default_root_dir=str(sub),
    )
    if trainer.is_global_zero:
        sub.mkdir(parents=True, exist_ok=True)
        write_text(run_dir / "config.yaml", text)
    # Children of the DDP launcher start during trainer.fit and inherit this, so all ranks share run_dir.
    os.environ[_VERSION_ENV] = str(version)
    with warnings.catch_warnings():
        # Lightning's advice about DataLoader worker counts is for the user's data config, not a fault here.
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        # config.yaml is written into the run folder first, on purpose; the CSV logger only replaces its own files.
        warnings.filterwarnings("ignore", message=".*Experiment logs directory .* exists and is not empty.*")
        trainer.fit(module, datamodule=dm, ckpt_path=str(resume_from) if resume_from else None)
        best = Path(ckpt.best_model_path) if ckpt.best_model_path else None
        last = Path(ckpt.last_model_path) if ckpt.last_model_path else None
        step, epochs = int(trainer.global_step), int(trainer.current_epoch)
        metrics: dict[str, float] = {}
        if best is not None or last is not None:
            # Loads the best weights into ``module`` (they are what is exported) and measures them once more.
            res = trainer.validate(module, datamodule=dm, ckpt_path=str(best or last), verbose=False)
            metrics = {k.removeprefix("val/"): float(v) for k, v in (res[0] if res else {}).items()}
    return _ScaleRun(module, dm, best, last, metrics, step, epochs, trainer.is_global_zero)


def _calibrate(config: TrainConfig, runs: dict[str, _ScaleRun]) -> dict[str, Any] | None:
    """The card's domain section: each scale's net calibrated on its training and validation tiles."""
    pct = config.model.domain_percentile
    if pct is None:
        return None
    from histo.train.domain import calibrate_scale, domain_card

    figures = {}
    for name, run in runs.items():
        spec = getattr(run.datamodule, "input_spec", None)
        try:
            val = run.datamodule.val_dataloader()
            figures[name] = calibrate_scale(run.module.net, run.datamodule.train_dataloader(), val,
                                            input_mean=tuple(spec.mean) if spec else IMAGENET_MEAN,
                                            input_std=tuple(spec.std) if spec else IMAGENET_STD, percentile=pct)
        except ConfigError as exc:  # e.g. too few validation tiles: the card then says it has no domain
            warnings.warn(f"scale {name!r}: no training domain recorded ({exc})", stacklevel=2)
            return None
    return domain_card(figures, pct)


def _combine(nets: Mapping[str, nn.Module]) -> MultiScaleNet:
    """One MultiScaleNet holding each scale's trained net (with its domain head when calibrated)."""
    combined = MultiScaleNet({k: (n.backbone_name, n.heads_config) for k, n in nets.items()})  # type: ignore[misc]
    for k, n in nets.items():
        if getattr(n, "domain", None) is not None:  # the same method and bank size as calibrated
            combined.nets[k].attach_domain(copy.deepcopy(n.domain))  # type: ignore[operator]
        combined.nets[k].load_state_dict(n.state_dict(), strict=True)
    return combined


def _card_extras(config: TrainConfig, runs: dict[str, _ScaleRun]) -> dict[str, Any]:
    """threshold_selection and provenance for the card, from the runs' final validation and label counts."""
    from histo.train.provenance import head_provenance

    m = config.model
    selection: dict[str, Any] = {"method": "config", "threshold": m.mitosis_threshold}
    threshold = m.mitosis_threshold
    for name, run in runs.items():
        if "mitosis" not in run.module.heads:
            continue
        choice = run.module.threshold_choice
        if m.threshold == "f1_optimal" and choice is not None:
            threshold = choice["threshold"]
            selection = {"method": "f1_optimal", "split": "val", "scale": name, **choice,
                         "config_threshold": m.mitosis_threshold}
        elif m.threshold == "f1_optimal":
            selection = {"method": "config", "threshold": m.mitosis_threshold,
                         "reason": "no true mitosis in the validation split: the configured threshold is kept"}
        elif choice is not None:
            selection["validation"] = choice
    provenance: dict[str, Any] = {}
    for run in runs.values():
        provenance.update(head_provenance(config, run.module.heads, run.datamodule, run.metrics))
    return {"mitosis_threshold": threshold, "threshold_selection": selection, "provenance": provenance}


def make_card(net: nn.Module, config: TrainConfig, metrics: dict[str, float], **extra: Any) -> ModelCard:
    """The model card of a net trained with ``config``: every scale's input spec, heads, metrics, digest.

    ``extra`` sets other card fields (mitosis_threshold, threshold_selection, provenance, domain ...).
    """
    m = config.model
    sections = m.scale_sections()
    nets = scale_nets(net, sections)
    scales = {}
    for name, sc in sections.items():
        n = nets[name]
        scales[name] = {"backbone": n.backbone_name, "heads": n.heads_config, "tile_px": sc.tile_px,
                        "mpp": sc.mpp, "mean": list(sc.mean), "std": list(sc.std)}
    fields: dict[str, Any] = {"mitosis_threshold": m.mitosis_threshold, "mitosis_min_distance_um": m.mitosis_min_distance_um,
                              "preprocessing": {"stain_normalisation": training_normalisation(config)}}
    fields.update(extra)
    return ModelCard(name=config.output.name, scales=scales, metrics=dict(metrics), config_digest=config.digest, **fields)


def training_normalisation(config: TrainConfig) -> dict[str, Any]:
    """The stain normalisation training applied (method and fitted target), as predict must apply it too."""
    from PIL import Image

    from histo.data.stain import make_normaliser, normaliser_spec

    specs = []
    for sc in config.model.scale_sections().values():
        data = sc.data if sc.data is not None else config.data
        n = getattr(data, "normalise", None)
        if n is None or n.method == "none":
            specs.append({"method": "none"})
            continue
        ref = None
        if n.reference is not None:
            with Image.open(data.resolve(n.reference)) as im:
                import numpy as np

                ref = np.asarray(im.convert("RGB"))
        specs.append(normaliser_spec(make_normaliser(n.method, ref)))
    if any(s != specs[0] for s in specs):
        raise ConfigError("every scale must use the same stain normalisation (data.normalise): a model card "
                          "records one")
    return specs[0] if specs else {"method": "none"}


def export_model(net: nn.Module, config: TrainConfig, metrics: dict[str, float],
                 model_dir: str | Path, **extra: Any) -> tuple[Path, Path]:
    """Write ``model_dir/<name>.safetensors`` + ``.card.json`` (atomically); returns both paths."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    net = net.to("cpu").eval()
    return save_model(net, make_card(net, config, metrics, **extra), model_dir)
