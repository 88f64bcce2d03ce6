"""Report images: per-head heatmaps rasterised at the tile grid, blended over the slide thumbnail, as PNG bytes.

The map itself is composed in numpy at thumbnail resolution, so a level-0 box lands on known pixels
(``RenderedImage.to_png_px``); matplotlib (Agg, no pyplot state) only places that array unresampled
with ``figimage`` and adds the title, the colourbar or legend and the hotspot label around it.
Overlapping tiles are averaged: each canvas pixel shows the mean of the tiles covering it.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.transforms import IdentityTransform

from histo.errors import HistoError

#: The hotspot outline colour; not produced by the colour maps below, so it can be found in the image.
HOTSPOT_RGB = (0, 255, 255)
OVERLAY_ALPHA = 0.6
PATTERN_COLOURS = [(120, 120, 120), (200, 30, 30), (240, 140, 0), (40, 110, 200), (150, 60, 170), (30, 150, 70)]
_DPI = 100
_TITLE_PX = 34
_LEGEND_PX = 190
_UM2_PER_MM2 = 1e6


@dataclass(frozen=True)
class Canvas:
    """The thumbnail (or a white page) the maps are drawn on, and its scale from level-0 pixels."""

    background: np.ndarray  # (H, W, 3) uint8
    sx: float  # canvas px per level-0 px along x
    sy: float
    mpp: float | None = None  # level-0 µm/px: when known, every map gets a scale bar

    @property
    def width_px(self) -> int:
        """Canvas width in pixels."""
        return int(self.background.shape[1])

    @property
    def height_px(self) -> int:
        """Canvas height in pixels."""
        return int(self.background.shape[0])


@dataclass(frozen=True)
class HotspotBox:
    """The hotspot window to outline: level-0 px box (clipped to the slide), shape and label.

    A circle is drawn from ``circle_px`` (centre x, y and radius, level-0 px) when given, since a
    circle's box clipped at the slide edge no longer gives its centre and radius.
    """

    box_px: tuple[float, float, float, float]
    shape: str = "square"
    label: str = "hotspot"
    circle_px: tuple[float, float, float] | None = None

    @classmethod
    def from_report(cls, hotspot: dict, mpp: float, label: str) -> HotspotBox:
        """The outline of a report.json hotspot dict (box_px, shape, centre_um, area_mm2)."""
        circle = None
        if hotspot["shape"] == "circle" and hotspot.get("centre_um"):
            r_um = float(np.sqrt(float(hotspot["area_mm2"]) * 1e6 / np.pi))
            cx, cy = (float(v) / mpp for v in hotspot["centre_um"])
            circle = (cx, cy, r_um / mpp)
        x0, y0, x1, y1 = (float(v) for v in hotspot["box_px"])
        return cls((x0, y0, x1, y1), hotspot["shape"], label, circle)


@dataclass(frozen=True)
class RenderedImage:
    """A PNG and where the map sits inside it, so level-0 coordinates can be found in the picture."""

    png: bytes
    width_px: int
    height_px: int
    map_left_px: int
    map_top_px: int
    sx: float
    sy: float

    def to_png_px(self, x: float, y: float) -> tuple[float, float]:
        """PNG pixel coordinates of a level-0 point."""
        return self.map_left_px + x * self.sx, self.map_top_px + y * self.sy


def make_canvas(thumbnail: np.ndarray | None, slide_dimensions: tuple[int, int] | None, tiles: pd.DataFrame,
                max_px: int = 1024, mpp: float | None = None) -> Canvas:
    """A canvas from a slide thumbnail and the slide's level-0 size, or a white page spanning the tiles.

    ``mpp`` (level-0 µm/px) puts a scale bar on every map drawn on it."""
    if thumbnail is not None:
        if slide_dimensions is None:
            raise HistoError("a thumbnail needs the slide's level-0 dimensions to map tiles onto it")
        thumb = np.ascontiguousarray(thumbnail[..., :3], dtype=np.uint8)
        sw, sh = slide_dimensions
        return Canvas(thumb, thumb.shape[1] / sw, thumb.shape[0] / sh, mpp)
    w0: float
    h0: float
    if slide_dimensions is not None:
        w0, h0 = slide_dimensions
    elif len(tiles):
        w0 = float((tiles["x"] + tiles["w"]).max())
        h0 = float((tiles["y"] + tiles["h"]).max())
    else:
        w0 = h0 = float(max_px)
    scale = max_px / max(w0, h0)
    w, h = max(1, round(w0 * scale)), max(1, round(h0 * scale))
    return Canvas(np.full((h, w, 3), 255, np.uint8), w / w0, h / h0, mpp)


def _boxes(tiles: pd.DataFrame, canvas: Canvas) -> tuple[np.ndarray, ...]:
    """Tile boxes in canvas pixels, at least one pixel each, clipped to the canvas."""
    x = tiles["x"].to_numpy(float) * canvas.sx
    y = tiles["y"].to_numpy(float) * canvas.sy
    x1 = (tiles["x"].to_numpy(float) + tiles["w"].to_numpy(float)) * canvas.sx
    y1 = (tiles["y"].to_numpy(float) + tiles["h"].to_numpy(float)) * canvas.sy
    # rounding both edges keeps abutting tiles abutting on the canvas
    c0 = np.clip(np.round(x).astype(int), 0, canvas.width_px - 1)
    r0 = np.clip(np.round(y).astype(int), 0, canvas.height_px - 1)
    c1 = np.clip(np.maximum(np.round(x1).astype(int), c0 + 1), 1, canvas.width_px)
    r1 = np.clip(np.maximum(np.round(y1).astype(int), r0 + 1), 1, canvas.height_px)
    return c0, r0, c1, r1


def rasterise(tiles: pd.DataFrame, values: np.ndarray, canvas: Canvas) -> tuple[np.ndarray, np.ndarray]:
    """Mean of per-tile values over the tiles covering each canvas pixel (H, W[, K]) and the covered mask."""
    values = np.asarray(values, dtype=np.float64)
    vals = values[:, None] if values.ndim == 1 else values.reshape(values.shape[0], values.shape[1])
    h, w = canvas.height_px, canvas.width_px
    c0, r0, c1, r1 = _boxes(tiles, canvas)
    # a 2-D difference array: +v at the top-left corner, -v at the two far corners, +v beyond both;
    # cumulative sums then fill every box, so any number of tiles costs O(tiles + pixels)
    acc = np.zeros((h + 1, w + 1, vals.shape[1] + 1))
    ones = np.concatenate([vals, np.ones((len(vals), 1))], axis=1)
    for rows, cols, sign in ((r0, c0, 1), (r0, c1, -1), (r1, c0, -1), (r1, c1, 1)):
        np.add.at(acc, (rows, cols), sign * ones)
    acc = acc.cumsum(0).cumsum(1)[:h, :w]
    count = np.rint(acc[..., -1])
    covered = count > 0
    mean = np.zeros((h, w, vals.shape[1]))
    mean[covered] = acc[covered][:, :-1] / count[covered][:, None]
    return (mean[..., 0] if values.ndim == 1 else mean), covered


def mitoses_per_tile(tiles: pd.DataFrame, mitoses: pd.DataFrame | None, min_score: float, mpp: float) -> np.ndarray:
    """Mitoses (score >= min_score) whose point falls in each tile box (edges included), per mm² of tile."""
    import shapely

    n = len(tiles)
    if mitoses is None or len(mitoses) == 0 or n == 0:
        return np.zeros(n)
    keep = mitoses["score"].to_numpy(float) >= min_score
    px, py = mitosis_px(mitoses[keep], mpp)
    if len(px) == 0:
        return np.zeros(n)
    x, y = tiles["x"].to_numpy(float), tiles["y"].to_numpy(float)
    w, h = tiles["w"].to_numpy(float), tiles["h"].to_numpy(float)
    tree = shapely.STRtree(shapely.box(x, y, x + w, y + h))
    _, hit = tree.query(shapely.points(px, py), predicate="intersects")
    counts = np.bincount(hit, minlength=n).astype(float)
    return counts / (w * h * mpp * mpp / _UM2_PER_MM2)


def mitosis_px(mitoses: pd.DataFrame, mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 pixel coordinates of mitoses: the x, y columns when present, else x_um, y_um / mpp."""
    if {"x", "y"} <= set(mitoses.columns):
        return mitoses["x"].to_numpy(float), mitoses["y"].to_numpy(float)
    return mitoses["x_um"].to_numpy(float) / mpp, mitoses["y_um"].to_numpy(float) / mpp


def _draw_hotspot(rgb: np.ndarray, canvas: Canvas, hotspot: HotspotBox) -> tuple[int, int, int, int]:
    """Outline the hotspot in HOTSPOT_RGB (in place); returns its canvas box."""
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = hotspot.box_px
    c0, c1 = round(x0 * canvas.sx), round(x1 * canvas.sx)
    r0, r1 = round(y0 * canvas.sy), round(y1 * canvas.sy)
    t = max(2, round(min(h, w) / 250))
    yy, xx = np.mgrid[0:h, 0:w]
    if hotspot.shape == "circle":
        if hotspot.circle_px is not None:
            ccx, ccy, rad = hotspot.circle_px
            cx, cy, rx, ry = ccx * canvas.sx, ccy * canvas.sy, max(rad * canvas.sx, 1), max(rad * canvas.sy, 1)
        else:
            cx, cy = (c0 + c1) / 2, (r0 + r1) / 2
            rx, ry = max((c1 - c0) / 2, 1), max((r1 - r0) / 2, 1)
        d = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
        ring = (d <= 1.0) & (d >= 1.0 - t / min(rx, ry))
    else:
        inside_outer = (xx >= c0) & (xx < c1) & (yy >= r0) & (yy < r1)
        inside_inner = (xx >= c0 + t) & (xx < c1 - t) & (yy >= r0 + t) & (yy < r1 - t)
        ring = inside_outer & ~inside_inner
    rgb[ring] = HOTSPOT_RGB
    return c0, r0, c1, r1


def _blend(canvas: Canvas, colours: np.ndarray, covered: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    out = canvas.background.astype(np.float64).copy()
    out[covered] = (1 - alpha) * out[covered] + alpha * colours[covered]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def render(canvas: Canvas, rgb: np.ndarray, *, title: str, hotspot: HotspotBox | None = None,
           colourbar: tuple[str, float, float, str] | None = None,
           legend: Sequence[tuple[str, tuple[int, int, int]]] | None = None) -> RenderedImage:
    """Place a composed map in a titled PNG with a colourbar (cmap, vmin, vmax, label) or a legend."""
    rgb = rgb.copy()
    box = _draw_hotspot(rgb, canvas, hotspot) if hotspot is not None else None
    label = hotspot.label if hotspot is not None else ""
    bar = draw_scale_bar(rgb, canvas.mpp / canvas.sx) if canvas.mpp else None
    mh, mw = rgb.shape[:2]
    side = _LEGEND_PX if (colourbar or legend) else 0
    width, height = mw + side, max(mh + _TITLE_PX, 220 if side else 0)
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, facecolor="white")
    agg = FigureCanvasAgg(fig)
    # origin upper: row 0 at the top; yo counts from the bottom, so the map's top is at height - mh
    fig.figimage(rgb, xo=0, yo=height - _TITLE_PX - mh, origin="upper")
    px = IdentityTransform()
    fig.text(6, height - _TITLE_PX / 2, title, transform=px, va="center", ha="left", fontsize=11, weight="bold")
    if box is not None:
        c0, r0, c1, r1 = box
        top = height - _TITLE_PX - r0  # display y of the box's top edge (display y grows upwards)
        above = top + 4 < height - _TITLE_PX - 12
        fig.text(max(c0, 2), top + 4 if above else height - _TITLE_PX - r1 - 4, label, transform=px,
                 va="bottom" if above else "top", ha="left", fontsize=8, color="black",
                 bbox={"facecolor": "white", "edgecolor": (0, 1, 1), "alpha": 0.85, "pad": 1.5})
    if bar is not None:
        length_um, bx0, by = bar
        fig.text(bx0, height - _TITLE_PX - by + 5, scale_label(length_um), transform=px, va="bottom", ha="left",
                 fontsize=8, color="black", bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 1})
    if colourbar is not None:
        cmap, vmin, vmax, label = colourbar
        cb_h = min(mh, height - _TITLE_PX) * 0.8
        cax = fig.add_axes(((mw + 20) / width, (height - _TITLE_PX - cb_h) / 2 / height, 18 / width, cb_h / height))
        from matplotlib.cm import ScalarMappable

        fig.colorbar(ScalarMappable(Normalize(vmin, vmax), colormaps[cmap]), cax=cax, label=label)
    elif legend:
        handles = [Patch(facecolor=(c[0] / 255, c[1] / 255, c[2] / 255), edgecolor="black", label=name)
                   for name, c in legend]
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=((mw + 8) / width, 0.5), frameon=False,
                   fontsize=9)
    agg.draw()  # the figure is exactly width x height px at _DPI: its buffer is the image (no savefig round trip)
    png = palette_png(np.asarray(agg.buffer_rgba())[..., :3])
    return RenderedImage(png, width, height, 0, _TITLE_PX, canvas.sx, canvas.sy)


def scale_label(length_um: float) -> str:
    """'500 µm', '2 mm'."""
    return f"{length_um / 1000:g} mm" if length_um >= 1000 else f"{length_um:g} µm"


def draw_scale_bar(rgb: np.ndarray, um_per_px: float) -> tuple[float, int, int] | None:
    """Draw a round-length black bar (white-edged) at the bottom left, in place; (length µm, left x, top y) or None."""
    h, w = rgb.shape[:2]
    if w < 40 or h < 20 or not um_per_px > 0:
        return None
    length_um = nice_max(um_per_px * w / 5) if um_per_px * w / 5 > 0 else 1.0
    if length_um / um_per_px > w * 0.4:  # nice_max rounds up: keep the bar inside the map
        length_um /= 2 if str(int(length_um))[0] != "2" else 2.5
    n = max(1, round(length_um / um_per_px))
    t = max(3, round(min(h, w) / 150))
    x0, y0 = max(6, w // 40), h - max(8, h // 30) - t
    rgb[y0 - 1 : y0 + t + 1, x0 - 1 : x0 + n + 1] = 255
    rgb[y0 : y0 + t, x0 : x0 + n] = 0
    return length_um, x0, y0


def palette_png(rgb: np.ndarray, colours: int = 256) -> bytes:
    """An RGB image as a PNG with an adaptive palette of ``colours`` (a few times smaller than RGB: a report
    embeds several slide-sized images, and RGB PNGs made it several MB).

    Encoded once at zlib level 6 without Pillow's ``optimize`` pass, which re-compresses at level 9 for
    under 1 % smaller files and, with matplotlib's own RGBA PNG before it, tripled the time per image."""
    from PIL import Image

    pal = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB").quantize(
        colors=colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    pal.save(out, format="PNG", compress_level=6)
    return out.getvalue()


def thumbnail_image(canvas: Canvas, *, title: str, hotspot: HotspotBox | None = None) -> RenderedImage:
    """The slide thumbnail with the hotspot outlined."""
    return render(canvas, canvas.background, title=title, hotspot=hotspot)


def tissue_tiles(tiles: pd.DataFrame) -> np.ndarray:
    """Which tiles hold tissue (all, when the table has no tissue_fraction): glass tiles are not painted."""
    if "tissue_fraction" not in tiles.columns:
        return np.ones(len(tiles), bool)
    return tiles["tissue_fraction"].to_numpy(float) > 0


def heatmap_image(canvas: Canvas, tiles: pd.DataFrame, values: np.ndarray, *, title: str, label: str,
                  cmap: str = "inferno", vmin: float = 0.0, vmax: float = 1.0,
                  hotspot: HotspotBox | None = None, clear_at_vmin: bool = False) -> RenderedImage:
    """One per-tile value colour-mapped over the tissue tiles with a colourbar.

    ``clear_at_vmin`` leaves pixels at vmin unpainted (for sparse counts: the tissue shows through).
    """
    keep = tissue_tiles(tiles)
    mean, covered = rasterise(tiles[keep], np.asarray(values, float)[keep], canvas)
    if clear_at_vmin:
        covered &= mean > vmin
    vmax = vmax if vmax > vmin else vmin + 1.0
    colours = colormaps[cmap](np.clip((mean - vmin) / (vmax - vmin), 0, 1))[..., :3] * 255
    return render(canvas, _blend(canvas, colours, covered), title=title, hotspot=hotspot,
                  colourbar=(cmap, vmin, vmax, label))


def pattern_image(canvas: Canvas, tiles: pd.DataFrame, classes: Sequence[str], *, title: str,
                  hotspot: HotspotBox | None = None) -> RenderedImage:
    """The most probable pattern class per pixel (mean probabilities of covering tiles) with a legend."""
    keep = tissue_tiles(tiles)
    probs = tiles[[f"p_pattern_{c}" for c in classes]].to_numpy(float)[keep]
    mean, covered = rasterise(tiles[keep], probs, canvas)
    top = np.argmax(mean, axis=-1)
    palette = np.array([PATTERN_COLOURS[i % len(PATTERN_COLOURS)] for i in range(len(classes))], float)
    colours = palette[top]
    legend = [(c, (int(palette[i][0]), int(palette[i][1]), int(palette[i][2]))) for i, c in enumerate(classes)]
    return render(canvas, _blend(canvas, colours, covered), title=title, hotspot=hotspot, legend=legend)


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) of PNG bytes, read from the IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise HistoError("not PNG data")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def decode_png(png: bytes) -> np.ndarray:
    """PNG bytes → (H, W, 3) uint8 RGB."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"))


def nice_max(value: float) -> float:
    """A round upper bound for a colourbar (1, 2, 5 × 10^k) at or above value."""
    if not value > 0 or not math.isfinite(value):
        return 1.0
    k = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 5, 10):
        if m * k >= value:
            return float(m * k)
    return float(10 * k)
