"""Beer–Lambert stain model: per-pixel stain concentrations → RGB, with per-slide stain variation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .spec import StainSpec

# Ruifrok & Johnston (2001) stain OD vectors (R, G, B): what colour deconvolution assumes.
HEMATOXYLIN = np.array([0.650, 0.704, 0.286])
EOSIN = np.array([0.072, 0.990, 0.105])
DAB = np.array([0.268, 0.570, 0.776])
# What the phantom paints with: real scans deviate from Ruifrok's vectors the same way (Macenko estimates
# on the reference tiles in shared/data/real lie near H [0.53, 0.74, 0.40] and E [0.26, 0.82, 0.49]),
# so a phantom painted with the textbook vectors would deconvolve unrealistically cleanly.
PAINT_HEMATOXYLIN = np.array([0.60, 0.72, 0.35])
PAINT_EOSIN = np.array([0.20, 0.87, 0.45])
PAINT_DAB = np.array([0.27, 0.55, 0.79])
# Ink of pen marks (felt-tip green, blue, black): OD vectors, not stains.
PEN_INKS = {
    "green": np.array([0.95, 0.18, 0.50]),
    "blue": np.array([0.85, 0.55, 0.10]),
    "black": np.array([0.58, 0.58, 0.58]),
}


@dataclass(frozen=True)
class StainModel:
    """One slide's stains: unit OD vectors, strengths and the glass (illumination) colour."""

    vectors: np.ndarray  # (3 stains H, E, DAB) x (R, G, B), rows unit length
    strengths: np.ndarray  # (3,) multipliers of the concentration fields
    background: np.ndarray  # (3,) light through bare glass, 8-bit levels
    noise_sd: float
    blur_sigma_px: float

    def od(self, c_h: np.ndarray, c_e: np.ndarray, c_dab: np.ndarray) -> np.ndarray:
        """Optical density (H, W, 3) of the given concentration fields."""
        v = (self.vectors * self.strengths[:, None]).astype(np.float32)
        return np.stack([c_h, c_e, c_dab], axis=-1) @ v

    def to_rgb(self, od: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """Beer–Lambert: RGB = I0 * 10^-OD (+ sensor noise), as uint8."""
        rgb = np.power(np.float32(10.0), -od, dtype=np.float32)
        rgb *= self.background.astype(np.float32)
        if noise is not None:
            rgb += noise[..., None] * np.float32(self.noise_sd)
        np.clip(rgb, 0, 255, out=rgb)
        return (rgb + 0.5).astype(np.uint8)


def make_stain_model(stain: StainSpec, rng: np.random.Generator, ihc: bool = False) -> StainModel:
    """The stains of one slide: reference vectors with small random perturbations of hue and strength."""
    vecs = []
    for ref in (PAINT_HEMATOXYLIN, PAINT_EOSIN, PAINT_DAB):
        v = ref + rng.normal(0.0, stain.vector_jitter, 3)
        v = np.clip(v, 0.02, None)
        vecs.append(v / np.linalg.norm(v))
    base = np.array([stain.hematoxylin, stain.eosin if not ihc else 0.0, stain.dab])
    strengths = base * np.exp(rng.normal(0.0, stain.intensity_jitter, 3))
    # Glass seen through the scanner: near white, slightly tinted, a little darker than saturation.
    background = np.clip(np.array([243.0, 242.0, 246.0]) + rng.normal(0.0, 2.0, 3), 225, 252)
    return StainModel(np.array(vecs), strengths, background, float(stain.noise_sd), float(stain.blur_sigma_px))


def rgb_to_od(rgb: np.ndarray, background: float | np.ndarray = 255.0) -> np.ndarray:
    """Optical density of an RGB image (floored at 1 level so black does not give infinity)."""
    x = np.maximum(np.asarray(rgb, dtype=np.float32), 1.0) / np.asarray(background, dtype=np.float32)
    return -np.log10(np.minimum(x, 1.0))


def deconvolve(rgb: np.ndarray, vectors: np.ndarray | None = None, background: float | np.ndarray = 255.0) -> np.ndarray:
    """Per-pixel stain amounts (H, W, 3: H, E, DAB OD) by Ruifrok colour deconvolution."""
    m = np.array([HEMATOXYLIN, EOSIN, DAB]) if vectors is None else np.asarray(vectors, dtype=np.float64)
    m = m / np.linalg.norm(m, axis=1, keepdims=True)
    inv = np.linalg.inv(m).astype(np.float32)
    return rgb_to_od(rgb, background) @ inv
