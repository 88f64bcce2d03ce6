"""Streaming pyramidal TIFF writer: level 0 comes from a callback chunk by chunk, lower levels are built on the fly.

The output is a tiled, JPEG-compressed (YCbCr 4:2:0) TIFF with one page per pyramid level in decreasing
size, which OpenSlide opens as vendor ``generic-tiff`` with ``openslide.mpp-x``/``mpp-y`` equal to the
``mpp`` given (the resolution tags are stored in pixels per centimetre as exact rationals).

Memory is bounded by one strip of ``chunk_px`` rows of level 0, never by the slide size: each strip is
encoded into level-0 tiles that stream straight into the file while a cascade of 2x area averagers turns
it into rows of every lower level. Those levels are JPEG-encoded tile row by tile row as soon as their
rows exist and parked, already compressed, in an anonymous temporary file next to the output (about a
third of the level-0 compressed size); after level 0 is written they are copied into their pages.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import imagecodecs
import numpy as np
import tifffile

from histo.atomic import atomic_path
from histo.errors import HistoError

RenderTile = Callable[[int, int, int, int], np.ndarray]

# The pyramid stops at the first level whose longer side fits in this many pixels.
SMALLEST_LEVEL_PX = 1024

_UINT32_MAX = 2**32 - 1
# Past this estimated file size classic TIFF's 32-bit offsets could overflow; JPEG at high quality on
# noisy content can approach the raw size, so the estimate is the raw pyramid size with some margin.
_BIGTIFF_THRESHOLD_BYTES = 2**32 * 0.8
_JPEG_SUBSAMPLING = (2, 2)


class SynthError(HistoError, ValueError):
    """Invalid arguments to a synthetic-slide writer or renderer, or a render callback that misbehaved."""


def pyramid_dimensions(width_px: int, height_px: int) -> list[tuple[int, int]]:
    """(width, height) of every level the writer makes, level 0 first, halving (rounding up) each time."""
    _check_positive_int("width_px", width_px)
    _check_positive_int("height_px", height_px)
    dims = [(int(width_px), int(height_px))]
    while max(dims[-1]) > SMALLEST_LEVEL_PX:
        w, h = dims[-1]
        dims.append(((w + 1) // 2, (h + 1) // 2))
    return dims


def write_pyramidal_tiff(
    path: str | os.PathLike[str],
    width_px: int,
    height_px: int,
    mpp: float,
    render_tile: RenderTile,
    *,
    tile_px: int = 256,
    chunk_px: int = 1024,
    jpeg_quality: int = 90,
    progress: bool = False,
    description: str | None = None,
) -> Path:
    """Write a tiled JPEG pyramidal TIFF whose level 0 is rendered by ``render_tile(x, y, w, h)``, atomically."""
    _check_positive_int("width_px", width_px)
    _check_positive_int("height_px", height_px)
    _check_positive_int("tile_px", tile_px)
    _check_positive_int("chunk_px", chunk_px)
    _check_positive_int("jpeg_quality", jpeg_quality)
    width_px, height_px, tile_px, chunk_px = int(width_px), int(height_px), int(tile_px), int(chunk_px)
    if isinstance(mpp, bool) or not isinstance(mpp, (int, float, np.integer, np.floating)):
        raise SynthError(f"mpp must be a number of micrometres per pixel, got {mpp!r}")
    mpp = float(mpp)
    if not math.isfinite(mpp) or mpp <= 0:
        raise SynthError(f"mpp must be a finite number > 0 (micrometres per pixel), got {mpp!r}")
    if not callable(render_tile):
        raise SynthError(f"render_tile must be callable as render_tile(x, y, w, h), got {render_tile!r}")
    if tile_px % 16:
        raise SynthError(f"tile_px must be a multiple of 16 (TIFF tiles and JPEG 4:2:0 blocks), got {tile_px}")
    if chunk_px % tile_px:
        raise SynthError(f"chunk_px ({chunk_px}) must be a multiple of tile_px ({tile_px})")
    if not 1 <= jpeg_quality <= 100:
        raise SynthError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    if description is not None and not isinstance(description, str):
        raise SynthError(f"description must be a string or None, got {type(description).__name__}")

    out = Path(path)
    if not out.parent.is_dir():
        raise SynthError(f"output folder {out.parent} does not exist")
    if out.is_dir():
        raise SynthError(f"output path {out} is a folder, expected a .tif file path")
    dims = pyramid_dimensions(width_px, height_px)
    px_per_cm = Fraction(10_000) / Fraction(repr(mpp))
    raw_bytes = sum(w * h * 3 for w, h in dims)
    bar = _progress_bar(progress, width_px * height_px, out.name)
    try:
        with atomic_path(out) as tmp:  # hidden name in the same folder, renamed on success, ordinary file mode
            _write_levels(tmp, dims, tile_px, chunk_px, jpeg_quality, px_per_cm, raw_bytes, render_tile, bar,
                          description)
    finally:
        if bar is not None:
            bar.close()
    return out


def _write_levels(tmp: Path, dims: list[tuple[int, int]], tile_px: int, chunk_px: int, jpeg_quality: int,
                  px_per_cm: Fraction, raw_bytes: int, render_tile: RenderTile, bar: Any,
                  description: str | None) -> None:
    """Write every pyramid level into ``tmp`` (level 0 rendered, the others downsampled from it)."""
    # TemporaryFile is unlinked at creation on POSIX, so even a killed run leaves no parked tiles behind.
    with tempfile.TemporaryFile(dir=tmp.parent, prefix=f"{tmp.name}.levels.") as store, tifffile.TiffWriter(
        tmp, bigtiff=raw_bytes > _BIGTIFF_THRESHOLD_BYTES
    ) as tif:
        pyramid = _Pyramid(dims, tile_px, jpeg_quality, store)
        for level, (w, h) in enumerate(dims):
            if level == 0:
                tiles = pyramid.level0_tiles(render_tile, chunk_px, bar)
            else:
                tiles = pyramid.stored_tiles(level)
            res = _resolution_rational(px_per_cm / 2**level)
            tif.write(
                tiles,
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(tile_px, tile_px),
                compression="jpeg",
                photometric="rgb",
                subsampling=_JPEG_SUBSAMPLING,
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                subfiletype=0 if level == 0 else 1,  # 1 = reduced-resolution version of page 0
                description=description if level == 0 else None,
                metadata=None,
                software="histo",
            )


class _Pyramid:
    """The level cascade: encodes tiles of every level as its rows arrive; parks levels >= 1 in ``store``."""

    def __init__(self, dims: list[tuple[int, int]], tile_px: int, quality: int, store: BinaryIO) -> None:
        self.dims = dims
        self.tile_px = tile_px
        self.quality = quality
        self.store = store
        self.store_pos = 0
        self.level0_out: list[bytes] = []
        # (offset, length) of every parked tile of level k >= 1, in TIFF tile order.
        self.parked: list[list[tuple[int, int]]] = [[] for _ in dims]
        self.sinks = [_LevelSink(self, k, w, h) for k, (w, h) in enumerate(dims)]
        for k in range(len(dims) - 1):
            self.sinks[k].child = self.sinks[k + 1]

    def emit(self, level: int, tile_row: np.ndarray) -> None:
        """Encode one tile row (tile_px or fewer rows, full level width) and hand its tiles on."""
        tile_px = self.tile_px
        rows, width = tile_row.shape[:2]
        if rows < tile_px or width % tile_px:
            # TIFF tiles are always full size; repeating the edge pixels (rather than black) keeps JPEG
            # ringing out of the visible border pixels.
            pad_w = -width % tile_px
            tile_row = np.pad(tile_row, ((0, tile_px - rows), (0, pad_w), (0, 0)), mode="edge")
        for x in range(0, tile_row.shape[1], tile_px):
            data = imagecodecs.jpeg8_encode(
                tile_row[:, x : x + tile_px],
                level=self.quality,
                colorspace="RGB",
                outcolorspace="YCBCR",
                subsampling=_JPEG_SUBSAMPLING,
            )
            if level == 0:
                self.level0_out.append(bytes(data))
            else:
                self.store.write(data)
                self.parked[level].append((self.store_pos, len(data)))
                self.store_pos += len(data)

    def level0_tiles(self, render_tile: RenderTile, chunk_px: int, bar: object | None) -> Iterator[bytes]:
        """Render level 0 strip by strip, yielding its encoded tiles and feeding the lower levels."""
        width, height = self.dims[0]
        strip = np.empty((min(chunk_px, height), width, 3), np.uint8)
        for y in range(0, height, chunk_px):
            h = min(chunk_px, height - y)
            for x in range(0, width, chunk_px):
                w = min(chunk_px, width - x)
                strip[:h, x : x + w] = _checked_region(render_tile(x, y, w, h), x, y, w, h)
            self.sinks[0].push(strip[:h])
            if y + h >= height:
                self.sinks[0].finish()
            yield from self.level0_out
            self.level0_out.clear()
            if bar is not None:
                bar.update(h * width)  # type: ignore[attr-defined]

    def stored_tiles(self, level: int) -> Iterator[bytes]:
        """The parked encoded tiles of ``level`` in TIFF order."""
        self.store.flush()
        fd = self.store.fileno()
        for offset, length in self.parked[level]:
            yield os.pread(fd, length, offset)


class _LevelSink:
    """Rows of one level arrive top to bottom: full tile rows are encoded, pairs of rows go to the next level."""

    def __init__(self, pyramid: _Pyramid, level: int, width: int, height: int) -> None:
        self.pyramid = pyramid
        self.level = level
        self.width = width
        self.height = height
        self.child: _LevelSink | None = None
        self.rows_seen = 0
        self.tile_buf = np.empty((pyramid.tile_px, width, 3), np.uint8)
        self.tile_fill = 0
        self.carry: np.ndarray | None = None  # an odd row waiting for its partner

    def push(self, rows: np.ndarray) -> None:
        """Accept the next ``rows`` (r, width, 3) of this level."""
        self.rows_seen += rows.shape[0]
        if self.rows_seen > self.height:
            raise SynthError(f"internal: level {self.level} got {self.rows_seen} rows for height {self.height}")
        self._tile(rows)
        if self.child is not None:
            if self.carry is not None:
                rows = np.concatenate([self.carry, rows])
                self.carry = None
            if rows.shape[0] % 2:
                self.carry = rows[-1:].copy()
                rows = rows[:-1]
            if rows.shape[0]:
                self.child.push(_halve(rows))

    def finish(self) -> None:
        """Flush the last partial tile row and the odd last row; then finish the next level."""
        if self.rows_seen != self.height:
            raise SynthError(f"internal: level {self.level} finished at {self.rows_seen} of {self.height} rows")
        if self.tile_fill:
            self.pyramid.emit(self.level, self.tile_buf[: self.tile_fill])
            self.tile_fill = 0
        if self.child is not None:
            if self.carry is not None:
                # An odd height: the last output row averages the last input row with itself.
                self.child.push(_halve(np.concatenate([self.carry, self.carry])))
                self.carry = None
            self.child.finish()

    def _tile(self, rows: np.ndarray) -> None:
        tile_px = self.pyramid.tile_px
        i, n = 0, rows.shape[0]
        while i < n:
            if self.tile_fill == 0 and n - i >= tile_px:
                self.pyramid.emit(self.level, rows[i : i + tile_px])  # aligned: no copy into the buffer
                i += tile_px
                continue
            take = min(tile_px - self.tile_fill, n - i)
            self.tile_buf[self.tile_fill : self.tile_fill + take] = rows[i : i + take]
            self.tile_fill += take
            i += take
            if self.tile_fill == tile_px:
                self.pyramid.emit(self.level, self.tile_buf)
                self.tile_fill = 0


def _halve(rows: np.ndarray) -> np.ndarray:
    """2x area average (rounded) of an even number of rows; an odd last column is averaged with itself."""
    n_in, width = rows.shape[:2]
    n_out, pairs = n_in // 2, width // 2
    out = np.empty((n_out, (width + 1) // 2, 3), np.uint8)
    # Small row blocks keep the uint16 temporaries in cache (about 1.5x faster than whole-strip
    # arithmetic) and bound their memory whatever the slide width.
    block = 16
    for i in range(0, n_out, block):
        top = rows[2 * i : 2 * (i + block) : 2]
        bottom = rows[2 * i + 1 : 2 * (i + block) : 2]
        acc = top.astype(np.uint16)
        acc += bottom
        # Adjacent pixels as one 6-sample group keeps the column pairing a contiguous reshape.
        six = acc[:, : 2 * pairs].reshape(acc.shape[0], pairs, 6)
        quad = six[:, :, :3] + six[:, :, 3:]
        quad += 2  # round half up
        quad >>= 2
        out[i : i + block, :pairs] = quad
        if width % 2:
            last = acc[:, -1]
            last += 1
            last >>= 1
            out[i : i + block, pairs] = last
    return out


def _checked_region(region: object, x: int, y: int, w: int, h: int) -> np.ndarray:
    if not isinstance(region, np.ndarray):
        raise SynthError(
            f"render_tile({x}, {y}, {w}, {h}) returned {type(region).__name__}, expected a numpy array"
        )
    if region.shape != (h, w, 3) or region.dtype != np.uint8:
        raise SynthError(
            f"render_tile({x}, {y}, {w}, {h}) returned shape {region.shape} dtype {region.dtype}, "
            f"expected shape {(h, w, 3)} dtype uint8"
        )
    return region


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SynthError(f"{name} must be a positive integer, got {value!r}")
    if value <= 0:
        raise SynthError(f"{name} must be a positive integer, got {value}")


def _resolution_rational(px_per_cm: Fraction) -> tuple[int, int]:
    """``px_per_cm`` as a TIFF RATIONAL (two uint32): exact when it fits, else the closest convergent.

    OpenSlide reports ``openslide.mpp-x = 10000 / XResolution`` computed in doubles. An exact rational
    gives back the mpp itself for the usual values (0.25, 0.5, 0.2282 ...) and otherwise its neighbouring
    double; when it does not fit, a convergent that round-trips the mpp is preferred, else the finest one.
    """
    if px_per_cm.numerator <= _UINT32_MAX and px_per_cm.denominator <= _UINT32_MAX:
        return px_per_cm.numerator, px_per_cm.denominator
    target_mpp = float(Fraction(10_000) / px_per_cm)
    best: Fraction | None = None
    for candidate in _convergents(px_per_cm):
        if candidate.numerator > _UINT32_MAX or candidate.denominator > _UINT32_MAX:
            break
        best = candidate
        if 10_000 / (candidate.numerator / candidate.denominator) == target_mpp:
            return candidate.numerator, candidate.denominator
    if best is None:
        raise SynthError(f"resolution {float(px_per_cm)} px/cm cannot be stored as a TIFF rational")
    return best.numerator, best.denominator


def _convergents(value: Fraction) -> Iterator[Fraction]:
    """Continued-fraction convergents of ``value``, coarsest first."""
    p0, q0, p1, q1 = 0, 1, 1, 0
    num, den = value.numerator, value.denominator
    while den:
        a, rem = divmod(num, den)
        p0, q0, p1, q1 = p1, q1, a * p1 + p0, a * q1 + q0
        yield Fraction(p1, q1)
        num, den = den, rem


def _progress_bar(enabled: bool, total: int, name: str) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm  # imported lazily: only needed for interactive runs

    return tqdm(total=total, unit="px", unit_scale=True, desc=f"writing {name}")
