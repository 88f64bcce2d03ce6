"""registration.json, the displacement field file, the QC overlay and landmark CSVs (see histo.register)."""

from __future__ import annotations

import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from histo import __version__
from histo.atomic import atomic_path, write_text
from histo.errors import HistoError
from histo.register.run import Registration, warp_view_image
from histo.register.transform import DisplacementField, SlideTransform

SCHEMA = "histo.registration/1"
REGISTRATION_JSON = "registration.json"
FIELD_FILE = "displacement_field.npz"
QC_PNG = "registration_qc.png"
LANDMARKS_OUT = "landmarks_in_fixed.csv"


def read_landmarks(path: str | os.PathLike[str]) -> np.ndarray:
    """Landmarks from a CSV with columns X and Y (level-0 px; other columns, e.g. an index, are ignored)."""
    p = Path(path)
    try:
        df = pd.read_csv(p)
    except (OSError, ValueError) as exc:
        raise HistoError(f"{p}: cannot read the landmark CSV ({exc})") from None
    if not {"X", "Y"} <= set(df.columns):
        raise HistoError(f"{p}: a landmark CSV needs a header with X and Y columns, found {list(df.columns)}")
    try:
        xy = df[["X", "Y"]].to_numpy(np.float64)
    except (TypeError, ValueError):
        raise HistoError(f"{p}: X and Y must be numbers") from None
    if not np.all(np.isfinite(xy)):
        raise HistoError(f"{p}: X and Y must be finite numbers (level-0 px); some rows are empty or not numbers")
    return xy


def write_landmarks(path: str | os.PathLike[str], xy: np.ndarray) -> Path:
    """Write X,Y landmarks (level-0 px) atomically."""
    return write_text(path, pd.DataFrame({"X": xy[:, 0], "Y": xy[:, 1]}).to_csv(index=False, float_format="%.2f"))


def _frame(path: str, t: SlideTransform, which: str) -> dict[str, Any]:
    w, h = t.fixed_dimensions if which == "fixed" else t.moving_dimensions
    mpp = t.fixed_mpp if which == "fixed" else t.moving_mpp
    return {"path": path, "name": Path(path).stem, "width_px": int(w), "height_px": int(h), "mpp": round(float(mpp), 6)}


def registration_dict(reg: Registration, field_file: str | None, qc_file: str | None,
                      landmarks_file: str | None) -> dict[str, Any]:
    """The registration.json content."""
    t = reg.transform
    a = t.affine_um
    fld = None
    if t.field is not None:
        fld = {"file": field_file, "grid_um": round(t.field.grid_um, 4), "shape": list(t.field.forward_um.shape[:2]),
               "max_um": round(float(np.abs(t.field.forward_um).max()), 3),
               "max_inverse_error_um": round(t.field.max_inverse_error_um(), 4)}
    cfg = {k: getattr(reg.config, k) for k in reg.config.__dataclass_fields__}
    return {
        "schema": SCHEMA,
        "histo_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": reg.status,
        "units": "µm",
        "fixed": _frame(reg.fixed_path, t, "fixed"),
        "moving": _frame(reg.moving_path, t, "moving"),
        "transform": {
            "model": "affine+field" if fld else "affine",
            "maps": "fixed µm -> moving µm: m = affine_um · (f + field(f)); µm = level-0 px × that slide's mpp",
            "affine_um": [[float(v) for v in row] for row in a],
            "affine_px": [[float(v) for v in row] for row in t.affine_px],
            "rotation_deg": round(t.rotation_deg(), 4),
            "flipped": t.flipped(),
            "scale": round(math.sqrt(abs(float(np.linalg.det(a[:2, :2])))), 6),
            "translation_um": [round(float(a[0, 2]), 3), round(float(a[1, 2]), 3)],
            "field": fld,
        },
        "quality": reg.quality,
        "levels_mpp": reg.levels_mpp,
        "settings": cfg,
        "timing_s": reg.timing_s,
        "files": {"json": REGISTRATION_JSON, "field": field_file, "qc": qc_file, "landmarks_in_fixed": landmarks_file},
    }


def _overlay(fixed: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """Fixed in magenta, moving in green: grey where they agree."""
    f = np.clip(fixed * 255, 0, 255).astype(np.uint8)
    m = np.clip(moving * 255, 0, 255).astype(np.uint8)
    return 255 - np.stack([m, f, m], axis=2)


def qc_image(reg: Registration, max_px: int = 800) -> np.ndarray:
    """Before | after overlays of the fixed (magenta) and moving (green) registration channels."""
    fv, mv = reg.fixed_view, reg.moving_view
    ident = SlideTransform.identity(reg.transform.fixed_dimensions, reg.transform.fixed_mpp,
                                    reg.transform.moving_dimensions, reg.transform.moving_mpp)
    before = warp_view_image(ident, mv.feature, mv.mpp, fv.shape, fv.mpp)
    after = warp_view_image(reg.transform, mv.feature, mv.mpp, fv.shape, fv.mpp)
    panels = [_overlay(fv.feature, before), _overlay(fv.feature, after)]
    gap = np.full((fv.shape[0], 8, 3), 255, np.uint8)
    img = np.concatenate([panels[0], gap, panels[1]], axis=1)
    scale = min(1.0, max_px / max(img.shape[:2]) * 2)
    if scale < 1:
        img = np.asarray(Image.fromarray(img).resize((max(1, int(img.shape[1] * scale)), max(1, int(img.shape[0] * scale))),
                                                     Image.Resampling.BILINEAR))
    return img


def write_registration(reg: Registration, out_dir: str | os.PathLike[str],
                       landmarks_moving_px: np.ndarray | None = None) -> Path:
    """Write registration.json, the field file (if any), the QC overlay and landmarks_in_fixed.csv; returns the JSON path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    field_file = None
    if reg.transform.field is not None:
        field_file = FIELD_FILE
        with atomic_path(out / FIELD_FILE) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, forward_um=reg.transform.field.forward_um,
                                inverse_um=reg.transform.field.inverse_um,
                                grid_um=np.float64(reg.transform.field.grid_um))
    with atomic_path(out / QC_PNG) as tmp:
        Image.fromarray(qc_image(reg)).save(tmp, format="PNG")
    lm_file = None
    if landmarks_moving_px is not None:
        lm_file = LANDMARKS_OUT
        write_landmarks(out / LANDMARKS_OUT, reg.transform.moving_to_fixed(landmarks_moving_px))
    d = registration_dict(reg, field_file, QC_PNG, lm_file)
    return write_text(out / REGISTRATION_JSON, json.dumps(d, indent=2, ensure_ascii=False, allow_nan=False) + "\n")


def load_transform(path: str | os.PathLike[str]) -> tuple[SlideTransform, dict[str, Any]]:
    """The SlideTransform and the registration.json dict from that file or the folder holding it."""
    p = Path(path)
    if p.is_dir():
        p = p / REGISTRATION_JSON
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
        fx, mv, tr = d["fixed"], d["moving"], d["transform"]
        a = np.asarray(tr["affine_um"], np.float64)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise HistoError(f"{p}: not a readable registration.json ({exc})") from None
    if d.get("schema") != SCHEMA or a.shape != (3, 3):
        raise HistoError(f"{p}: not a {SCHEMA} file")
    field = None
    if tr.get("field"):
        fp = p.parent / tr["field"]["file"]
        try:
            with np.load(fp) as z:
                field = DisplacementField(float(z["grid_um"]), z["forward_um"].astype(np.float32),
                                          z["inverse_um"].astype(np.float32))
        except (OSError, ValueError, KeyError) as exc:
            raise HistoError(f"{fp}: cannot read the displacement field ({exc})") from None
    t = SlideTransform((int(fx["width_px"]), int(fx["height_px"])), float(fx["mpp"]),
                       (int(mv["width_px"]), int(mv["height_px"])), float(mv["mpp"]), a, field)
    return t, d
