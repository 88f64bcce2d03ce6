"""Shared builders (no tests here) for the report tests: contract-C prediction tables and contract-D IHC results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

MPP = 0.25
TILE_PX = 256
# the conftest slide is 2048 x 1536 px with tissue in x 512-1536, y 256-1280 (level 0)
NECROTIC = {(2, 5), (3, 5)}  # (row, col)
CLUSTER_PX = (600, 900, 300, 600)  # x0, x1, y0, y1 of the mitosis cluster, inside fascicular tumour


def tiles_table(necrotic: set[tuple[int, int]] = NECROTIC) -> pd.DataFrame:
    """An 8 x 6 tile grid: glass outside the tissue box, fascicular left / haphazard right inside it."""
    rows = []
    for r in range(6):
        for c in range(8):
            x, y = c * TILE_PX, r * TILE_PX
            inside = 512 <= x < 1536 and 256 <= y < 1280
            pat = ("fascicular" if c < 4 else "haphazard") if inside else "none"
            d = {"col": c, "row": r, "x": float(x), "y": float(y), "w": float(TILE_PX), "h": float(TILE_PX),
                 "tissue_fraction": 1.0 if inside else 0.0,
                 "p_necrosis": 0.9 if (inside and (r, c) in necrotic) else 0.05,
                 "p_pattern_none": 0.0, "p_pattern_fascicular": 0.0, "p_pattern_haphazard": 0.0}
            d[f"p_pattern_{pat}"] = 1.0
            rows.append(d)
    return pd.DataFrame(rows)


def mitoses_table(n_cluster: int = 30, n_low: int = 5, seed: int = 0) -> pd.DataFrame:
    """A cluster of confident mitoses plus a few low-score detections, in µm and level-0 px."""
    rng = np.random.default_rng(seed)
    x0, x1, y0, y1 = CLUSTER_PX
    px = np.concatenate([rng.uniform(x0, x1, n_cluster), rng.uniform(520, 1500, n_low)])
    py = np.concatenate([rng.uniform(y0, y1, n_cluster), rng.uniform(270, 1270, n_low)])
    score = np.concatenate([np.full(n_cluster, 0.9), np.full(n_low, 0.3)])
    return pd.DataFrame({"x_um": px * MPP, "y_um": py * MPP, "score": score, "x": px, "y": py})


def small_hotspot_config(**high_grade):
    """Default grading with a small custom HPF so the 10-HPF hotspot (100 µm square) fits the test slide."""
    from histo.aggregate import GradingConfig

    data = {"hpf": {"preset": "custom", "area_mm2": 0.001}}
    if high_grade:
        data["grading"] = {"high_grade": high_grade}
    return GradingConfig.from_dict(data)


CARD = {"name": "test-net", "backbone": "tiny", "heads": {"pattern": {"classes": ["none", "fascicular", "haphazard"]}},
        "tile_px": 256, "mpp": 0.5, "mitosis_threshold": 0.5, "weights_sha256": "ab" * 32,
        "metrics": {"val_pattern_acc": 0.875}}


def ihc_result(marker: str, label: str, *, h_score: float = 180.0, pct: float = 72.0, n_cells: int = 1200,
               region: str = "tumour", qc: list | None = None) -> dict:
    """A contract-D ihc.json dict."""
    reasons = {"positive": f"% positive {pct:.1f} >= 10", "negative": f"% positive {pct:.1f} < 10",
               "insufficient_cells": f"{n_cells} scored cells < min_cells 50", "index": f"{marker} index"}
    return {"schema": "histo.ihc/1", "slide": f"case_IHC_{marker}.tiff", "marker": marker, "compartment": "cytoplasm",
            "region": region, "n_cells": n_cells, "counts": [n_cells - 3 * (n_cells // 4)] + [n_cells // 4] * 3,
            "pct_positive": pct, "h_score": h_score, "call": {"label": label, "reason": reasons[label]},
            "qc": qc or [], "mpp_analysis": 0.5, "seconds": 1.0}


def write_prediction_folder(folder: Path, slide_path: Path | None, tiles: pd.DataFrame, mitoses: pd.DataFrame) -> Path:
    """A contract-C prediction folder: tiles.parquet, mitoses.parquet, prediction.json."""
    folder.mkdir(parents=True, exist_ok=True)
    tiles.to_parquet(folder / "tiles.parquet")
    mitoses.to_parquet(folder / "mitoses.parquet")
    meta = {"schema": "histo.predict/1", "slide": str(slide_path) if slide_path else "gone.tiff", "slide_mpp": MPP,
            "model": CARD, "n_tiles": len(tiles), "seconds": 1.0}
    (folder / "prediction.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder
