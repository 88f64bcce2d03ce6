"""The training domain a model carries: how far a tile is from what the model learned from.

Method (recorded in the card's ``domain`` section):

- **Features:** the Mahalanobis distance of a tile's pooled backbone features (the stride-32 map, the
  input of the tile heads) from the mean and covariance of the training tiles (Lee et al., NeurIPS 2018).
  Feature-space detectors of this family are the ones that separate semantic out-of-distribution tissue
  best in the digital pathology benchmark of Oh, Falahkheirkhah and Bhargava (2024, "Are we ready for
  out-of-distribution detection in digital pathology?"), need no extra training, and cost one matrix
  product per tile.
- **Colour:** the Mahalanobis distance of the tile's mean optical density per RGB channel from the
  training tiles' (covariate shift: another stain, scanner or fading), which features learned under stain
  augmentation may partly ignore.
- **Threshold:** each distance is divided by the 99th percentile of the validation tiles' distances, and
  ``ood_score`` is the larger of the two ratios. A tile is in domain when ``ood_score <= 1``: by
  construction about 1 % of validation tiles fall outside.

Both statistics are buffers of a :class:`DomainHead` inside the net, so they travel in the safetensors
file with the weights and are computed on the device in the same forward pass as the heads.
"""

from __future__ import annotations

import torch
from torch import nn

METHOD = "mahalanobis_features+colour_od"
REFERENCES = (
    "Lee K, Lee K, Lee H, Shin J. A simple unified framework for detecting out-of-distribution samples and "
    "adversarial attacks. NeurIPS 2018.",
    "Oh J-H, Falahkheirkhah K, Bhargava R. Are we ready for out-of-distribution detection in digital "
    "pathology? 2024 (arXiv:2407.13708).",
)
_EPS_OD = 1.0 / 255.0


def tile_colour_od(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Mean optical density per RGB channel (N, 3) of normalised input tiles (N, 3, H, W)."""
    rgb = (x.float() * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)).clamp(_EPS_OD, 1.0)
    return (-torch.log(rgb)).mean(dim=(2, 3))


def mahalanobis(v: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """sqrt((v - mean)^T P (v - mean)) per row of ``v``."""
    d = v.float() - mean
    return ((d @ precision) * d).sum(1).clamp_min(0).sqrt()


class DomainHead(nn.Module):
    """Distances of tiles from the training domain; ``forward(x, pooled)`` → ood_score (N,) (in domain: <= 1)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_precision", torch.eye(dim))
        self.register_buffer("feature_threshold", torch.ones(()))
        self.register_buffer("colour_mean", torch.zeros(3))
        self.register_buffer("colour_precision", torch.eye(3))
        self.register_buffer("colour_threshold", torch.ones(()))
        self.register_buffer("input_mean", torch.tensor([0.485, 0.456, 0.406]))
        self.register_buffer("input_std", torch.tensor([0.229, 0.224, 0.225]))

    def distances(self, x: torch.Tensor, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(feature distance, colour distance) per tile."""
        feat = mahalanobis(pooled.float(), self.feature_mean, self.feature_precision)
        colour = mahalanobis(tile_colour_od(x, self.input_mean, self.input_std), self.colour_mean,
                             self.colour_precision)
        return feat, colour

    def forward(self, x: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:  # noqa: D102
        feat, colour = self.distances(x, pooled)
        return torch.maximum(feat / self.feature_threshold, colour / self.colour_threshold)


def fit_gaussian(v: torch.Tensor, shrinkage: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, precision) of rows ``v`` with the covariance shrunk towards its mean variance (stable for few tiles)."""
    v = v.double()
    mean = v.mean(0)
    c = v - mean
    cov = c.T @ c / max(1, len(v) - 1)
    d = cov.shape[0]
    target = torch.eye(d, dtype=cov.dtype) * (torch.trace(cov) / d).clamp_min(1e-12)
    cov = (1 - shrinkage) * cov + shrinkage * target
    return mean.float(), torch.linalg.pinv(cov, hermitian=True).float()
