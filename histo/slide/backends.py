"""Format back ends behind `Slide`: OpenSlide for whole-slide formats, Pillow/tifffile for plain images.

A back end reads raw pixels at a pyramid level and reports metadata; the resolution maths lives in
`histo.slide.slide`. Each back end converts library exceptions into `histo.errors` classes that name
the file, and a back end that failed once refuses every later call (OpenSlide handles are unusable
after an error, and a half-read image must not be served as if it were whole).
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from struct import error as struct_error
from typing import Any, Protocol

import numpy as np
from PIL import Image

from histo.errors import SlideOpenError, SlideReadError
from histo.slide.tifftiles import TiffTiles, TileDecodeError

# A plain image is held in memory whole: refuse one whose declared size would not fit the memory bound
# (larger flat TIFFs go to tifffile, which reads them strip by strip; see histo.slide.route).
_PLAIN_IMAGE_MAX_PX = 120_000_000
_CM_PER_INCH = 2.54


class Backend(Protocol):
    """What `Slide` needs from a format back end."""

    vendor: str
    level_dimensions: list[tuple[int, int]]
    level_downsamples: list[float]
    properties: dict[str, str]

    def read_level_px(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray: ...
    def thumbnail(self, max_px: int) -> np.ndarray: ...
    def associated_names(self) -> list[str]: ...
    def associated_image(self, name: str) -> np.ndarray: ...
    def metadata_mpp(self) -> tuple[float | None, float | None]: ...
    def objective_power(self) -> float | None: ...
    def close(self) -> None: ...


def rgba_to_rgb(arr: np.ndarray) -> np.ndarray:
    """Flatten RGBA (straight alpha, as openslide-python returns) on white: transparent = no tissue, white glass."""
    rgb = arr[..., :3]
    alpha = arr[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.uint16)
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


class OpenSlideBackend:
    """Every format OpenSlide reads: Aperio, Hamamatsu, MIRAX, Leica, Philips, DICOM, generic tiled TIFF, ..."""

    def __init__(self, path: Path) -> None:
        import openslide

        self._openslide = openslide
        self.path = path
        try:
            self._osr: openslide.OpenSlide | None = openslide.OpenSlide(str(path))
        except openslide.OpenSlideUnsupportedFormatError as exc:
            raise SlideOpenError(
                f"{path}: OpenSlide does not recognise this file as a slide ({exc}); "
                "check that it is a whole-slide image and not truncated"
            ) from exc
        except openslide.OpenSlideError as exc:
            if _is_dicom(path):
                raise SlideOpenError(
                    f"{path}: not a supported DICOM WSI (OpenSlide: {exc}); OpenSlide reads VL Whole Slide "
                    "Microscopy Image series with all their .dcm files in one folder; if this is one, the file "
                    "may be damaged"
                ) from exc
            raise SlideOpenError(
                f"{path}: the slide is corrupt or unreadable ({exc}); re-copy or re-export it from the scanner"
            ) from exc
        self._failed: str | None = None
        try:
            self.vendor = self._osr.properties.get("openslide.vendor", "unknown")
            self.level_dimensions: list[tuple[int, int]] = [(int(d[0]), int(d[1])) for d in self._osr.level_dimensions]
            self.level_downsamples = [float(d) for d in self._osr.level_downsamples]
            self.properties = dict(self._osr.properties)
        except Exception as exc:
            self._osr.close()
            raise SlideOpenError(f"{path}: the slide's metadata is unreadable ({type(exc).__name__}: {exc}); "
                                 "the file is corrupt, re-copy or re-export it") from exc
        self._tiles = _tiff_tiles(path, self.level_dimensions)

    def _check(self) -> None:
        self._handle()

    def _handle(self) -> Any:
        """The open OpenSlide handle; SlideReadError once it is closed or failed."""
        if self._osr is None:
            raise SlideReadError(f"{self.path}: the slide handle is closed")
        if self._failed:
            raise SlideReadError(
                f"{self.path}: an earlier read failed ({self._failed}); the handle was closed, open the slide again"
            )
        return self._osr

    def _fail(self, what: str, exc: Exception) -> SlideReadError:
        # OpenSlide handles are in an error state after any failure: close it so it is never reused.
        self._failed = f"{what}: {exc}"
        if self._tiles is not None:
            self._tiles.close()
            self._tiles = None
        # closing a broken handle may itself fail; the error returned below is the one that matters
        with contextlib.suppress(Exception):
            if self._osr is not None:
                self._osr.close()
        return SlideReadError(
            f"{self.path}: reading {what} failed ({exc}); the file may be truncated or corrupt, re-copy it"
        )

    def read_level_px(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        self._check()
        try:
            return self._read_level_px(level, lx, ly, w, h)
        except SlideReadError:
            raise
        except MemoryError as exc:
            raise SlideReadError(f"{self.path}: out of memory reading level {level} region {w}x{h} px; "
                                 "lower --workers or --batch-size") from exc
        except Exception as exc:
            raise self._fail(f"level {level} region x={lx} y={ly} w={w} h={h} (level px)",
                             RuntimeError(f"{type(exc).__name__}: {exc}")) from exc

    def _read_level_px(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        if self._tiles is not None and self._tiles.has(level):
            if self._tiles.verified(level) is None:
                self._tiles.mark(level, self._self_check(level))
            if self._tiles.verified(level):
                try:
                    return self._tiles.read(level, lx, ly, w, h)
                except TileDecodeError as exc:
                    raise self._fail(f"level {level} region x={lx} y={ly} w={w} h={h} (level px)", exc) from exc
        return self._openslide_read(level, lx, ly, w, h)

    def _openslide_read(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        x0, y0 = int(round(lx * ds)), int(round(ly * ds))  # OpenSlide takes the origin in level-0 px
        try:
            img = self._handle().read_region((x0, y0), int(level), (int(w), int(h)))
        except self._openslide.OpenSlideError as exc:
            raise self._fail(f"level {level} region x={lx} y={ly} w={w} h={h} (level px)", exc) from exc
        return rgba_to_rgb(np.asarray(img))

    def _self_check(self, level: int) -> bool:
        """Decode tiles of the level both ways; serve it directly only if the pixels agree."""
        boxes = [(0, 0) + self._tiles.first_tile_box(level)[2:], self._tiles.first_tile_box(level)]  # type: ignore[union-attr]
        ds = self.level_downsamples[level]
        for lx, ly, w, h in boxes:
            if abs(lx * ds - round(lx * ds)) > 1e-6 or abs(ly * ds - round(ly * ds)) > 1e-6:
                continue  # OpenSlide would shift this box by a sub-pixel: not a fair comparison
            try:
                fast = self._tiles.read(level, lx, ly, w, h)  # type: ignore[union-attr]
            except TileDecodeError:
                return False
            ref = self._openslide_read(level, lx, ly, w, h)
            diff = np.abs(fast.astype(np.int16) - ref)
            if diff.max() > 3 or diff.mean() > 0.5:
                return False
        return True

    def thumbnail(self, max_px: int) -> np.ndarray:
        osr = self._handle()
        try:
            img = osr.get_thumbnail((max_px, max_px))
        except self._openslide.OpenSlideError as exc:
            raise self._fail("the thumbnail", exc) from exc
        return np.asarray(img.convert("RGB"))

    def associated_names(self) -> list[str]:
        return sorted(self._handle().associated_images.keys())

    def associated_image(self, name: str) -> np.ndarray:
        osr = self._handle()
        if name not in osr.associated_images:
            raise KeyError(f"{self.path}: no associated image {name!r}; has {self.associated_names()}")
        try:
            img = osr.associated_images[name]
        except self._openslide.OpenSlideError as exc:
            raise self._fail(f"associated image {name!r}", exc) from exc
        return rgba_to_rgb(np.asarray(img.convert("RGBA")))

    def metadata_mpp(self) -> tuple[float | None, float | None]:
        return _float_or_none(self.properties.get("openslide.mpp-x")), _float_or_none(
            self.properties.get("openslide.mpp-y")
        )

    def objective_power(self) -> float | None:
        return _float_or_none(self.properties.get("openslide.objective-power"))

    def close(self) -> None:
        if self._osr is not None and not self._failed:
            self._osr.close()
        self._osr = None
        if self._tiles is not None:
            self._tiles.close()
            self._tiles = None


def _bomb_reason(path: Path, exc: Image.DecompressionBombError) -> str:
    """Why Pillow refused a plain image: over histo's cap, or under it but over this process's Pillow limit."""
    m = re.search(r"Image size \((\d+) pixels\)", str(exc))
    n_px = int(m.group(1)) if m else None
    if n_px is None or n_px > _PLAIN_IMAGE_MAX_PX:
        size = f"{n_px / 1e6:.0f} Mpx, " if n_px is not None else ""
        return (f"{path}: plain image too large to hold in memory ({size}limit {_PLAIN_IMAGE_MAX_PX / 1e6:.0f} Mpx); "
                "convert it to a pyramidal TIFF")
    return (f"{path}: Pillow refuses this {n_px / 1e6:.0f} Mpx image under this process's "
            f"PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS} ({exc})")


class ImageBackend:
    """Plain images (PNG, JPEG, flat TIFF, BMP): held in memory whole, one level."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.vendor = "image"
        # Pillow's process-wide PIL.Image.MAX_IMAGE_PIXELS is the caller's to set and is left alone. Image.open
        # reads only the header; histo's own cap is checked on the declared size before any pixel is decoded.
        # Between Pillow's limit and twice it (89-179 Mpx by default) Pillow warns DecompressionBombWarning:
        # passed through on purpose (a caller may turn it into an error); above twice it Pillow refuses.
        try:
            with Image.open(path) as img:
                if img.width * img.height > _PLAIN_IMAGE_MAX_PX:
                    raise SlideOpenError(
                        f"{path}: plain image of {img.width}x{img.height} px is too large to hold in memory "
                        f"(limit {_PLAIN_IMAGE_MAX_PX / 1e6:.0f} Mpx); convert it to a pyramidal TIFF"
                    )
                self.format = img.format or "unknown"
                self._dpi = img.info.get("dpi")
                self._resolution_unit = None
                # RGB decodes straight into the one array kept (no converted copy on top of it).
                self._arr: np.ndarray | None = np.asarray(img if img.mode == "RGB" else _to_rgb(img))
        except Image.DecompressionBombError as exc:
            raise SlideOpenError(_bomb_reason(path, exc)) from exc
        except MemoryError as exc:
            raise SlideOpenError(f"{path}: out of memory decoding this plain image; convert it to a pyramidal TIFF") from exc
        except (OSError, ValueError, SyntaxError, IndexError, TypeError, struct_error, EOFError) as exc:
            raise SlideOpenError(
                f"{path}: not a slide or image histo can read ({exc}); supported: every OpenSlide format, "
                "PNG, JPEG, TIFF"
            ) from exc
        h, w = self._arr.shape[:2]
        self.level_dimensions = [(w, h)]
        self.level_downsamples = [1.0]
        self.properties = {"histo.image-format": self.format}
        self._mpp = self._resolution_mpp()

    def _resolution_mpp(self) -> tuple[float | None, float | None]:
        """µm/px from TIFF resolution tags (centimetre or inch units) or the PNG/JPEG dpi field."""
        if self.format == "TIFF":
            try:
                import tifffile

                with tifffile.TiffFile(self.path) as tif:
                    tags = tif.pages[0].tags
                    unit = tags.get("ResolutionUnit")
                    xr, yr = tags.get("XResolution"), tags.get("YResolution")
                    if unit is not None and xr is not None and yr is not None:
                        per = {2: _CM_PER_INCH * 1e4, 3: 1e4}.get(int(unit.value))
                        if per:
                            return _res_to_mpp(xr.value, per), _res_to_mpp(yr.value, per)
            except Exception:  # noqa: BLE001 - a TIFF tifffile cannot parse simply has no usable resolution
                return None, None
            return None, None
        if self._dpi:
            try:
                dx, dy = float(self._dpi[0]), float(self._dpi[1])
            except (TypeError, ValueError, IndexError):
                return None, None
            return (_CM_PER_INCH * 1e4 / dx if dx > 0 else None, _CM_PER_INCH * 1e4 / dy if dy > 0 else None)
        return None, None

    def read_level_px(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        if self._arr is None:
            raise SlideReadError(f"{self.path}: the slide handle is closed")
        out = np.full((h, w, 3), 255, np.uint8)
        H, W = self._arr.shape[:2]
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._arr[y0:y1, x0:x1]
        return out

    def thumbnail(self, max_px: int) -> np.ndarray:
        if self._arr is None:
            raise SlideReadError(f"{self.path}: the slide handle is closed")
        img = Image.fromarray(self._arr)
        img.thumbnail((max_px, max_px), Image.Resampling.BOX)
        return np.asarray(img)

    def associated_names(self) -> list[str]:
        return []

    def associated_image(self, name: str) -> np.ndarray:
        raise KeyError(f"{self.path}: plain images have no associated image {name!r}")

    def metadata_mpp(self) -> tuple[float | None, float | None]:
        return self._mpp

    def objective_power(self) -> float | None:
        return None

    def close(self) -> None:
        self._arr = None


class ArrayBackend(ImageBackend):
    """An RGB array already in memory (histo.predict.predict_image): one level, like a plain image."""

    def __init__(self, rgb: np.ndarray, name: str = "array") -> None:
        arr = np.asarray(rgb)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4) or arr.dtype != np.uint8:
            raise SlideOpenError(f"{name}: expected an H×W×3 uint8 RGB array, got shape {arr.shape} {arr.dtype}")
        self.path = Path(f"<{name}>")
        self.vendor = "array"
        self.format = "array"
        self._dpi = None
        self._resolution_unit = None
        self._arr = np.ascontiguousarray(rgba_to_rgb(arr) if arr.shape[2] == 4 else arr)
        h, w = self._arr.shape[:2]
        self.level_dimensions = [(w, h)]
        self.level_downsamples = [1.0]
        self.properties = {"histo.image-format": "array"}
        self._mpp = (None, None)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I", "F"):
        raise ValueError(f"image mode {img.mode} is not 8-bit brightfield RGB")
    return img.convert("RGB")


def _res_to_mpp(value: object, microns_per_unit: float) -> float | None:
    try:
        num, den = value if isinstance(value, tuple) else (float(value), 1.0)  # type: ignore[arg-type]  # a TIFF rational or number; anything else is the TypeError caught below
        res = float(num) / float(den)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return microns_per_unit / res if res > 0 else None


def _float_or_none(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        out = float(value)
    except ValueError:
        return None
    return out if np.isfinite(out) else None


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _tiff_tiles(path: Path, level_dimensions: list[tuple[int, int]]) -> TiffTiles | None:
    """The direct JPEG-tile reader for TIFF-based slides, or None (other containers, or tifffile cannot parse it)."""
    try:
        with open(path, "rb") as f:
            if f.read(4) not in _TIFF_MAGIC:
                return None
        tiles = TiffTiles(str(path), level_dimensions)
    except Exception:  # noqa: BLE001 - the fast path is optional; OpenSlide still reads the file
        return None
    return tiles if tiles.has_any() else None


def _is_dicom(path: Path) -> bool:
    """True when the file has the DICOM preamble signature ("DICM" at byte 128)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"
