"""`register_slides`: register a moving slide onto a fixed one, coarse to fine, and judge the result."""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from histo.errors import HistoError
from histo.register.align import (
    RegisterConfig,
    correlation,
    downsample_field,
    ecc_affine,
    effective_smooth_um,
    level_mpps,
    nonrigid_field,
    rigid_search,
)
from histo.register.images import View, registration_tissue, view
from histo.register.quality import assess
from histo.register.transform import DisplacementField, SlideTransform
from histo.slide import Slide, open_slide


@dataclass
class Registration:
    """A registration: the transform, its quality (status ok | poor | failed) and what it was computed from."""

    transform: SlideTransform
    quality: dict[str, Any]
    fixed_path: str
    moving_path: str
    levels_mpp: list[float]
    config: RegisterConfig
    timing_s: dict[str, float]
    fixed_view: View  # finest level, for QC figures
    moving_view: View

    @property
    def status(self) -> str:
        """'ok', 'poor' or 'failed'."""
        return str(self.quality["status"])

    @property
    def estimated_error_um(self) -> float | None:
        """The landmark-free error estimate in µm (None when it could not be measured)."""
        return self.quality.get("estimated_error_um")


def warp_view_image(transform: SlideTransform, image: np.ndarray, image_mpp: float, shape: tuple[int, int],
                    out_mpp: float, nearest: bool = False, border: float = 0.0) -> np.ndarray:
    """A moving-frame image (at image_mpp) resampled onto a fixed-frame grid of ``shape`` at out_mpp."""
    h, w = shape
    out = np.empty((h, w) + image.shape[2:], image.dtype)
    xs = (np.arange(w) + 0.5) * out_mpp
    for r0 in range(0, h, 512):
        rows = np.arange(r0, min(h, r0 + 512))
        gx, gy = np.meshgrid(xs, (rows + 0.5) * out_mpp)
        p = transform.fixed_to_moving_um(np.stack([gx.ravel(), gy.ravel()], axis=1))
        mx = (p[:, 0] / image_mpp - 0.5).astype(np.float32).reshape(gx.shape)
        my = (p[:, 1] / image_mpp - 0.5).astype(np.float32).reshape(gx.shape)
        out[rows[0]:rows[-1] + 1] = cv2.remap(image, mx, my, cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
                                              borderMode=cv2.BORDER_CONSTANT, borderValue=border)
    return out


def _open(s: Slide | str | os.PathLike[str], mpp: float | None) -> tuple[Slide, bool]:
    if isinstance(s, Slide):
        return s, False
    return open_slide(s, mpp=mpp), True


def register_slides(fixed: Slide | str | os.PathLike[str], moving: Slide | str | os.PathLike[str], *,
                    fixed_mpp: float | None = None, moving_mpp: float | None = None,
                    config: RegisterConfig | None = None, nonrigid: bool | None = None) -> Registration:
    """Register ``moving`` onto ``fixed`` (rigid with any rotation or flip, affine, then non-rigid); never raises on a bad fit.

    A fit that is poor or failed is returned with that status; only unreadable input (missing file,
    unknown mpp) raises.
    """
    cfg = config or RegisterConfig()
    if nonrigid is not None:
        cfg = dataclasses.replace(cfg, nonrigid=bool(nonrigid))
    fs, own_f = _open(fixed, fixed_mpp)
    try:
        ms, own_m = _open(moving, moving_mpp)
        try:
            return _register(fs, ms, cfg)
        finally:
            if own_m:
                ms.close()
    finally:
        if own_f:
            fs.close()


def _register(fs: Slide, ms: Slide, cfg: RegisterConfig) -> Registration:
    t_start = time.perf_counter()
    timing: dict[str, float] = {}
    fmpp, mmpp = fs.mpp, ms.mpp  # MppError naming the slide when unknown
    fdims, mdims = tuple(int(v) for v in fs.dimensions), tuple(int(v) for v in ms.dimensions)
    extent = max(fdims[0] * fmpp, fdims[1] * fmpp, mdims[0] * mmpp, mdims[1] * mmpp)
    # the smaller slide frame bounds the specimen (a rotated copy's bounding box is up to 1.4x larger)
    smaller = min(max(fdims[0], fdims[1]) * fmpp, max(mdims[0], mdims[1]) * mmpp)
    cfg = dataclasses.replace(cfg, field_smooth_um=effective_smooth_um(smaller, cfg))  # recorded as used
    levels = level_mpps(extent, cfg)
    levels = [max(m, fmpp, mmpp) for m in levels]  # never finer than the slides themselves
    # ECC refines the affine map on views of at most affine_max_px (its cost grows with the pixels and a
    # 1024 px view already pins the affine part to a fraction of a 25 µm pixel); the finest level
    # (max_px) serves the non-rigid field and the quality figures.
    affine_levels = [m for m in levels if extent / m <= cfg.affine_max_px * 1.05] or levels[:1]
    t0 = time.perf_counter()
    # One tissue mask per slide, at the finest level but no finer than histo.tissue's own 8 µm/px default
    # nor than mask_max_px across the slide (an outline needs no more; tissue detection costs per pixel).
    mask_mpp = min(max(levels[-1], 8.0, extent / cfg.mask_max_px), levels[0])
    fcache: dict[float, np.ndarray] = {}
    mcache: dict[float, np.ndarray] = {}
    fmask, mmask = registration_tissue(fs, mask_mpp, fcache), registration_tissue(ms, mask_mpp, mcache)
    timing["tissue"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()

    def views(mpp: float) -> tuple[View, View]:
        return (view(fs, mpp, cfg.channel, fmask, rgb=fcache.pop(mpp, None)),
                view(ms, mpp, cfg.channel, mmask, rgb=mcache.pop(mpp, None)))

    fv, mv = views(levels[0])
    affine = np.eye(3)
    if fv.mask.any() and mv.mask.any():
        cands = rigid_search(fv, mv, cfg)
        timing["rigid_search"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
        best = max((ecc_affine(fv, mv, a) for _, a in cands), key=lambda r: r[0])
        _, affine = best
        for mpp in affine_levels[1:]:
            fv, mv = views(mpp)
            cc2, a2 = ecc_affine(fv, mv, affine, iterations=30, eps=1e-5)
            if cc2 >= 0 and _plausible(a2):
                affine = a2
        timing["affine"] = round(time.perf_counter() - t0, 3)
        if fv.mpp != levels[-1]:
            t0 = time.perf_counter()
            fv, mv = views(levels[-1])
            timing["finest_view"] = round(time.perf_counter() - t0, 3)
    field = None
    if cfg.nonrigid and fv.mask.any() and mv.mask.any():
        t0 = time.perf_counter()
        f_px = nonrigid_field(fv, mv, affine, cfg)
        if f_px is not None:
            grid, grid_um = downsample_field(f_px, fv.mpp, cfg.field_smooth_um / 4)
            field = DisplacementField.from_forward(grid, grid_um)
        timing["nonrigid"] = round(time.perf_counter() - t0, 3)
    transform = SlideTransform(fdims, fmpp, mdims, mmpp, affine, field)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    warped = warp_view_image(transform, mv.feature, mv.mpp, fv.shape, fv.mpp)
    wmask = warp_view_image(transform, mv.mask.astype(np.uint8), mv.mpp, fv.shape, fv.mpp, nearest=True) > 0
    quality = assess(fv.feature, warped, fv.mask, wmask, fv.mpp, correlation(fv.feature, warped, fv.mask | wmask))
    timing["quality"] = round(time.perf_counter() - t0, 3)
    timing["total"] = round(time.perf_counter() - t_start, 3)
    return Registration(transform, quality, str(fs.path), str(ms.path), [round(m, 4) for m in levels], cfg, timing,
                        fv, mv)


def _plausible(a: np.ndarray) -> bool:
    """An affine map of two sections of one tissue: scale within 0.5-2 and shear modest."""
    sv = np.linalg.svd(a[:2, :2], compute_uv=False)
    return bool(sv[1] > 0.5 and sv[0] < 2.0 and sv[0] / max(sv[1], 1e-9) < 1.5)


def check_landmarks(xy: Any, source: str | Path) -> np.ndarray:
    """Validate landmark points (N×2 finite numbers); HistoError naming ``source`` otherwise."""
    a = np.asarray(xy, np.float64)
    if a.ndim != 2 or a.shape[1] != 2 or not np.all(np.isfinite(a)):
        raise HistoError(f"{source}: landmarks must be rows of finite X,Y numbers")
    return a
