"""Building the prediction files of one slide; their format (read and write) is :mod:`histo.prediction`.

``prediction.json`` is written last and is the completion mark: a folder without it is unfinished.
Its ``run_settings`` block is the folder's run key (histo.predict.run.predict_run_settings: slide file,
mpp, tiling, tissue, model): a rerun skips the folder only when the key it builds is the same.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

import histo
from histo.prediction import (  # noqa: F401 - the folder's format lives in histo.prediction; re-exported here
    META_KEY,
    MITOSES_FILE,
    PATTERN_PREFIX,
    PREDICTION_FILE,
    SCHEMA,
    TILES_FILE,
    load_prediction,
    read_done,
    tiles_metadata,
    write_prediction,
)

if TYPE_CHECKING:
    from torch import nn

    from histo.models import ModelCard

TILE_COLUMNS = ("col", "row", "x", "y", "w", "h", "tissue_fraction")
MITOSIS_COLUMNS = ("x_um", "y_um", "score", "x", "y")


def weights_sha256(model: nn.Module, card: ModelCard) -> str:
    """The card's weights digest, or the digest save_model would write for this model's weights."""
    if card.weights_sha256:
        return card.weights_sha256
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    blob = save(tensors, metadata={"format": "pt", "histo_model": card.name})
    return hashlib.sha256(blob).hexdigest()


def card_summary(card: ModelCard, sha256: str) -> dict[str, Any]:
    """What a report needs to name the model and how it saw the slide."""
    return {
        "name": card.name,
        "backbone": card.backbone,
        "heads": card.heads,
        "classes": card.classes,
        "tile_px": card.tile_px,
        "mpp": card.mpp,
        "mean": list(card.mean),
        "std": list(card.std),
        "mitosis_threshold": card.mitosis_threshold,
        "mitosis_min_distance_um": card.mitosis_min_distance_um,
        "mitosis_stride_px": card.mitosis_stride_px,
        "scales": {k: v.to_dict() for k, v in card.scales.items()},
        "table_scale": card.table_scale,
        "threshold_selection": card.threshold_selection,
        "preprocessing": card.preprocessing,
        "provenance": card.provenance,
        "synthetic_only": card.synthetic_only,
        "metrics": card.metrics,
        "config_digest": card.config_digest,
        "weights_sha256": sha256,
        "histo_version": card.histo_version,
        "created": card.created,
    }


def tiles_frame(grid_table: pd.DataFrame, pattern: np.ndarray | None, necrosis: np.ndarray | None,
                classes: list[str]) -> pd.DataFrame:
    """The grid's boxes plus p_necrosis and one p_pattern_<class> column per class."""
    df = pd.DataFrame({c: grid_table[c].to_numpy() for c in TILE_COLUMNS})
    for c in ("x", "y", "w", "h"):
        df[c] = df[c].astype(np.float64)
    if necrosis is not None:
        df["p_necrosis"] = necrosis.astype(np.float32)
    if pattern is not None:
        for j, name in enumerate(classes):
            df[PATTERN_PREFIX + name] = pattern[:, j].astype(np.float32)
    return df


def mitoses_frame(points: np.ndarray, grid_table: pd.DataFrame, tile_px: int, slide_mpp: float,
                  min_distance_um: float) -> pd.DataFrame:
    """Tile-pixel points (tile index, x, y, score) → level-0 px and µm, deduplicated across tiles."""
    if len(points) == 0:
        return pd.DataFrame({c: np.zeros(0, np.float64) for c in MITOSIS_COLUMNS})
    tile = points[:, 0].astype(np.int64)
    tx, ty = grid_table["x"].to_numpy()[tile], grid_table["y"].to_numpy()[tile]
    # level-0 px per input px, from the box itself so points land exactly where the tile was read
    scale = grid_table["w"].to_numpy()[tile] / tile_px
    x0 = tx + points[:, 1] * scale
    y0 = ty + points[:, 2] * scale
    keep = dedup_points(x0, y0, points[:, 3], min_distance_um / slide_mpp)
    x0, y0, score = x0[keep], y0[keep], points[keep, 3]
    return pd.DataFrame({"x_um": x0 * slide_mpp, "y_um": y0 * slide_mpp, "score": score.astype(np.float64),
                         "x": x0, "y": y0})


def dedup_points(x: np.ndarray, y: np.ndarray, score: np.ndarray, min_distance: float) -> np.ndarray:
    """Indices of points kept, best score first, so that no two kept are closer than ``min_distance``.

    Overlapping tiles see the same mitosis twice, and one straddling a tile border can be found on both
    sides; the per-tile rule (no two points closer than the minimum distance) then holds slide-wide.
    """
    order = np.argsort(-score, kind="stable")
    if len(order) < 2 or min_distance <= 0:
        return order
    xy = np.column_stack([x, y])
    pairs = cKDTree(xy).query_pairs(min_distance, output_type="ndarray")
    if len(pairs):
        d = np.hypot(*(xy[pairs[:, 0]] - xy[pairs[:, 1]]).T)
        pairs = pairs[d < min_distance]  # query_pairs includes the boundary; the rule is strict
    if len(pairs) == 0:
        return order
    neighbours: dict[int, list[int]] = {}
    for a, b in pairs.tolist():
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    removed = np.zeros(len(x), bool)
    kept = []
    for i in order.tolist():
        if removed[i]:
            continue
        kept.append(i)
        for j in neighbours.get(i, ()):
            removed[j] = True
    return np.asarray(kept, np.int64)


def base_tiles_meta(slide: str, slide_mpp: float, card: ModelCard, sha256: str,
                    slide_dimensions: tuple[int, int] | None = None) -> dict[str, Any]:
    """The tiles.parquet metadata (docs/formats.md; slide_dimensions: level-0 px, for frame checks by histo ihc)."""
    return {"slide": slide, "slide_mpp": slide_mpp,
            "slide_dimensions": list(slide_dimensions) if slide_dimensions else None, "model_name": card.name, "model_weights_sha256": sha256,
            "tile_px": card.tile_px, "mpp": card.mpp, "classes": card.classes, "histo_version": histo.__version__}
