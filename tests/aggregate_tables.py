"""Tile and mitosis table builders shared by the tests of histo.aggregate."""

from __future__ import annotations

import numpy as np
import pandas as pd


def make_tiles(nx: int, ny: int, tile_px: int, stride_px: int | None = None, *, tumour=None, necrosis=None,
               tissue=None, pattern=None, with_p_tumour: bool = True) -> pd.DataFrame:
    """Grid tile table; tumour/necrosis/tissue/pattern are functions of (row, col)."""
    stride_px = stride_px or tile_px
    rows = []
    for r in range(ny):
        for c in range(nx):
            pat = pattern(r, c) if pattern else "fascicular"
            row = {
                "x": c * stride_px, "y": r * stride_px, "w": tile_px, "h": tile_px,
                "tissue_fraction": tissue(r, c) if tissue else 1.0,
                "p_necrosis": 0.8 if necrosis and necrosis(r, c) else 0.1,
                "p_pattern_none": 0.0, "p_pattern_fascicular": 0.0, "p_pattern_haphazard": 0.0,
            }
            row[f"p_pattern_{pat}"] = 1.0
            if with_p_tumour:
                row["p_tumour"] = 0.9 if (tumour(r, c) if tumour else True) else 0.1
            rows.append(row)
    return pd.DataFrame(rows)


def points(xy, score=0.9) -> pd.DataFrame:
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    return pd.DataFrame({"x_um": xy[:, 0], "y_um": xy[:, 1], "score": np.full(len(xy), score)})
