"""Ground truth of a phantom: QuPath GeoJSON, the JSON summary, and the full cell table (Parquet).

Every number in the summary is computed from the placed objects (polygons, cells, mitoses), never
copied from the spec, so it measures what the pixels show.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import shapely
from shapely.geometry import mapping

from histo.atomic import atomic_path, write_text

from .case import Phantom
from .cells import KIND_NAMES, MITOSIS, TUMOUR_KINDS

SCHEMA = "histo.synth.phantom.summary/2"  # /2: "tumor" keys spelled "tumour" (upgrade_summary reads /1)
_OLD_AREA_KEYS = ("tumor", "tumor_viable", "tumor_fascicular", "tumor_haphazard")
GEOJSON_MAX_CELLS = 20000  # IHC cells written to the GeoJSON at most (a seeded sample); Parquet has them all
REGION_COLORS = {
    "Tissue": [200, 200, 200],
    "Stroma": [150, 200, 150],
    "Tumor-fascicular": [200, 0, 0],
    "Tumor-haphazard": [230, 120, 0],
    "Necrosis": [80, 80, 80],
    "Inflammation": [0, 0, 200],
    "Pen": [0, 160, 80],
    "Blur": [160, 160, 0],
    "Fold": [120, 0, 120],
}
IHC_COLORS = {"0": [112, 112, 225], "1+": [255, 215, 0], "2+": [255, 140, 0], "3+": [200, 0, 0]}
IHC_NAMES = ("0", "1+", "2+", "3+")


def _feature(geom, name: str, color: list[int], object_type: str, **props) -> dict:
    return {
        "type": "Feature",
        "geometry": mapping(geom),
        "properties": {"objectType": object_type, "classification": {"name": name, "color": color}, **props},
    }


def geojson(ph: Phantom, modality: str = "he", max_cells: int = GEOJSON_MAX_CELLS) -> dict:
    """QuPath-compatible FeatureCollection (level-0 px): regions, mitoses; IHC cells for modality 'ihc'."""
    feats = []
    polys = ph.layout.polygons
    names = ["Tissue", "Stroma", "Tumor-fascicular", "Tumor-haphazard", "Necrosis", "Inflammation", "Pen", "Blur", "Fold"]
    # Each slide has its own artefacts: the IHC GeoJSON lists the IHC slide's under the same class names.
    source = {n: ("IHC " + n.lower() if modality == "ihc" and n in ("Pen", "Blur", "Fold") else n) for n in names}
    for name in names:
        g = polys[source[name]]
        if g.is_empty:
            continue
        g = shapely.set_precision(g, 0.01)
        feats.append(_feature(g, name, REGION_COLORS[name], "annotation", area_mm2=round(_mm2(ph, g), 6)))
    c = ph.cells
    for i in np.nonzero(c.kind == MITOSIS)[0]:
        feats.append(_feature(shapely.Point(float(c.x[i]), float(c.y[i])), "Mitosis", [255, 0, 255], "annotation",
                              figure="atypical" if c.variant[i] >= 2 else "metaphase"))
    if modality == "ihc":
        scored = np.nonzero(c.ihc_class >= 0)[0]
        if scored.size > max_cells:
            rng = np.random.default_rng([ph.spec.seed, 11])
            scored = np.sort(rng.choice(scored, max_cells, replace=False))
        for i in scored:
            k = IHC_NAMES[int(c.ihc_class[i])]
            feats.append(_feature(shapely.Point(round(float(c.x[i]), 2), round(float(c.y[i]), 2)), k, IHC_COLORS[k],
                                  "detection", intensity=k, dab_od=round(float(c.dab_od[i]), 4)))
    return {"type": "FeatureCollection", "features": feats}


def _mm2(ph: Phantom, g) -> float:
    return float(g.area) * (ph.spec.mpp / 1000.0) ** 2


def cell_table(ph: Phantom) -> pd.DataFrame:
    """Every cell: level-0 px and µm positions, kind, region, IHC class and DAB OD."""
    c = ph.cells
    return pd.DataFrame({
        "x": c.x, "y": c.y,
        "x_um": c.x * ph.spec.mpp, "y_um": c.y * ph.spec.mpp,
        "kind": pd.Categorical.from_codes(c.kind.astype(int), KIND_NAMES),
        "region": c.region.astype(np.int8),
        "angle_rad": c.angle,
        "ihc_class": c.ihc_class,
        "dab_od": c.dab_od,
    })


def _hotspot_per_10hpf(ph: Phantom, mx: np.ndarray, my: np.ndarray) -> float | None:
    """Most mitoses in any square window of 10 HPF area centred in viable tumour (window step: a quarter side)."""
    hpf10_mm2 = 10 * ph.spec.grading.hpf_mm2
    side_px = np.sqrt(hpf10_mm2) * 1000.0 / ph.spec.mpp
    W, H = ph.width_px, ph.height_px
    if side_px > min(W, H):
        return None
    viable = ph.layout.polygons["Viable tumor"]
    if viable.is_empty:
        return None
    shapely.prepare(viable)
    step = side_px / 4
    best = 0
    for cy in np.arange(side_px / 2, H - side_px / 2 + 1, step):
        for cx in np.arange(side_px / 2, W - side_px / 2 + 1, step):
            if not shapely.contains_xy(viable, cx, cy):
                continue
            n = int(((np.abs(mx - cx) <= side_px / 2) & (np.abs(my - cy) <= side_px / 2)).sum())
            best = max(best, n)
    return float(best)


def upgrade_summary(data: dict) -> dict:
    """A summary.json dict of either schema with the current keys: /1's ``tumor``, ``tumor_*`` areas,
    ``necrosis_pct_of_tumor`` and ``cells.tumor`` read as their ``tumour`` spellings (a copy; /2 unchanged)."""
    out = dict(data)
    if "necrosis_pct_of_tumor" in out:
        out.setdefault("necrosis_pct_of_tumour", out.pop("necrosis_pct_of_tumor"))
    if isinstance(out.get("areas_mm2"), dict):
        out["areas_mm2"] = {k.replace("tumor", "tumour") if k in _OLD_AREA_KEYS else k: v
                            for k, v in out["areas_mm2"].items()}
    if isinstance(out.get("cells"), dict) and "tumor" in out["cells"]:
        cells = dict(out["cells"])
        cells.setdefault("tumour", cells.pop("tumor"))
        out["cells"] = cells
    if out.get("schema") == "histo.synth.phantom.summary/1":
        out["schema"] = SCHEMA
    return out


def read_summary(path: str | os.PathLike[str]) -> dict:
    """Read a phantom's summary.json (either schema) with the current keys."""
    return upgrade_summary(json.loads(Path(path).read_text(encoding="utf-8")))


def summary(ph: Phantom) -> dict:
    """The JSON summary: areas, necrosis %, mitotic counts, IHC scores and the default rules' verdict."""
    sp = ph.spec
    P = ph.layout.polygons
    areas = {
        "tissue": _mm2(ph, P["Tissue"]),
        "stroma": _mm2(ph, P["Stroma"]),
        "tumour": _mm2(ph, P["Tumor"]),
        "tumour_viable": _mm2(ph, P["Viable tumor"]),
        "tumour_fascicular": _mm2(ph, P["Tumor-fascicular"]),
        "tumour_haphazard": _mm2(ph, P["Tumor-haphazard"]),
        "necrosis": _mm2(ph, P["Necrosis"]),
        "inflammation": _mm2(ph, P["Inflammation"]),
    }
    necrosis_pct = 100.0 * areas["necrosis"] / areas["tumour"] if areas["tumour"] > 0 else 0.0
    c = ph.cells
    mit = c.kind == MITOSIS
    n_mit = int(mit.sum())
    per_mm2 = n_mit / areas["tumour_viable"] if areas["tumour_viable"] > 0 else 0.0
    hpf = sp.grading.hpf_mm2
    per_10hpf = per_mm2 * 10 * hpf
    # As histo.aggregate does: a viable tumour smaller than the 10-HPF window has no hotspot; its
    # count per 10 HPF of tumour area is the figure graded.
    hotspot = _hotspot_per_10hpf(ph, c.x[mit], c.y[mit]) if areas["tumour_viable"] >= 10 * hpf else None

    g = sp.grading
    t1, t2 = g.mitotic_score_thresholds_per_10hpf
    use_hotspot = g.mitotic_count_basis == "hotspot" and hotspot is not None
    graded = hotspot if (hotspot is not None and use_hotspot) else per_10hpf
    mitotic_score = 1 if graded < t1 else (2 if graded < t2 else 3)
    n1, n2 = g.necrosis_score_thresholds_pct
    necrosis_score = 0 if necrosis_pct <= n1 else (1 if necrosis_pct < n2 else 2)
    high = graded >= g.high_grade_min_mitoses_per_10hpf or necrosis_pct >= g.high_grade_min_necrosis_pct

    scored = c.ihc_class >= 0
    counts = np.bincount(c.ihc_class[scored].astype(int), minlength=4) if scored.any() else np.zeros(4, int)
    n_scored = int(counts.sum())
    pct = 100.0 * counts / n_scored if n_scored else np.zeros(4)
    pct_pos = float(pct[1:].sum())
    h_score = float(pct[1] + 2 * pct[2] + 3 * pct[3])
    kinds = {KIND_NAMES[k]: int((c.kind == k).sum()) for k in range(len(KIND_NAMES))}
    return {
        "schema": SCHEMA,
        "case": sp.name,
        "seed": sp.seed,
        "mpp": sp.mpp,
        "width_px": ph.width_px,
        "height_px": ph.height_px,
        "areas_mm2": {k: round(v, 6) for k, v in areas.items()},
        "necrosis_pct_of_tumour": round(necrosis_pct, 3),
        "mitoses": {
            "count": n_mit,
            "per_mm2": round(per_mm2, 4),
            "per_10hpf": round(per_10hpf, 3),
            "hpf_mm2": hpf,
            "area_basis": "viable tumour (tumour minus necrosis), whole slide",
            "hotspot_per_10hpf": hotspot,
            "hotspot_basis": "max count in a square window of 10 HPF area centred in viable tumour, stepped by a quarter side",
        },
        "cells": {"total": int(len(c)), "by_kind": kinds, "tumour": int(np.isin(c.kind, TUMOUR_KINDS).sum())},
        "ihc": {
            "marker": sp.ihc.marker,
            "compartment": sp.ihc.compartment,
            "n_scored_cells": n_scored,
            "scored_cells": "viable tumour cells (spindle and ovoid); mitotic figures are not scored",
            "counts": {IHC_NAMES[i]: int(counts[i]) for i in range(4)},
            "pct": {IHC_NAMES[i]: round(float(pct[i]), 3) for i in range(4)},
            "pct_positive": round(pct_pos, 3),
            "h_score": round(h_score, 2),
            "positive_pct_min": sp.ihc.positive_pct_min,
            "call": "positive" if n_scored and pct_pos >= sp.ihc.positive_pct_min else "negative",
        },
        "grading": {
            "rules": {
                "mitotic_score_thresholds_per_10hpf": list(g.mitotic_score_thresholds_per_10hpf),
                "necrosis_score_thresholds_pct": list(g.necrosis_score_thresholds_pct),
                "high_grade_if": f"mitoses >= {g.high_grade_min_mitoses_per_10hpf:g} per 10 HPF "
                f"or tumour necrosis >= {g.high_grade_min_necrosis_pct:g} % of tumour area",
                "mitotic_count_basis": ("hotspot (hotspot_per_10hpf above)" if use_hotspot else
                                        "whole viable tumour area (per_10hpf above)"
                                        + (" - the tumour is smaller than one 10-HPF window" if g.mitotic_count_basis == "hotspot" else "")),
            },
            "mitoses_per_10hpf_graded": graded,
            "mitotic_score": mitotic_score,
            "necrosis_score": necrosis_score,
            "high_grade": bool(high),
            "verdict": "high grade" if high else "low grade",
        },
        "artefacts": {
            "pen_mm2": round(_mm2(ph, P["Pen"]), 6),
            "blur_mm2": round(_mm2(ph, P["Blur"]), 6),
            "fold_mm2": round(_mm2(ph, P["Fold"]), 6),
            "pen_colors": list(ph.layout.pen_colors),
            "ihc": {
                "pen_mm2": round(_mm2(ph, P["IHC pen"]), 6),
                "blur_mm2": round(_mm2(ph, P["IHC blur"]), 6),
                "fold_mm2": round(_mm2(ph, P["IHC fold"]), 6),
                "pen_colors": list(ph.layout.ihc_pen_colors),
            },
            "on": "each slide its own: H&E ones above (truth.geojson), IHC ones under 'ihc' (truth_ihc.geojson)",
        },
        "geojson_cells": f"IHC cells in the GeoJSON: all up to {GEOJSON_MAX_CELLS}, else a seeded sample of that many; cells.parquet lists every cell",
    }


def write_json_atomic(path: Path, data: dict) -> Path:
    """Write JSON atomically (histo.atomic: temp file, rename, ordinary file mode)."""
    return write_text(path, json.dumps(data, indent=1))


def write_parquet_atomic(path: Path, df: pd.DataFrame) -> Path:
    """Write a Parquet table atomically (histo.atomic: temp file, rename, ordinary file mode)."""
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return Path(path)
