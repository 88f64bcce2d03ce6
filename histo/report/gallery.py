"""The mitoses counted in the hotspot as a gallery of 64 µm crops (best score first), and a close-up of the hotspot."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from histo.report import images as I

CROP_UM = 64.0
CROP_PX = 96
MAX_CROPS = 120
CLOSEUP_PX = 900
MARK_RGB = (255, 0, 255)


@dataclass(frozen=True)
class GalleryItem:
    """One counted mitosis: its crop (PNG), score and position."""

    png: bytes
    score: float
    x_um: float
    y_um: float


def counted_in_hotspot(tiles: pd.DataFrame, mitoses: pd.DataFrame | None, mpp: float, config: Any,
                       hotspot: dict[str, Any] | None) -> pd.DataFrame:
    """The mitoses the hotspot count counted: score ≥ min_score, in a viable tumour tile, inside the window
    (or anywhere in viable tumour when the hotspot is the whole viable tumour), best score first."""
    from histo.aggregate import necrotic_mask
    from histo.aggregate.coverage import build_coverage

    if mitoses is None or not len(mitoses) or hotspot is None or not len(tiles):
        return pd.DataFrame({"x_um": [], "y_um": [], "score": []})
    cfg = config
    m = mitoses[mitoses["score"].to_numpy(float) >= cfg.mitoses.min_score]
    classes = list(cfg.tiles.pattern_classes)
    probs = tiles[[f"p_pattern_{c}" for c in classes]].to_numpy(float)
    if "p_tumour" in tiles.columns:
        tumour = tiles["p_tumour"].to_numpy(float) >= cfg.tiles.tumour_min_p
    else:
        tumour = np.array(classes, dtype=object)[np.argmax(probs, axis=1)] != cfg.tiles.non_spindle_class
    viable = tumour & ~necrotic_mask(tiles, mpp, cfg)
    raster = build_coverage(tiles["x"].to_numpy(), tiles["y"].to_numpy(), tiles["w"].to_numpy(), tiles["h"].to_numpy())
    x_um, y_um = m["x_um"].to_numpy(float), m["y_um"].to_numpy(float)
    owner = raster.owner_at(x_um / mpp, y_um / mpp)
    keep = np.zeros(len(m), bool)
    keep[owner >= 0] = viable[owner[owner >= 0]]
    if hotspot.get("counted_in") == "window":
        if hotspot.get("shape") == "circle" and hotspot.get("centre_um"):
            cx, cy = (float(v) for v in hotspot["centre_um"])
            r = float(np.sqrt(float(hotspot["area_mm2"]) * 1e6 / np.pi))
            keep &= np.hypot(x_um - cx, y_um - cy) <= r
        else:
            bx0, by0, bx1, by1 = (float(v) for v in hotspot["box_um"])
            keep &= (x_um >= bx0) & (x_um <= bx1) & (y_um >= by0) & (y_um <= by1)
    return m[keep].sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def gallery(slide: Any, counted: pd.DataFrame, mpp: float, crop_um: float = CROP_UM, crop_px: int = CROP_PX,
            max_items: int = MAX_CROPS) -> list[GalleryItem]:
    """A crop_um-wide crop centred on each counted mitosis (the first max_items by score), a ring at its centre."""
    out_mpp = crop_um / crop_px
    items = []
    for x_um, y_um, score in counted[["x_um", "y_um", "score"]].head(max_items).itertuples(index=False):
        x0, y0 = (x_um - crop_um / 2) / mpp, (y_um - crop_um / 2) / mpp
        rgb = np.array(slide.read(x0, y0, crop_px, crop_px, mpp=out_mpp), dtype=np.uint8)  # a writable copy
        yy, xx = np.mgrid[0:crop_px, 0:crop_px]
        d = np.hypot(xx - crop_px / 2, yy - crop_px / 2)
        r = crop_px * 0.22  # a ring of about 14 µm: the figure stays visible inside it
        rgb[(d >= r) & (d < r + 1.5)] = MARK_RGB
        items.append(GalleryItem(_png(rgb), float(score), float(x_um), float(y_um)))
    return items


def closeup(slide: Any, hotspot: dict[str, Any], counted: pd.DataFrame, mpp: float, label: str) -> bytes:
    """The hotspot window read from the slide (longest side CLOSEUP_PX), its mitoses ringed, with a scale bar."""
    bx0, by0, bx1, by1 = (float(v) for v in hotspot["box_px"])
    w_px, h_px = max(bx1 - bx0, 1.0), max(by1 - by0, 1.0)
    out_mpp = max(w_px, h_px) * mpp / CLOSEUP_PX
    w, h = max(1, round(w_px * mpp / out_mpp)), max(1, round(h_px * mpp / out_mpp))
    read_mpp = max(out_mpp, mpp)  # never ask for pixels finer than level 0
    rw, rh = max(1, round(w_px * mpp / read_mpp)), max(1, round(h_px * mpp / read_mpp))
    rgb = np.ascontiguousarray(slide.read(bx0, by0, rw, rh, mpp=read_mpp))
    if rgb.shape[:2] != (h, w):
        rgb = np.asarray(Image.fromarray(rgb).resize((w, h)))
    rgb = rgb.copy()
    scale = mpp / out_mpp  # canvas px per level-0 px
    yy, xx = np.mgrid[0:h, 0:w]
    r = max(6.0, 8.0 / out_mpp)
    for x_um, y_um in counted[["x_um", "y_um"]].itertuples(index=False):
        cx, cy = (x_um / mpp - bx0) * scale, (y_um / mpp - by0) * scale
        lo_y, hi_y = max(0, int(cy - r - 3)), min(h, int(cy + r + 3))
        lo_x, hi_x = max(0, int(cx - r - 3)), min(w, int(cx + r + 3))
        d = np.hypot(xx[lo_y:hi_y, lo_x:hi_x] - cx, yy[lo_y:hi_y, lo_x:hi_x] - cy)
        rgb[lo_y:hi_y, lo_x:hi_x][(d >= r) & (d < r + 2)] = MARK_RGB
    canvas = I.Canvas(rgb, scale, scale, mpp)
    return I.render(canvas, rgb, title=label).png
