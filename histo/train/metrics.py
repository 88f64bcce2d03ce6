"""Mitosis detection F1 at a match radius (MIDOG convention: 7.5 µm), as a torchmetrics Metric that syncs under DDP."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics import Metric

MIDOG_RADIUS_UM = 7.5


def match_points(pred_xy: np.ndarray | torch.Tensor, true_xy: np.ndarray | torch.Tensor,
                 radius_px: float) -> tuple[int, int, int]:
    """(TP, FP, FN) of a one-to-one matching of predicted to true points within ``radius_px`` (inclusive).

    The matching maximises the number of pairs (Hungarian on distances, with pairs beyond the radius
    priced above any feasible total), so the count never depends on the order of the points.
    """
    from scipy.optimize import linear_sum_assignment

    p = _as_xy(pred_xy)
    t = _as_xy(true_xy)
    if len(p) == 0 or len(t) == 0:
        return 0, len(p), len(t)
    d = np.sqrt(((p[:, None, :] - t[None, :, :]) ** 2).sum(-1))
    ok = d <= radius_px
    if not ok.any():
        return 0, len(p), len(t)
    big = float(d[ok].sum()) + 1.0 + radius_px  # any infeasible pair costs more than all feasible ones together
    cost = np.where(ok, d, big)
    rows, cols = linear_sum_assignment(cost)
    tp = int(ok[rows, cols].sum())
    return tp, len(p) - tp, len(t) - tp


def _as_xy(a: np.ndarray | torch.Tensor) -> np.ndarray:
    """Finite (K, 2) float64 x, y rows (extra columns such as scores and NaN padding rows dropped)."""
    if isinstance(a, torch.Tensor):
        a = a.detach().float().cpu().numpy()
    a = np.asarray(a, dtype=np.float64)
    a = (a if a.ndim == 2 else a.reshape(-1, 2))[:, :2]
    return a[np.isfinite(a).all(1)]


class MitosisF1(Metric):
    """Detection F1 = 2TP / (2TP + FP + FN) over all tiles seen, points matched within ``radius_px``.

    ``update(pred_points, true_points)`` takes per-tile predicted points (a list of ``(K, 2+)`` tensors,
    x, y in tile px first) and the true points ``(N, K, 2)`` padded with NaN (or a list). ``compute()``
    gives a dict ``f1``, ``precision``, ``recall``; with nothing to find and nothing found all are 1.
    """

    full_state_update = False
    higher_is_better = True
    tp: torch.Tensor  # states registered by add_state
    fp: torch.Tensor
    fn: torch.Tensor

    def __init__(self, radius_px: float, **kwargs) -> None:
        super().__init__(**kwargs)
        if not radius_px > 0:
            raise ValueError(f"radius_px must be positive, got {radius_px}")
        self.radius_px = float(radius_px)
        self.add_state("tp", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("fp", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("fn", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred_points: Sequence[torch.Tensor], true_points: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """Match each tile's predictions to its truth and add the counts."""
        if len(pred_points) != len(true_points):
            raise ValueError(f"{len(pred_points)} tiles of predictions but {len(true_points)} tiles of truth")
        tp = fp = fn = 0
        for p, t in zip(pred_points, true_points):
            a, b, c = match_points(p, t, self.radius_px)
            tp, fp, fn = tp + a, fp + b, fn + c
        self.tp += tp
        self.fp += fp
        self.fn += fn

    def compute(self) -> dict[str, torch.Tensor]:
        """F1, precision and recall of everything accumulated (synced across processes)."""
        tp, fp, fn = (v.double() for v in (self.tp, self.fp, self.fn))
        one = torch.ones((), dtype=torch.float64, device=tp.device)
        f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) > 0 else one
        precision = tp / (tp + fp) if (tp + fp) > 0 else one
        recall = tp / (tp + fn) if (tp + fn) > 0 else one
        return {"f1": f1.float(), "precision": precision.float(), "recall": recall.float()}


THRESHOLD_GRID = tuple(round(0.1 + 0.05 * i, 2) for i in range(17))  # 0.10, 0.15, ..., 0.90


class MitosisF1Sweep(Metric):
    """TP/FP/FN of the mitosis detections at every score threshold of ``thresholds`` (for choosing one).

    ``update`` takes per-tile predicted points with a score column (x, y, score), found at or below the
    lowest threshold, and the true points; each threshold keeps the predictions scoring at least it.
    """

    full_state_update = False
    tp: torch.Tensor  # per-threshold states registered by add_state
    fp: torch.Tensor
    fn: torch.Tensor

    def __init__(self, radius_px: float, thresholds: Sequence[float] = THRESHOLD_GRID, **kwargs) -> None:
        super().__init__(**kwargs)
        self.radius_px = float(radius_px)
        self.thresholds = tuple(float(t) for t in thresholds)
        k = len(self.thresholds)
        for name in ("tp", "fp", "fn"):
            self.add_state(name, default=torch.zeros(k, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred_points: Sequence[torch.Tensor], true_points: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """Match each tile's predictions (filtered per threshold) to its truth and add the counts."""
        counts = np.zeros((3, len(self.thresholds)), np.int64)
        for pred, t in zip(pred_points, true_points):
            p = pred.detach().float().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred, np.float64)
            p = p.reshape(-1, p.shape[-1]) if p.size else np.zeros((0, 3))
            for j, thr in enumerate(self.thresholds):
                a, b, c = match_points(p[p[:, 2] >= thr] if len(p) else p, t, self.radius_px)
                counts[:, j] += (a, b, c)
        self.tp += torch.as_tensor(counts[0], device=self.tp.device)
        self.fp += torch.as_tensor(counts[1], device=self.fp.device)
        self.fn += torch.as_tensor(counts[2], device=self.fn.device)

    def compute(self) -> dict[str, torch.Tensor]:
        """Per-threshold tp, fp, fn (synced across processes)."""
        return {"tp": self.tp.clone(), "fp": self.fp.clone(), "fn": self.fn.clone()}


def choose_threshold(thresholds: Sequence[float], tp: Sequence[int], fp: Sequence[int],
                     fn: Sequence[int]) -> dict[str, float] | None:
    """The F1-optimal threshold (ties: the one whose count is least biased, then the lower) and its figures.

    None when the validation set holds no true mitosis: F1 there measures nothing.
    """
    tp_a, fp_a, fn_a = (np.asarray(v, np.float64) for v in (tp, fp, fn))
    n_true = tp_a[0] + fn_a[0]
    if n_true <= 0:
        return None
    f1 = np.where(2 * tp_a + fp_a + fn_a > 0, 2 * tp_a / np.maximum(2 * tp_a + fp_a + fn_a, 1), 0.0)
    bias = np.abs((tp_a + fp_a) - n_true)
    order = sorted(range(len(thresholds)), key=lambda i: (-round(float(f1[i]), 6), bias[i], thresholds[i]))
    i = order[0]
    return {"threshold": float(thresholds[i]), "f1": float(f1[i]),
            "precision": float(tp_a[i] / (tp_a[i] + fp_a[i])) if tp_a[i] + fp_a[i] > 0 else 0.0,
            "recall": float(tp_a[i] / n_true), "n_true": int(n_true), "n_predicted": int(tp_a[i] + fp_a[i])}
