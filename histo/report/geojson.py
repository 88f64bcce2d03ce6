"""QuPath-importable GeoJSON of a slide's predictions (level-0 pixel coordinates, origin top-left).

QuPath reads a FeatureCollection whose features carry ``properties.objectType`` ('annotation',
'detection', 'tile', 'cell'), ``properties.classification`` ``{name, color: [r, g, b]}`` and
``properties.measurements`` as an object of name → number (QuPath ≥ 0.4; NaN is never written).
Class names avoid ':' because QuPath splits derived classes on it.

Features written: the mitotic hotspot window as an 'annotation' (class "Mitotic hotspot"); one
'annotation' per region class (necrosis, each pattern class) = the union of
the boxes of the tiles carrying it, simplified; one 'detection' point per counted-score mitosis
(class "Mitosis", measurement "score"); and optionally one 'tile' per tile with its probabilities.
Tiles without tissue (``tissue_fraction`` 0) are left out of everything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import shapely
from shapely.geometry import mapping

from histo.report.images import HOTSPOT_RGB, PATTERN_COLOURS, mitosis_px, tissue_tiles

NECROSIS_CLASS = "Necrosis"
MITOSIS_CLASS = "Mitosis"
NECROSIS_RGB = [60, 60, 60]
MITOSIS_RGB = [255, 0, 255]
HOTSPOT_CLASS = "Mitotic hotspot"
# vertices of the unions of tile boxes are already on the tile grid; this only drops collinear points
_SIMPLIFY_PX = 0.5


def pattern_class_name(cls: str) -> str:
    """QuPath class name of a pattern class."""
    return f"Pattern {cls}"


def _coords(obj: Any) -> Any:
    if isinstance(obj, (list, tuple)):
        return [_coords(v) for v in obj]
    return round(float(obj), 2)


def _feature(geom: Any, object_type: str, name: str, colour: Sequence[int], measurements: dict[str, float] | None = None,
             **extra: Any) -> dict[str, Any]:
    g = mapping(geom)
    props: dict[str, Any] = {"objectType": object_type, "classification": {"name": name, "color": list(colour)}}
    if measurements:
        props["measurements"] = {k: float(v) for k, v in measurements.items() if v is not None and math.isfinite(v)}
    props.update(extra)
    return {"type": "Feature", "geometry": {"type": g["type"], "coordinates": _coords(g["coordinates"])},
            "properties": props}


def union_of_tiles(tiles: pd.DataFrame, mask: np.ndarray) -> Any:
    """Union (shapely) of the boxes of the tiles selected by mask, simplified; None when empty."""
    sel = tiles[np.asarray(mask, bool)]
    if len(sel) == 0:
        return None
    x, y = sel["x"].to_numpy(float), sel["y"].to_numpy(float)
    boxes = shapely.box(x, y, x + sel["w"].to_numpy(float), y + sel["h"].to_numpy(float))
    return shapely.unary_union(boxes).simplify(_SIMPLIFY_PX, preserve_topology=True)


def slide_geojson(tiles: pd.DataFrame, mitoses: pd.DataFrame | None, *, mpp: float, classes: Sequence[str],
                  necrotic: np.ndarray, mitosis_min_score: float, include_tiles: bool = True,
                  hotspot: dict[str, Any] | None = None) -> dict[str, Any]:
    """The FeatureCollection of one slide: region annotations, the hotspot window, mitosis detections, tiles.

    ``necrotic`` is the row-aligned mask of necrotic tiles the grading measured
    (:func:`histo.aggregate.necrotic_mask`); ``hotspot`` is the report's hotspot dict (box_px, shape,
    count, per_10hpf, area_mm2) or None.
    """
    feats: list[dict[str, Any]] = []
    if hotspot is not None:
        x0, y0, x1, y1 = hotspot["box_px"]
        if hotspot["shape"] == "circle":
            window = shapely.Point((x0 + x1) / 2, (y0 + y1) / 2).buffer((x1 - x0) / 2, quad_segs=32)
        else:
            window = shapely.box(x0, y0, x1, y1)
        feats.append(_feature(window, "annotation", HOTSPOT_CLASS, list(HOTSPOT_RGB),
                              {"Mitoses": float(hotspot["count"]), "Mitoses per 10 HPF": hotspot["per_10hpf"],
                               "Area mm2": hotspot["area_mm2"]}))
    # glass tiles (no tissue) belong to no region; the heatmaps leave them unpainted too
    keep = tissue_tiles(tiles)
    necrotic = np.asarray(necrotic, bool)[keep]
    tiles = tiles[keep].reset_index(drop=True)
    n = len(tiles)
    mm2_per_px2 = mpp * mpp / 1e6
    geom = union_of_tiles(tiles, necrotic)
    if geom is not None:
        feats.append(_feature(geom, "annotation", NECROSIS_CLASS, NECROSIS_RGB,
                              {"Area mm2": geom.area * mm2_per_px2, "Tiles": float(necrotic.sum())}))
    cols = [f"p_pattern_{c}" for c in classes]
    top = np.argmax(tiles[cols].to_numpy(float), axis=1) if n else np.zeros(0, int)
    for i, cls in enumerate(classes):
        geom = union_of_tiles(tiles, top == i)
        if geom is not None:
            colour = PATTERN_COLOURS[i % len(PATTERN_COLOURS)]
            feats.append(_feature(geom, "annotation", pattern_class_name(cls), colour,
                                  {"Area mm2": geom.area * mm2_per_px2, "Tiles": float((top == i).sum())}))
    if mitoses is not None and len(mitoses):
        m = mitoses[mitoses["score"].to_numpy(float) >= mitosis_min_score]
        px, py = mitosis_px(m, mpp)
        for x, y, s in zip(px, py, m["score"].to_numpy(float)):
            feats.append(_feature(shapely.Point(x, y), "detection", MITOSIS_CLASS, MITOSIS_RGB, {"score": s}))
    if include_tiles and n:
        extra = [c for c in ("p_tumour", "tissue_fraction") if c in tiles.columns]
        values = tiles[["p_necrosis", *cols, *extra]].to_numpy(float)
        names = ["p_necrosis", *cols, *extra]
        xs, ys = tiles["x"].to_numpy(float), tiles["y"].to_numpy(float)
        ws, hs = tiles["w"].to_numpy(float), tiles["h"].to_numpy(float)
        for j in range(n):
            if necrotic[j]:
                name, colour = NECROSIS_CLASS, NECROSIS_RGB
            else:
                name = pattern_class_name(classes[top[j]])
                colour = PATTERN_COLOURS[top[j] % len(PATTERN_COLOURS)]
            box = shapely.box(xs[j], ys[j], xs[j] + ws[j], ys[j] + hs[j])
            feats.append(_feature(box, "tile", name, colour, dict(zip(names, values[j]))))
    return {"type": "FeatureCollection", "features": feats}
