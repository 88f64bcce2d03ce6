"""Tile quality control on the pixels read: blur, pen ink and background share."""

from __future__ import annotations

import numpy as np

from histo.tissue import pen_mask

# Near-white glass: every channel bright and little colour (same idea as tissue detection, per pixel).
_WHITE_MIN = 215
_WHITE_MAX_SPREAD = 18


def blur_score(tile: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the grey image: low means out of focus."""
    g = tile.astype(np.float32).mean(axis=2)
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def background_fraction(tile: np.ndarray) -> float:
    """Share of near-white glass pixels."""
    lo = tile.min(axis=2)
    spread = tile.max(axis=2).astype(np.int16) - lo
    return float(((lo >= _WHITE_MIN) & (spread <= _WHITE_MAX_SPREAD)).mean())


def tile_qc(tile: np.ndarray, mpp: float) -> dict[str, float]:
    """The QC measurements of one tile."""
    return {
        "qc_blur": blur_score(tile),
        "qc_pen_fraction": float(pen_mask(tile, mpp).mean()),
        "qc_background_fraction": background_fraction(tile),
    }
