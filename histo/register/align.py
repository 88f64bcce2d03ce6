"""The registration steps: rotation/flip search, coarse-to-fine affine (ECC), then a smooth non-rigid field.

1. **Rigid search** on a small overview (``coarse_px`` long side): every flip × every ``angle_step_deg``
   rotation about the tissue centroids, the translation of each from an FFT cross-correlation; the best
   few candidates go on.
2. **Affine** by OpenCV's ECC (enhanced correlation coefficient, Evangelidis & Psarakis 2008), from the
   coarse level by halving the µm/px, on views of at most ``affine_max_px`` (the finest level, up to
   ``max_px``, is for the non-rigid step and the quality figures). ECC maximises a correlation that ignores gain and
   offset between the two images, which suits two stains of one tissue.
3. **Non-rigid**: DIS optical flow (Kroeger et al. 2016) between the fixed view and the affinely warped
   moving view at the finest level, regularised by a Gaussian of ``field_smooth_um`` µm (a normalised
   convolution over the tissue, so glass does not pull the field to zero). It is kept only when it raises
   the correlation in the tissue, and only tried when the affinely registered views correlate at least
   ``field_min_correlation`` (otherwise the slides share no inner structure for it to follow).

Every size is in µm; the levels are chosen from the slides' extent in µm, so the same settings behave
the same on a 1 mm phantom and a 25 mm slide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import scipy.fft as sfft

from histo.register.images import View, px_to_um, warp_to


@dataclass(frozen=True)
class RegisterConfig:
    """Every knob of registration in one place (sizes in µm or output pixels)."""

    coarse_px: int = 256  # long side of the rotation/flip search view
    max_px: int = 2048  # long side of the finest view (bounds time and memory on any slide)
    affine_max_px: int = 1024  # long side of the finest view ECC refines the affine map on
    mask_max_px: int = 1024  # long side of the view tissue is detected on (at most)
    min_mpp: float = 2.0  # never finer than this µm/px: registration needs tissue shape, not cells
    angle_step_deg: float = 4.0
    candidates: int = 3  # rigid-search candidates refined by ECC
    allow_flip: bool = True
    nonrigid: bool = True
    field_smooth_um: float = 200.0  # Gaussian sigma regularising the displacement field ...
    field_smooth_fraction: float = 0.1  # ... but never over this fraction of the slide extent (small specimens)
    max_field_um: float = 1000.0  # a field larger than this anywhere is not a deformation but a failure
    # Below this correlation of the affinely registered views the two slides share no structure inside the
    # tissue that a field could follow (optical flow would fit noise, and move an accurate affine map).
    field_min_correlation: float = 0.2
    channel: str = "hematoxylin"


def level_mpps(extent_um: float, cfg: RegisterConfig) -> list[float]:
    """µm/px of each level, coarse to fine: halving from the coarse search view down to the finest."""
    coarse = extent_um / cfg.coarse_px
    fine = max(extent_um / cfg.max_px, cfg.min_mpp)
    out = [coarse]
    while out[-1] / 2 > fine * 1.05:
        out.append(out[-1] / 2)
    if out[-1] > fine * 1.05:
        out.append(fine)
    return out


def effective_smooth_um(extent_um: float, cfg: RegisterConfig) -> float:
    """The field's Gaussian sigma (µm): ``field_smooth_um``, capped at ``field_smooth_fraction`` of the extent.

    A field as smooth as 200 µm cannot follow any deformation of a specimen only 0.5 mm across (its
    deformations have a wavelength of a fraction of its size); on a whole slide the cap never binds."""
    return float(min(cfg.field_smooth_um, cfg.field_smooth_fraction * extent_um))


def _centroid_um(v: View) -> np.ndarray:
    w = v.feature
    total = float(w.sum())
    if total <= 0:
        h, ww = w.shape
        return np.array([ww / 2 * v.mpp, h / 2 * v.mpp])
    ys, xs = np.indices(w.shape)
    return np.array([(xs * w).sum() / total + 0.5, (ys * w).sum() / total + 0.5]) * v.mpp


def _rot(theta_deg: float, flip: bool) -> np.ndarray:
    t = math.radians(theta_deg)
    r = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return r @ np.diag([-1.0, 1.0]) if flip else r


def _affine_about(m2: np.ndarray, cf: np.ndarray, cm: np.ndarray) -> np.ndarray:
    """3×3 map m = cm + M (f − cf)."""
    a = np.eye(3)
    a[:2, :2] = m2
    a[:2, 2] = cm - m2 @ cf
    return a


def _xcorr_shift(f: np.ndarray, w: np.ndarray, f_fft: np.ndarray, pad: tuple[int, int]) -> tuple[float, np.ndarray]:
    """Cosine similarity at the best integer shift of w onto f, and that shift (dx, dy) in px."""
    wf = sfft.rfft2(w, s=pad)
    cc = sfft.irfft2(f_fft * np.conj(wf), s=pad)
    idx = int(np.argmax(cc))
    dy, dx = np.unravel_index(idx, cc.shape)
    if dy > pad[0] // 2:
        dy -= pad[0]
    if dx > pad[1] // 2:
        dx -= pad[1]
    norm = math.sqrt(float((f * f).sum()) * float((w * w).sum())) or 1.0
    return float(cc.flat[idx]) / norm, np.array([dx, dy], np.float64)


def rigid_search(fixed: View, moving: View, cfg: RegisterConfig) -> list[tuple[float, np.ndarray]]:
    """The best rigid candidates (score, affine_um fixed → moving) over every flip and rotation."""
    cf, cm = _centroid_um(fixed), _centroid_um(moving)
    h, w = fixed.shape
    # Padding by half the size: shifts up to half the view are found without wrap-around.
    pad = (sfft.next_fast_len(h + h // 2, real=True), sfft.next_fast_len(w + w // 2, real=True))
    f_fft = sfft.rfft2(fixed.feature, s=pad)
    scored: list[tuple[float, np.ndarray]] = []
    for flip in (False, True) if cfg.allow_flip else (False,):
        for theta in np.arange(0.0, 360.0, cfg.angle_step_deg):
            a = _affine_about(_rot(theta, flip), cf, cm)
            warped = warp_to(moving.feature, a, moving.mpp, fixed.shape)
            score, shift = _xcorr_shift(fixed.feature, warped, f_fft, pad)
            # warped shifted by `shift` fixed px matches: m = A (f − shift·mpp)
            t = np.eye(3)
            t[:2, 2] = -shift * fixed.mpp
            scored.append((score, a @ t))
    scored.sort(key=lambda s: -s[0])
    out: list[tuple[float, np.ndarray]] = []
    for s, a in scored:  # distinct candidates only: neighbouring angles of one optimum say the same
        if all(_angle_apart(a, b) > 15.0 or np.linalg.det(a[:2, :2]) * np.linalg.det(b[:2, :2]) < 0 for _, b in out):
            out.append((s, a))
        if len(out) >= cfg.candidates:
            break
    return out


def _angle_apart(a: np.ndarray, b: np.ndarray) -> float:
    r = a[:2, :2] @ np.linalg.inv(b[:2, :2])
    return abs(math.degrees(math.atan2(r[1, 0], r[0, 0])))


def ecc_affine(fixed: View, moving: View, affine_um: np.ndarray, iterations: int = 100, eps: float = 1e-6) -> tuple[float, np.ndarray]:
    """ECC refinement of affine_um (fixed → moving) on one level; returns (correlation, affine_um)."""
    s = px_to_um(fixed.mpp)
    sm = px_to_um(moving.mpp)
    warp = (np.linalg.inv(sm) @ affine_um @ s)[:2].astype(np.float32)
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, eps)
    try:
        cc, warp = cv2.findTransformECC(  # type: ignore[call-overload]  # the stubs lack the None (no) input mask
            fixed.feature, moving.feature, warp, cv2.MOTION_AFFINE, crit, None, 5)
    except cv2.error:
        return -1.0, affine_um  # did not converge: keep the start
    a = np.eye(3)
    a[:2] = warp
    return float(cc), sm @ a @ np.linalg.inv(s)


def correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of two images over ``mask``."""
    if int(mask.sum()) < 16:
        return 0.0
    x = a[mask].astype(np.float64)
    y = b[mask].astype(np.float64)
    x -= x.mean()
    y -= y.mean()
    d = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum() / d) if d > 0 else 0.0


def _smooth_normalised(field: np.ndarray, weight: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian-weighted average of a field where ``weight`` > 0, faded to zero far from any weight.

    A wide Gaussian is applied on a grid a quarter of sigma apart and interpolated back: the result is
    the same to a small fraction of a pixel, at a cost that does not grow with sigma.
    """
    h, w = weight.shape
    k = max(1, int(sigma_px // 4))
    small = (max(1, w // k), max(1, h // k))
    fw = cv2.resize(field * weight[..., None], small, interpolation=cv2.INTER_AREA)
    ww = cv2.resize(weight, small, interpolation=cv2.INTER_AREA)
    s = sigma_px / k
    wsum = cv2.GaussianBlur(ww, (0, 0), s, borderType=cv2.BORDER_CONSTANT)
    ones = cv2.GaussianBlur(np.ones_like(ww), (0, 0), s, borderType=cv2.BORDER_CONSTANT)
    out = cv2.GaussianBlur(fw, (0, 0), s, borderType=cv2.BORDER_CONSTANT) / (wsum[..., None] + 1e-6)
    # Far from any tissue the average is of almost nothing: fade to zero displacement there.
    out *= np.clip(wsum / (0.05 * ones + 1e-6), 0, 1)[..., None]
    return cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)


def nonrigid_field(fixed: View, moving: View, affine_um: np.ndarray, cfg: RegisterConfig) -> np.ndarray | None:
    """A smooth displacement (fixed px at fixed.mpp, H×W×2) that improves on the affine map, or None."""
    warped = warp_to(moving.feature, affine_um, moving.mpp, fixed.shape)
    wmask = warp_to(moving.mask.astype(np.uint8), affine_um, moving.mpp, fixed.shape, cv2.INTER_NEAREST) > 0
    union = fixed.mask | wmask
    before = correlation(fixed.feature, warped, union)
    if before < cfg.field_min_correlation:
        return None
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)  # type: ignore[attr-defined]  # in cv2, not its stubs
    f8 = np.clip(fixed.feature * 255, 0, 255).astype(np.uint8)
    w8 = np.clip(warped * 255, 0, 255).astype(np.uint8)
    flow = dis.calc(f8, w8, None)
    sigma_px = max(cfg.field_smooth_um / fixed.mpp, 1.0)
    field = _smooth_normalised(flow.astype(np.float32), union.astype(np.float32), sigma_px)
    if float(np.abs(field).max(initial=0.0)) * fixed.mpp > cfg.max_field_um:
        return None
    after_img = warp_to(moving.feature, affine_um, moving.mpp, fixed.shape, field_px=field)
    after = correlation(fixed.feature, after_img, union)
    return field if after > before + 1e-3 else None


def downsample_field(field_px: np.ndarray, mpp: float, grid_um: float) -> tuple[np.ndarray, float]:
    """A fixed-px field at ``mpp`` as µm on a coarser grid (integer factor; pixel centres stay aligned)."""
    k = max(1, int(grid_um // mpp))
    h, w = field_px.shape[:2]
    hh, ww = -(-h // k) * k, -(-w // k) * k
    padded = np.pad(field_px, ((0, hh - h), (0, ww - w), (0, 0)), mode="edge")
    coarse = padded.reshape(hh // k, k, ww // k, k, 2).mean(axis=(1, 3)) * mpp
    return coarse.astype(np.float32), k * mpp
