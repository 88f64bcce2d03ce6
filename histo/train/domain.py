"""Calibrate a trained net's training domain (histo.models.domain) and write it into the card.

``calibrate_scale`` runs the net's backbone over training tiles (as the training loader draws them, stain
augmentation included, so the domain covers the stain variation the model was trained to handle) to fit
each statistic (the nearest-neighbour bank of texture, colour and sharpness; the Gaussian of the last
level's pooled features), then over the validation tiles to set each threshold at their ``percentile``.
``calibrate_model`` does it for every scale of an exported model and re-exports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histo.errors import ConfigError
from histo.models import ModelCard, MultiTaskNet, load_model, save_model, scale_nets
from histo.models.domain import BANK_TILES, METHOD, REFERENCES, STATISTICS, DomainHead, fit_bank, fit_gaussian

PERCENTILE = 99.5  # per statistic; two statistics leave about 99 % of validation tiles in domain
TRAIN_PASSES = 4  # passes over the (augmented) training loader while fewer than max_tiles were drawn
MAX_TILES = 20000
TRAINING_DATA = "the training config's own training and validation tiles"


def calibration_data(overrides: Sequence[str] = ()) -> str:
    """How the card names the tiles a calibration used: the training config's, or those under ``--set`` overrides."""
    if not overrides:
        return TRAINING_DATA
    return "the training config's tiles with " + ", ".join(overrides) + " (a subset or variant of its training data)"


def _collect(net: MultiTaskNet, head: DomainHead, batches: Iterable[Any], max_tiles: int,
             device: torch.device, passes: int = 1) -> list[torch.Tensor]:
    """The domain statistics (STATISTICS order) of up to ``max_tiles`` tiles, in up to ``passes`` passes."""
    parts: list[list[torch.Tensor]] = []
    n = 0
    net = net.to(device).eval()
    head = head.to(device)
    with torch.inference_mode():
        for _ in range(passes):
            for batch in batches:
                x = (batch["image"] if isinstance(batch, dict) else batch).to(device)
                parts.append([f.cpu() for f in head.features(x, net.backbone.forward_pyramid(x))])
                n += len(x)
                if n >= max_tiles:
                    break
            if n >= max_tiles:
                break
    if not parts:
        return []
    return [torch.cat([p[i] for p in parts])[:max_tiles] for i in range(len(parts[0]))]


def calibrate_scale(net: MultiTaskNet, train_batches: Iterable[Any], val_batches: Iterable[Any], *,
                    input_mean: tuple[float, float, float], input_std: tuple[float, float, float],
                    percentile: float = PERCENTILE, max_tiles: int = MAX_TILES, bank_tiles: int = BANK_TILES,
                    device: str | torch.device = "cpu") -> dict[str, Any]:
    """Fit the domain of one scale's net, attach a DomainHead to it, and return the card figures of that scale.

    The card figures include ``bank_tiles`` (the rows of the nearest-neighbour bank), which load_model needs
    to rebuild the head before it reads the weights.
    """
    dev = torch.device(device)
    probe = DomainHead(net.backbone.feature_channels, METHOD, bank_tiles=1)  # computes the statistics only
    with torch.no_grad():
        probe.input_mean.copy_(torch.tensor(input_mean))
        probe.input_std.copy_(torch.tensor(input_std))
    train = _collect(net, probe, train_batches, max_tiles, dev, passes=TRAIN_PASSES)
    val = _collect(net, probe, val_batches, max_tiles, dev)
    n_train, n_val = (len(train[0]) if train else 0), (len(val[0]) if val else 0)
    if n_train < 10 or n_val < 10:
        raise ConfigError(f"domain calibration needs at least 10 training and 10 validation tiles, got "
                          f"{n_train} and {n_val}")
    bank_tiles = min(bank_tiles, n_train)
    head = DomainHead(net.backbone.feature_channels, METHOD, bank_tiles)
    with torch.no_grad():
        head.input_mean.copy_(torch.tensor(input_mean))
        head.input_std.copy_(torch.tensor(input_std))
    names = list(STATISTICS)
    with torch.no_grad():
        for name, t in zip(names, train):
            if head.kinds[name] == "knn":
                for suffix, value in zip(("center", "scale", "bank"), fit_bank(t, bank_tiles)):
                    getattr(head, f"{name}_{suffix}").copy_(value)
            else:
                mean, prec = fit_gaussian(t)
                getattr(head, f"{name}_mean").copy_(mean)
                getattr(head, f"{name}_precision").copy_(prec)
        dists = [d.numpy() for d in head.cpu().feature_distances(val)]
    thresholds: dict[str, float] = {}
    ratios = []
    for name, d in zip(names, dists):
        thr = max(float(np.percentile(d, percentile)), 1e-6)
        getattr(head, f"{name}_threshold").fill_(thr)
        thresholds[name] = round(thr, 6)
        ratios.append(d / thr)
    net.attach_domain(head.to(next(net.parameters()).device))
    score = np.max(np.stack(ratios, 1), 1)
    return {"statistics": names, "kinds": dict(head.kinds), "thresholds": thresholds, "bank_tiles": int(bank_tiles),
            "n_train_tiles": int(n_train), "n_val_tiles": int(n_val),
            "val_in_domain_fraction": round(float((score <= 1.0).mean()), 4)}


def domain_card(scales: dict[str, dict[str, Any]], percentile: float = PERCENTILE,
                calibration_data: str = TRAINING_DATA) -> dict[str, Any]:
    """The card's ``domain`` section for calibrated scales; ``calibration_data`` says which tiles they were fitted on."""
    return {
        "method": METHOD,
        "statistics": {"texture_colour": "per-channel mean and standard deviation of the first backbone level's "
                                         "feature map, the mean and standard deviation of optical density per "
                                         "RGB channel, and seven sharpness descriptors (gradient-magnitude "
                                         "quantiles, Laplacian spread, spectral band ratios); distance to the "
                                         "nearest standardised training tile of the bank",
                       "semantic": "per-channel mean and standard deviation of the last backbone level's feature "
                                   "map; Mahalanobis distance from the training tiles' Gaussian"},
        "score": "ood_score = max over statistics of distance / its threshold; a tile is in domain when "
                 "ood_score <= 1",
        "percentile": percentile,
        "threshold_split": "val",
        "calibration_data": calibration_data,
        "scales": scales,
        "references": list(REFERENCES),
    }


def calibrate_model(model_dir: str | Path, config: Any, out_dir: str | Path | None = None, *,
                    percentile: float = PERCENTILE, max_tiles: int = MAX_TILES,
                    device: str | torch.device = "cpu", overrides: Sequence[str] = ()) -> tuple[Path, Path]:
    """Calibrate every scale of an exported model on the data of ``config`` (a TrainConfig) and export it again.

    ``overrides`` are the ``--set`` overrides ``config`` was loaded with; the card records them, so a domain
    fitted on part of the training data says so.
    """
    from histo.train.fit import build_datamodule, input_spec

    model, card = load_model(model_dir)
    nets = scale_nets(model, card.scales)
    figures: dict[str, dict[str, Any]] = {}
    for name in card.scales:
        dm = build_datamodule(config, name if config.model.scales else None)
        dm.prepare_data()
        dm.setup("fit")
        spec = input_spec(config, name if config.model.scales else None)
        figures[name] = calibrate_scale(nets[name], dm.train_dataloader(), dm.val_dataloader(),  # type: ignore[arg-type]
                                        input_mean=spec.mean, input_std=spec.std, percentile=percentile,
                                        max_tiles=max_tiles, device=device)
    new = ModelCard.from_dict({**card.to_dict(), "domain": domain_card(figures, percentile, calibration_data(overrides)),
                              "weights_sha256": None})
    target = Path(out_dir) if out_dir is not None else Path(model_dir)
    if not target.is_dir():
        target = target.parent  # a card or prefix was given: write beside it, same names (atomic replace)
    return save_model(model.cpu(), new, target)
