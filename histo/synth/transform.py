"""Phantom IHC slides under a known transform (rotation, flip, shift, scale, mild smooth warp): registration truth.

The H&E slide is the fixed frame. The IHC slide is written so that its level-0 point ``p`` (moving px)
shows the phantom at ``T(p)`` (fixed px), with, in µm from each frame's centre ``q = p·mpp − c_moving``::

    T(p)·mpp = c_fixed + shift_um + scale · R(rotation_deg) · F · q + warp(q)
    warp(q) = warp_um · (sin(2π q_y / wavelength_um + phase_x), sin(2π q_x / wavelength_um + phase_y))

where F mirrors x when ``flip``. The moving frame is the bounding box of the transformed fixed frame, so
no tissue is cut off. ``summary.json`` records this as ``ihc_transform`` (:meth:`IhcTransform.to_dict`);
the truth GeoJSON and cell table stay in the fixed (H&E) frame.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from histo.errors import ConfigError


@dataclass(frozen=True)
class IhcTransform:
    """A known moving (IHC) → fixed (H&E) map of a phantom pair; see the module docstring."""

    rotation_deg: float = 0.0
    flip: bool = False
    scale: float = 1.0
    shift_um: tuple[float, float] = (0.0, 0.0)
    warp_um: float = 0.0
    wavelength_um: float = 1000.0
    phase: tuple[float, float] = (0.0, 0.0)
    mpp: float = 0.25
    fixed_dimensions: tuple[int, int] = (0, 0)
    moving_dimensions: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        if not 0.9 <= self.scale <= 1.1:
            raise ConfigError(f"ihc transform: scale must lie within 0.9-1.1, got {self.scale}")
        if self.warp_um < 0 or self.wavelength_um <= 0:
            raise ConfigError("ihc transform: warp_um must be >= 0 and wavelength_um > 0")
        if 2 * math.pi * self.warp_um / self.wavelength_um > 0.3:
            raise ConfigError("ihc transform: the warp is too strong to be a mild deformation "
                              "(2π·warp_um/wavelength_um must stay <= 0.3)")

    @classmethod
    def random(cls, rng: np.random.Generator, mpp: float, fixed_dimensions: tuple[int, int]) -> IhcTransform:
        """Any rotation, a flip half the time, ±5 % scale, a shift of up to 5 % of the slide, a warp of 5-15 µm."""
        ext = max(fixed_dimensions) * mpp
        t = cls(rotation_deg=float(rng.uniform(0, 360)), flip=bool(rng.random() < 0.5),
                scale=float(rng.uniform(0.95, 1.05)),
                shift_um=(float(rng.uniform(-0.05, 0.05) * ext), float(rng.uniform(-0.05, 0.05) * ext)),
                warp_um=float(rng.uniform(5, 15)), wavelength_um=float(0.6 * ext),
                phase=(float(rng.uniform(0, 2 * math.pi)), float(rng.uniform(0, 2 * math.pi))), mpp=float(mpp),
                fixed_dimensions=tuple(int(v) for v in fixed_dimensions))  # type: ignore[arg-type]
        return t.with_frame(fixed_dimensions)

    def with_frame(self, fixed_dimensions: tuple[int, int]) -> IhcTransform:
        """The same transform with the moving frame sized to hold the whole transformed fixed frame."""
        fw, fh = (int(v) for v in fixed_dimensions)
        base = IhcTransform(**{**asdict(self), "fixed_dimensions": (fw, fh), "moving_dimensions": (fw, fh)})
        corners = np.array([[0, 0], [fw, 0], [0, fh], [fw, fh]], np.float64)
        q = base._linear_inverse(corners * self.mpp)
        span = 2 * np.abs(q).max(axis=0) + 2 * self.warp_um / max(self.scale, 1e-9)
        mw, mh = (int(math.ceil(v / self.mpp)) + 2 for v in span)
        return IhcTransform(**{**asdict(self), "fixed_dimensions": (fw, fh), "moving_dimensions": (mw, mh)})

    def _matrix(self) -> np.ndarray:
        t = math.radians(self.rotation_deg)
        r = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]]) * self.scale
        return r @ np.diag([-1.0, 1.0]) if self.flip else r

    def _centres_um(self) -> tuple[np.ndarray, np.ndarray]:
        cf = np.array(self.fixed_dimensions, np.float64) * self.mpp / 2
        cm = np.array(self.moving_dimensions, np.float64) * self.mpp / 2
        return cf, cm

    def _warp(self, q: np.ndarray) -> np.ndarray:
        k = 2 * math.pi / self.wavelength_um
        return self.warp_um * np.stack([np.sin(k * q[:, 1] + self.phase[0]), np.sin(k * q[:, 0] + self.phase[1])], axis=1)

    def _linear_inverse(self, f_um: np.ndarray) -> np.ndarray:
        cf, _ = self._centres_um()
        return (f_um - cf - np.asarray(self.shift_um)) @ np.linalg.inv(self._matrix()).T

    def moving_to_fixed(self, xy_px: Any) -> np.ndarray:
        """Moving (IHC) level-0 px → fixed (H&E) level-0 px, exactly."""
        p = np.asarray(xy_px, np.float64).reshape(-1, 2)
        cf, cm = self._centres_um()
        q = p * self.mpp - cm
        f = cf + np.asarray(self.shift_um) + q @ self._matrix().T + self._warp(q)
        return f / self.mpp

    def fixed_to_moving(self, xy_px: Any, iterations: int = 50) -> np.ndarray:
        """Fixed level-0 px → moving level-0 px (fixed-point iteration; the warp is mild, so it converges)."""
        f = np.asarray(xy_px, np.float64).reshape(-1, 2) * self.mpp
        cf, cm = self._centres_um()
        minv = np.linalg.inv(self._matrix())
        base = f - cf - np.asarray(self.shift_um)
        q = base @ minv.T
        for _ in range(iterations):
            q = (base - self._warp(q)) @ minv.T
        return (q + cm) / self.mpp

    def to_dict(self) -> dict[str, Any]:
        """JSON-able parameters (summary.json ``ihc_transform``)."""
        d = asdict(self)
        d["maps"] = "IHC (moving) level-0 px -> H&E (fixed) level-0 px; see histo.synth.transform"
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IhcTransform:
        """Rebuild from :meth:`to_dict` output."""
        keys = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for k in ("shift_um", "phase", "fixed_dimensions", "moving_dimensions"):
            if k in keys:
                keys[k] = tuple(keys[k])
        return cls(**keys)


def render_moving(ph: Any, tr: IhcTransform, x: int, y: int, w: int, h: int) -> np.ndarray:
    """IHC RGB of a moving-frame box: the phantom rendered where T sends each pixel (bilinear), glass outside."""
    gx, gy = np.meshgrid(np.arange(x, x + w, dtype=np.float64) + 0.5, np.arange(y, y + h, dtype=np.float64) + 0.5)
    src = tr.moving_to_fixed(np.stack([gx.ravel(), gy.ravel()], axis=1)) - 0.5
    fw, fh = tr.fixed_dimensions
    glass = tuple(float(v) for v in np.asarray(ph.ihc_stain.background, np.float64).ravel()[:3])
    x0, y0 = max(0, int(math.floor(src[:, 0].min())) - 2), max(0, int(math.floor(src[:, 1].min())) - 2)
    x1, y1 = min(fw, int(math.ceil(src[:, 0].max())) + 3), min(fh, int(math.ceil(src[:, 1].max())) + 3)
    if x1 <= x0 or y1 <= y0:
        return np.broadcast_to(np.asarray(glass, np.float32), (h, w, 3)).round().astype(np.uint8).copy()
    img = ph.renderer.render(x0, y0, x1 - x0, y1 - y0, "ihc")
    mx = (src[:, 0] - x0).astype(np.float32).reshape(h, w)
    my = (src[:, 1] - y0).astype(np.float32).reshape(h, w)
    return cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=glass)


def add_transformed_ihc(folder: str | Path, spec: Any, tr: IhcTransform, progress: bool = False) -> Path:
    """Write <case>_IHC_<marker>.tiff under ``tr`` into a phantom folder written without IHC; update summary.json."""
    from histo.synth.phantom import build_phantom, geojson
    from histo.synth.phantom.truth import write_json_atomic
    from histo.synth.tiff_writer import write_pyramidal_tiff

    folder = Path(folder)
    ph = build_phantom(spec)
    tr = tr.with_frame((ph.width_px, ph.height_px))
    path = folder / f"{spec.name}_IHC_{spec.ihc.marker}.tiff"
    desc = f"histo phantom {spec.name} seed={spec.seed} modality=ihc marker={spec.ihc.marker} transformed"
    mw, mh = tr.moving_dimensions
    write_pyramidal_tiff(path, mw, mh, spec.mpp, lambda x, y, w, h: render_moving(ph, tr, x, y, w, h),
                         chunk_px=1024, jpeg_quality=spec.stain.jpeg_quality, progress=progress, description=desc)
    write_json_atomic(folder / "truth_ihc.geojson", geojson(ph, "ihc"))
    sp = folder / "summary.json"
    summ = json.loads(sp.read_text(encoding="utf-8"))
    summ["files"]["ihc"] = path.name
    summ["files"]["truth_ihc"] = "truth_ihc.geojson"
    summ["ihc_transform"] = tr.to_dict()
    summ["ihc_transform"]["truth_frame"] = "truth_ihc.geojson and cells.parquet are in the H&E (fixed) frame"
    write_json_atomic(sp, summ)
    return path
