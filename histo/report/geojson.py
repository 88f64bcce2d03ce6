"""QuPath-importable GeoJSON of a slide's predictions (level-0 pixel coordinates, origin top-left).

QuPath reads a FeatureCollection whose features carry ``properties.objectType`` ('annotation',
'detection', 'tile', 'cell'), ``properties.classification`` ``{name, color: [r, g, b]}`` and
``properties.measurements`` as an object of name → number (QuPath ≥ 0.4; NaN is never written).
Class names avoid ':' because QuPath splits derived classes on it.

Features written: the mitotic hotspot window as an 'annotation' (class "Mitotic hotspot"); one
'annotation' per region class (necrosis, each pattern class) = the union of
the boxes of the tiles carrying it; one 'detection' point per counted-score mitosis
(class "Mitosis", measurement "score"); and optionally one 'tile' per tile with its probabilities.
Tiles without tissue (``tissue_fraction`` 0) are left out of everything.

Every geometry written is valid OGC simple features (shapely ``is_valid``): region unions are built on
the tile lattice, where adjacent tiles share edges exactly, so a region is one polygon per connected
group of tiles and never a MultiPolygon of squares that share edges (what QuPath and GIS tools reject).
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
NECROSIS_RGB = (60, 60, 60)
MITOSIS_RGB = (255, 0, 255)
HOTSPOT_CLASS = "Mitotic hotspot"
# decimals of the coordinates written (0.01 px); tile edges closer than one step are one edge
_COORD_DECIMALS = 2
_EDGE_SNAP_PX = 10.0 ** -_COORD_DECIMALS
_POLYGONAL = ("Polygon", "MultiPolygon")


def pattern_class_name(cls: str) -> str:
    """QuPath class name of a pattern class."""
    return f"Pattern {cls}"


def valid_geometry(geom: Any) -> Any:
    """The geometry rounded to the written precision, repaired (make_valid, polygonal parts kept) if that left it invalid."""
    geom = shapely.set_precision(geom, _EDGE_SNAP_PX) if geom.geom_type in _POLYGONAL else geom
    if geom.is_valid:
        return geom
    fixed = shapely.make_valid(geom)
    if geom.geom_type in _POLYGONAL:
        polys = [g for g in shapely.get_parts(fixed) if g.geom_type in _POLYGONAL]
        fixed = shapely.union_all(polys) if polys else shapely.Polygon()
    return fixed


def _coords(obj: Any) -> Any:
    if isinstance(obj, (list, tuple)):
        return [_coords(v) for v in obj]
    return round(float(obj), _COORD_DECIMALS)


def _feature(geom: Any, object_type: str, name: str, colour: Sequence[int], measurements: dict[str, float] | None = None,
             **extra: Any) -> dict[str, Any]:
    g = mapping(geom)
    props: dict[str, Any] = {"objectType": object_type, "classification": {"name": name, "color": list(colour)}}
    if measurements:
        props["measurements"] = {k: float(v) for k, v in measurements.items() if v is not None and math.isfinite(v)}
    props.update(extra)
    return {"type": "Feature", "geometry": {"type": g["type"], "coordinates": _coords(g["coordinates"])},
            "properties": props}


def _edge_lattice(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct edge positions (values within 0.01 px are one edge, at the lowest) and each value's index in them."""
    order = np.argsort(values, kind="stable")
    v = values[order]
    new = np.r_[True, np.diff(v) > _EDGE_SNAP_PX]
    index = np.empty(len(values), np.int64)
    index[order] = np.cumsum(new) - 1
    return v[new], index


def union_of_tiles(tiles: pd.DataFrame, mask: np.ndarray) -> Any:
    """Valid union (shapely) of the boxes of the tiles selected by mask, with their exact area; None when empty.

    Tile edges are floats (x = col * stride at a non-integer downsample), so a neighbour's left edge and
    this tile's right edge differ by rounding error and a plain union keeps them apart. The union is
    taken on the lattice of distinct edges (integer coordinates, exact), then mapped back to pixels;
    the map is increasing on each axis, so it keeps the union's topology and its area.
    """
    sel = tiles[np.asarray(mask, bool)]
    n = len(sel)
    if n == 0:
        return None
    x, y = sel["x"].to_numpy(float), sel["y"].to_numpy(float)
    xs, ix = _edge_lattice(np.concatenate([x, x + sel["w"].to_numpy(float)]))
    ys, iy = _edge_lattice(np.concatenate([y, y + sel["h"].to_numpy(float)]))
    cells = shapely.union_all(shapely.box(ix[:n], iy[:n], ix[n:], iy[n:]))
    cells = shapely.simplify(cells, 0.0, preserve_topology=True)  # drops the collinear box corners only

    def to_px(c: np.ndarray) -> np.ndarray:
        k = np.rint(c).astype(np.int64)
        return np.column_stack([xs[k[:, 0]], ys[k[:, 1]]])

    return shapely.transform(cells, to_px)


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
        feats.append(_feature(valid_geometry(window), "annotation", HOTSPOT_CLASS, list(HOTSPOT_RGB),
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
        feats.append(_feature(valid_geometry(geom), "annotation", NECROSIS_CLASS, NECROSIS_RGB,
                              {"Area mm2": geom.area * mm2_per_px2, "Tiles": float(necrotic.sum())}))
    cols = [f"p_pattern_{c}" for c in classes]
    top = np.argmax(tiles[cols].to_numpy(float), axis=1) if n else np.zeros(0, int)
    for i, cls in enumerate(classes):
        geom = union_of_tiles(tiles, top == i)
        if geom is not None:
            colour = PATTERN_COLOURS[i % len(PATTERN_COLOURS)]
            feats.append(_feature(valid_geometry(geom), "annotation", pattern_class_name(cls), colour,
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
