"""Calibrate a trained net's training domain (histo.models.domain) and write it into the card.

``calibrate_scale`` runs the net's backbone over training tiles (as the training loader draws them, stain
augmentation included, so the domain covers the stain variation the model was trained to handle) to fit
the Gaussian of pooled features and of colour, then over the validation tiles to set each threshold at
their ``percentile``. ``calibrate_model`` does it for every scale of an exported model and re-exports it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histo.errors import ConfigError
from histo.models import ModelCard, MultiTaskNet, load_model, save_model, scale_nets
from histo.models.domain import METHOD, REFERENCES, DomainHead, fit_gaussian, mahalanobis, tile_colour_od

PERCENTILE = 99.0
MAX_TILES = 20000


def _collect(net: MultiTaskNet, batches: Iterable[Any], max_tiles: int, mean: torch.Tensor,
             std: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled features (N, D), colour OD (N, 3)) of up to ``max_tiles`` tiles."""
    feats, cols, n = [], [], 0
    net = net.to(device).eval()
    with torch.inference_mode():
        for batch in batches:
            x = (batch["image"] if isinstance(batch, dict) else batch).to(device)
            pooled = net.backbone.pool(net.backbone.forward_pyramid(x)[-1])
            feats.append(pooled.float().cpu())
            cols.append(tile_colour_od(x, mean.to(device), std.to(device)).cpu())
            n += len(x)
            if n >= max_tiles:
                break
    if not feats:
        return torch.zeros(0, net.num_features), torch.zeros(0, 3)
    return torch.cat(feats)[:max_tiles], torch.cat(cols)[:max_tiles]


def calibrate_scale(net: MultiTaskNet, train_batches: Iterable[Any], val_batches: Iterable[Any], *,
                    input_mean: tuple[float, float, float], input_std: tuple[float, float, float],
                    percentile: float = PERCENTILE, max_tiles: int = MAX_TILES,
                    device: str | torch.device = "cpu") -> dict[str, Any]:
    """Fit the domain of one scale's net, attach a DomainHead to it, and return the card figures of that scale."""
    dev = torch.device(device)
    mean, std = torch.tensor(input_mean, dtype=torch.float32), torch.tensor(input_std, dtype=torch.float32)
    tf, tc = _collect(net, train_batches, max_tiles, mean, std, dev)
    vf, vc = _collect(net, val_batches, max_tiles, mean, std, dev)
    if len(tf) < 10 or len(vf) < 10:
        raise ConfigError(f"domain calibration needs at least 10 training and 10 validation tiles, got "
                          f"{len(tf)} and {len(vf)}")
    fm, fp = fit_gaussian(tf)
    cm, cp = fit_gaussian(tc)
    vd_f = mahalanobis(vf, fm, fp).numpy()
    vd_c = mahalanobis(vc, cm, cp).numpy()
    thr_f = float(np.percentile(vd_f, percentile))
    thr_c = float(np.percentile(vd_c, percentile))
    head = DomainHead(tf.shape[1])
    with torch.no_grad():
        for name, value in (("feature_mean", fm), ("feature_precision", fp), ("colour_mean", cm),
                            ("colour_precision", cp), ("input_mean", mean), ("input_std", std)):
            getattr(head, name).copy_(value)
        head.feature_threshold.fill_(max(thr_f, 1e-6))
        head.colour_threshold.fill_(max(thr_c, 1e-6))
    net.attach_domain(head.to(next(net.parameters()).device))
    score = np.maximum(vd_f / max(thr_f, 1e-6), vd_c / max(thr_c, 1e-6))
    return {"dim": int(tf.shape[1]), "n_train_tiles": int(len(tf)), "n_val_tiles": int(len(vf)),
            "feature_threshold": round(thr_f, 6), "colour_threshold": round(thr_c, 6),
            "val_in_domain_fraction": round(float((score <= 1.0).mean()), 4)}


def domain_card(scales: dict[str, dict[str, Any]], percentile: float = PERCENTILE) -> dict[str, Any]:
    """The card's ``domain`` section for calibrated scales."""
    return {
        "method": METHOD,
        "features": "pooled backbone features (the input of the tile heads), per scale",
        "colour": "mean optical density per RGB channel of the tile",
        "score": "ood_score = max(feature distance / feature_threshold, colour distance / colour_threshold); "
                 "a tile is in domain when ood_score <= 1",
        "percentile": percentile,
        "threshold_split": "val",
        "scales": scales,
        "references": list(REFERENCES),
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
