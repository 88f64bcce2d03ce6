"""The training domain a model carries: how far a tile is from what the model learned from.

Method (recorded in the card's ``domain`` section):

- **Features:** at the backbone's first and last levels (strides 4 and 32), the Mahalanobis distance of the
  per-channel mean and spread of the tile's feature map from those of the training tiles (Lee et al.,
  NeurIPS 2018, who also ensemble several layers). The two middle levels are left out: on the phantom
  demo model each alone separates its validation phantoms from real H&E at AUROC 0.76 and 0.59 (first
  level 0.90, colour 0.86), and adding them to the maximum lowered the joint AUROC from 0.88 to 0.83-0.86
  (calibrated on all its training phantoms, against the real tiles of scripts/eval_domain.py).
  Feature-space detectors of this family are the ones that separate semantic out-of-distribution tissue
  best in the digital pathology benchmark of Oh, Falahkheirkhah and Bhargava (2024, "Are we ready for
  out-of-distribution detection in digital pathology?"), need no extra training, and cost one matrix
  product per tile.
- **Colour:** the Mahalanobis distance of the tile's mean and spread of optical density per RGB channel from the
  training tiles' (covariate shift: another stain, scanner or fading), which features learned under stain
  augmentation may partly ignore.
- **Threshold:** each distance is divided by the 99th percentile of the validation tiles' distances, and
  ``ood_score`` is the largest of the ratios. A tile is in domain when ``ood_score <= 1``: by
  construction about 1 % of validation tiles fall outside.

Both statistics are buffers of a :class:`DomainHead` inside the net, so they travel in the safetensors
file with the weights and are computed on the device in the same forward pass as the heads.
"""

from __future__ import annotations

import torch
from torch import nn

from histo.inputs import IMAGENET_MEAN, IMAGENET_STD

METHOD = "mahalanobis_texture_colour+semantic"
REFERENCES = (
    "Lee K, Lee K, Lee H, Shin J. A simple unified framework for detecting out-of-distribution samples and "
    "adversarial attacks. NeurIPS 2018.",
    "Oh J-H, Falahkheirkhah K, Bhargava R. Are we ready for out-of-distribution detection in digital "
    "pathology? 2024 (arXiv:2407.13708).",
)
_EPS_OD = 1.0 / 255.0


def mahalanobis(v: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """sqrt((v - mean)^T P (v - mean)) per row of ``v``."""
    d = v.float() - mean
    return ((d @ precision) * d).sum(1).clamp_min(0).sqrt()


def level_stats(fmap: torch.Tensor) -> torch.Tensor:
    """Per-channel spatial mean and standard deviation of a feature map (N, C, H, W) → (N, 2C)."""
    f = fmap.float()
    return torch.cat([f.mean(dim=(2, 3)), f.flatten(2).std(dim=2, unbiased=False)], dim=1)


def colour_stats(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Mean and standard deviation of optical density per RGB channel (N, 6) of normalised tiles."""
    rgb = (x.float() * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)).clamp(_EPS_OD, 1.0)
    od = -torch.log(rgb)
    return torch.cat([od.mean(dim=(2, 3)), od.flatten(2).std(dim=2, unbiased=False)], dim=1)


STATISTICS = ("texture_colour", "semantic")


class DomainHead(nn.Module):
    """Distances of tiles from the training domain; ``forward(x, pyramid)`` → ood_score (N,) (in domain: <= 1).

    Two Gaussians: ``texture_colour`` joins the per-channel mean and spread of the first backbone level
    (stride 4: texture, nuclei, fibres) with the mean and spread of optical density per RGB channel (stain);
    ``semantic`` is the per-channel mean and spread of the last level (stride 32: what the tile heads see).
    Each distance is divided by its threshold and the score is the larger ratio.
    """

    input_mean: torch.Tensor
    input_std: torch.Tensor

    def __init__(self, level_channels: tuple[int, ...] | list[int]) -> None:
        super().__init__()
        dims = {"texture_colour": 2 * int(level_channels[0]) + 6, "semantic": 2 * int(level_channels[-1])}
        for name, d in dims.items():
            self.register_buffer(f"{name}_mean", torch.zeros(d))
            self.register_buffer(f"{name}_precision", torch.eye(d))
            self.register_buffer(f"{name}_threshold", torch.ones(()))
        self.register_buffer("input_mean", torch.tensor(IMAGENET_MEAN))  # calibrate() sets the scale's own
        self.register_buffer("input_std", torch.tensor(IMAGENET_STD))

    def features(self, x: torch.Tensor, pyramid: list[torch.Tensor]) -> list[torch.Tensor]:
        """The statistics the distances are measured on, in the order of STATISTICS."""
        colour = colour_stats(x, self.input_mean, self.input_std)
        return [torch.cat([level_stats(pyramid[0]), colour], 1), level_stats(pyramid[-1])]

    def distances(self, x: torch.Tensor, pyramid: list[torch.Tensor]) -> list[torch.Tensor]:
        """Mahalanobis distance per statistic, each (N,)."""
        return [mahalanobis(v, getattr(self, f"{n}_mean"), getattr(self, f"{n}_precision"))
                for n, v in zip(STATISTICS, self.features(x, pyramid))]

    def thresholds(self) -> list[torch.Tensor]:
        """Each distance's threshold, in the order of STATISTICS."""
        return [getattr(self, f"{n}_threshold") for n in STATISTICS]

    def forward(self, x: torch.Tensor, pyramid: list[torch.Tensor]) -> torch.Tensor:
        ratios = [d / t for d, t in zip(self.distances(x, pyramid), self.thresholds())]
        return torch.stack(ratios, 1).amax(1)


def fit_gaussian(v: torch.Tensor, shrinkage: float = 0.001) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, precision) of rows ``v`` with the covariance shrunk towards its mean variance (stable for few tiles)."""
    v = v.double()
    mean = v.mean(0)
    c = v - mean
    cov = c.T @ c / max(1, len(v) - 1)
    d = cov.shape[0]
    target = torch.eye(d, dtype=cov.dtype) * (torch.trace(cov) / d).clamp_min(1e-12)
    cov = (1 - shrinkage) * cov + shrinkage * target
    return mean.float(), torch.linalg.pinv(cov, hermitian=True).float()
