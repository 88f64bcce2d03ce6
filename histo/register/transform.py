"""`SlideTransform`: the map between two slides' level-0 frames (affine plus an optional smooth field), both ways.

Conventions (all in µm, each slide's µm = its level-0 px × its mpp, origin at the top-left corner):

- ``affine_um`` (3×3) maps a fixed-slide point to the moving slide: ``m = A · (f + u(f))``.
- ``u`` is the displacement field (µm) sampled on a fixed-frame grid of ``grid_um`` µm spacing, pixel
  (i, j) centred at ((j + 0.5)·grid_um, (i + 0.5)·grid_um); bilinear in between, edge values beyond.
- ``v`` is its inverse on the same grid: ``f = g + v(g)`` where ``g = A⁻¹ · m``. It is computed once
  by fixed-point iteration, so both directions cost one interpolation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from histo.errors import HistoError
from histo.tissue import TissueMask


@dataclass(frozen=True)
class DisplacementField:
    """A smooth displacement in µm on a regular fixed-frame grid, and its inverse on the same grid."""

    grid_um: float
    forward_um: np.ndarray  # (H, W, 2) float32: (dx, dy) of u
    inverse_um: np.ndarray  # (H, W, 2) float32: (dx, dy) of v

    @classmethod
    def from_forward(cls, forward_um: np.ndarray, grid_um: float, iterations: int = 30) -> DisplacementField:
        """The field and its inverse (fixed-point iteration v ← −u(g + v), exact for smooth, small fields)."""
        fwd = np.ascontiguousarray(forward_um, np.float32)
        if fwd.ndim != 3 or fwd.shape[2] != 2:
            raise HistoError(f"a displacement field must be H×W×2, got shape {fwd.shape}")
        inv = -fwd.copy()
        h, w = fwd.shape[:2]
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
        for _ in range(iterations):
            mx = gx + inv[..., 0] / grid_um
            my = gy + inv[..., 1] / grid_um
            inv = -cv2.remap(fwd, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return cls(float(grid_um), fwd, inv.astype(np.float32))

    def sample(self, which: str, x_um: np.ndarray, y_um: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bilinear (dx, dy) of the forward or inverse field at points in µm."""
        arr = self.forward_um if which == "forward" else self.inverse_um
        px = (np.asarray(x_um, np.float64) / self.grid_um - 0.5).astype(np.float32)
        py = (np.asarray(y_um, np.float64) / self.grid_um - 0.5).astype(np.float32)
        shape, n = px.shape, px.size
        # cv2.remap maps must stay below 32767 px a side: sample through a padded 1024-wide image.
        rows = max(1, -(-n // 1024))
        mx = np.zeros(rows * 1024, np.float32)
        my = np.zeros(rows * 1024, np.float32)
        mx[:n], my[:n] = px.ravel(), py.ravel()
        out = cv2.remap(arr, mx.reshape(rows, 1024), my.reshape(rows, 1024), cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE).reshape(-1, 2)[:n]
        return out[:, 0].reshape(shape).astype(np.float64), out[:, 1].reshape(shape).astype(np.float64)

    def max_inverse_error_um(self) -> float:
        """Largest |u(g + v(g)) + v(g)| over the grid: how far the stored inverse is from exact."""
        h, w = self.forward_um.shape[:2]
        gx, gy = np.meshgrid((np.arange(w) + 0.5) * self.grid_um, (np.arange(h) + 0.5) * self.grid_um)
        vx, vy = self.sample("inverse", gx, gy)
        ux, uy = self.sample("forward", gx + vx, gy + vy)
        return float(np.max(np.hypot(ux + vx, uy + vy))) if gx.size else 0.0


def _check_points(xy: Any) -> np.ndarray:
    a = np.asarray(xy, np.float64)
    if a.ndim != 2 or a.shape[1] != 2:
        raise HistoError(f"points must be an N×2 array of (x, y), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise HistoError("points must be finite numbers")
    return a


@dataclass(frozen=True)
class SlideTransform:
    """Fixed ↔ moving level-0 maps between two slides (see the module docstring for the conventions)."""

    fixed_dimensions: tuple[int, int]
    fixed_mpp: float
    moving_dimensions: tuple[int, int]
    moving_mpp: float
    affine_um: np.ndarray  # 3×3, fixed µm → moving µm
    field: DisplacementField | None = None

    @classmethod
    def identity(cls, fixed_dimensions: Sequence[int], fixed_mpp: float,
                 moving_dimensions: Sequence[int] | None = None, moving_mpp: float | None = None) -> SlideTransform:
        """The transform of two slides that already share a frame."""
        return cls(tuple(int(v) for v in fixed_dimensions), float(fixed_mpp),  # type: ignore[arg-type]
                   tuple(int(v) for v in (moving_dimensions or fixed_dimensions)),  # type: ignore[arg-type]
                   float(moving_mpp or fixed_mpp), np.eye(3))

    # -- points ---------------------------------------------------------------------------------------
    def fixed_to_moving_um(self, xy_um: Any) -> np.ndarray:
        """Fixed-slide points (µm) on the moving slide (µm)."""
        p = _check_points(xy_um)
        if self.field is not None and len(p):
            dx, dy = self.field.sample("forward", p[:, 0], p[:, 1])
            p = p + np.stack([dx, dy], axis=1)
        return _apply(self.affine_um, p)

    def moving_to_fixed_um(self, xy_um: Any) -> np.ndarray:
        """Moving-slide points (µm) on the fixed slide (µm)."""
        p = _check_points(xy_um)
        inv = np.linalg.inv(self.affine_um)
        g = _apply(inv, p)
        if self.field is not None and len(g):
            dx, dy = self.field.sample("inverse", g[:, 0], g[:, 1])
            g = g + np.stack([dx, dy], axis=1)
        return g

    def fixed_to_moving(self, xy_px: Any) -> np.ndarray:
        """Fixed level-0 px → moving level-0 px."""
        return self.fixed_to_moving_um(_check_points(xy_px) * self.fixed_mpp) / self.moving_mpp

    def moving_to_fixed(self, xy_px: Any) -> np.ndarray:
        """Moving level-0 px → fixed level-0 px."""
        return self.moving_to_fixed_um(_check_points(xy_px) * self.moving_mpp) / self.fixed_mpp

    @property
    def affine_px(self) -> np.ndarray:
        """The affine part in level-0 px: fixed px → moving px (before the field)."""
        return np.diag([1 / self.moving_mpp, 1 / self.moving_mpp, 1.0]) @ self.affine_um @ np.diag(
            [self.fixed_mpp, self.fixed_mpp, 1.0])

    def is_identity(self, tol_um: float) -> bool:
        """True when every fixed point moves by less than tol_um (frames of the same size agree)."""
        if tuple(self.fixed_dimensions) != tuple(self.moving_dimensions):
            return False
        if abs(self.fixed_mpp - self.moving_mpp) > 1e-9 * self.fixed_mpp:
            return False
        w, h = self.fixed_dimensions
        pts = _grid_points(w * self.fixed_mpp, h * self.fixed_mpp, 17)
        return float(np.max(np.hypot(*(self.fixed_to_moving_um(pts) - pts).T))) < tol_um

    # -- masks ----------------------------------------------------------------------------------------
    def mask_to_moving(self, mask: TissueMask) -> TissueMask:
        """A fixed-frame mask resampled onto the moving slide's frame (same µm/px; outside = False)."""
        return _warp_mask(mask, self.moving_dimensions, self.moving_mpp, self.fixed_dimensions, self.fixed_mpp,
                          self.moving_to_fixed_um)

    def mask_to_fixed(self, mask: TissueMask) -> TissueMask:
        """A moving-frame mask resampled onto the fixed slide's frame (same µm/px; outside = False)."""
        return _warp_mask(mask, self.fixed_dimensions, self.fixed_mpp, self.moving_dimensions, self.moving_mpp,
                          self.fixed_to_moving_um)

    def rotation_deg(self) -> float:
        """Rotation angle of the affine part in degrees (after any flip), counter-clockwise in image axes."""
        a = self.affine_um[:2, :2]
        if self.flipped():
            a = a @ np.diag([-1.0, 1.0])
        return float(math.degrees(math.atan2(a[1, 0], a[0, 0])))

    def flipped(self) -> bool:
        """True when the affine part mirrors (negative determinant)."""
        return bool(np.linalg.det(self.affine_um[:2, :2]) < 0)


def _apply(a: np.ndarray, p: np.ndarray) -> np.ndarray:
    """A 3×3 affine on N×2 points (explicit products: much faster than a matmul with an inner size of 2)."""
    out = np.empty_like(p)
    out[:, 0] = a[0, 0] * p[:, 0] + a[0, 1] * p[:, 1] + a[0, 2]
    out[:, 1] = a[1, 0] * p[:, 0] + a[1, 1] * p[:, 1] + a[1, 2]
    return out


def _grid_points(w: float, h: float, n: int) -> np.ndarray:
    xs, ys = np.meshgrid(np.linspace(0, w, n), np.linspace(0, h, n))
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def _warp_mask(mask: TissueMask, out_dims: tuple[int, int], out_mpp: float, src_dims: tuple[int, int],
               src_mpp: float, out_to_src_um: Any) -> TissueMask:
    if tuple(int(v) for v in mask.slide_dimensions) != tuple(int(v) for v in src_dims):
        raise HistoError(f"the mask was made for a {mask.slide_dimensions[0]}x{mask.slide_dimensions[1]} px slide, "
                         f"not the {src_dims[0]}x{src_dims[1]} px slide this transform starts from")
    ds = mask.mpp / out_mpp
    ow, oh = out_dims
    shape = (max(1, round(oh / ds)), max(1, round(ow / ds)))
    out = np.zeros(shape, bool)
    src_ds_um = mask.downsample * src_mpp  # µm per source mask pixel
    step = 1024  # rows at a time: bounded memory on any slide
    xs = (np.arange(shape[1]) + 0.5) * ds * out_mpp
    src = mask.mask.astype(np.uint8)
    for r0 in range(0, shape[0], step):
        rows = np.arange(r0, min(shape[0], r0 + step))
        gx, gy = np.meshgrid(xs, (rows + 0.5) * ds * out_mpp)
        p = out_to_src_um(np.stack([gx.ravel(), gy.ravel()], axis=1))
        mx = (p[:, 0] / src_ds_um - 0.5).astype(np.float32).reshape(gx.shape)
        my = (p[:, 1] / src_ds_um - 0.5).astype(np.float32).reshape(gx.shape)
        out[rows[0]:rows[-1] + 1] = cv2.remap(src, mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                                              borderValue=0) > 0
    return TissueMask(mask=out, mpp=mask.mpp, downsample=ds, slide_dimensions=(int(ow), int(oh)))
