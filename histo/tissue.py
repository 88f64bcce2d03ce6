"""Tissue masks from a low-resolution overview of a slide, for H&E and IHC, with pen ink left out.

The mask answers "where on the glass is stained tissue?" at a coarse resolution (default 8 µm/px) so that
tile planning never has to look at level 0. Every size is given in µm or µm², never in pixels, so the same
configuration behaves the same on a 2 µm/px thumbnail and on a 16 µm/px one.

Method, in order (each step is a function below, each threshold a documented `TissueConfig` field):

1. Smooth the RGB lightly: JPEG and sensor noise are per pixel, and every later test is per pixel.
2. Estimate the glass colour from flat (untextured), unsaturated pixels, taking the brightest band of
   them: scanners put glass anywhere from ~190 (Olympus grey) to ~250 grey, sometimes tinted, sometimes
   darker towards the corners (vignetting), so the estimate is local (a coarse grid of cells, smoothly
   interpolated) wherever a cell shows enough glass, and global elsewhere. With no glass in view (a
   crop that is all tissue) the glass is taken as pure white.
3. Optical density relative to that glass, per channel; the largest channel is the tissue signal. Taking
   the maximum (not the mean) keeps pale eosin (absorbs green), pale hematoxylin (absorbs red) and DAB
   (absorbs blue) alike, which is what makes one rule work for H&E and for IHC.
4. Threshold it with Otsu, guarded: Otsu always splits *something*, so on a blank slide it would split the
   noise. Its answer is used only when the class above it is clearly denser than glass, and is clamped
   to [`min_od`, `max_od`] so it can neither cut into noise nor climb above pale tissue.
5. Pen ink (`pen_mask`), widened by `pen_margin_um` for its blurred rim, is left out of the Otsu
   statistics and removed from the mask after every morphological step, so closing or hole filling can
   never bring a stroke back.
6. Closing (bridges loose stroma and fat), filling of holes up to `max_hole_um2`, and removal of fragments
   below `min_fragment_um2`.

An image without tissue yields an all-False mask; nothing here falls back to "the whole slide".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from scipy import ndimage as ndi

from histo.config import from_dict, load_yaml
from histo.errors import ConfigError, HistoError

__all__ = [
    "TissueConfig",
    "TissueMask",
    "detect_tissue",
    "load_tissue_config",
    "pen_mask",
    "tissue_fraction_warning",
    "tissue_mask",
]


@dataclass(frozen=True)
class TissueConfig:
    """Every threshold of tissue detection in one place; sizes in µm / µm² so they do not depend on mpp."""

    # Gaussian sigma (pixels) applied to the RGB before any per-pixel test. Noise is a pixel-scale
    # phenomenon whatever the mpp, so this one is in pixels on purpose.
    smooth_px: float = 1.0
    # Glass estimate: pixels whose darkest channel is at least this grey, whose HSV saturation is at
    # most background_max_saturation and whose local texture is at most background_max_texture are glass
    # candidates; the brightest background_band grey levels of them are the glass. 150 admits the grey
    # glass of Olympus scans (~190-210); texture, not brightness, is what tells glass from pale tissue.
    background_min_grey: int = 150
    background_max_saturation: float = 0.10
    background_max_texture: float = 3.0  # std of grey levels over background_texture_um (glass noise ~1)
    # Texture is measured over a window this wide: several cells across, so pale tissue shows its
    # structure at any mpp while glass stays flat (at 8 µm/px the window is 5 px).
    background_texture_um: float = 40.0
    background_band: float = 14.0
    # ... and their per-channel median is the glass colour when they cover at least this share of the
    # image (5 %: a lumen or gap inside a crop full of tissue must not pass for the glass); otherwise the
    # glass is taken as pure white.
    background_min_fraction: float = 0.05
    # Tissue threshold on optical density above glass (max over R, G, B): Otsu, clamped to this range.
    # 0.04 is ~9 grey levels below glass at 240, well above smoothed noise (< 0.01); 0.08 still keeps the
    # pale, barely counterstained stroma of IHC slides (OD ~0.1), which a higher cap loses.
    min_od: float = 0.04
    max_od: float = 0.08
    # Otsu is trusted only when the mean OD of the pixels above it reaches this; otherwise the "split" is
    # noise on an empty slide and max_od is used instead.
    otsu_min_class_od: float = 0.10
    # Pen ink: remove it from the mask (see pen_mask for the colour rules).
    remove_pen: bool = True
    # A pen seed (strongly pen-coloured connected region) must be at least this big to count: strokes are
    # hundreds of µm wide, while a saturated blue nucleus or a red blood cell is a few tens of µm².
    pen_min_um2: float = 1500.0
    # Tissue within this distance of ink is dropped too: ink is out of focus (it lies on the coverslip)
    # and its blurred, pale rim has no reliable colour of its own.
    pen_margin_um: float = 30.0
    # Morphological closing radius: bridges the white gaps of loose stroma and fat inside tissue.
    closing_um: float = 16.0
    # Holes (glass fully enclosed by tissue) up to this area are filled; larger ones are real gaps.
    max_hole_um2: float = 50_000.0
    # Tissue fragments smaller than this are dropped (dust, debris, noise); real small biopsies stay.
    min_fragment_um2: float = 2_000.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "remove_pen":
                if not isinstance(value, bool):
                    raise ConfigError(f"tissue config: remove_pen must be true or false, got {value!r}")
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"tissue config: {f.name} must be a finite number, got {value!r}")
            if value < 0:
                raise ConfigError(f"tissue config: {f.name} must be >= 0, got {value!r}")
        if self.min_od > self.max_od:
            raise ConfigError(f"tissue config: min_od ({self.min_od}) must not exceed max_od ({self.max_od})")
        if self.min_od == 0:
            raise ConfigError("tissue config: min_od must be > 0, or every glass pixel would be tissue")
        for name in ("background_max_saturation", "background_min_fraction"):
            if getattr(self, name) > 1:
                raise ConfigError(f"tissue config: {name} must be within [0, 1], got {getattr(self, name)!r}")
        if self.background_min_grey > 255:
            raise ConfigError(f"tissue config: background_min_grey must be <= 255, got {self.background_min_grey!r}")

    @classmethod
    def from_dict(cls, d: dict, source: str = "<dict>") -> TissueConfig:
        """Build a config from a mapping; an unknown key or a bad value is a ConfigError naming it and source."""
        try:
            return from_dict(cls, d, source)
        except ConfigError as exc:
            msg = str(exc)
            raise ConfigError(msg if msg.startswith(f"{source}: ") else f"{source}: {msg}") from None


def load_tissue_config(path: str | Path) -> TissueConfig:
    """Read a TissueConfig from a YAML file; missing file, bad YAML or unknown key is a ConfigError."""
    return TissueConfig.from_dict(load_yaml(path), source=str(path))


# ----------------------------------------------------------------------------------------------- pixels


def _check_rgb(rgb: Any) -> np.ndarray:
    """Validate an H×W×3 uint8 array (user input: raise, never assert)."""
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise HistoError(f"tissue detection needs an H×W×3 RGB array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise HistoError(f"tissue detection needs a uint8 RGB array, got dtype {arr.dtype}")
    return arr[..., :3]


def _check_mpp(mpp: Any) -> float:
    if isinstance(mpp, bool) or not isinstance(mpp, (int, float)) or not math.isfinite(mpp) or mpp <= 0:
        raise HistoError(f"tissue detection needs mpp (µm per pixel of the image) > 0, got {mpp!r}")
    return float(mpp)


@dataclass(frozen=True)
class _Pixels:
    """Per-pixel colour features of a smoothed image, as separate float32 planes (fast to combine)."""

    r: np.ndarray  # channels in [0, 255]
    g: np.ndarray
    b: np.ndarray
    mn: np.ndarray  # darkest channel
    sat: np.ndarray  # HSV saturation in [0, 1]
    val: np.ndarray  # HSV value in [0, 1]
    hue: np.ndarray  # degrees [0, 360), NaN where saturation < _HUE_MIN_SAT (there hue is noise)


# Hue is computed only where saturation reaches this: every hue rule below asks for at least this much,
# and skipping the rest saves most of the work on glass-dominated overviews.
_HUE_MIN_SAT = 0.2


def _pixels(rgb: np.ndarray, sigma_px: float) -> _Pixels:
    """Smooth each channel (JPEG and sensor noise are per pixel) and derive HSV features."""
    planes = []
    for c in range(3):
        plane = rgb[..., c].astype(np.float32)
        if sigma_px > 0:
            plane = ndi.gaussian_filter(plane, sigma_px, mode="nearest", truncate=2.0)
        planes.append(plane)
    r, g, b = planes
    mx = np.maximum(np.maximum(r, g), b)
    mn = np.minimum(np.minimum(r, g), b)
    delta = mx - mn
    sat = delta / np.maximum(mx, 1e-3)
    hue = np.full(r.shape, np.nan, dtype=np.float32)
    idx = np.nonzero(sat >= _HUE_MIN_SAT)
    if idx[0].size:
        rr, gg, bb, mm, dd = r[idx], g[idx], b[idx], mx[idx], delta[idx]
        h = np.where(mm == rr, (gg - bb) / dd, np.where(mm == gg, (bb - rr) / dd + 2.0, (rr - gg) / dd + 4.0))
        hue[idx] = (h * 60.0) % 360.0
    return _Pixels(r=r, g=g, b=b, mn=mn, sat=sat, val=mx / 255.0, hue=hue)


def _sample(values: np.ndarray, n: int = 250_000) -> np.ndarray:
    """A regular subsample of at most ~n values: statistics of an overview do not need every pixel."""
    flat = values.ravel()
    return flat[:: max(1, flat.size // n)]


def _glass_candidates(px: _Pixels, cfg: TissueConfig, mpp: float) -> np.ndarray:
    """Flat, unsaturated, not dark pixels: what glass looks like whatever its grey level or tint."""
    grey = (px.r + px.g + px.b) / 3.0
    size = max(3, int(round(cfg.background_texture_um / mpp)) | 1)
    mean = ndi.uniform_filter(grey, size, mode="nearest")
    var = ndi.uniform_filter(grey * grey, size, mode="nearest") - mean * mean
    flat = var <= cfg.background_max_texture**2
    return (px.mn >= cfg.background_min_grey) & (px.sat <= cfg.background_max_saturation) & flat


def _band_median(px: _Pixels, cand: np.ndarray, band: float) -> np.ndarray | None:
    """Per-channel median of the brightest `band` grey levels of the candidate pixels (None when none)."""
    mn = px.mn[cand]
    if mn.size == 0:
        return None
    top = float(np.percentile(mn, 95))
    keep = mn >= top - band
    return np.array([np.median(ch[cand][keep]) for ch in (px.r, px.g, px.b)], dtype=np.float32)


# The glass field is estimated on a grid of about this many cells a side; a cell needs this share of
# glass candidates to have a local estimate of its own (vignetting), else it takes the global one.
_GLASS_CELLS = 6
_GLASS_CELL_MIN_FRACTION = 0.25


def _glass_rgb(px: _Pixels, cfg: TissueConfig, mpp: float = 8.0) -> list[np.ndarray] | np.ndarray:
    """Glass colour per channel: 3 values, or 3 H×W planes where it varies across the image; white if none."""
    cand = _glass_candidates(px, cfg, mpp)
    step = max(1, cand.size // 250_000)
    if cand.ravel()[::step].mean() < cfg.background_min_fraction:
        return np.full(3, 255.0, dtype=np.float32)
    sub = (slice(None, None, max(1, int(np.sqrt(step)))),) * 2
    small = _Pixels(*(getattr(px, f)[sub] for f in ("r", "g", "b", "mn", "sat", "val", "hue")))
    glass = _band_median(small, cand[sub], cfg.background_band)
    if glass is None:
        return np.full(3, 255.0, dtype=np.float32)
    h, w = cand.shape
    cell = max(32, int(np.ceil(max(h, w) / _GLASS_CELLS)))
    ny, nx = -(-h // cell), -(-w // cell)
    if ny * nx == 1:
        return glass
    grid = np.empty((ny, nx, 3), np.float32)
    local = False
    for cy in range(ny):
        for cx in range(nx):
            box = (slice(cy * cell, (cy + 1) * cell), slice(cx * cell, (cx + 1) * cell))
            c = cand[box]
            est = None
            if c.mean() >= _GLASS_CELL_MIN_FRACTION:
                part = _Pixels(*(getattr(px, f)[box] for f in ("r", "g", "b", "mn", "sat", "val", "hue")))
                est = _band_median(part, c, cfg.background_band)
            # A cell may be darker than the global glass (vignetting) but never brighter than the brightest
            # glass seen, and never far darker (that would be pale tissue passing for glass).
            if est is not None and np.all(est >= glass - 45):
                grid[cy, cx] = np.minimum(est, glass + 10)
                local = True
            else:
                grid[cy, cx] = glass
    if not local or np.abs(grid - glass).max() < 4:
        return glass
    planes = []
    for ch in range(3):
        up = ndi.zoom(grid[..., ch], (h / ny, w / nx), order=1, mode="nearest", grid_mode=True)
        planes.append(np.ascontiguousarray(up[:h, :w], dtype=np.float32))
    return planes


def _absorbance_ratio(px: _Pixels, glass: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """Max over channels of glass / pixel; its log10 is the optical density above glass."""
    ratio = glass[0] / np.maximum(px.r, 1.0)
    np.maximum(ratio, glass[1] / np.maximum(px.g, 1.0), out=ratio)
    np.maximum(ratio, glass[2] / np.maximum(px.b, 1.0), out=ratio)
    return ratio


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu threshold of a 1-D sample (histogram based)."""
    hist, edges = np.histogram(values, bins=bins)
    hist = hist.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.where(w0 > 0, w0, 1)
    mu1 = (m0[-1] - m0) / np.where(w1 > 0, w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[1:][int(np.argmax(between[:-1]))])


def _od_threshold(od_sample: np.ndarray, cfg: TissueConfig) -> float:
    """The guarded Otsu threshold: Otsu when it separates something denser than glass, clamped."""
    # Dense ink and black are capped so a few saturated pixels do not stretch the histogram.
    sample = np.minimum(od_sample, 1.0)
    if sample.size == 0 or float(sample.max()) - float(sample.min()) < 1e-6:
        return cfg.max_od
    t = _otsu(sample)
    upper = sample[sample > t]
    if upper.size == 0 or float(upper.mean()) < cfg.otsu_min_class_od:
        return cfg.max_od  # the split is noise (empty slide): be conservative
    return float(min(max(t, cfg.min_od), cfg.max_od))


# ------------------------------------------------------------------------------------------- morphology


def _label(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected labels and the size of each label (index 0 = background)."""
    labels, n = ndi.label(mask, structure=np.ones((3, 3), dtype=bool))
    return labels, np.bincount(labels.ravel(), minlength=n + 1)


def _remove_small(mask: np.ndarray, min_px: float) -> np.ndarray:
    """Drop connected regions with fewer than min_px pixels."""
    if min_px <= 1 or not mask.any():
        return mask
    labels, sizes = _label(mask)
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]


def _fill_holes(mask: np.ndarray, max_px: float) -> np.ndarray:
    """Fill background regions fully enclosed by the mask (not touching the border) up to max_px pixels."""
    if max_px <= 0 or not mask.any():
        return mask
    labels, n = ndi.label(~mask)  # 4-connected glass, the dual of 8-connected tissue
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    fill = sizes <= max_px
    fill[0] = False
    fill[border] = False
    return mask | fill[labels]


def _closing(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Binary closing with a disk of radius_px; outside the image counts as neither tissue nor glass."""
    if radius_px < 0.5 or not mask.any():
        return mask
    if radius_px <= 4:  # small disks: direct morphology is cheaper than two distance transforms
        r = int(round(radius_px))
        yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
        disk = xx * xx + yy * yy <= radius_px * radius_px
        pad = r + 1
        padded = np.pad(mask, pad, mode="edge")  # edge padding: no erosion artefacts at the image border
        closed = ndi.binary_erosion(ndi.binary_dilation(padded, disk), disk)
        return closed[pad:-pad, pad:-pad] | mask
    # Large radii: closing via Euclidean distance transforms costs the same whatever the radius.
    dilated = ndi.distance_transform_edt(~mask) <= radius_px
    if dilated.all():  # the transform has no zero to measure from; nothing can be eroded back
        return dilated
    eroded = ndi.distance_transform_edt(dilated) > radius_px
    # distance_transform_edt measures to the nearest False pixel inside the image only, so tissue running
    # off the border is not eroded back from it.
    return eroded | mask


# ------------------------------------------------------------------------------------------------- pen


def _hysteresis(weak: np.ndarray, seeds: np.ndarray, min_seed_px: float) -> np.ndarray:
    """Weak pixels connected to a seed region of at least min_seed_px pixels."""
    seeds = seeds & weak
    if np.count_nonzero(seeds) < max(min_seed_px, 1):  # cheap exit, the common case of a slide without ink
        return np.zeros_like(weak)
    seeds = _remove_small(seeds, min_seed_px)
    if not seeds.any():
        return np.zeros_like(weak)
    labels, _ = _label(weak)
    hit = np.zeros(labels.max() + 1, dtype=bool)
    hit[np.unique(labels[seeds])] = True
    hit[0] = False
    return hit[labels]


def _pen(px: _Pixels, min_seed_px: float) -> np.ndarray:
    """Pen ink from HSV: strongly ink-coloured seeds, grown into their weaker halo (hysteresis)."""
    hue, sat, val = px.hue, px.sat, px.val
    lit = val >= 0.15  # hue and saturation are unstable in near-black pixels
    # Green to blue ink. H&E never reaches green hues; hematoxylin is purple (hue 260-300°) and IHC
    # hematoxylin is a pale blue (saturation below ~0.45), while ink is saturated. The weak band reaches
    # 260° because ink laid over purple tissue turns blue-violet.
    # Blue ink on glass is bright and saturated; green or blue ink over tissue turns a dark blue (value
    # < 0.55) of moderate saturation, unlike pale-blue IHC nuclei (value > 0.55).
    green = (hue >= 70) & (hue < 185)
    blue = (hue >= 185) & (hue < 240)
    gb_seed = lit & ((green & (sat >= 0.30)) | (blue & ((sat >= 0.60) | ((sat >= 0.30) & (val <= 0.55)))))
    gb_weak = (val >= 0.10) & (hue >= 60) & (hue < 260) & (sat >= 0.20)
    pen = _hysteresis(gb_weak, gb_seed, min_seed_px)
    # Red ink is pure red (hue ~355-10°, saturation > 0.8); eosin is pink (hue 320-345°, saturation
    # < 0.6) and red blood cells stay below ~0.75 saturation. The weak band stays on the red side of
    # eosin so that growth from a stroke does not run into pink tissue.
    red_hue = (hue >= 345) | (hue < 15)
    red_seed = (val >= 0.35) & red_hue & (sat >= 0.80)
    red_weak = (val >= 0.10) & ((hue >= 335) | (hue < 20)) & (sat >= 0.45)
    pen |= _hysteresis(red_weak, red_seed, min_seed_px)
    # Black ink: dark and grey. Dark nuclei and DAB are dark but strongly coloured (saturation > 0.5).
    black_seed = (val < 0.25) & (sat < 0.35)
    black_weak = (val < 0.45) & (sat < 0.45)
    pen |= _hysteresis(black_weak, black_seed, min_seed_px)
    return pen


def pen_mask(rgb: np.ndarray, mpp: float | None = None, config: TissueConfig | None = None) -> np.ndarray:
    """Pixels covered by marker ink (blue, green, black, red) in an RGB image (bool H×W).

    With mpp, ink regions smaller than config.pen_min_um2 are not counted (they are nuclei or blood cells);
    without it there is no size rule and every strongly ink-coloured pixel counts.
    """
    cfg = config or TissueConfig()
    arr = _check_rgb(rgb)
    min_seed_px = 0.0 if mpp is None else cfg.pen_min_um2 / _check_mpp(mpp) ** 2
    return _pen(_pixels(arr, cfg.smooth_px), min_seed_px)


# ---------------------------------------------------------------------------------------------- tissue


def tissue_mask(rgb: np.ndarray, mpp: float, config: TissueConfig | None = None) -> np.ndarray:
    """Tissue (True) versus glass and pen ink (False) for an RGB overview at mpp µm per pixel (bool H×W)."""
    cfg = config or TissueConfig()
    arr = _check_rgb(rgb)
    mpp = _check_mpp(mpp)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        return np.zeros(arr.shape[:2], dtype=bool)
    px_area_um2 = mpp * mpp
    px = _pixels(arr, cfg.smooth_px)
    pen = _pen(px, cfg.pen_min_um2 / px_area_um2) if cfg.remove_pen else np.zeros(arr.shape[:2], dtype=bool)
    ratio = _absorbance_ratio(px, _glass_rgb(px, cfg, mpp))
    del px
    # Pen is left out of the threshold statistics: a wide stroke would otherwise pull Otsu upwards.
    keep = ~_sample(pen)
    od_sample = np.log10(np.maximum(_sample(ratio)[keep], 1.0))
    threshold = _od_threshold(od_sample, cfg)
    if pen.any() and cfg.pen_margin_um > 0:
        pen = ndi.distance_transform_edt(~pen) <= cfg.pen_margin_um / mpp
    mask = (ratio > 10.0**threshold) & ~pen
    # Specks are dropped before closing so that closing cannot merge dust into a fragment-sized blob.
    mask = _remove_small(mask, min(cfg.min_fragment_um2, 4 * cfg.closing_um**2) / px_area_um2)
    mask = _closing(mask, cfg.closing_um / mpp) & ~pen
    mask = _fill_holes(mask, cfg.max_hole_um2 / px_area_um2) & ~pen
    return _remove_small(mask, cfg.min_fragment_um2 / px_area_um2)


# ----------------------------------------------------------------------------------------------- slide


class _Overview(Protocol):
    """What detect_tissue needs of a slide (histo.slide.Slide satisfies it)."""

    @property
    def mpp(self) -> float: ...

    @property
    def dimensions(self) -> tuple[int, int]: ...

    def read_overview(self, mpp: float) -> np.ndarray: ...


@dataclass(frozen=True)
class TissueMask:
    """A tissue mask with the geometry needed to map it back to level-0 pixels."""

    mask: np.ndarray  # bool, H×W
    mpp: float  # µm per mask pixel
    downsample: float  # level-0 pixels per mask pixel (= mpp / slide level-0 mpp)
    slide_dimensions: tuple[int, int]  # level-0 (width, height)

    @property
    def area_mm2(self) -> float:
        """Tissue area in mm²."""
        return float(np.count_nonzero(self.mask)) * self.mpp * self.mpp / 1e6

    @property
    def fraction(self) -> float:
        """Share of the slide (0..1) covered by tissue."""
        return float(np.count_nonzero(self.mask)) / self.mask.size if self.mask.size else 0.0


def detect_tissue(slide: _Overview, mask_mpp: float = 8.0, config: TissueConfig | None = None) -> TissueMask:
    """Tissue mask of a whole slide from its overview at mask_mpp µm per pixel."""
    mask_mpp = _check_mpp(mask_mpp)
    slide_mpp = float(slide.mpp)  # raises MppError when the slide has none: sizes in µm need it
    width, height = (int(v) for v in slide.dimensions)
    downsample = mask_mpp / slide_mpp
    rgb = slide.read_overview(mask_mpp)
    from histo.slide.modality import require_brightfield

    require_brightfield(slide, rgb, "tissue detection for H&E and IHC analysis")
    expected = (max(1, round(height / downsample)), max(1, round(width / downsample)))
    if rgb.shape[:2] != expected:
        # A mismatch would silently shift every tile: refuse rather than guess.
        raise HistoError(
            f"overview of {getattr(slide, 'name', 'slide')} has shape {rgb.shape[:2]}, expected {expected} "
            f"for {width}x{height} px at downsample {downsample:.4g}"
        )
    mask = tissue_mask(rgb, mask_mpp, config)
    return TissueMask(mask=mask, mpp=mask_mpp, downsample=downsample, slide_dimensions=(width, height))


# A whole slide (at least this many mm² of glass) covered almost entirely by "tissue", or holding only a
# speck of it, is implausible: the glass colour was probably misjudged. Crops may be all tissue.
_WHOLE_SLIDE_MIN_MM2 = 20.0
_MAX_PLAUSIBLE_FRACTION = 0.85
_MIN_PLAUSIBLE_TISSUE_MM2 = 0.05


def tissue_fraction_warning(mask: TissueMask) -> str:
    """A QC warning when the tissue fraction is implausible for a whole slide, else ''."""
    slide_mm2 = mask.mask.size * mask.mpp * mask.mpp / 1e6
    if slide_mm2 < _WHOLE_SLIDE_MIN_MM2:
        return ""
    if mask.fraction > _MAX_PLAUSIBLE_FRACTION:
        return (f"implausible tissue fraction {mask.fraction:.0%} of a {slide_mm2:.0f} mm² slide: the glass may "
                "have been taken for tissue; check tissue.png")
    if 0 < mask.area_mm2 < _MIN_PLAUSIBLE_TISSUE_MM2:
        return (f"implausible tissue area {mask.area_mm2:.3f} mm² on a {slide_mm2:.0f} mm² slide: tissue may "
                "have been taken for glass; check tissue.png")
    return ""
