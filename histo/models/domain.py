"""The training domain a model carries: how far a tile is from what the model learned from.

Method (recorded in the card's ``domain`` section; METHOD for models calibrated now, METHOD_V1 for
models calibrated before histo 0.x that still load and score as they did):

- **texture_colour** (k-nearest-neighbour distance, Sun et al., ICML 2022): each tile is described by the
  per-channel mean and spread of the backbone's first level (stride 4: texture, nuclei, fibres), the mean
  and spread of optical density per RGB channel (stain) and seven sharpness descriptors of the image
  itself (gradient-magnitude quantiles, Laplacian spread and three spectral band ratios: focus, scanner
  optics and compression, the image-quality axes HistoQC measures, Janowczyk et al. 2019). Each
  coordinate is standardised by the training tiles' mean and spread, and the distance is the one to the
  nearest of up to BANK_TILES training tiles kept in the card. A nearest-neighbour bank follows a training
  set made of distinct kinds of tissue (phantom presets, tumour and stroma, several stains) where one
  Gaussian spans the empty space between them: on the phantom demo model, its 1032 validation tiles against
  the 3544 real tiles of scripts/eval_domain.py, the Gaussian of this statistic separates at AUROC 0.93 and
  the bank at 0.97 (without the sharpness descriptors: 0.91 and 0.96).
- **semantic** (Mahalanobis distance, Lee et al., NeurIPS 2018): the per-channel mean and spread of the last
  level (stride 32: what the tile heads see) against one Gaussian of the training tiles. The two middle
  levels are left out: on the phantom demo model each alone separates its validation phantoms from real
  H&E at AUROC 0.76 and 0.59 (first level 0.90), and adding them lowered the joint AUROC.
  Feature-space detectors of these families separate semantic out-of-distribution tissue best in the
  digital pathology benchmark of Oh, Falahkheirkhah and Bhargava (2024, "Are we ready for
  out-of-distribution detection in digital pathology?"), need no extra training, and cost one matrix
  product per tile.
- **Threshold:** each distance is divided by a high percentile (99.5th by default) of the validation tiles'
  distances, and ``ood_score`` is the largest of the ratios. A tile is in domain when ``ood_score <= 1``:
  by construction about 1 % of validation tiles fall outside.

METHOD_V1 measured ``texture_colour`` (without the sharpness descriptors) by Mahalanobis distance too.
The statistics are buffers of a :class:`DomainHead` inside the net, so they travel in the safetensors
file with the weights and are computed on the device in the same forward pass as the heads.
"""

from __future__ import annotations

import torch
from torch import nn

from histo.errors import ModelError
from histo.inputs import IMAGENET_MEAN, IMAGENET_STD

METHOD = "knn_texture_colour_sharpness+mahalanobis_semantic"
METHOD_V1 = "mahalanobis_texture_colour+semantic"
METHODS = (METHOD, METHOD_V1)
BANK_TILES = 8192  # training tiles kept for the nearest-neighbour distance (float16: 1.3 MB for the small backbone)
REFERENCES = (
    "Sun Y, Ming Y, Zhu X, Li Y. Out-of-distribution detection with deep nearest neighbors. ICML 2022.",
    "Lee K, Lee K, Lee H, Shin J. A simple unified framework for detecting out-of-distribution samples and "
    "adversarial attacks. NeurIPS 2018.",
    "Oh J-H, Falahkheirkhah K, Bhargava R. Are we ready for out-of-distribution detection in digital "
    "pathology? 2024 (arXiv:2407.13708).",
    "Janowczyk A, Zuo R, Gilmore H, Feldman M, Madabhushi A. HistoQC: an open-source quality control tool for "
    "digital pathology slides. JCO Clinical Cancer Informatics 2019.",
)
STATISTICS = ("texture_colour", "semantic")
N_SHARPNESS = 7
_EPS_OD = 1.0 / 255.0
_LOG_EPS = 1e-4
# Radial spatial-frequency bands (cycles per pixel) of the sharpness descriptors: the energy of the three upper
# bands relative to the lowest one falls when an image is blurred, compressed or rendered smoother than tissue.
_BANDS = ((0.02, 0.06), (0.06, 0.12), (0.12, 0.25), (0.25, 0.8))


def mahalanobis(v: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """sqrt((v - mean)^T P (v - mean)) per row of ``v``."""
    d = v.float() - mean
    return ((d @ precision) * d).sum(1).clamp_min(0).sqrt()


def nearest_distance(v: torch.Tensor, center: torch.Tensor, scale: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Euclidean distance of each standardised row of ``v`` to its nearest row of ``bank`` (already standardised)."""
    z = (v.float() - center) / scale
    b = bank.float()
    out = [torch.cdist(z[i:i + 1024], b).amin(1) for i in range(0, len(z), 1024)]
    return torch.cat(out) if out else z.new_zeros(0)


def level_stats(fmap: torch.Tensor) -> torch.Tensor:
    """Per-channel spatial mean and standard deviation of a feature map (N, C, H, W) → (N, 2C)."""
    f = fmap.float()
    return torch.cat([f.mean(dim=(2, 3)), f.flatten(2).std(dim=2, unbiased=False)], dim=1)


def _optical_density(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    rgb = (x.float() * std.view(1, 3, 1, 1) + mean.view(1, 3, 1, 1)).clamp(_EPS_OD, 1.0)
    return -torch.log(rgb)


def colour_stats(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, od: torch.Tensor | None = None) -> torch.Tensor:
    """Mean and standard deviation of optical density per RGB channel (N, 6) of normalised tiles (``od``: already computed)."""
    od = _optical_density(x, mean, std) if od is None else od
    return torch.cat([od.mean(dim=(2, 3)), od.flatten(2).std(dim=2, unbiased=False)], dim=1)


def _row_quantiles(v: torch.Tensor, fractions: tuple[float, ...]) -> torch.Tensor:
    """Quantiles of each row (N, len(fractions)), linearly interpolated as torch.quantile does.

    torch.quantile itself refuses inputs of more than 16M values (a batch of 256 tiles of 512 px).
    """
    ordered = v.sort(dim=1).values
    cols = []
    for f in fractions:
        pos = f * (ordered.shape[1] - 1)
        lo = int(pos)
        hi = min(lo + 1, ordered.shape[1] - 1)
        cols.append(ordered[:, lo] + (pos - lo) * (ordered[:, hi] - ordered[:, lo]))
    return torch.stack(cols, 1)


def sharpness_stats(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                    od: torch.Tensor | None = None) -> torch.Tensor:
    """Seven image-quality descriptors (N, 7) of normalised tiles, on their mean optical density.

    Logs of the 50th, 90th and 99th percentiles of gradient magnitude and of the Laplacian's standard
    deviation (edge sharpness, focus), and log ratios of the spectral energy in three radial frequency bands
    to that of the lowest band (_BANDS; how fine detail falls off). Fixed in advance, not learned.
    """
    g = (_optical_density(x, mean, std) if od is None else od).mean(1, keepdim=True)
    gx, gy = g[..., :-1, 1:] - g[..., :-1, :-1], g[..., 1:, :-1] - g[..., :-1, :-1]
    grad = (gx.square() + gy.square()).sqrt().flatten(1)
    q = _row_quantiles(grad, (0.5, 0.9, 0.99))
    c = g[..., 1:-1, 1:-1]  # the 4-neighbour Laplacian, by slices (a one-channel conv2d is slow on CPU)
    lap = (g[..., :-2, 1:-1] + g[..., 2:, 1:-1] + g[..., 1:-1, :-2] + g[..., 1:-1, 2:] - 4 * c).flatten(1)
    h, w = g.shape[-2:]
    power = torch.fft.rfft2(g[:, 0] - g[:, 0].mean(dim=(1, 2), keepdim=True)).abs().square()
    radius = torch.hypot(torch.fft.fftfreq(h, device=x.device).view(h, 1),
                         torch.fft.rfftfreq(w, device=x.device).view(1, -1))
    energy = torch.stack([(power * ((radius >= lo) & (radius < hi))).sum(dim=(1, 2)) for lo, hi in _BANDS], 1)
    log_energy = torch.log(energy + 1e-6)
    return torch.cat([torch.log(q + _LOG_EPS), torch.log(lap.std(dim=1, keepdim=True) + _LOG_EPS),
                      log_energy[:, 1:] - log_energy[:, :1]], 1)


class DomainHead(nn.Module):
    """Distances of tiles from the training domain; ``forward(x, pyramid)`` → ood_score (N,) (in domain: <= 1).

    With METHOD (the default): ``texture_colour`` (first backbone level, optical density and sharpness
    descriptors) by distance to the nearest of ``bank_tiles`` standardised training tiles, and ``semantic``
    (last level) by Mahalanobis distance. With METHOD_V1 both are Mahalanobis distances and
    ``texture_colour`` has no sharpness descriptors. Each distance is divided by its threshold and the score
    is the larger ratio. The statistics are computed in float32 outside autocast.
    """

    input_mean: torch.Tensor
    input_std: torch.Tensor

    def __init__(self, level_channels: tuple[int, ...] | list[int], method: str = METHOD,
                 bank_tiles: int = BANK_TILES) -> None:
        super().__init__()
        if method not in METHODS:
            raise ModelError(f"unknown training-domain method {method!r}; this histo knows {', '.join(METHODS)}")
        if bank_tiles < 1:
            raise ModelError(f"a training-domain bank needs at least one tile, got {bank_tiles}")
        self.method = method
        c0, cl = int(level_channels[0]), int(level_channels[-1])
        if method == METHOD_V1:
            self.kinds = {"texture_colour": "mahalanobis", "semantic": "mahalanobis"}
            dims = {"texture_colour": 2 * c0 + 6, "semantic": 2 * cl}
        else:
            self.kinds = {"texture_colour": "knn", "semantic": "mahalanobis"}
            dims = {"texture_colour": 2 * c0 + 6 + N_SHARPNESS, "semantic": 2 * cl}
        for name, d in dims.items():
            if self.kinds[name] == "knn":
                self.register_buffer(f"{name}_center", torch.zeros(d))
                self.register_buffer(f"{name}_scale", torch.ones(d))
                self.register_buffer(f"{name}_bank", torch.zeros(int(bank_tiles), d, dtype=torch.float16))
            else:
                self.register_buffer(f"{name}_mean", torch.zeros(d))
                self.register_buffer(f"{name}_precision", torch.eye(d))
            self.register_buffer(f"{name}_threshold", torch.ones(()))
        self.register_buffer("input_mean", torch.tensor(IMAGENET_MEAN))  # calibrate() sets the scale's own
        self.register_buffer("input_std", torch.tensor(IMAGENET_STD))

    def features(self, x: torch.Tensor, pyramid: list[torch.Tensor]) -> list[torch.Tensor]:
        """The statistics the distances are measured on, in the order of STATISTICS."""
        od = _optical_density(x, self.input_mean, self.input_std)
        parts = [level_stats(pyramid[0]), colour_stats(x, self.input_mean, self.input_std, od)]
        if self.method != METHOD_V1:
            parts.append(sharpness_stats(x, self.input_mean, self.input_std, od))
        return [torch.cat(parts, 1), level_stats(pyramid[-1])]

    def feature_distances(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Distance per statistic (each (N,)) of features as :meth:`features` returns them."""
        out = []
        for name, v in zip(STATISTICS, features):
            if self.kinds[name] == "knn":
                out.append(nearest_distance(v, getattr(self, f"{name}_center"), getattr(self, f"{name}_scale"),
                                            getattr(self, f"{name}_bank")))
            else:
                out.append(mahalanobis(v, getattr(self, f"{name}_mean"), getattr(self, f"{name}_precision")))
        return out

    def distances(self, x: torch.Tensor, pyramid: list[torch.Tensor]) -> list[torch.Tensor]:
        """Distance per statistic, each (N,)."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.feature_distances(self.features(x, pyramid))

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


def fit_bank(v: torch.Tensor, bank_tiles: int = BANK_TILES, seed: int = 0
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(center, scale, bank) of rows ``v``: per-coordinate mean and spread, and up to ``bank_tiles`` standardised rows.

    A bank smaller than ``bank_tiles`` repeats rows (a repeated neighbour changes no nearest distance), so the
    buffer always has ``bank_tiles`` rows. Rows are drawn at random (``seed``) when there are more.
    """
    v = v.double()
    center = v.mean(0)
    scale = v.std(0, unbiased=False).clamp_min(1e-6)
    z = ((v - center) / scale).float()
    if len(z) > bank_tiles:
        z = z[torch.randperm(len(z), generator=torch.Generator().manual_seed(seed))[:bank_tiles]]
    elif len(z) < bank_tiles:
        z = z[torch.arange(bank_tiles) % len(z)]
    return center.float(), scale.float(), z.half()
