"""How good a registration is, without landmarks: tissue overlap, local residual shifts, and a status.

- ``dice``: overlap of the fixed tissue mask with the registered moving one (1 = same outline).
- ``residual_um``: on a grid of patches holding tissue on both sides, the shift that phase correlation
  still finds between the fixed view and the registered moving view (sub-pixel); the median over the
  patches whose correlation peak is clear is the estimated registration error (``estimated_error_um``),
  and the 90th percentile shows the worst places. It is an estimate from the images themselves: it cannot
  see an error the images cannot show (a flip of a symmetric shape), so the overlap is checked too.
- ``status``: ``ok`` when the overlap is at least ``DICE_OK`` and the error estimate at most
  ``ERROR_OK_UM``; ``failed`` when the overlap is below ``DICE_FAILED`` or no patch could be measured on
  two slides with tissue; ``poor`` in between.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

DICE_OK = 0.80
DICE_FAILED = 0.50
ERROR_OK_UM = 50.0
PATCH_UM = 400.0  # side of the residual patches
MIN_RESPONSE = 0.15  # phase-correlation peaks below this are noise


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two bool masks (1.0 when both are empty)."""
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def residual_shifts_um(fixed: np.ndarray, moving: np.ndarray, fmask: np.ndarray, mmask: np.ndarray,
                       mpp: float) -> np.ndarray:
    """Residual shift lengths (µm) of every patch with tissue on both sides and a clear correlation peak."""
    p = int(max(16, min(128, round(PATCH_UM / mpp))))
    h, w = fixed.shape
    win = cv2.createHanningWindow((p, p), cv2.CV_32F)
    out = []
    for y in range(0, h - p + 1, p // 2):
        for x in range(0, w - p + 1, p // 2):
            fm, mm = fmask[y:y + p, x:x + p], mmask[y:y + p, x:x + p]
            if fm.mean() < 0.5 or mm.mean() < 0.5:
                continue
            a = np.ascontiguousarray(fixed[y:y + p, x:x + p], np.float32)
            b = np.ascontiguousarray(moving[y:y + p, x:x + p], np.float32)
            if a.std() < 1e-3 or b.std() < 1e-3:
                continue
            (dx, dy), response = cv2.phaseCorrelate(a - a.mean(), b - b.mean(), win)
            if response >= MIN_RESPONSE and max(abs(dx), abs(dy)) < p / 4:
                out.append(np.hypot(dx, dy) * mpp)
    return np.asarray(out, np.float64)


def assess(fixed: np.ndarray, moving: np.ndarray, fmask: np.ndarray, mmask: np.ndarray, mpp: float,
           correlation: float) -> dict[str, Any]:
    """The quality figures of registration.json and its status."""
    d = dice(fmask, mmask)
    res = residual_shifts_um(fixed, moving, fmask, mmask, mpp)
    est = float(np.median(res)) if res.size else None
    p90 = float(np.percentile(res, 90)) if res.size else None
    # The residual cannot resolve below about a tenth of a pixel of the view it is measured on.
    if est is not None:
        est = max(est, 0.1 * mpp)
    has_tissue = bool(fmask.any() and mmask.any())
    reasons = []
    if not has_tissue:
        status = "failed"
        reasons.append("no tissue on " + ("either slide" if not (fmask.any() or mmask.any()) else
                                          "the fixed slide" if not fmask.any() else "the moving slide"))
    elif d < DICE_FAILED:
        status = "failed"
        reasons.append(f"tissue overlap (Dice) {d:.2f} < {DICE_FAILED}")
    elif est is None:
        status = "poor"
        reasons.append("no tissue patch had a clear enough correlation to estimate the error")
    else:
        status = "ok"
        if d < DICE_OK:
            status = "poor"
            reasons.append(f"tissue overlap (Dice) {d:.2f} < {DICE_OK}")
        if est > ERROR_OK_UM:
            status = "poor"
            reasons.append(f"estimated error {est:.0f} µm > {ERROR_OK_UM:g} µm")
    return {
        "status": status,
        "reasons": reasons,
        "dice": round(d, 4),
        "correlation": round(float(correlation), 4),
        "estimated_error_um": None if est is None else round(est, 2),
        "residual_p90_um": None if p90 is None else round(p90, 2),
        "n_residual_patches": int(res.size),
        "measured_at_mpp": round(float(mpp), 4),
        "thresholds": {"dice_ok": DICE_OK, "dice_failed": DICE_FAILED, "error_ok_um": ERROR_OK_UM},
    }
