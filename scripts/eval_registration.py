"""Evaluate histo.register and print ONE JSON line: TRE on phantom pairs with exact truth, rTRE on real pairs.

Phantoms: ``--n-phantoms`` cases of ``--preset`` at ``--size-px``, each IHC slide written under a random
known transform (any rotation, a flip half the time, ±5 % scale, a shift, a mild warp; histo.synth.transform,
seed = case index). TRE (µm) is measured on a 50 µm grid of moving-slide points that land in the H&E
tissue: |registered(p) − truth(p)|. Median and max over all points of all cases, and per case.

Real pairs: the BIRL H&E/IHC pairs under ``DATA/registration/birl`` (README there): the IHC landmarks are
mapped onto the H&E and compared with its landmarks (the first N rows of both files correspond).
rTRE = TRE / diagonal of the H&E image (ANHIR's measure). The images state no µm/px; ``--real-mpp``
(default 4 µm/px: 5 % of a ~0.2 µm/px scan) sets the µm sizes registration works in.

Usage: python scripts/eval_registration.py [--data ../shared/data/real] [--n-phantoms 4] [--size-px 4096]
       [--work /tmp/histo_eval_registration] [--no-nonrigid] [--skip-phantoms] [--skip-real]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from histo.register import read_landmarks, register_slides
from histo.slide import open_slide
from histo.tissue import detect_tissue

REAL_PAIRS = (
    ("rat-kidney", "rat-kidney_/scale-5pc/Rat-Kidney_HE", "rat-kidney_/scale-5pc/Rat-Kidney_PanCytokeratin"),
    ("mouse-lung-lesion", "lesions_/scale-5pc/Izd2-29-041-w35_HE", "lesions_/scale-5pc/Izd2-29-041-w35_proSPC"),
)


def phantom_pair(work: Path, preset: str, size_px: int, index: int) -> Path:
    """A phantom folder with the IHC slide under a random known transform (cached by preset, size and index)."""
    import dataclasses

    from histo.synth.phantom import load_spec, make_phantom, render_key, replace_size
    from histo.synth.transform import IhcTransform, add_transformed_ihc

    spec = replace_size(load_spec(preset), size_px, size_px)
    spec = dataclasses.replace(spec, seed=spec.seed + index)
    folder = work / f"{spec.name}_{size_px}_i{index}_{render_key(spec)}"
    if (folder / spec.name / "summary.json").is_file() and "ihc_transform" in json.loads(
            (folder / spec.name / "summary.json").read_text()):
        return folder / spec.name
    out = make_phantom(spec, folder, workers=1, ihc=False)
    tr = IhcTransform.random(np.random.default_rng(index), spec.mpp, (spec.slide_width_px, spec.slide_height_px))
    add_transformed_ihc(out.folder, spec, tr)
    return out.folder


def eval_phantom(folder: Path, nonrigid: bool) -> dict:
    """TRE (µm) of one phantom pair."""
    from histo.synth.transform import IhcTransform

    summ = json.loads((folder / "summary.json").read_text())
    truth = IhcTransform.from_dict(summ["ihc_transform"])
    he, ihc = folder / summ["files"]["he"], folder / summ["files"]["ihc"]
    t0 = time.perf_counter()
    reg = register_slides(he, ihc, nonrigid=nonrigid)
    secs = time.perf_counter() - t0
    mpp = truth.mpp
    with open_slide(he) as s:
        tissue = detect_tissue(s, mask_mpp=4.0)
    mw, mh = truth.moving_dimensions
    step = 50.0 / mpp
    gx, gy = np.meshgrid(np.arange(step / 2, mw, step), np.arange(step / 2, mh, step))
    pm = np.stack([gx.ravel(), gy.ravel()], axis=1)
    pf = truth.moving_to_fixed(pm)
    ix, iy = (pf[:, 0] / tissue.downsample).astype(int), (pf[:, 1] / tissue.downsample).astype(int)
    ok = (ix >= 0) & (iy >= 0) & (ix < tissue.mask.shape[1]) & (iy < tissue.mask.shape[0])
    ok[ok] = tissue.mask[iy[ok], ix[ok]]
    pm, pf = pm[ok], pf[ok]
    est = reg.transform.moving_to_fixed(pm)
    tre = np.hypot(*(est - pf).T) * mpp
    return {"case": folder.parent.name, "rotation_deg": round(truth.rotation_deg, 1), "flip": truth.flip,
            "scale": round(truth.scale, 3), "warp_um": round(truth.warp_um, 1), "n_points": int(tre.size),
            "median_tre_um": round(float(np.median(tre)), 2) if tre.size else None,
            "max_tre_um": round(float(tre.max()), 2) if tre.size else None,
            "status": reg.status, "estimated_error_um": reg.estimated_error_um, "dice": reg.quality["dice"],
            "seconds": round(secs, 2), "_tre": tre}


def eval_real(base: Path, mpp: float, nonrigid: bool) -> list[dict]:
    """rTRE of the BIRL pairs."""
    rows = []
    for name, fixed, moving in REAL_PAIRS:
        f_img, m_img = base / f"{fixed}.jpg", base / f"{moving}.jpg"
        if not f_img.is_file():
            continue
        lf, lm = read_landmarks(base / f"{fixed}.csv"), read_landmarks(base / f"{moving}.csv")
        n = min(len(lf), len(lm))
        t0 = time.perf_counter()
        reg = register_slides(f_img, m_img, fixed_mpp=mpp, moving_mpp=mpp, nonrigid=nonrigid)
        secs = time.perf_counter() - t0
        w, h = reg.transform.fixed_dimensions
        diag = float(np.hypot(w, h))
        rtre = np.hypot(*(reg.transform.moving_to_fixed(lm[:n]) - lf[:n]).T) / diag
        before = np.hypot(*(lm[:n] - lf[:n]).T) / diag
        rows.append({"pair": name, "n_landmarks": n, "median_rtre": round(float(np.median(rtre)), 5),
                     "max_rtre": round(float(rtre.max()), 5), "median_rtre_unregistered": round(float(np.median(before)), 5),
                     "status": reg.status, "estimated_error_um": reg.estimated_error_um, "dice": reg.quality["dice"],
                     "rotation_deg": round(reg.transform.rotation_deg(), 2), "flipped": reg.transform.flipped(),
                     "nonrigid": reg.transform.field is not None, "seconds": round(secs, 2)})
    return rows


def main() -> int:
    """Run the evaluation and print the JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("HISTO_REAL_DATA", str(Path(__file__).resolve().parents[2] / "shared/data/real")))
    ap.add_argument("--n-phantoms", type=int, default=4)
    ap.add_argument("--size-px", type=int, default=4096)
    ap.add_argument("--preset", default=str(Path(__file__).resolve().parents[1] / "configs/synth/demo_small.yaml"))
    ap.add_argument("--work", default="/tmp/histo_eval_registration")
    ap.add_argument("--real-mpp", type=float, default=4.0)
    ap.add_argument("--no-nonrigid", action="store_true")
    ap.add_argument("--skip-phantoms", action="store_true")
    ap.add_argument("--skip-real", action="store_true")
    args = ap.parse_args()
    out: dict = {"nonrigid": not args.no_nonrigid}
    if not args.skip_phantoms:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        cases = [eval_phantom(phantom_pair(work, args.preset, args.size_px, i), not args.no_nonrigid)
                 for i in range(args.n_phantoms)]
        allt = np.concatenate([c.pop("_tre") for c in cases]) if cases else np.zeros(0)
        out["phantoms"] = {"size_px": args.size_px, "n_pairs": len(cases), "n_points": int(allt.size),
                           "median_tre_um": round(float(np.median(allt)), 2) if allt.size else None,
                           "max_tre_um": round(float(allt.max()), 2) if allt.size else None,
                           "targets": {"median_tre_um": 10.0, "max_tre_um": 50.0}, "cases": cases}
    if not args.skip_real:
        base = Path(args.data) / "registration" / "birl"
        rows = eval_real(base, args.real_mpp, not args.no_nonrigid) if base.is_dir() else []
        out["real"] = {"mpp_assumed": args.real_mpp, "pairs": rows, "target_median_rtre": 0.005,
                       "median_of_median_rtre": round(float(np.median([r["median_rtre"] for r in rows])), 5) if rows else None}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
