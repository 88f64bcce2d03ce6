"""A cheap procedural H&E-like slide for tests and benchmarks: tissue blobs on glass with an exact tissue mask.

Tissue is where a smooth random field exceeds a threshold. The field is a bilinear interpolation of a
coarse random lattice, evaluated per pixel from absolute level-0 coordinates with element-wise arithmetic
only, so any region renders identically whatever chunk it is rendered in, and ``tissue_truth`` (the same
field, the same threshold, the same arithmetic) is exact. Colours come from two small periodic textures
(pink stroma with purple nuclei; near-white glass), copied by window: rendering is mostly memory copies.
"""

from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np
from scipy import ndimage

from histo.synth.tiff_writer import SynthError, write_pyramidal_tiff

# Texture periods: primes, so the two textures do not repeat in step with each other or with tiles.
_TISSUE_PERIOD_PX = 1021
_GLASS_PERIOD_PX = 509
# Windows up to this size are single slices of the wrap-padded textures (larger ones are tiled).
_WINDOW_PX = 1024
# Chunks whose lattice corners all lie this far from the threshold skip per-pixel evaluation; the margin
# dwarfs float32 rounding, so skipping never changes a pixel's answer.
_SKIP_MARGIN = 1e-3

_STROMA_RGB = np.array([232.0, 150.0, 190.0])
_NUCLEUS_RGB = np.array([90.0, 60.0, 150.0])
_GLASS_RGB = np.array([240.0, 240.0, 242.0])
PEN_COLOURS_RGB = {"blue": (35, 75, 170), "green": (40, 140, 85)}

_RENDER_KW = ("tissue_fraction", "pen", "blank")
_WRITER_KW = ("tile_px", "chunk_px", "jpeg_quality", "progress", "description")


class SimpleTissue:
    """Procedural H&E-like slide: pink tissue blobs with purple nuclei on near-white glass, optional pen stroke."""

    def __init__(
        self,
        width_px: int,
        height_px: int,
        *,
        seed: int = 0,
        tissue_fraction: float = 0.35,
        pen: bool = False,
        blank: bool = False,
    ) -> None:
        for name, value in (("width_px", width_px), ("height_px", height_px)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise SynthError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise SynthError(f"seed must be a non-negative integer, got {seed!r}")
        if (
            isinstance(tissue_fraction, bool)
            or not isinstance(tissue_fraction, (int, float, np.floating, np.integer))
            or not 0.0 <= float(tissue_fraction) <= 1.0
        ):
            raise SynthError(f"tissue_fraction must be a number in [0, 1], got {tissue_fraction!r}")
        for name, value in (("pen", pen), ("blank", blank)):
            if not isinstance(value, (bool, np.bool_)):
                raise SynthError(f"{name} must be True or False, got {value!r}")
        self.width_px = int(width_px)
        self.height_px = int(height_px)
        self.seed = int(seed)
        self.tissue_fraction = float(tissue_fraction)
        self.pen = bool(pen)
        self.blank = bool(blank)

        rng = np.random.default_rng(self.seed)
        long_px = max(self.width_px, self.height_px)
        # About 160 lattice cells along the long side: blob outlines wiggle on that scale at any slide size.
        self.cell_px = int(min(256, max(8, round(long_px / 160))))
        nx = (self.width_px - 1) // self.cell_px + 2
        ny = (self.height_px - 1) // self.cell_px + 2
        lattice = self._lattice_noise(rng, ny, nx)
        lattice -= self._edge_penalty(ny, nx)

        self.pen_colour: tuple[int, int, int] | None = None
        if self.pen:
            self._init_pen(rng)
            lattice -= self._pen_clearance(ny, nx)
        self._lattice = lattice.astype(np.float32)

        self._glass_tex, self._tissue_tex = _textures(self.seed)
        self.threshold = self._pick_threshold()

    # ----------------------------------------------------------------- public
    def render_tile(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 (h, w, 3) of the level-0 region with top-left (x, y); identical however regions are cut."""
        self._check_region(x, y, w, h)
        x, y, w, h = int(x), int(y), int(w), int(h)
        out = np.empty((h, w, 3), np.uint8)
        _window(self._glass_tex, _GLASS_PERIOD_PX, x, y, w, h, out)
        xs = np.arange(x, x + w, dtype=np.float64)
        ys = np.arange(y, y + h, dtype=np.float64)
        tissue = self._tissue_mask(xs, ys)
        if tissue is True:
            _window(self._tissue_tex, _TISSUE_PERIOD_PX, x, y, w, h, out)
        elif tissue is not False:
            texture = _window(self._tissue_tex, _TISSUE_PERIOD_PX, x, y, w, h)
            np.copyto(out, texture, where=tissue[:, :, None])
        if self.pen:
            stroke = self._pen_mask(xs, ys)
            if stroke is not None:
                if tissue is True:
                    stroke[:] = False
                elif tissue is not False:
                    stroke &= ~tissue
                out[stroke] = self.pen_colour  # type: ignore[assignment]  # set with pen_fraction > 0 (above)
        return out

    def tissue_truth(self, downsample: float = 1.0) -> np.ndarray:
        """Exact tissue mask (bool, ceil(height/ds) x ceil(width/ds)), sampled at each output pixel's centre."""
        xs, ys = self._sample_coords(downsample)
        mask = np.zeros((ys.size, xs.size), bool)
        for i in range(0, ys.size, _WINDOW_PX):
            block = self._tissue_mask(xs, ys[i : i + _WINDOW_PX])
            mask[i : i + _WINDOW_PX] = block
        return mask

    def pen_truth(self, downsample: float = 1.0) -> np.ndarray:
        """Exact pen-stroke mask at the same sampling as ``tissue_truth`` (all False without a pen)."""
        xs, ys = self._sample_coords(downsample)
        mask = np.zeros((ys.size, xs.size), bool)
        if not self.pen:
            return mask
        for i in range(0, ys.size, _WINDOW_PX):
            stroke = self._pen_mask(xs, ys[i : i + _WINDOW_PX])
            if stroke is not None:
                mask[i : i + _WINDOW_PX] = stroke
        return mask & ~self.tissue_truth(downsample)

    # ------------------------------------------------------------ the field
    def _lattice_noise(self, rng: np.random.Generator, ny: int, nx: int) -> np.ndarray:
        """Smooth random lattice: large blobs plus finer octaves for irregular outlines."""
        n_long = max(ny, nx)
        field = np.zeros((ny, nx))
        for sigma_cells, weight in ((n_long / 14, 1.0), (2.0, 0.3), (0.7, 0.12)):
            octave = ndimage.gaussian_filter(rng.standard_normal((ny, nx)), sigma=sigma_cells, mode="reflect")
            octave /= octave.std() or 1.0
            field += weight * octave
        return field

    def _edge_penalty(self, ny: int, nx: int) -> np.ndarray:
        """Pushes tissue away from the slide borders, as on a real slide."""
        margin_px = 0.06 * max(self.width_px, self.height_px)
        yy = np.arange(ny)[:, None] * self.cell_px
        xx = np.arange(nx)[None, :] * self.cell_px
        dist = np.minimum(
            np.minimum(xx, self.width_px - 1 - xx), np.minimum(yy, self.height_px - 1 - yy)
        ).astype(np.float64)
        return 4.0 * np.clip(1.0 - dist / margin_px, 0.0, None) ** 2

    def _pick_threshold(self) -> float:
        """Threshold so that about ``tissue_fraction`` of the slide (sampled coarsely) is tissue."""
        if self.blank or self.tissue_fraction == 0.0:
            return math.inf
        if self.tissue_fraction == 1.0:
            return -math.inf
        downsample = max(1.0, max(self.width_px, self.height_px) / 512)
        xs, ys = self._sample_coords(downsample)
        values = self._field(xs, ys)
        return float(np.quantile(values, 1.0 - self.tissue_fraction))

    def _axis(self, coords: np.ndarray, n_cells: int) -> tuple[np.ndarray, np.ndarray]:
        """Lattice cell index and float32 fraction within it for each coordinate (element-wise)."""
        scaled = coords / self.cell_px
        idx = np.clip(np.floor(scaled).astype(np.intp), 0, n_cells - 2)
        frac = (scaled - idx).astype(np.float32)
        return idx, frac

    def _rows_along_x(self, xs: np.ndarray, j0: int, j1: int) -> tuple[np.ndarray, np.ndarray]:
        """Lattice rows j0..j1 interpolated at ``xs`` (A) and the differences between consecutive rows (D)."""
        ix, tx = self._axis(xs, self._lattice.shape[1])
        rows = self._lattice[j0 : j1 + 1]
        a = rows[:, ix] * (np.float32(1.0) - tx) + rows[:, ix + 1] * tx
        return a, a[1:] - a[:-1]

    def _field(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """The smooth field at every (ys, xs) pair: float32 (len(ys), len(xs))."""
        iy, ty = self._axis(ys, self._lattice.shape[0])
        j0, j1 = int(iy.min()), int(iy.max()) + 1
        a, d = self._rows_along_x(xs, j0, j1)
        r = iy - j0
        return a[r] + d[r] * ty[:, None]

    def _tissue_mask(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray | bool:
        """Bool mask (len(ys), len(xs)) of field > threshold, or plain True/False when uniform for sure."""
        thr = self.threshold
        if thr == math.inf:
            return False
        if thr == -math.inf:
            return True
        iy, ty = self._axis(ys, self._lattice.shape[0])
        ix, _ = self._axis(xs, self._lattice.shape[1])
        j0, j1 = int(iy.min()), int(iy.max()) + 1
        corners = self._lattice[j0 : j1 + 1, int(ix.min()) : int(ix.max()) + 2]
        if corners.max() < thr - _SKIP_MARGIN:
            return False
        if corners.min() > thr + _SKIP_MARGIN:
            return True
        a, d = self._rows_along_x(xs, j0, j1)
        # field > thr  <=>  d * ty > thr - a, evaluated band by band of rows sharing a lattice row
        # (one multiply and one compare per pixel, no gathers).
        rest = np.float32(thr) - a
        mask = np.empty((ys.size, xs.size), bool)
        r = iy - j0
        starts = np.flatnonzero(np.diff(r, prepend=-1))
        ends = np.append(starts[1:], r.size)
        for s, e in zip(starts, ends):
            k = r[s]
            np.greater(d[k] * ty[s:e, None], rest[k], out=mask[s:e])
        return mask

    def _sample_coords(self, downsample: float) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 coordinates of the centres of the pixels of a grid at ``downsample``."""
        if isinstance(downsample, bool) or not isinstance(downsample, (int, float, np.integer, np.floating)):
            raise SynthError(f"downsample must be a number >= 1, got {downsample!r}")
        ds = float(downsample)
        if not math.isfinite(ds) or ds < 1.0:
            raise SynthError(f"downsample must be a finite number >= 1, got {downsample!r}")
        out_w = math.ceil(self.width_px / ds)
        out_h = math.ceil(self.height_px / ds)
        # At ds=1 these are exactly the integer pixel coordinates render_tile uses.
        xs = (np.arange(out_w, dtype=np.float64) + 0.5) * ds - 0.5
        ys = (np.arange(out_h, dtype=np.float64) + 0.5) * ds - 0.5
        return xs, ys

    def _check_region(self, x: int, y: int, w: int, h: int) -> None:
        for name, value in (("x", x), ("y", y), ("w", w), ("h", h)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise SynthError(f"render_tile: {name} must be an integer, got {value!r}")
        if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > self.width_px or y + h > self.height_px:
            raise SynthError(
                f"render_tile region x={x} y={y} w={w} h={h} is empty or outside the "
                f"{self.width_px}x{self.height_px} slide"
            )

    # ------------------------------------------------------------------- pen
    def _init_pen(self, rng: np.random.Generator) -> None:
        """A thick wavy stroke across most of the width; its centre line is tabulated per level-0 column."""
        w, h = self.width_px, self.height_px
        self.pen_colour = PEN_COLOURS_RGB["blue" if rng.random() < 0.5 else "green"]
        self._pen_half_px = max(4.0, 0.012 * min(w, h))
        self._pen_x0 = int(0.1 * w)
        self._pen_x1 = max(self._pen_x0 + 1, int(0.9 * w))
        amplitude = 0.03 * h
        wavelength = rng.uniform(0.3, 0.6) * w
        phase = rng.uniform(0, 2 * np.pi)
        centre = rng.uniform(0.2, 0.8) * h
        cols = np.arange(w, dtype=np.float64)
        # Tabulated once: render and truth then only index it, never re-evaluate sin on differently
        # sized arrays (whose vectorised tails could round differently).
        self._pen_centre = centre + amplitude * np.sin(2 * np.pi * cols / wavelength + phase)

    def _pen_clearance(self, ny: int, nx: int) -> np.ndarray:
        """Penalty on lattice points near the stroke, so the pen lies on glass.

        Full strength out to two cells beyond the stroke (any pixel of the stroke then interpolates only
        penalised corners), then a ramp over four more cells so tissue outlines near the pen stay smooth.
        """
        cols = np.clip(np.arange(nx) * self.cell_px, 0, self.width_px - 1)
        centre = self._pen_centre[cols]
        yy = np.arange(ny)[:, None] * self.cell_px
        xx = np.arange(nx)[None, :] * self.cell_px
        dy = np.abs(yy - centre[None, :]) - self._pen_half_px
        dx = np.maximum(self._pen_x0 - xx, xx - self._pen_x1)
        dist_cells = np.maximum(np.maximum(dy, dx), 0.0) / self.cell_px
        return 50.0 * np.clip((6.0 - dist_cells) / 4.0, 0.0, 1.0)

    def _pen_mask(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray | None:
        """Bool mask of the stroke at (ys, xs) (before removing tissue), or None when it misses the region."""
        cols = np.rint(xs).astype(np.intp)
        inside = (cols >= self._pen_x0) & (cols < self._pen_x1)
        if not inside.any():
            return None
        centre = self._pen_centre[np.clip(cols, 0, self.width_px - 1)]
        half = self._pen_half_px
        lo, hi = centre[inside].min() - half, centre[inside].max() + half
        if ys[-1] < lo or ys[0] > hi:
            return None
        stroke = np.abs(ys[:, None] - centre[None, :]) <= half
        stroke &= inside[None, :]
        return stroke


def write_simple_slide(
    path: str | os.PathLike[str],
    width_px: int,
    height_px: int,
    mpp: float = 0.25,
    seed: int = 0,
    **kw: object,
) -> Path:
    """Write a SimpleTissue slide as a pyramidal TIFF; ``kw`` goes to SimpleTissue or the TIFF writer."""
    unknown = sorted(set(kw) - set(_RENDER_KW) - set(_WRITER_KW))
    if unknown:
        raise SynthError(
            f"write_simple_slide: unknown option(s) {', '.join(unknown)}; "
            f"known: {', '.join(_RENDER_KW + _WRITER_KW)}"
        )
    render_kw = {k: v for k, v in kw.items() if k in _RENDER_KW}
    writer_kw = {k: v for k, v in kw.items() if k in _WRITER_KW}
    slide = SimpleTissue(width_px, height_px, seed=seed, **render_kw)  # type: ignore[arg-type]
    writer_kw.setdefault(
        "description",
        f"histo SimpleTissue seed={slide.seed} tissue_fraction={slide.tissue_fraction} "
        f"pen={slide.pen} blank={slide.blank} mpp={mpp}",
    )
    return write_pyramidal_tiff(path, width_px, height_px, mpp, slide.render_tile, **writer_kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------- textures
@functools.lru_cache(maxsize=4)
def _textures(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Wrap-padded (glass, tissue) textures of a seed, read-only; cached as they cost a few tenths of a second."""
    # Their own random stream, so the slide layout and the textures do not shift each other.
    rng = np.random.default_rng([seed, 0x7E47])
    glass = _wrap_pad(_glass_texture(rng, _GLASS_PERIOD_PX))
    tissue = _wrap_pad(_tissue_texture(rng, _TISSUE_PERIOD_PX))
    glass.flags.writeable = False
    tissue.flags.writeable = False
    return glass, tissue


def _glass_texture(rng: np.random.Generator, period: int) -> np.ndarray:
    """Near-white (about 235-245) glass with faint, slightly correlated noise; periodic."""
    lum = ndimage.gaussian_filter(rng.standard_normal((period, period)), 0.8, mode="wrap")
    lum *= 1.6 / (lum.std() or 1.0)
    tint = rng.standard_normal((period, period, 3)) * 0.6
    rgb = _GLASS_RGB + lum[:, :, None] + tint
    return np.clip(np.rint(rgb), 235, 245).astype(np.uint8)


def _tissue_texture(rng: np.random.Generator, period: int) -> np.ndarray:
    """Pink fibrous stroma with purple nuclei; periodic so any window of it is seamless."""
    fibres = ndimage.gaussian_filter(rng.standard_normal((period, period)), (1.2, 5.0), mode="wrap")
    fibres /= fibres.std() or 1.0
    patches = ndimage.gaussian_filter(rng.standard_normal((period, period)), 12.0, mode="wrap", truncate=2.5)
    patches /= patches.std() or 1.0
    # Darker, more saturated fibres; paler patches between them.
    rgb = _STROMA_RGB + fibres[:, :, None] * np.array([-6.0, -14.0, -9.0])
    rgb += np.clip(patches, 0, None)[:, :, None] * np.array([3.0, 14.0, 8.0])

    # All nuclei are drawn at once on (n, patch, patch) grids around their centres, wrapping at the
    # period; where nuclei overlap, the one covering a pixel most (then the later one) wins.
    n_nuclei = int(period * period / 1500)
    centres = rng.uniform(0, period, (n_nuclei, 2))
    radii = rng.uniform(5.0, 10.0, n_nuclei)[:, None, None]
    elong = rng.uniform(1.0, 1.6, n_nuclei)[:, None, None]
    angles = rng.uniform(0, np.pi, n_nuclei)[:, None, None]
    shades = rng.uniform(-25.0, 25.0, n_nuclei)[:, None, None, None]
    reach = 19  # > max radius * max elongation + anti-aliasing
    offsets = np.arange(-reach, reach + 1)
    base = np.floor(centres).astype(np.intp)
    frac = centres - base
    dy = offsets[None, :, None] - frac[:, 0, None, None]
    dx = offsets[None, None, :] - frac[:, 1, None, None]
    u = dx * np.cos(angles) + dy * np.sin(angles)
    v = -dx * np.sin(angles) + dy * np.cos(angles)
    dist = np.sqrt((u / elong) ** 2 + v**2)
    cover = np.clip(radii - dist + 0.5, 0.0, 1.0)  # anti-aliased edge
    # Chromatin: darker towards the centre.
    core = np.clip(1.0 - dist / radii, 0.0, 1.0)[..., None] * np.array([-25.0, -20.0, -25.0])
    nucleus = _NUCLEUS_RGB + shades * np.array([0.5, 0.4, 0.6]) + core
    rows = (base[:, 0, None, None] + offsets[None, :, None]) % period
    cols = (base[:, 1, None, None] + offsets[None, None, :]) % period
    flat = np.broadcast_to(rows * period + cols, cover.shape).ravel()
    cover = cover.ravel()
    alpha = np.zeros(period * period)
    np.maximum.at(alpha, flat, cover)
    wins = (cover > 0) & (cover >= alpha[flat])
    colour = np.zeros((period * period, 3))
    colour[flat[wins]] = nucleus.reshape(-1, 3)[wins]
    alpha_2d = alpha.reshape(period, period)
    colour_2d = colour.reshape(period, period, 3)
    rgb = rgb * (1.0 - alpha_2d[:, :, None]) + colour_2d * alpha_2d[:, :, None]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _wrap_pad(texture: np.ndarray) -> np.ndarray:
    """The periodic texture extended by ``_WINDOW_PX`` so any window up to that size is a plain slice."""
    return np.pad(texture, ((0, _WINDOW_PX), (0, _WINDOW_PX), (0, 0)), mode="wrap")


def _window(
    padded: np.ndarray, period: int, x: int, y: int, w: int, h: int, out: np.ndarray | None = None
) -> np.ndarray:
    """The (h, w) window at absolute (x, y) of a periodic texture, filled block by block into ``out``."""
    if out is None:
        if w <= _WINDOW_PX and h <= _WINDOW_PX:
            oy, ox = y % period, x % period
            return padded[oy : oy + h, ox : ox + w]
        out = np.empty((h, w, 3), np.uint8)
    for by in range(0, h, _WINDOW_PX):
        bh = min(_WINDOW_PX, h - by)
        oy = (y + by) % period
        for bx in range(0, w, _WINDOW_PX):
            bw = min(_WINDOW_PX, w - bx)
            ox = (x + bx) % period
            out[by : by + bh, bx : bx + bw] = padded[oy : oy + bh, ox : ox + bw]
    return out
