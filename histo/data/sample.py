"""From an RGB tile and its labels to one training sample (docs/formats.md: normalised tensor, targets, points)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from histo.errors import ConfigError
from histo.inputs import InputSpec  # the one record of a model input (re-exported: histo.data.InputSpec)

MAX_POINTS = 32  # mitosis points kept per tile in "mitosis_points" (the heatmap keeps all)


def heatmap_target(points_px: np.ndarray, tile_px: int, stride_px: int, sigma_cells: float = 1.0) -> np.ndarray:
    """Mitosis target (tile_px/s, tile_px/s) float32 in [0, 1]: a Gaussian (sigma in cells) peaking at 1 in each point's cell."""
    n = tile_px // stride_px
    out = np.zeros((n, n), np.float32)
    pts = np.asarray(points_px, np.float64).reshape(-1, 2)
    if len(pts) == 0:
        return out
    # Cell j spans [j*s, (j+1)*s) input px; its centre is (j + 0.5) * s, as in histo.models.heatmaps_to_points.
    cells = np.clip(np.floor(pts / stride_px), 0, n - 1)
    grid = np.arange(n, dtype=np.float64)
    for cx, cy in cells:
        g = np.exp(-((grid[None, :] - cx) ** 2 + (grid[:, None] - cy) ** 2) / (2.0 * sigma_cells**2))
        np.maximum(out, g.astype(np.float32), out=out)
    return out


@dataclass
class SampleMaker:
    """Stain-normalises, augments (moving the points), and tensorises one tile into a contract-B sample."""

    spec: InputSpec
    augment: Any = None  # albumentations Compose with KeypointParams('xy'), or None
    normaliser: Any = None  # object with transform(rgb) -> rgb, or None

    def __call__(self, rgb: np.ndarray, points_px: np.ndarray, pattern: int, necrosis: float,
                 mitosis_labelled: bool, slide: str) -> dict[str, Any]:
        """One sample dict; points are (K, 2) x, y in tile px (continuous, pixel k spans [k, k+1))."""
        t = self.spec.tile_px
        if self.normaliser is not None:
            rgb = self.normaliser.transform(rgb)
        pts = np.asarray(points_px, np.float64).reshape(-1, 2)
        if self.augment is not None:
            # albumentations puts pixel k's centre at k; histo at k + 0.5, so shift around the call.
            kp = np.clip(pts - 0.5, 0.0, t - 1e-3)
            out = self.augment(image=rgb, keypoints=kp)
            rgb = out["image"]
            pts = np.asarray(out["keypoints"], np.float64).reshape(-1, 2)[:, :2] + 0.5
        if rgb.shape != (t, t, 3):
            raise ConfigError(f"augmentation changed the tile from {t}x{t} to {rgb.shape[1]}x{rgb.shape[0]}: crops/resizes must keep tile_px")
        img = torch.from_numpy(np.require(rgb, np.uint8, ['C', 'W'])).permute(2, 0, 1).float().div_(255.0)
        mean = torch.tensor(self.spec.mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(self.spec.std, dtype=torch.float32)[:, None, None]
        img = (img - mean) / std
        s = self.spec.mitosis_stride_px
        labelled = bool(mitosis_labelled) and s is not None
        if s is not None:
            heat = heatmap_target(pts, t, s) if labelled else np.zeros((t // s, t // s), np.float32)
        else:
            heat = np.zeros((0, 0), np.float32)  # no mitosis head: an empty map keeps the batch keys fixed
        padded = np.full((MAX_POINTS, 2), np.nan, np.float32)
        k = min(len(pts), MAX_POINTS) if labelled else 0
        padded[:k] = pts[:k]
        return {
            "image": img,
            "pattern": torch.tensor(int(pattern), dtype=torch.int64),
            "necrosis": torch.tensor(float(necrosis), dtype=torch.float32),
            "mitosis_heatmap": torch.from_numpy(heat)[None],
            "mitosis_labelled": torch.tensor(labelled, dtype=torch.bool),
            "mitosis_points": torch.from_numpy(padded),
            "slide": slide,
        }


def pattern_index(name: Any, classes: Sequence[str], where: str) -> int:
    """Index of a pattern class name in the model's classes; blank/NaN = -1; unknown names are a ConfigError."""
    if name is None or (isinstance(name, float) and np.isnan(name)) or str(name).strip() == "":
        return -1
    name = str(name).strip()
    if name not in classes:
        raise ConfigError(f"{where}: pattern {name!r} is not one of the model classes {list(classes)}")
    return list(classes).index(name)
