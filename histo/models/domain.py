"""The training domain a model carries: how far a tile is from what the model learned from.

Method (recorded in the card's ``domain`` section, METHOD):

- **Texture and colour** (``texture_colour``): the Mahalanobis distance of the per-channel mean and spread of
  the first backbone level's feature map (stride 4), joined with the mean and spread of optical density per
  RGB channel, from those of the training tiles (Lee et al., NeurIPS 2018). Feature-space detectors are the
  ones that separate semantic out-of-distribution tissue best in the digital pathology benchmark of Oh,
  Falahkheirkhah and Bhargava (2024); the colour part catches another stain, scanner or fading.
- **Semantic** (``semantic_knn``): the distance of the tile's L2-normalised pooled last-level features (what the
  tile heads see) to their ``k``-th nearest neighbour in a bank of training tiles (Sun, Ming, Zhu and Li,
  ICML 2022). Non-parametric: no Gaussian assumed for features that are far from one.
- **Threshold:** each distance is divided by a high percentile of the validation tiles' distances, and
  ``ood_score`` is the larger ratio. A tile is in domain when ``ood_score <= 1``.

Everything is a buffer of a :class:`DomainHead` inside the net (the bank as float16), so it travels in the
safetensors file with the weights and is computed on the device in the same forward pass as the heads.
Models calibrated before the kNN statistic (card statistics ``texture_colour`` and ``semantic``: a Gaussian of
the last level's per-channel mean and spread, METHOD_V1) load and score as they were calibrated.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from histo.errors import ModelError
from histo.inputs import IMAGENET_MEAN, IMAGENET_STD

METHOD = "mahalanobis_texture_colour+knn_semantic"
METHOD_V1 = "mahalanobis_texture_colour+semantic"  # cards calibrated before the kNN statistic
KNN_K = 10  # the k-th nearest training tile
KNN_BANK_TILES = 2048  # training tiles in the bank, drawn at random (2048 x C float16: 0.5 MiB at C = 128)
REFERENCES = (
    "Lee K, Lee K, Lee H, Shin J. A simple unified framework for detecting out-of-distribution samples and "
    "adversarial attacks. NeurIPS 2018.",
    "Oh J-H, Falahkheirkhah K, Bhargava R. Are we ready for out-of-distribution detection in digital "
    "pathology? 2024 (arXiv:2407.13708).",
    "Sun Y, Ming Y, Zhu X, Li Y. Out-of-distribution detection with deep nearest neighbors. ICML 2022.",
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


STATISTICS = ("texture_colour", "semantic_knn")
STATISTICS_V1 = ("texture_colour", "semantic")


def pooled_unit(fmap: torch.Tensor) -> torch.Tensor:
    """Spatially pooled features of a feature map (N, C, H, W), L2-normalised per tile → (N, C)."""
    return nn.functional.normalize(fmap.float().mean(dim=(2, 3)), dim=1)


def knn_distance(v: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """Euclidean distance of each row of ``v`` (unit vectors) to its ``k``-th nearest row of ``bank`` (unit), in float32."""
    with torch.autocast(v.device.type, enabled=False):
        sim = v.float() @ bank.float().T
        k = max(1, min(int(k), bank.shape[0]))
        return (2.0 - 2.0 * sim.topk(k, dim=1).values[:, -1]).clamp_min(0).sqrt()


class DomainHead(nn.Module):
    """Distances of tiles from the training domain; ``forward(x, pyramid)`` → ood_score (N,) (in domain: <= 1).

    ``texture_colour`` is a Gaussian of the first level's per-channel mean and spread with the optical density
    statistics; ``semantic_knn`` the k-th nearest neighbour distance of the pooled last level in a bank of
    training tiles. ``statistics=STATISTICS_V1`` builds the head of older cards (``semantic``: a Gaussian of
    the last level's per-channel mean and spread). Each distance is divided by its threshold; the score is the
    larger ratio.
    """

    input_mean: torch.Tensor
    input_std: torch.Tensor
    semantic_knn_bank: torch.Tensor

    def __init__(self, level_channels: tuple[int, ...] | list[int], statistics: tuple[str, ...] = STATISTICS,
                 bank_tiles: int = KNN_BANK_TILES, k: int = KNN_K) -> None:
        super().__init__()
        if tuple(statistics) not in (STATISTICS, STATISTICS_V1):
            raise ModelError(f"unknown domain statistics {statistics!r}; expected {STATISTICS} or {STATISTICS_V1}")
        self.statistics = tuple(statistics)
        self.k = int(k)
        c0, c_last = int(level_channels[0]), int(level_channels[-1])
        gaussians = {"texture_colour": 2 * c0 + 6}
        if self.statistics == STATISTICS_V1:
            gaussians["semantic"] = 2 * c_last
        for name, d in gaussians.items():
            self.register_buffer(f"{name}_mean", torch.zeros(d))
            self.register_buffer(f"{name}_precision", torch.eye(d))
            self.register_buffer(f"{name}_threshold", torch.ones(()))
        if "semantic_knn" in self.statistics:
            bank = nn.functional.normalize(torch.ones(int(bank_tiles), c_last), dim=1)
            self.register_buffer("semantic_knn_bank", bank.half())
            self.register_buffer("semantic_knn_threshold", torch.ones(()))
        self.register_buffer("input_mean", torch.tensor(IMAGENET_MEAN))  # calibrate() sets the scale's own
        self.register_buffer("input_std", torch.tensor(IMAGENET_STD))

    @classmethod
    def for_card(cls, level_channels: tuple[int, ...] | list[int], scale: dict[str, Any]) -> DomainHead:
        """The head a card's ``domain.scales[<scale>]`` section describes (its statistics, bank size and k)."""
        stats = tuple(scale.get("statistics") or STATISTICS_V1)
        knn = scale.get("knn") or {}
        return cls(level_channels, stats, int(knn.get("bank_tiles", KNN_BANK_TILES)), int(knn.get("k", KNN_K)))

    def features(self, x: torch.Tensor, pyramid: list[torch.Tensor]) -> list[torch.Tensor]:
        """The features each statistic is measured on, in the order of ``self.statistics``."""
        colour = colour_stats(x, self.input_mean, self.input_std)
        last = level_stats(pyramid[-1]) if self.statistics == STATISTICS_V1 else pooled_unit(pyramid[-1])
        return [torch.cat([level_stats(pyramid[0]), colour], 1), last]

    def distance(self, name: str, v: torch.Tensor) -> torch.Tensor:
        """The distance (N,) of features ``v`` under statistic ``name``."""
        if name == "semantic_knn":
            return knn_distance(v, self.semantic_knn_bank, self.k)
        return mahalanobis(v, getattr(self, f"{name}_mean"), getattr(self, f"{name}_precision"))

    def distances(self, x: torch.Tensor, pyramid: list[torch.Tensor]) -> list[torch.Tensor]:
        """Distance per statistic, each (N,)."""
        return [self.distance(n, v) for n, v in zip(self.statistics, self.features(x, pyramid))]

    def thresholds(self) -> list[torch.Tensor]:
        """Each distance's threshold, in the order of ``self.statistics``."""
        return [getattr(self, f"{n}_threshold") for n in self.statistics]

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
