"""`Slide`: one API over every OpenSlide format and plain images, with explicit resolution on every read."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from histo.errors import MppError, SlideOpenError
from histo.inputs import MPP_PLAUSIBLE_UM
from histo.slide.backends import Backend
from histo.slide.route import IMAGE_SUFFIXES, open_backend

# A level-0 pixel size outside MPP_PLAUSIBLE_UM is not a brightfield scan (72-dpi TIFF defaults give 352 µm/px).
# Pixels must be square to within this share; scanners write the same value twice.
_MPP_ANISOTROPY_TOL = 0.05
# A level serves a target mpp if its pixels are at most this much larger than asked (rounding in headers).
_LEVEL_TOL = 1e-3
# An origin within this many level px of the level grid is read without resampling.
_SUBPIXEL_TOL = 0.01
# Reads larger than this (output px, and level px read per block) are done in blocks so memory stays
# bounded whatever the request and whatever the file declares: an overview of a single-level slide is
# built block by block from level 0, never from one decode of the whole level.
_BLOCK_PX = 4096
# An --mpp override further than this factor from the file's own µm/px is refused unless forced: 2x
# corrects a 20x/40x mix-up, anything more is a typo (--mpp 29 on a 0.25 µm/px slide).
MPP_OVERRIDE_MAX_FACTOR = 2.1

_IMAGE_SUFFIXES = IMAGE_SUFFIXES


def open_slide(path: str | os.PathLike[str], mpp: float | None = None, force_mpp: bool = False) -> Slide:
    """Open a whole-slide image or plain image; `mpp` overrides the level-0 µm/px from the metadata."""
    return Slide(path, mpp=mpp, force_mpp=force_mpp)


class ForcedMpp(float):
    """An --mpp override the user forced: used even when far from the file's own µm/px (it travels to workers)."""


def forced_mpp(mpp: float | None) -> float | None:
    """`mpp` marked as forced (None stays None)."""
    return None if mpp is None else ForcedMpp(mpp)


def mpp_argument(mpp: float | None, force: bool = False) -> float | None:
    """An --mpp command-line value: MppError when implausible (before any slide opens), marked forced on request."""
    check_mpp_override(mpp)
    return forced_mpp(mpp) if force else mpp


def check_mpp_override(mpp: float | None) -> None:
    """Refuse (MppError) an --mpp value outside the plausible range before any slide is opened."""
    if mpp is not None:
        _check_plausible(Path("--mpp"), float(mpp), "the --mpp override")


def renamed_mpp(mpp: float | None, old_value: float | None, old_name: str, where: str) -> float | None:
    """The level-0 µm/px override passed as ``mpp=`` or under its deprecated keyword ``old_name`` (DeprecationWarning;
    TypeError when both are given and differ)."""
    if old_value is None:
        return mpp
    warnings.warn(f"{where}({old_name}=...) is deprecated: the level-0 µm/px override is mpp=", DeprecationWarning,
                  stacklevel=3)
    if mpp is not None and float(mpp) != float(old_value):
        raise TypeError(f"{where}: give mpp= or {old_name}=, not both")
    return old_value


class Slide:
    """A slide file opened for reading; every read states its target resolution in µm/px."""

    def __init__(self, path: str | os.PathLike[str], mpp: float | None = None, force_mpp: bool = False) -> None:
        self.path = Path(path)
        force_mpp = bool(force_mpp) or isinstance(mpp, ForcedMpp)
        self._mpp_override = mpp
        self._force_mpp = force_mpp
        if mpp is not None:
            _check_plausible(self.path, float(mpp), "the --mpp override")
        if not self.path.exists():
            raise SlideOpenError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise SlideOpenError(f"{self.path}: is a folder; give the slide file inside it (e.g. the .mrxs or a .dcm)")
        self._backend: Backend
        self._backend, self.backend, self.backend_reason = open_backend(self.path)
        self.vendor: str = self._backend.vendor
        self._modality: tuple[str, str] | None = None
        if mpp is not None and not force_mpp:
            try:
                self._check_override_near_metadata(float(mpp))
            except MppError:
                self._backend.close()
                raise

    def _check_override_near_metadata(self, mpp: float) -> None:
        if self._metadata_mpp_problem() is not None:
            return
        mx, my = self._backend.metadata_mpp()
        own = ((mx if mx is not None else my) + (my if my is not None else mx)) / 2.0  # type: ignore[operator]
        factor = max(mpp / own, own / mpp)
        if factor > MPP_OVERRIDE_MAX_FACTOR:
            raise MppError(
                f"{self.path}: the --mpp override of {mpp:g} µm/px is {factor:.3g}x the file's own {own:g} µm/px; "
                "if the file is really wrong, force it (--force-mpp on the command line, "
                "open_slide(path, mpp=..., force_mpp=True) in Python)"
            )

    @classmethod
    def from_array(cls, rgb: np.ndarray, mpp: float, name: str = "array") -> Slide:
        """An in-memory H×W×3 uint8 RGB image at ``mpp`` µm/px as a one-level Slide (it cannot go to worker processes)."""
        from histo.slide.backends import ArrayBackend

        _check_plausible(Path(f"<{name}>"), float(mpp), "mpp")
        obj = cls.__new__(cls)
        obj._backend = ArrayBackend(rgb, name)
        obj.path = obj._backend.path
        obj._mpp_override = float(mpp)
        obj._force_mpp = True
        obj.vendor = obj._backend.vendor
        obj.backend, obj.backend_reason = "array", "an in-memory array"
        obj._modality = None
        return obj

    # -- pickling: a worker process reopens the file and gets its own handle -----------------------------
    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        if self.vendor == "array":
            raise TypeError(f"{self.path}: an in-memory slide cannot be sent to another process; read it with workers=0")
        return (open_slide, (str(self.path), self._mpp_override, self._force_mpp))

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        mpp = self.mpp_or_none
        return f"Slide({str(self.path)!r}, {self.vendor}, {w}x{h}px, mpp={mpp if mpp is None else round(mpp, 4)})"

    def close(self) -> None:
        """Release the file handle."""
        self._backend.close()

    # -- metadata --------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The slide's file name without its suffix."""
        return self.path.stem

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height) in pixels."""
        return self._backend.level_dimensions[0]

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return len(self._backend.level_dimensions)

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        """(width, height) of each level."""
        return list(self._backend.level_dimensions)

    @property
    def level_downsamples(self) -> list[float]:
        """Level-0 pixels per pixel of each level."""
        return list(self._backend.level_downsamples)

    @property
    def properties(self) -> dict[str, str]:
        """The raw metadata key/values (OpenSlide property names)."""
        return dict(self._backend.properties)

    @property
    def objective_power(self) -> float | None:
        """Scanner objective magnification when the metadata states it (informative only, never used for mpp)."""
        return self._backend.objective_power()

    @property
    def mpp_source(self) -> str:
        """Where the mpp comes from: 'override', 'metadata' or 'missing'."""
        if self._mpp_override is not None:
            return "override"
        return "metadata" if self._metadata_mpp_problem() is None else "missing"

    def _metadata_mpp_problem(self) -> str | None:
        mx, my = self._backend.metadata_mpp()
        if mx is None and my is None:
            return "the file states no pixel size"
        mx = mx if mx is not None else my
        my = my if my is not None else mx
        assert mx is not None and my is not None  # at least one was stated (checked above)
        lo, hi = MPP_PLAUSIBLE_UM
        if not (lo <= mx <= hi and lo <= my <= hi):
            return f"the file states {mx:g} x {my:g} µm/px, outside the plausible {lo:g}-{hi:g} µm/px"
        if abs(mx - my) / max(mx, my) > _MPP_ANISOTROPY_TOL:
            return f"the file states non-square pixels ({mx:g} x {my:g} µm/px), which histo does not support"
        return None

    @property
    def mpp(self) -> float:
        """Level-0 µm/px; raises MppError when it is missing or implausible and no override was given."""
        if self._mpp_override is not None:
            return float(self._mpp_override)
        problem = self._metadata_mpp_problem()
        if problem is not None:
            raise MppError(
                f"{self.path}: cannot know the pixel size: {problem}. If you know it, pass it explicitly "
                "(--mpp on the command line, open_slide(path, mpp=...) in Python); histo never guesses it "
                "from the magnification"
            )
        mx, my = self._backend.metadata_mpp()
        mx = mx if mx is not None else my
        my = my if my is not None else mx
        assert mx is not None and my is not None  # _metadata_mpp_problem returned None: both are known
        return (mx + my) / 2.0

    @property
    def mpp_or_none(self) -> float | None:
        """Level-0 µm/px, or None when unknown."""
        try:
            return self.mpp
        except MppError:
            return None

    def level_mpp(self, level: int) -> float:
        """µm/px of a pyramid level."""
        return self.mpp * self._backend.level_downsamples[level]

    @property
    def associated_names(self) -> list[str]:
        """Names of the associated images (label, macro, thumbnail ...) in the file."""
        return self._backend.associated_names()

    def associated_image(self, name: str) -> np.ndarray:
        """An associated image as H×W×3 uint8 RGB."""
        return self._backend.associated_image(name)

    def info(self) -> dict[str, Any]:
        """What a user needs to know about the slide, as plain JSON-able values."""
        mpp = self.mpp_or_none
        w, h = self.dimensions
        levels = []
        for i, ((lw, lh), ds) in enumerate(zip(self.level_dimensions, self.level_downsamples)):
            levels.append(
                {"level": i, "width_px": lw, "height_px": lh, "downsample": round(ds, 4),
                 "mpp": None if mpp is None else round(mpp * ds, 5)}
            )
        out: dict[str, Any] = {
            "path": str(self.path),
            "vendor": self.vendor,
            "file_size_bytes": self.path.stat().st_size,
            "width_px": w,
            "height_px": h,
            "mpp": None if mpp is None else round(mpp, 5),
            "mpp_source": self.mpp_source,
            "objective_power": self.objective_power,
            "backend": self.backend,
            "backend_reason": self.backend_reason,
            "modality": self.modality,
            "modality_reason": self.modality_reason,
            "levels": levels,
            "associated_images": self.associated_names,
        }
        if mpp is None:
            out["mpp_problem"] = self._metadata_mpp_problem()
        else:
            out["width_mm"] = round(w * mpp / 1000, 3)
            out["height_mm"] = round(h * mpp / 1000, 3)
        return out

    # -- reading ---------------------------------------------------------------------------------------
    def best_level(self, mpp: float) -> int:
        """The coarsest level whose pixels are no larger than `mpp` (so reads only ever shrink)."""
        return self._best_level_ds(self._target_downsample(mpp))

    def _best_level_ds(self, target_ds: float) -> int:
        best = 0
        for i, ds in enumerate(self._backend.level_downsamples):
            if ds <= target_ds * (1 + _LEVEL_TOL) and ds >= self._backend.level_downsamples[best]:
                best = i
        return best

    def _target_downsample(self, mpp: float) -> float:
        if not (isinstance(mpp, (int, float)) and math.isfinite(mpp) and mpp > 0):
            raise ValueError(f"target mpp must be a positive number of µm/px, got {mpp!r}")
        return float(mpp) / self.mpp

    def read_level(self, level: int, x: float, y: float, w: int, h: int) -> np.ndarray:
        """Raw pixels of a pyramid level: (x, y) in level-0 px, (w, h) in that level's px; outside = white."""
        if not 0 <= level < self.level_count:
            raise ValueError(f"{self.path}: level {level} does not exist (0..{self.level_count - 1})")
        if w <= 0 or h <= 0:
            raise ValueError(f"region size must be positive, got {w}x{h}")
        ds = self._backend.level_downsamples[level]
        return self._backend.read_level_px(level, int(round(x / ds)), int(round(y / ds)), int(w), int(h))

    def read(self, x: float, y: float, w: int, h: int, mpp: float) -> np.ndarray:
        """The region with level-0 top-left (x, y), as w×h RGB pixels at `mpp` µm/px, from the best level."""
        w, h = int(w), int(h)
        if w <= 0 or h <= 0:
            raise ValueError(f"output size must be positive, got {w}x{h}")
        return self._read_ds(x, y, w, h, self._target_downsample(mpp))

    def _read_ds(self, x: float, y: float, w: int, h: int, ds: float) -> np.ndarray:
        """`read` at a downsample (level-0 px per output px) instead of an mpp; blocks bound the level px read."""
        level = self._best_level_ds(ds)
        scale = max(1.0, ds / self._backend.level_downsamples[level])  # level px per output px
        block = max(1, min(_BLOCK_PX, int(_BLOCK_PX / scale)))
        if w <= block and h <= block:
            return self._read_once(x, y, w, h, ds, level)
        out = np.empty((h, w, 3), np.uint8)
        for by in range(0, h, block):
            for bx in range(0, w, block):
                bw, bh = min(block, w - bx), min(block, h - by)
                out[by : by + bh, bx : bx + bw] = self._read_once(x + bx * ds, y + by * ds, bw, bh, ds, level)
        return out

    def _read_once(self, x: float, y: float, w: int, h: int, ds: float, level: int) -> np.ndarray:
        level_ds = self._backend.level_downsamples[level]
        scale = ds / level_ds  # level px per output px (>= 1 except when upsampling past level 0)
        lxf, lyf = x / level_ds, y / level_ds  # requested origin in level px
        rx, ry = round(lxf), round(lyf)
        if abs(scale - 1.0) < _LEVEL_TOL and abs(lxf - rx) < _SUBPIXEL_TOL and abs(lyf - ry) < _SUBPIXEL_TOL:
            return self._backend.read_level_px(level, int(rx), int(ry), w, h)
        lx0, ly0 = math.floor(lxf), math.floor(lyf)
        fx, fy = lxf - lx0, lyf - ly0  # sub-pixel offset of the origin inside the level grid
        lw = int(math.ceil(fx + w * scale)) + 1
        lh = int(math.ceil(fy + h * scale)) + 1
        region = self._backend.read_level_px(level, int(lx0), int(ly0), lw, lh)
        resample = Image.Resampling.BOX if scale > 1 else Image.Resampling.BICUBIC
        img = Image.fromarray(region).resize(
            (w, h), resample, box=(fx, fy, fx + w * scale, fy + h * scale)
        )
        return np.asarray(img)

    def read_overview(self, mpp: float) -> np.ndarray:
        """The whole slide at a coarse `mpp`, shape (round(H/ds), round(W/ds), 3), ds = mpp / slide mpp."""
        ds = self._target_downsample(mpp)
        W, H = self.dimensions
        return self.read(0, 0, max(1, round(W / ds)), max(1, round(H / ds)), mpp)

    def thumbnail(self, max_px: int = 1024) -> np.ndarray:
        """The whole slide with its longest side at most `max_px`; needs no mpp; built block by block."""
        if max_px <= 0:
            raise ValueError(f"max_px must be positive, got {max_px}")
        W, H = self.dimensions
        ds = max(1.0, max(W, H) / int(max_px))
        return self._read_ds(0, 0, max(1, min(int(max_px), round(W / ds))), max(1, min(int(max_px), round(H / ds))), ds)

    # -- modality -------------------------------------------------------------------------------------
    @property
    def modality(self) -> str:
        """'brightfield' or 'fluorescence', from the file's metadata or else from its thumbnail's colours."""
        return self._modality_and_reason()[0]

    @property
    def modality_reason(self) -> str:
        """Why the slide is taken as brightfield or fluorescence."""
        return self._modality_and_reason()[1]

    def _modality_and_reason(self) -> tuple[str, str]:
        if self._modality is None:
            from histo.slide.modality import slide_modality

            self._modality = slide_modality(self._backend, lambda: self.thumbnail(256))
        return self._modality


def _check_plausible(path: Path, mpp: float, what: str) -> None:
    lo, hi = MPP_PLAUSIBLE_UM
    if not (math.isfinite(mpp) and lo <= mpp <= hi):
        raise MppError(f"{path}: {what} of {mpp:g} µm/px is outside the plausible {lo:g}-{hi:g} µm/px")
