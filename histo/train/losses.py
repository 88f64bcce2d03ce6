"""Per-task losses masked per tile: an unlabelled tile adds nothing, and a task with no label in the batch gives 0.

Each loss returns a scalar that stays attached to the graph even when it is 0 (``logits.sum() * 0``), so
every parameter still gets a (zero) gradient and DDP's gradient sync never waits for a missing one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from histo.train.config import MitosisLoss


def _zero(logits: torch.Tensor) -> torch.Tensor:
    return logits.float().sum() * 0.0


def pattern_loss(logits: torch.Tensor, target: torch.Tensor,
                 class_weights: Sequence[float] | torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy over tiles with a pattern label (target -1 = none), weighted mean when class weights are given."""
    labelled = target >= 0
    if not bool(labelled.any()):
        return _zero(logits)
    w = None
    if class_weights is not None:
        w = torch.as_tensor(class_weights, dtype=torch.float32, device=logits.device)
    return F.cross_entropy(logits.float(), target.long(), weight=w, ignore_index=-1)


def necrosis_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits over tiles with a necrosis label (target -1 = none)."""
    labelled = target >= 0
    if not bool(labelled.any()):
        return _zero(logits)
    return F.binary_cross_entropy_with_logits(logits.float()[labelled], target.float()[labelled])


def mitosis_loss(logits: torch.Tensor, target: torch.Tensor, labelled: torch.Tensor,
                 cfg: MitosisLoss = MitosisLoss()) -> torch.Tensor:
    """Heatmap loss over tiles whose mitoses were annotated (``labelled``), focal or weighted BCE (see MitosisLoss)."""
    if target.shape != logits.shape:
        raise ValueError(f"mitosis heatmap target has shape {tuple(target.shape)}, the head gives "
                         f"{tuple(logits.shape)}; check data mitosis stride against model heads.mitosis.stride_px")
    labelled = labelled.bool()
    if not bool(labelled.any()):
        return _zero(logits)
    x = logits.float()[labelled]
    t = target.float()[labelled].clamp(0.0, 1.0)
    if cfg.kind == "bce":
        pw = torch.tensor(cfg.pos_weight, dtype=torch.float32, device=x.device)
        return F.binary_cross_entropy_with_logits(x, t, pos_weight=pw)
    # Focal with soft (Gaussian) targets: the |t - p|^gamma factor generalises (1 - p_t)^gamma to targets in [0, 1].
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p = torch.sigmoid(x)
    modulating = (t - p).abs().pow(cfg.gamma)
    weight = cfg.alpha * t + (1.0 - cfg.alpha) * (1.0 - t)
    # Per unit of positive mass, as detection losses normalise per object; at least 1 for tiles without mitoses.
    norm = t.sum().clamp_min(1.0)
    return (weight * modulating * bce).sum() / norm
