"""tifffile back end: OME-TIFF (QuPath exports), qptiff, 16-bit and other TIFFs OpenSlide does not read.

Regions are decoded one tile or strip at a time (`TiffPage.decode` handles every codec imagecodecs has,
JPEG with shared tables included), so memory is bounded by the region asked for, never by the level.
The µm/px comes from OME PhysicalSizeX/Y (converted from its unit), else from the resolution tags.
Samples of 16 bits are scaled to 8; images that are not three-channel brightfield RGB (one or many
fluorescence channels) are read as their first channel in grey and reported as fluorescence.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from histo.errors import SlideOpenError, SlideReadError
from histo.slide.tiffcheck import page_problem

_UNIT_UM = {"m": 1e6, "cm": 1e4, "mm": 1e3, "µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "nm": 1e-3, "pm": 1e-6}
_CM_PER_INCH = 2.54


class TiffFileBackend:
    """A TIFF read with tifffile, one tile or strip at a time."""

    def __init__(self, path: Path, kind: str) -> None:
        import tifffile

        self.path = path
        self.vendor = kind
        self._fd: int | None = None
        try:
            self._tif = tifffile.TiffFile(path)
        except Exception as exc:
            raise SlideOpenError(f"{path}: tifffile cannot parse this {kind} ({type(exc).__name__}: {exc}); "
                                 "re-copy or re-export it") from exc
        try:
            self._setup()
        except SlideOpenError:
            self._tif.close()
            raise
        except Exception as exc:
            self._tif.close()
            raise SlideOpenError(f"{path}: cannot read the structure of this {kind} "
                                 f"({type(exc).__name__}: {exc}); re-copy or re-export it") from exc
        self._fd = os.open(path, os.O_RDONLY)

    def _setup(self) -> None:
        tif = self._tif
        if not tif.series:
            raise SlideOpenError(f"{self.path}: the TIFF holds no image")
        series = tif.series[0]
        size = self.path.stat().st_size
        self._pages: list[Any] = []
        self._rgb_pages: list[list[Any]] = []  # per level: the R, G, B pages of a planar RGB, else []
        self.level_dimensions: list[tuple[int, int]] = []
        for lv in series.levels:
            page: Any = lv.pages[0]  # a TiffPage, or a TiffFrame that aspage() turns into one
            page = page.aspage() if hasattr(page, "aspage") else page
            if page is None or not hasattr(page, "imagewidth"):
                continue
            problem = page_problem(page, size)
            if problem is not None:
                raise SlideOpenError(f"{self.path}: corrupt TIFF: a pyramid level {problem}; re-copy or re-export it")
            dims = (int(page.imagewidth), int(page.imagelength))
            if self.level_dimensions and (dims[0] > self.level_dimensions[-1][0] or dims[1] > self.level_dimensions[-1][1]):
                continue  # not a pyramid level (a label or macro image stored after the levels)
            self._pages.append(page)
            pages: list[Any] = [q.aspage() if hasattr(q, "aspage") else q for q in list(lv.pages)[:3] if q is not None]
            for q in pages[1:]:
                problem = page_problem(q, size)
                if problem is not None:
                    raise SlideOpenError(f"{self.path}: corrupt TIFF: a channel page {problem}; re-copy or re-export it")
            same = all(int(q.imagewidth) == dims[0] and int(q.imagelength) == dims[1] for q in pages)
            self._rgb_pages.append(pages if int(page.samplesperpixel) == 1 and len(pages) == 3 and same
                                   and len(lv.pages) == 3 else [])
            self.level_dimensions.append(dims)
        if not self._pages:
            raise SlideOpenError(f"{self.path}: the TIFF holds no readable image level")
        w0, h0 = self.level_dimensions[0]
        self.level_downsamples = [((w0 / w) + (h0 / h)) / 2.0 for w, h in self.level_dimensions]
        page0 = self._pages[0]
        self._spp = int(page0.samplesperpixel)
        self._bits = int(page0.bitspersample)
        self._channels = _channel_count(series, page0)
        self.modality_hint = _modality_hint(tif, series, self._channels, self._spp)
        self._max_value = _max_value(page0)
        self.properties = {
            "histo.backend": "tifffile",
            "tiff.compression": str(getattr(page0.compression, "name", page0.compression)),
            "tiff.bits-per-sample": str(self._bits),
            "tiff.samples-per-pixel": str(self._spp),
            "tiff.channels": str(self._channels),
            "tiff.series-axes": str(series.axes),
        }
        self._mpp = _ome_mpp(tif) if tif.is_ome else (None, None)
        if self._mpp == (None, None):
            self._mpp = _resolution_mpp(page0)
        self._mag = _ome_magnification(tif) if tif.is_ome else None

    # -- reading ---------------------------------------------------------------------------------------
    def read_level_px(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        if self._fd is None:
            raise SlideReadError(f"{self.path}: the slide handle is closed")
        try:
            return self._read(level, lx, ly, w, h)
        except SlideReadError:
            raise
        except MemoryError as exc:
            raise SlideReadError(f"{self.path}: out of memory reading level {level} region x={lx} y={ly} "
                                 f"w={w} h={h}; lower --workers or --batch-size") from exc
        except Exception as exc:
            raise SlideReadError(f"{self.path}: reading level {level} region x={lx} y={ly} w={w} h={h} failed "
                                 f"({type(exc).__name__}: {exc}); the file may be truncated or corrupt") from exc

    def _read(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        page = self._pages[level]
        W, H = self.level_dimensions[level]
        out = np.full((h, w, 3), 255 if self.modality_hint != "fluorescence" else 0, np.uint8)
        x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + w, W), min(ly + h, H)
        if x1 <= x0 or y1 <= y0:
            return out
        if not page.is_tiled and int(page.compression) == 1 and int(page.planarconfig) == 1:
            return self._read_raw_rows(page, out, lx, ly, x0, y0, x1, y1)
        if page.is_tiled:
            sw, sh = int(page.tilewidth), int(page.tilelength)
        else:
            sw, sh = W, max(1, min(int(page.rowsperstrip or H), H))
        across, down = -(-W // sw), -(-H // sh)
        planes = self._spp if int(page.planarconfig) == 2 else 1
        for r in range(y0 // sh, (y1 - 1) // sh + 1):
            for c in range(x0 // sw, (x1 - 1) // sw + 1):
                if self._rgb_pages[level]:  # planar RGB: one page per colour channel
                    parts = [self._segment(q, r * across + c, across * down, 1, raw=True)
                             for q in self._rgb_pages[level]]
                    ok = [p for p in parts if p is not None]
                    seg = None if len(ok) < len(parts) else self._to_rgb8(np.concatenate(ok, axis=-1))
                else:
                    seg = self._segment(page, r * across + c, across * down, planes)
                if seg is None:
                    continue
                tx, ty = c * sw, r * sh
                sx0, sy0 = max(x0, tx), max(y0, ty)
                sx1, sy1 = min(x1, tx + seg.shape[1]), min(y1, ty + seg.shape[0])
                if sx1 > sx0 and sy1 > sy0:
                    out[sy0 - ly : sy1 - ly, sx0 - lx : sx1 - lx] = seg[sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx]
        return out

    def _read_raw_rows(self, page: Any, out: np.ndarray, lx: int, ly: int, x0: int, y0: int, x1: int,
                       y1: int) -> np.ndarray:
        """Uncompressed strips: read only the asked rows and columns, whatever the strip size."""
        W = int(page.imagewidth)
        rps = max(1, int(page.rowsperstrip or page.imagelength))
        dtype = np.dtype(page.dtype).newbyteorder(page.parent.byteorder)
        px_bytes = self._spp * dtype.itemsize
        row_bytes = W * px_bytes
        for y in range(y0, y1):
            strip = y // rps
            offset = int(page.dataoffsets[strip]) + (y - strip * rps) * row_bytes + x0 * px_bytes
            n = (x1 - x0) * px_bytes
            data = os.pread(self._fd, n, offset)  # type: ignore[arg-type]
            if len(data) != n:
                raise SlideReadError(f"{self.path}: row {y} is truncated ({len(data)} of {n} bytes)")
            row = np.frombuffer(data, dtype).reshape(1, x1 - x0, self._spp)
            out[y - ly, x0 - lx : x1 - lx] = self._to_rgb8(row)[0]
        return out

    def _segment(self, page: Any, index: int, per_plane: int, planes: int, raw: bool = False) -> np.ndarray | None:
        """One decoded tile or strip as h×w×3 uint8, or None for a sparse (never written) one."""
        parts = []
        for p in range(planes):
            i = index + p * per_plane
            count, offset = int(page.databytecounts[i]), int(page.dataoffsets[i])
            if count == 0:
                return None
            data = os.pread(self._fd, count, offset)  # type: ignore[arg-type]
            if len(data) != count:
                raise SlideReadError(f"{self.path}: tile {i} is truncated ({len(data)} of {count} bytes)")
            seg, _, _ = page.decode(data, i, jpegtables=page.jpegtables)
            if seg is None:
                raise SlideReadError(f"{self.path}: tile {i} could not be decoded")
            seg = np.asarray(seg)
            parts.append(seg.reshape(seg.shape[-3:]))
        arr = parts[0] if planes == 1 else np.concatenate(parts, axis=-1)
        return arr if raw else self._to_rgb8(arr)

    def _to_rgb8(self, arr: np.ndarray) -> np.ndarray:
        if arr.dtype != np.uint8:
            top = self._max_value or (float(np.iinfo(arr.dtype).max) if arr.dtype.kind in "ui" else 1.0)
            arr = np.clip(arr.astype(np.float32) * (255.0 / top), 0, 255).round().astype(np.uint8)
        if self.modality_hint == "fluorescence" or arr.shape[-1] < 3:
            grey = arr[..., 0]
            return np.repeat(grey[..., None], 3, axis=-1)
        return np.ascontiguousarray(arr[..., :3])

    def thumbnail(self, max_px: int) -> np.ndarray:
        from PIL import Image

        level = len(self._pages) - 1
        W, H = self.level_dimensions[level]
        img = Image.fromarray(self.read_level_px(level, 0, 0, W, H))
        img.thumbnail((max_px, max_px), Image.Resampling.BOX)
        return np.asarray(img)

    def associated_names(self) -> list[str]:
        return []

    def associated_image(self, name: str) -> np.ndarray:
        raise KeyError(f"{self.path}: no associated image {name!r}; this {self.vendor} has none histo reads")

    def metadata_mpp(self) -> tuple[float | None, float | None]:
        return self._mpp

    def objective_power(self) -> float | None:
        return self._mag

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._tif.close()


def _channel_count(series: Any, page: Any) -> int:
    axes = str(series.axes)
    shape = tuple(series.shape)
    if "C" in axes:
        return int(shape[axes.index("C")])
    if "S" in axes:
        return int(shape[axes.index("S")])
    return int(page.samplesperpixel)


def _modality_hint(tif: Any, series: Any, channels: int, spp: int) -> str | None:
    """'fluorescence' when the file says so or is not interleaved RGB, 'brightfield' for RGB, else None."""
    if tif.is_ome:
        xml = tif.ome_metadata or ""
        if re.search(r"(Fluor|ExcitationWavelength|EmissionWavelength)", xml) and not re.search(
            r'AcquisitionMode="BrightField"', xml
        ):
            return "fluorescence"
    if getattr(tif, "is_qpi", False):
        desc = tif.pages[0].description or ""
        if re.search(r"<(FilterColors|ExcitationFilter|EmissionFilter)", desc) and spp != 3:
            return "fluorescence"
    if spp >= 3 and channels in (3, 4):
        return "brightfield"
    if channels != 3:
        return "fluorescence"  # one grey channel, or many: fluorescence layouts, not brightfield RGB
    return None


def _max_value(page: Any) -> float | None:
    tag = page.tags.get("MaxSampleValue")
    if tag is None:
        return None
    try:
        v = tag.value
        v = max(v) if isinstance(v, (tuple, list)) else v
        return float(v) if float(v) > 0 and float(v) < 2 ** int(page.bitspersample) - 1 else None
    except (TypeError, ValueError):
        return None


def _ome_mpp(tif: Any) -> tuple[float | None, float | None]:
    """µm/px from the first OME Pixels element's PhysicalSizeX/Y and their units."""
    xml = tif.ome_metadata or ""
    m = re.search(r"<(?:\w+:)?Pixels\b[^>]*>", xml)
    if not m:
        return None, None
    tag = m.group(0)

    def one(axis: str) -> float | None:
        v = re.search(rf'PhysicalSize{axis}="([^"]+)"', tag)
        if not v:
            return None
        unit = re.search(rf'PhysicalSize{axis}Unit="([^"]+)"', tag)
        factor = _UNIT_UM.get(unit.group(1) if unit else "µm")
        try:
            value = float(v.group(1)) * factor if factor is not None else None
        except ValueError:
            return None
        return value if value is not None and math.isfinite(value) and value > 0 else None

    return one("X"), one("Y")


def _ome_magnification(tif: Any) -> float | None:
    m = re.search(r'NominalMagnification="([^"]+)"', tif.ome_metadata or "")
    try:
        return float(m.group(1)) if m else None
    except ValueError:
        return None


def _resolution_mpp(page: Any) -> tuple[float | None, float | None]:
    tags = page.tags
    unit, xr, yr = tags.get("ResolutionUnit"), tags.get("XResolution"), tags.get("YResolution")
    if unit is None or xr is None or yr is None:
        return None, None
    per = {2: _CM_PER_INCH * 1e4, 3: 1e4}.get(int(unit.value))
    if not per:
        return None, None

    def one(value: Any) -> float | None:
        try:
            num, den = value if isinstance(value, tuple) else (float(value), 1.0)
            res = float(num) / float(den)
        except (TypeError, ValueError, ZeroDivisionError):
            return None
        return per / res if res > 0 else None

    return one(xr.value), one(yr.value)
