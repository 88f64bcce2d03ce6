"""Counting regions for slide-level IHC: a tumour mask from H&E tile predictions or from annotation polygons.

Masks are :class:`histo.tissue.TissueMask` objects in the level-0 frame of the slide they were made for
(``slide_dimensions``), at a coarse ``mpp``. The H&E and the IHC slide of a case are assumed to share that
frame: true for phantom pairs (rendered from one layout), NOT in general for real serial sections, which
are cut, mounted and scanned separately and need registration (histo.register, which histo.ihc.score_slide
runs when given the H&E slide, before this check).
:func:`check_frame` refuses a mask whose frame differs from the IHC slide's by more than a few per cent
unless the caller says the mismatch is accepted (then the mask is stretched to the IHC frame, which is
only right when the sections differ by scale and origin alone).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histo.errors import HistoError
from histo.tissue import TissueMask

PATTERN_PREFIX = "p_pattern_"
# Level-0 sizes of two slides that differ by more than this (relative) are different frames.
FRAME_TOLERANCE = 0.03


class FrameMismatchError(HistoError):
    """A region mask was made in another level-0 frame than the slide it is applied to."""


def _check_dims(dims: Any, what: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in dims)
    except (TypeError, ValueError):
        raise HistoError(f"{what} must be (width, height) in level-0 px, got {dims!r}") from None
    if w <= 0 or h <= 0:
        raise HistoError(f"{what} must be positive, got {dims!r}")
    return w, h


def _check_positive(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(float(v)) or v <= 0:
        raise HistoError(f"{what} must be a positive number, got {v!r}")
    return float(v)


def _empty_mask(slide_dimensions: tuple[int, int], slide_mpp: float, mask_mpp: float) -> TissueMask:
    w, h = slide_dimensions
    ds = mask_mpp / slide_mpp
    shape = (max(1, round(h / ds)), max(1, round(w / ds)))
    return TissueMask(mask=np.zeros(shape, bool), mpp=mask_mpp, downsample=ds, slide_dimensions=(w, h))


def frame_mismatch(a: Sequence[int], b: Sequence[int]) -> float:
    """Largest relative difference between two level-0 (width, height) sizes (0 = same frame)."""
    (aw, ah), (bw, bh) = _check_dims(a, "frame a"), _check_dims(b, "frame b")
    return max(abs(aw - bw) / max(aw, bw), abs(ah - bh) / max(ah, bh))


def check_frame(mask: TissueMask, slide_dimensions: Sequence[int], *, allow_frame_mismatch: bool = False,
                what: str = "tumour mask") -> tuple[TissueMask, float]:
    """The mask in the slide's frame and the relative size mismatch; raises FrameMismatchError past FRAME_TOLERANCE.

    With ``allow_frame_mismatch`` a differing mask is stretched onto the slide's frame (same relative
    position), which is right only when the two scans differ by scale alone; real serial sections need
    registration, which histo does not do.
    """
    dims = _check_dims(slide_dimensions, "slide_dimensions")
    mdims = _check_dims(mask.slide_dimensions, f"{what} slide_dimensions")
    mism = frame_mismatch(mdims, dims)
    if mism > FRAME_TOLERANCE and not allow_frame_mismatch:
        raise FrameMismatchError(
            f"the {what} was made for a {mdims[0]}x{mdims[1]} px slide but this slide is {dims[0]}x{dims[1]} px "
            f"({100 * mism:.1f}% apart, tolerance {100 * FRAME_TOLERANCE:g}%): the H&E and IHC slides do not share a "
            "level-0 frame. Serial sections need registration onto the H&E slide (histo ihc --he-slide, histo case); pass "
            "allow_frame_mismatch=True (--allow-frame-mismatch) only if the two scans differ by scale alone"
        )
    if mdims == dims:
        return mask, mism
    # Same relative position in both frames: the mask keeps its pixels, its geometry says the new frame.
    mh, mw = mask.mask.shape
    ds = dims[0] / mw
    return TissueMask(mask=mask.mask, mpp=mask.mpp * ds / mask.downsample, downsample=ds, slide_dimensions=dims), mism


def mask_values_at(mask: TissueMask, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mask value (bool) at level-0 points (x, y); points outside the mask are False."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.size == 0:
        return np.zeros(0, bool)
    ix = np.floor(x / mask.downsample).astype(np.int64)
    iy = np.floor(y / mask.downsample).astype(np.int64)
    mh, mw = mask.mask.shape
    ok = (ix >= 0) & (iy >= 0) & (ix < mw) & (iy < mh)
    out = np.zeros(x.shape, bool)
    out[ok] = mask.mask[iy[ok], ix[ok]]
    return out


def tumour_mask_from_tiles(
    tiles_df: pd.DataFrame,
    slide_dimensions: Sequence[int],
    *,
    slide_mpp: float,
    classes: Sequence[str] | None = None,
    non_spindle_class: str = "none",
    necrosis_min_p: float = 0.5,
    necrotic: np.ndarray | None = None,
    mask_mpp: float = 8.0,
) -> TissueMask:
    """Tumour mask (level-0 frame of the H&E slide) from a prediction tile table (tiles.parquet of a prediction folder, docs/formats.md).

    A tile is viable tumour when its most probable pattern class is a spindle class (not
    ``non_spindle_class``) and ``p_necrosis < necrosis_min_p``; the mask is the union of those tiles'
    boxes at ``mask_mpp``. ``classes`` defaults to the table's ``p_pattern_<class>`` columns in order.
    The H&E and IHC slides must share the level-0 frame (phantom pairs do; serial sections need
    registration, not done here): a table whose tiles reach beyond ``slide_dimensions`` by more than
    a tile and a few per cent raises FrameMismatchError; :func:`check_frame` compares with the IHC slide.
    """
    dims = _check_dims(slide_dimensions, "slide_dimensions")
    slide_mpp = _check_positive(slide_mpp, "slide_mpp")
    mask_mpp = _check_positive(mask_mpp, "mask_mpp")
    if not isinstance(tiles_df, pd.DataFrame):
        raise HistoError(f"tiles_df must be a pandas DataFrame, got {type(tiles_df).__name__}")
    if classes is None:
        classes = [c[len(PATTERN_PREFIX):] for c in tiles_df.columns if isinstance(c, str) and c.startswith(PATTERN_PREFIX)]
    classes = list(classes)
    if not classes:
        raise HistoError("the tile table has no p_pattern_<class> columns and no classes were given")
    if non_spindle_class not in classes:
        raise HistoError(f"non_spindle_class {non_spindle_class!r} is not one of the pattern classes {classes}")
    if not 0.0 < float(necrosis_min_p) <= 1.0:
        raise HistoError(f"necrosis_min_p must lie in (0, 1], got {necrosis_min_p!r}")
    need = ["x", "y", "w", "h", "p_necrosis", *(PATTERN_PREFIX + c for c in classes)]
    missing = [c for c in need if c not in tiles_df.columns]
    if missing:
        raise HistoError(f"tile table is missing column(s) {', '.join(missing)} (has {', '.join(map(str, tiles_df.columns))})")
    out = _empty_mask(dims, slide_mpp, mask_mpp)
    if len(tiles_df) == 0:
        return out
    x, y, w, h = (tiles_df[c].to_numpy(np.float64) for c in ("x", "y", "w", "h"))
    if not (np.all(np.isfinite([x, y, w, h])) and np.all(w > 0) and np.all(h > 0)):
        raise HistoError("tile table has non-finite boxes or tiles with w or h <= 0")
    reach_x, reach_y = float(np.max(x + w)), float(np.max(y + h))
    slack_x = float(np.max(w)) + FRAME_TOLERANCE * dims[0]
    slack_y = float(np.max(h)) + FRAME_TOLERANCE * dims[1]
    if reach_x > dims[0] + slack_x or reach_y > dims[1] + slack_y or float(np.min(x)) < -slack_x or float(np.min(y)) < -slack_y:
        raise FrameMismatchError(
            f"the tiles reach {reach_x:.0f}x{reach_y:.0f} px but the slide is {dims[0]}x{dims[1]} px: the tile "
            "table was made on a slide with another level-0 frame"
        )
    probs = tiles_df[[PATTERN_PREFIX + c for c in classes]].to_numpy(np.float64)
    top = np.asarray(classes, dtype=object)[np.argmax(probs, axis=1)]
    if necrotic is None:
        dead = tiles_df["p_necrosis"].to_numpy(np.float64) >= float(necrosis_min_p)
    else:
        dead = np.asarray(necrotic)
        if dead.dtype != bool or dead.shape != (len(tiles_df),):
            raise HistoError(f"necrotic must be a bool array with one value per tile ({len(tiles_df)}), "
                             f"got {dead.dtype} of shape {dead.shape}")
    tumour = (top != non_spindle_class) & ~dead
    ds = out.downsample
    mh, mw = out.mask.shape
    m = out.mask
    # A mask pixel belongs to a tile when its centre lies in the tile box: tiles that tile the slide
    # exactly give a mask without gaps or double coverage.
    for xi, yi, wi, hi in zip(x[tumour], y[tumour], w[tumour], h[tumour]):
        c0 = max(0, int(math.ceil(xi / ds - 0.5)))
        c1 = min(mw, int(math.ceil((xi + wi) / ds - 0.5)))
        r0 = max(0, int(math.ceil(yi / ds - 0.5)))
        r1 = min(mh, int(math.ceil((yi + hi) / ds - 0.5)))
        if c1 > c0 and r1 > r0:
            m[r0:r1, c0:c1] = True
    return out


def read_prediction_tiles(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A prediction tile table (tiles.parquet, or a prediction folder holding one) and its histo.predict metadata."""
    from histo.prediction import read_tiles

    return read_tiles(path)


def mask_from_polygons(
    geometries: Iterable[Any],
    slide_dimensions: Sequence[int],
    *,
    slide_mpp: float,
    mask_mpp: float = 4.0,
    subtract: Iterable[Any] = (),
) -> TissueMask:
    """Rasterise shapely (multi)polygons in level-0 px (minus ``subtract``) to a mask at ``mask_mpp``.

    A mask pixel is inside when its centre is; holes of polygons are honoured.
    """
    import shapely
    from PIL import Image, ImageDraw

    dims = _check_dims(slide_dimensions, "slide_dimensions")
    out = _empty_mask(dims, _check_positive(slide_mpp, "slide_mpp"), _check_positive(mask_mpp, "mask_mpp"))
    ds = out.downsample
    mh, mw = out.mask.shape

    def draw(geoms: Iterable[Any]) -> np.ndarray:
        img = Image.new("L", (mw, mh), 0)
        d = ImageDraw.Draw(img)
        for g in geoms:
            for poly in getattr(g, "geoms", [g]):
                if poly.is_empty or poly.geom_type != "Polygon":
                    continue
                # PIL fills pixel (i, j) when its corner-based coordinate is inside; shift by half a pixel
                # so that the test is on pixel centres.
                ext = [(px / ds - 0.5, py / ds - 0.5) for px, py in poly.exterior.coords]
                d.polygon(ext, fill=1)
                for ring in poly.interiors:
                    d.polygon([(px / ds - 0.5, py / ds - 0.5) for px, py in ring.coords], fill=0)
        return np.asarray(img, bool)

    geoms = [g for g in geometries if g is not None and not shapely.is_empty(g)]
    m = draw(geoms)
    sub = [g for g in subtract if g is not None and not shapely.is_empty(g)]
    if sub:
        m &= ~draw(sub)
    return TissueMask(mask=m, mpp=out.mpp, downsample=ds, slide_dimensions=dims)


def mask_from_geojson(
    path_or_dict: str | Path | dict[str, Any] | list[Any],
    slide_dimensions: Sequence[int],
    *,
    slide_mpp: float,
    include: Sequence[str],
    exclude: Sequence[str] = (),
    mask_mpp: float = 4.0,
) -> TissueMask:
    """Mask of the QuPath GeoJSON annotations classified as one of ``include``, minus those in ``exclude``.

    The file is read by :mod:`histo.annotations` (the one GeoJSON reader: QuPath's classification mapping,
    a plain string, or ``name``); a class in both lists is included."""
    from histo.annotations import parse_geojson, read_geojson

    ann = parse_geojson(path_or_dict, "<geojson>") if isinstance(path_or_dict, (dict, list)) else read_geojson(path_or_dict)
    inc = [ann.regions[c] for c in dict.fromkeys(include) if c in ann.regions]
    exc_ = [ann.regions[c] for c in dict.fromkeys(exclude) if c in ann.regions and c not in include]
    return mask_from_polygons(inc, slide_dimensions, slide_mpp=slide_mpp, mask_mpp=mask_mpp, subtract=exc_)
