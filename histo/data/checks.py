"""Checks of training labels before training: annotation problems on slides, label counts, heads without positives."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import shapely

from histo.annotations import Annotations, LabelMap
from histo.data.frames import LabelProblem
from histo.data.image_tiles import on_glass
from histo.tissue import TissueMask

COUNT_COLUMNS = ["split", "source", "head", "label", "n_tiles", "n_figures"]
MIN_REGION_TISSUE = 0.05  # a labelled region with less tissue under it than this share lies on glass
MIN_REGION_INSIDE = 0.5  # a region with less of its area inside the slide lies outside it


def _tissue_share(mask: TissueMask, geom: shapely.Geometry) -> float:
    """Share of the mask pixels whose centre falls in `geom` (level-0 px) that are tissue."""
    ds = mask.downsample
    x0, y0, x1, y1 = geom.bounds
    mh, mw = mask.mask.shape
    c0, r0 = max(0, int(x0 / ds)), max(0, int(y0 / ds))
    c1, r1 = min(mw, int(np.ceil(x1 / ds)) + 1), min(mh, int(np.ceil(y1 / ds)) + 1)
    if c1 <= c0 or r1 <= r0:
        return 0.0
    cc, rr = np.meshgrid(np.arange(c0, c1), np.arange(r0, r1))
    inside = shapely.contains_xy(geom, (cc + 0.5) * ds, (rr + 0.5) * ds)
    if not inside.any():  # a region smaller than a mask pixel: the pixel under its centre decides
        p = geom.representative_point()
        return float(not on_glass(mask, np.array([[p.x, p.y]]))[0])
    return float(mask.mask[rr[inside], cc[inside]].mean())


def slide_label_problems(ann: Annotations, labels: LabelMap, mask: TissueMask, source: str,
                         check_classes: bool = True) -> list[LabelProblem]:
    """Annotations of one slide of unknown class, outside the slide, or (labels only) with no tissue under them."""
    W, H = mask.slide_dimensions
    slide_box = shapely.box(0, 0, W, H)
    known = labels.known_classes()
    trained = {*labels.pattern, *labels.necrosis, *labels.mitosis}
    file = ann.source.rsplit("/", 1)[-1]
    out: list[LabelProblem] = []
    for i, name, geom in ann.features:
        where = f"feature {i} ({name!r})"
        if check_classes and name not in known:
            out.append(LabelProblem(source, file, "unknown_class", f"{where}: class not in the label map "
                                    "(data.labels: pattern, necrosis, mitosis, ignore or no_label)"))
            continue
        if geom.geom_type in ("Point", "MultiPoint"):
            xy = shapely.get_coordinates(geom)
            outside = (xy[:, 0] < 0) | (xy[:, 0] >= W) | (xy[:, 1] < 0) | (xy[:, 1] >= H)
            for x, y in xy[outside]:
                out.append(LabelProblem(source, file, "outside", f"{where} at ({x:.0f}, {y:.0f}) lies outside the {W}x{H} px slide"))
            if name in trained and (~outside).any():
                for x, y in xy[~outside][on_glass(mask, xy[~outside])]:
                    out.append(LabelProblem(source, file, "on_glass", f"{where} at ({x:.0f}, {y:.0f}) has no tissue under it"))
            continue
        inside = shapely.area(shapely.intersection(geom, slide_box)) / max(geom.area, 1e-9)
        if inside < MIN_REGION_INSIDE:
            out.append(LabelProblem(source, file, "outside", f"{where}: {100 * (1 - inside):.0f} % of the region lies outside "
                                    f"the {W}x{H} px slide"))
        elif name in trained and _tissue_share(mask, geom) < MIN_REGION_TISSUE:
            out.append(LabelProblem(source, file, "on_glass", f"{where}: region at {tuple(round(v) for v in geom.bounds)} "
                                    "lies on glass (no tissue detected under it)"))
    return out


def _figures(ds) -> int:
    fp = getattr(ds, "figure_positions", None)
    if fp is None:
        return 0
    pos = fp()
    return int(len(np.unique(pos, axis=0))) if len(pos) else 0


def label_counts(parts: Sequence[tuple[str, str, Any]], pattern_classes: Sequence[str]) -> pd.DataFrame:
    """Tiles per split, source, head and label; n_figures counts distinct mitotic figures on the mitosis 'positive' row."""
    rows = []
    for split, source, ds in parts:
        pattern = np.asarray(ds.pattern)
        for k, c in enumerate(pattern_classes):
            rows.append((split, source, "pattern", c, int((pattern == k).sum()), 0))
        necrosis = np.asarray(ds.necrosis)
        rows.append((split, source, "necrosis", "positive", int((necrosis == 1).sum()), 0))
        rows.append((split, source, "necrosis", "negative", int((necrosis == 0).sum()), 0))
        lab = np.asarray(ds.mitosis_labelled, np.bool_)
        n = np.asarray(ds.n_mitoses)
        rows.append((split, source, "mitosis", "positive", int((lab & (n > 0)).sum()), _figures(ds)))
        rows.append((split, source, "mitosis", "negative", int((lab & (n == 0)).sum()), 0))
    return pd.DataFrame(rows, columns=COUNT_COLUMNS)


def head_problems(counts: pd.DataFrame, heads: Sequence[str], pattern_classes: Sequence[str]) -> list[str]:
    """Heads that cannot learn or be measured: no positive (or no negative) label in train or val, named with the split."""
    out = []
    tot = counts.groupby(["split", "head", "label"])[["n_tiles", "n_figures"]].sum()

    def n(split: str, head: str, label: str, col: str = "n_tiles") -> int:
        return int(tot[col].get((split, head, label), 0))

    for split in ("train", "val"):
        if "mitosis" in heads and n(split, "mitosis", "positive", "n_figures") == 0:
            out.append(f"head 'mitosis' has no positive label in {split}: no mitotic figure in a tile whose mitoses are "
                       f"labelled ({n(split, 'mitosis', 'negative')} labelled tiles without one)")
        if "necrosis" in heads:
            pos, neg = n(split, "necrosis", "positive"), n(split, "necrosis", "negative")
            if pos == neg == 0:
                out.append(f"head 'necrosis' has no label at all in {split}")
            elif pos == 0 or neg == 0:  # AUROC needs both
                out.append(f"head 'necrosis' has no {'positive' if pos == 0 else 'negative'} label in {split} "
                           f"({max(pos, neg)} {'negative' if pos == 0 else 'positive'} tiles)")
        if "pattern" in heads:
            present = [c for c in pattern_classes if n(split, "pattern", c) > 0]
            if split == "train":
                missing = [c for c in pattern_classes if c not in present]
                if missing:
                    out.append(f"head 'pattern' has no label of class(es) {missing} in train")
            elif len(present) < 2:
                out.append(f"head 'pattern' has {'only class ' + repr(present[0]) if present else 'no label'} in val: "
                           "balanced accuracy and AUROC need at least two classes")
    return out
