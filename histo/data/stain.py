"""Stain normalisation of H&E tiles: Macenko (optical-density stain vectors) and Reinhard (LAB statistics).

Plain numpy: ``fit`` on a reference tile, ``transform`` any tile (H×W×3 uint8 RGB → same shape and dtype).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from skimage.color import lab2rgb, rgb2lab

from histo.errors import HistoError

# Reference H&E stain vectors (columns: haematoxylin, eosin; rows R, G, B OD) and 99th-percentile
# concentrations from the reference implementation accompanying Macenko et al. 2009 (M. Veta's code).
MACENKO_REF_STAINS = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
MACENKO_REF_MAX_CONC = np.array([1.9705, 1.0308])
# CIELAB mean and std of the tissue pixels (L < 90) of tiatoolbox's stain-normalisation target tile
# (real H&E, ../shared/data/real/he_tiles/tiatoolbox_stain_norm_target.png), measured with
# ReinhardNormaliser().fit on that file.
REINHARD_REF_MEAN = np.array([50.48, 31.37, -13.72])
REINHARD_REF_STD = np.array([15.57, 6.67, 6.47])

_IO = 240.0  # transmitted light intensity of glass in the tiles' RGB


class StainError(HistoError):
    """A tile has too little stained tissue to estimate its stains."""


def _check_rgb(img: np.ndarray) -> None:
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected an H×W×3 uint8 RGB tile, got {img.shape} {img.dtype}")


def optical_density(img: np.ndarray, io: float = _IO) -> np.ndarray:
    """Optical density per pixel and channel, (H, W, 3) float64: -ln((I + 1) / Io)."""
    return -np.log((img.astype(np.float64) + 1.0) / io)


def macenko_stains(img: np.ndarray, alpha: float = 1.0, beta: float = 0.15, io: float = _IO) -> tuple[np.ndarray, np.ndarray]:
    """Stain matrix (3, 2: haematoxylin, eosin unit OD vectors) and 99th-percentile concentrations of a tile."""
    _check_rgb(img)
    od = optical_density(img, io).reshape(-1, 3)
    od_tissue = od[(od > beta).all(1)]
    if len(od_tissue) < 10:
        raise StainError(f"only {len(od_tissue)} pixels have optical density above {beta} in every channel: no stain to fit")
    # The plane of the two largest principal directions of tissue OD holds both stains.
    _, eigvecs = np.linalg.eigh(np.cov(od_tissue.T))
    plane = eigvecs[:, 1:3]
    proj = od_tissue @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, alpha), np.percentile(phi, 100 - alpha)
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    # Haematoxylin absorbs more red than eosin does: its OD vector has the larger R component.
    he = np.stack([v1, v2], 1) if v1[0] > v2[0] else np.stack([v2, v1], 1)
    he = he * np.sign(he.sum(0, keepdims=True))  # eigenvector signs are arbitrary; OD is positive
    he = he / np.linalg.norm(he, axis=0, keepdims=True)
    conc = np.linalg.pinv(he) @ od.T
    max_conc = np.percentile(conc, 99, axis=1)
    return he, max_conc


@dataclass
class MacenkoNormaliser:
    """Macenko et al. 2009: map a tile's stain vectors and concentration range onto a reference's."""

    alpha: float = 1.0
    beta: float = 0.15
    io: float = _IO
    stains: np.ndarray = field(default_factory=lambda: MACENKO_REF_STAINS.copy())
    max_conc: np.ndarray = field(default_factory=lambda: MACENKO_REF_MAX_CONC.copy())

    def fit(self, reference: np.ndarray) -> MacenkoNormaliser:
        """Take the reference stain vectors and concentration range from a reference tile."""
        self.stains, self.max_conc = macenko_stains(reference, self.alpha, self.beta, self.io)
        return self

    def transform(self, img: np.ndarray) -> np.ndarray:
        """The tile re-rendered with the reference stains; a tile without enough stain is returned unchanged."""
        _check_rgb(img)
        try:
            he, max_conc = macenko_stains(img, self.alpha, self.beta, self.io)
        except StainError:
            return img  # background or pen: nothing to normalise
        od = optical_density(img, self.io).reshape(-1, 3).T
        conc = np.linalg.pinv(he) @ od
        conc *= (self.max_conc / np.maximum(max_conc, 1e-6))[:, None]
        out = self.io * np.exp(-(self.stains @ conc)) - 1.0
        return np.clip(out.T.reshape(img.shape), 0, 255).round().astype(np.uint8)


def lab_stats(img: np.ndarray, max_l: float = 90.0) -> tuple[np.ndarray, np.ndarray]:
    """CIELAB mean and std (3,) of a tile's tissue pixels (L < max_l; all pixels when too few are tissue)."""
    _check_rgb(img)
    lab = rgb2lab(img).reshape(-1, 3)
    tissue = lab[lab[:, 0] < max_l]
    use = tissue if len(tissue) >= max(10, 0.05 * len(lab)) else lab
    return use.mean(0), use.std(0)


@dataclass
class ReinhardNormaliser:
    """Reinhard et al. 2001 colour transfer in CIELAB: match each channel's mean and std to a reference."""

    mean: np.ndarray = field(default_factory=lambda: REINHARD_REF_MEAN.copy())
    std: np.ndarray = field(default_factory=lambda: REINHARD_REF_STD.copy())
    max_l: float = 90.0

    def fit(self, reference: np.ndarray) -> ReinhardNormaliser:
        """Take the target LAB mean and std from a reference tile's tissue."""
        self.mean, self.std = lab_stats(reference, self.max_l)
        return self

    def transform(self, img: np.ndarray) -> np.ndarray:
        """The tile with its tissue LAB statistics moved to the reference's."""
        mean, std = lab_stats(img, self.max_l)
        lab = rgb2lab(img)
        lab = (lab - mean) * (self.std / np.maximum(std, 1e-6)) + self.mean
        lab[..., 0] = np.clip(lab[..., 0], 0, 100)
        rgb = lab2rgb(lab)
        return np.clip(rgb * 255.0, 0, 255).round().astype(np.uint8)


def make_normaliser(method: str, reference: np.ndarray | None = None) -> MacenkoNormaliser | ReinhardNormaliser | None:
    """A fitted normaliser for 'macenko' or 'reinhard' (built-in reference without a tile); None for 'none'."""
    if method == "none":
        return None
    if method == "macenko":
        norm: MacenkoNormaliser | ReinhardNormaliser = MacenkoNormaliser()
    elif method == "reinhard":
        norm = ReinhardNormaliser()
    else:
        raise ValueError(f"unknown stain normalisation method {method!r} (none, macenko, reinhard)")
    return norm.fit(reference) if reference is not None else norm


def normaliser_spec(norm: MacenkoNormaliser | ReinhardNormaliser | None) -> dict:
    """The card's record of a fitted normaliser: its method and target statistics (no file path needed)."""
    if norm is None:
        return {"method": "none"}
    if isinstance(norm, MacenkoNormaliser):
        return {"method": "macenko", "stains": np.asarray(norm.stains).round(6).tolist(),
                "max_conc": np.asarray(norm.max_conc).round(6).tolist(), "alpha": norm.alpha, "beta": norm.beta,
                "io": norm.io}
    return {"method": "reinhard", "mean": np.asarray(norm.mean).round(6).tolist(),
            "std": np.asarray(norm.std).round(6).tolist(), "max_l": norm.max_l}


def normaliser_from_spec(spec: dict | None) -> MacenkoNormaliser | ReinhardNormaliser | None:
    """The normaliser a card's ``preprocessing.stain_normalisation`` records (None for 'none')."""
    spec = dict(spec or {})
    method = spec.get("method", "none")
    if method == "none":
        return None
    if method == "macenko":
        return MacenkoNormaliser(alpha=float(spec.get("alpha", 1.0)), beta=float(spec.get("beta", 0.15)),
                                 io=float(spec.get("io", _IO)),
                                 stains=np.asarray(spec.get("stains", MACENKO_REF_STAINS), np.float64),
                                 max_conc=np.asarray(spec.get("max_conc", MACENKO_REF_MAX_CONC), np.float64))
    if method == "reinhard":
        return ReinhardNormaliser(mean=np.asarray(spec.get("mean", REINHARD_REF_MEAN), np.float64),
                                  std=np.asarray(spec.get("std", REINHARD_REF_STD), np.float64),
                                  max_l=float(spec.get("max_l", 90.0)))
    raise ValueError(f"unknown stain normalisation method {method!r} (none, macenko, reinhard)")
