"""Labelling tiles from annotations: exact region area fractions per tile, tile labels, mitoses per tile."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import shapely

from histo.annotations.geojson import AnnotationError, Annotations
from histo.tiling import TileGrid

PHANTOM_PATTERN_MAP = {
    "Tumor-fascicular": "fascicular",
    "Tumor-haphazard": "haphazard",
    "Stroma": "none",
    "Inflammation": "none",
    "Tissue": "none",
}


@dataclass(frozen=True)
class LabelMap:
    """Which annotation classes mean which training label, and how much of a tile a label needs.

    Fractions are shares of the tile's tissue: the larger of the annotated area and the detected
    tissue area (the grid's ``tissue_fraction``), so a tile that is only partly annotated is not
    labelled from its annotated corner alone.
    """

    pattern: dict[str, str] = field(default_factory=lambda: dict(PHANTOM_PATTERN_MAP))
    # The pattern class that yields where regions overlap (QuPath "Tissue" under a tumour outline).
    background: str | None = "none"
    necrosis: tuple[str, ...] = ("Necrosis",)
    mitosis: tuple[str, ...] = ("Mitosis",)
    ignore: tuple[str, ...] = ("Pen", "Blur", "Fold")
    # Classes that may appear in the annotations and carry no label (rulers, notes, artefacts kept as tissue):
    # any other class not named above is a label problem histo train refuses (data.allow_label_problems).
    no_label: tuple[str, ...] = ()
    pattern_min_fraction: float = 0.5
    necrosis_positive_min: float = 0.5
    necrosis_negative_max: float = 0.05
    min_annotated_fraction: float = 0.5  # below this a tile's necrosis is unknown, not "no necrosis"
    ignore_max_fraction: float = 0.0  # a tile whose ignore regions cover more than this share is dropped

    def __post_init__(self) -> None:
        bad = [f"{k!r}: {v!r}" for k, v in self.pattern.items() if not (isinstance(k, str) and isinstance(v, str))]
        if bad:
            raise ValueError(f"pattern maps annotation class names to pattern class names (strings), got {bad[0]}")
        for name in ("pattern_min_fraction", "necrosis_positive_min", "necrosis_negative_max",
                     "min_annotated_fraction", "ignore_max_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if self.necrosis_negative_max >= self.necrosis_positive_min:
            raise ValueError("necrosis_negative_max must be below necrosis_positive_min")
        if self.background is not None and self.background not in self.pattern.values():
            raise ValueError(f"background {self.background!r} is none of the pattern classes {sorted(set(self.pattern.values()))}")

    def known_classes(self) -> set[str]:
        """Every annotation class this map names (pattern, necrosis, mitosis, ignore, no_label)."""
        return {*self.pattern, *self.necrosis, *self.mitosis, *self.ignore, *self.no_label}

    def pattern_classes(self) -> list[str]:
        """Pattern class names in a stable order: the background first, then by first appearance."""
        out = [self.background] if self.background else []
        for v in self.pattern.values():
            if v not in out:
                out.append(v)
        return out


@dataclass
class TileLabels:
    """Per-tile labels for a table of tiles: the table gains label columns; points are level-0 px per tile."""

    table: pd.DataFrame  # input columns + frac_<pattern class>, frac_necrosis, frac_ignore, annotated_fraction, pattern, necrosis, keep
    points: list[np.ndarray]  # per tile: (K, 2) level-0 x, y of the mitoses inside the tile
    pattern_classes: list[str]


def area_fractions(geom: shapely.Geometry, x: np.ndarray, y: np.ndarray, w: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Exact share of each level-0 box (x, y, w, h) covered by `geom`."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    w, h = np.broadcast_to(np.asarray(w, np.float64), x.shape), np.broadcast_to(np.asarray(h, np.float64), x.shape)
    out = np.zeros(x.shape, np.float64)
    if geom is None or geom.is_empty or x.size == 0:
        return out
    boxes = shapely.box(x, y, x + w, y + h)
    shapely.prepare(geom)
    # Whole boxes inside or outside are settled by prepared predicates; only edge boxes pay for an overlay.
    inside = shapely.contains(geom, boxes)
    edge = shapely.intersects(geom, boxes) & ~inside
    out[inside] = 1.0
    if edge.any():
        out[edge] = shapely.area(shapely.intersection(boxes[edge], geom)) / (w[edge] * h[edge])
    return np.clip(out, 0.0, 1.0)


def points_in_boxes(points: np.ndarray, x: np.ndarray, y: np.ndarray, w: np.ndarray, h: np.ndarray) -> list[np.ndarray]:
    """For each box, the points (level-0 px) inside it, boxes half-open [x, x+w) x [y, y+h)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    w, h = np.broadcast_to(np.asarray(w, np.float64), x.shape), np.broadcast_to(np.asarray(h, np.float64), x.shape)
    empty = np.zeros((0, 2), np.float64)
    out = [empty] * len(x)
    points = np.asarray(points, np.float64).reshape(-1, 2)
    if len(points) == 0 or len(x) == 0:
        return out
    tree = shapely.STRtree(shapely.box(x, y, x + w, y + h))
    pi, bi = tree.query(shapely.points(points), predicate="intersects")
    px, py = points[pi, 0], points[pi, 1]
    ok = (px >= x[bi]) & (px < x[bi] + w[bi]) & (py >= y[bi]) & (py < y[bi] + h[bi])
    pi, bi = pi[ok], bi[ok]
    order = np.lexsort((pi, bi))
    pi, bi = pi[order], bi[order]
    for b, start, stop in _runs(bi):
        out[b] = points[pi[start:stop]]
    return out


def _runs(sorted_ids: np.ndarray):
    if sorted_ids.size == 0:
        return
    cuts = np.flatnonzero(np.diff(sorted_ids)) + 1
    starts = np.r_[0, cuts]
    stops = np.r_[cuts, sorted_ids.size]
    for s, e in zip(starts, stops):
        yield int(sorted_ids[s]), int(s), int(e)


def label_tiles(
    tiles: TileGrid | pd.DataFrame,
    annotations: Annotations,
    label_map: LabelMap | None = None,
    pattern_classes: Sequence[str] | None = None,
) -> TileLabels:
    """Label each tile (level-0 box) with a pattern index (-1 = none), necrosis 1/0/-1 and its mitosis points."""
    lm = label_map or LabelMap()
    table = (tiles.table if isinstance(tiles, TileGrid) else tiles).reset_index(drop=True).copy()
    classes = list(pattern_classes) if pattern_classes is not None else lm.pattern_classes()
    unknown = sorted(set(lm.pattern.values()) - set(classes))
    if unknown and classes:  # a model without a pattern head (classes []) simply takes no pattern labels
        raise AnnotationError(f"{annotations.source}: label map pattern classes {unknown} are not model classes {classes}")
    x, y, w, h = (table[c].to_numpy(np.float64) for c in ("x", "y", "w", "h"))

    necrosis_geom = annotations.region(*lm.necrosis)
    by_class: dict[str, shapely.Geometry] = {}
    for c in classes:
        names = [k for k, v in lm.pattern.items() if v == c]
        by_class[c] = annotations.region(*names)
    # Overlaps resolve so areas are disjoint: the background yields to every other class and to necrosis.
    if lm.background in by_class:
        others = [g for c, g in by_class.items() if c != lm.background and not g.is_empty]
        if not necrosis_geom.is_empty:
            others.append(necrosis_geom)
        if others and not by_class[lm.background].is_empty:
            by_class[lm.background] = shapely.difference(by_class[lm.background], shapely.union_all(others))
    fracs = np.stack([area_fractions(by_class[c], x, y, w, h) for c in classes], 1) if classes else np.zeros((len(x), 0))
    nec = area_fractions(necrosis_geom, x, y, w, h)
    labelled_parts = [g for g in [*by_class.values(), necrosis_geom] if not g.is_empty]
    annotated_geom = shapely.union_all(labelled_parts) if labelled_parts else shapely.Polygon()
    annotated = area_fractions(annotated_geom, x, y, w, h)
    ignore = area_fractions(annotations.region(*lm.ignore), x, y, w, h)

    tissue = annotated.copy()
    if "tissue_fraction" in table:
        tissue = np.maximum(tissue, table["tissue_fraction"].to_numpy(np.float64))
    denom = np.maximum(tissue, 1e-9)
    pattern = np.full(len(x), -1, np.int64)
    if fracs.shape[1]:
        best = fracs.argmax(1)
        share = fracs[np.arange(len(x)), best] / denom
        pattern = np.where((share >= lm.pattern_min_fraction) & (fracs.max(1) > 0), best, -1).astype(np.int64)
    nec_share = nec / denom
    covered = annotated / denom >= lm.min_annotated_fraction
    necrosis = np.full(len(x), -1.0, np.float32)
    necrosis[nec_share >= lm.necrosis_positive_min] = 1.0
    necrosis[(nec_share <= lm.necrosis_negative_max) & covered] = 0.0
    for i, c in enumerate(classes):
        table[f"frac_{c}"] = fracs[:, i].astype(np.float32)
    table["frac_necrosis"] = nec.astype(np.float32)
    table["frac_ignore"] = ignore.astype(np.float32)
    table["annotated_fraction"] = annotated.astype(np.float32)
    table["pattern"] = pattern
    table["necrosis"] = necrosis
    table["keep"] = ignore <= lm.ignore_max_fraction
    points = points_in_boxes(annotations.point_array(*lm.mitosis), x, y, w, h)
    return TileLabels(table=table, points=points, pattern_classes=classes)
