"""Calibrate a trained net's training domain (histo.models.domain) and write it into the card.

``calibrate_scale`` runs the net's backbone over training tiles (as the training loader draws them, stain
augmentation included, so the domain covers the stain variation the model was trained to handle) to fit
the Gaussian of texture and colour and draw the kNN bank of pooled last-level features, then over the
validation tiles to set each threshold at their ``percentile``. ``calibrate_model`` does it for every scale of an exported model and re-exports it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histo.errors import ConfigError
from histo.models import ModelCard, MultiTaskNet, load_model, save_model, scale_nets
from histo.models import domain as md  # the names are read at call time (a long-running process may hold an older one)

PERCENTILE = 99.5  # per statistic; two statistics leave about 99 % of validation tiles in domain
TRAIN_PASSES = 4  # passes over the (augmented) training loader while fewer than max_tiles were drawn
MAX_TILES = 20000
BANK_SEED = 0  # the kNN bank's random draw of training tiles is reproducible


def _collect(net: MultiTaskNet, head: md.DomainHead, batches: Iterable[Any], max_tiles: int,
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
                    percentile: float = PERCENTILE, max_tiles: int = MAX_TILES,
                    device: str | torch.device = "cpu") -> dict[str, Any]:
    """Fit the domain of one scale's net, attach a DomainHead to it, and return the card figures of that scale."""
    dev = torch.device(device)
    knn = "semantic_knn" in md.STATISTICS
    channels = net.backbone.feature_channels
    probe = md.DomainHead(channels, bank_tiles=1) if knn else md.DomainHead(channels)  # features; sized below
    with torch.no_grad():
        probe.input_mean.copy_(torch.tensor(input_mean))
        probe.input_std.copy_(torch.tensor(input_std))
    train = _collect(net, probe, train_batches, max_tiles, dev, passes=TRAIN_PASSES)
    val = _collect(net, probe, val_batches, max_tiles, dev)
    n_train, n_val = (len(train[0]) if train else 0), (len(val[0]) if val else 0)
    if n_train < 10 or n_val < 10:
        raise ConfigError(f"domain calibration needs at least 10 training and 10 validation tiles, got "
                          f"{n_train} and {n_val}")
    bank_tiles = getattr(md, "KNN_BANK_TILES", 0)
    pick = torch.randperm(n_train, generator=torch.Generator().manual_seed(BANK_SEED))[:bank_tiles]
    head = md.DomainHead(channels, bank_tiles=len(pick), k=md.KNN_K) if knn else probe
    thresholds: dict[str, float] = {}
    ratios = []
    with torch.no_grad():
        head.input_mean.copy_(probe.input_mean)
        head.input_std.copy_(probe.input_std)
        for name, t, v in zip(md.STATISTICS, train, val):
            if name == "semantic_knn":
                head.semantic_knn_bank.copy_(t[pick].half())
                d = md.knn_distance(v, head.semantic_knn_bank, head.k).numpy()
            else:
                mean, prec = md.fit_gaussian(t)
                getattr(head, f"{name}_mean").copy_(mean)
                getattr(head, f"{name}_precision").copy_(prec)
                d = md.mahalanobis(v, mean, prec).numpy()
            thr = max(float(np.percentile(d, percentile)), 1e-6)
            getattr(head, f"{name}_threshold").fill_(thr)
            thresholds[name] = round(thr, 6)
            ratios.append(d / thr)
    net.attach_domain(head.to(next(net.parameters()).device))
    score = np.max(np.stack(ratios, 1), 1)
    fig: dict[str, Any] = {"statistics": list(md.STATISTICS), "thresholds": thresholds}
    if knn:
        fig["knn"] = {"k": head.k, "bank_tiles": len(pick)}
    return {**fig, "n_train_tiles": int(n_train), "n_val_tiles": int(n_val),
            "val_in_domain_fraction": round(float((score <= 1.0).mean()), 4)}


_DESCRIPTIONS = {
    "texture_colour": "Mahalanobis distance of the per-channel mean and standard deviation of the first backbone "
                      "level's feature map, with the mean and standard deviation of optical density per RGB channel",
    "semantic_knn": "distance of the L2-normalised pooled last-level features to the k-th nearest of a bank of "
                    "training tiles (knn: k, bank_tiles)",
    "semantic": "Mahalanobis distance of the per-channel mean and standard deviation of the last backbone level's "
                "feature map",
}


def domain_card(scales: dict[str, dict[str, Any]], percentile: float = PERCENTILE) -> dict[str, Any]:
    """The card's ``domain`` section for calibrated scales."""
    return {
        "method": md.METHOD,
        "statistics": {k: v for k, v in _DESCRIPTIONS.items() if k in md.STATISTICS},
        "score": "ood_score = max over statistics of distance / its threshold; a tile is in domain when "
                 "ood_score <= 1",
        "percentile": percentile,
        "threshold_split": "val",
        "scales": scales,
        "references": list(md.REFERENCES),
    }


def calibrate_model(model_dir: str | Path, config: Any, out_dir: str | Path | None = None, *,
                    percentile: float = PERCENTILE, max_tiles: int = MAX_TILES,
                    device: str | torch.device = "cpu") -> tuple[Path, Path]:
    """Calibrate every scale of an exported model on the data of ``config`` (a TrainConfig) and export it again."""
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
    new = ModelCard.from_dict({**card.to_dict(), "domain": domain_card(figures, percentile), "weights_sha256": None})
    target = Path(out_dir) if out_dir is not None else Path(model_dir)
    if not target.is_dir():
        target = target.parent  # a card or prefix was given: write beside it, same names (atomic replace)
    return save_model(model.cpu(), new, target)
