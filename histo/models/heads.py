"""Task heads (tile classification, a single logit, a dense mitosis heatmap) and heatmap peak finding."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from histo.errors import ModelError


class ClassificationHead(nn.Module):
    """Pooled features ``(N, F)`` → class logits ``(N, C)``."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        if num_classes < 2:
            raise ModelError(f"a classification head needs at least 2 classes, got {num_classes}")
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, C)``."""
        return self.fc(self.dropout(feats))


class LogitHead(nn.Module):
    """Pooled features ``(N, F)`` → one logit per tile ``(N,)`` (e.g. necrosis present)."""

    def __init__(self, in_features: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, 1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """Logits ``(N,)``."""
        return self.fc(self.dropout(feats)).squeeze(-1)


class HeatmapHead(nn.Module):
    """A small FPN-style decoder: feature pyramid → per-pixel logit map ``(N, 1, H/s, W/s)``.

    Top-down from the coarsest map, adding 1x1 lateral projections, down to ``stride_px``; the
    coarse maps give context (is this a mitosis or an apoptotic body), the fine ones position.
    """

    def __init__(self, in_channels: Sequence[int], in_strides: Sequence[int], stride_px: int = 4,
                 width: int = 64, prior: float = 0.01):
        super().__init__()
        if stride_px not in in_strides:
            raise ModelError(f"mitosis stride_px must be one of the backbone strides {tuple(in_strides)}, got {stride_px}")
        keep = [i for i, s in enumerate(in_strides) if s >= stride_px]
        self._levels = keep
        self.stride_px = stride_px
        self.lateral = nn.ModuleList(nn.Conv2d(in_channels[i], width, 1) for i in keep)
        self.smooth = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
            for _ in keep
        )
        self.out = nn.Conv2d(width, 1, 1)
        # Mitoses are rare pixels: start the logits at the prior so early training is not swamped by negatives.
        assert self.out.bias is not None  # nn.Conv2d(bias=True) above
        nn.init.constant_(self.out.bias, -math.log((1 - prior) / prior))

    def forward(self, pyramid: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logit map ``(N, 1, h, w)`` at ``stride_px``."""
        feats = [pyramid[i] for i in self._levels]
        x = self.smooth[-1](self.lateral[-1](feats[-1]))
        for j in range(len(feats) - 2, -1, -1):
            lat = self.lateral[j](feats[j])
            # size= rather than scale_factor so inputs not divisible by 32 still line up.
            x = F.interpolate(x, size=lat.shape[-2:], mode="nearest") + lat
            x = self.smooth[j](x)
        return self.out(x)


def heatmap_to_points(heatmap: torch.Tensor, threshold: float = 0.5, min_distance_px: float = 8.0,
                      stride: int = 4, *, from_logits: bool = False, refine: bool = True) -> torch.Tensor:
    """Peaks of one heatmap ``(h, w)`` or ``(1, h, w)`` as ``(K, 3)`` rows ``x_px, y_px, score``, best first.

    Coordinates are in input-tile pixels (cell centre ``(j + 0.5) * stride``; pixel ``k`` spans
    ``[k, k + 1)``), optionally refined by the 3x3 weighted centroid. Scores are probabilities;
    pass ``from_logits=True`` for a raw logit map. No two points are closer than ``min_distance_px``.
    """
    if heatmap.dim() == 3 and heatmap.shape[0] == 1:
        heatmap = heatmap[0]
    if heatmap.dim() != 2:
        raise ModelError(f"heatmap_to_points expects a (h, w) or (1, h, w) map, got shape {tuple(heatmap.shape)}")
    return heatmaps_to_points(heatmap[None, None], threshold, min_distance_px, stride,
                              from_logits=from_logits, refine=refine)[0]


def heatmaps_to_points(heatmaps: torch.Tensor, threshold: float = 0.5, min_distance_px: float = 8.0,
                       stride: int = 4, *, from_logits: bool = False, refine: bool = True) -> list[torch.Tensor]:
    """Batched :func:`heatmap_to_points` for ``(N, 1, h, w)``: one ``(K, 3)`` tensor per image."""
    if heatmaps.dim() != 4 or heatmaps.shape[1] != 1:
        raise ModelError(f"heatmaps_to_points expects (N, 1, h, w), got shape {tuple(heatmaps.shape)}")
    if stride <= 0 or min_distance_px < 0:
        raise ModelError(f"stride must be > 0 and min_distance_px >= 0, got {stride}, {min_distance_px}")
    prob = heatmaps.detach().float()
    if from_logits:
        prob = prob.sigmoid()
    # Max-pool NMS over a window of the min distance (in cells) removes nearly all close pairs cheaply;
    # the exact Euclidean check below handles ties and the corners of the square window.
    r = max(0, int(min_distance_px // stride))
    pooled = F.max_pool2d(prob, 2 * r + 1, stride=1, padding=r) if r else prob
    peaks = (prob >= pooled) & (prob >= threshold)
    if refine:
        padded = F.pad(prob, (1, 1, 1, 1))
        w = F.unfold(padded, 3).view(prob.shape[0], 9, *prob.shape[-2:])  # 3x3 neighbourhoods
        off = torch.tensor([-1.0, 0.0, 1.0], device=prob.device)
        dy, dx = torch.meshgrid(off, off, indexing="ij")
        total = w.sum(1).clamp_min(1e-12)
        cx = (w * dx.reshape(1, 9, 1, 1)).sum(1) / total
        cy = (w * dy.reshape(1, 9, 1, 1)).sum(1) / total
    out = []
    for b in range(prob.shape[0]):
        ys, xs = torch.nonzero(peaks[b, 0], as_tuple=True)
        scores = prob[b, 0, ys, xs]
        fx, fy = xs.float(), ys.float()
        if refine:
            fx = fx + cx[b, ys, xs]
            fy = fy + cy[b, ys, xs]
        pts = torch.stack([(fx + 0.5) * stride, (fy + 0.5) * stride, scores], 1)
        pts = pts[torch.argsort(scores, descending=True, stable=True)]
        out.append(_greedy_min_distance(pts, min_distance_px))
    return out


def _greedy_min_distance(pts: torch.Tensor, min_distance_px: float) -> torch.Tensor:
    """Keep points (sorted best first) so that no two kept are closer than ``min_distance_px``."""
    if len(pts) < 2 or min_distance_px <= 0:
        return pts
    close = torch.cdist(pts[:, :2], pts[:, :2]) < min_distance_px
    close.fill_diagonal_(False)
    if not close.any():  # the usual case after max-pool NMS
        return pts
    keep = torch.ones(len(pts), dtype=torch.bool)
    for i in range(len(pts)):
        if keep[i]:
            later = close[i].clone()
            later[: i + 1] = False
            keep &= ~later
    return pts[keep]
