#!/usr/bin/env python
"""Benchmark slide-level IHC scoring: a slide with >= 1 cm² of tissue scored end to end at 0.5 µm/px.

Writes (once, cached) a generated slide at 0.5 µm/px (histo.synth.simple, default 28000 x 28000 px with
~55 % tissue, i.e. > 100 mm²), checks its detected tissue area, then times histo.ihc.score_slide (tissue
detection, tiling, deconvolution, cell detection, scoring) with a thread pool and, optionally, a process
pool on the same slide, and prints one JSON line: seconds, cells/s, tiles/s, tissue mm², peak RSS, and
whether the target (< 120 s on 2 cores for 1 cm² of tissue) is met. The baseline named in the JSON is
the same run with workers=1 on a fixed subset of tiles (ratio = parallel speed-up).

``--marker`` scores another panel marker (default ALK); ``--slide-mpp`` writes the slide at another
level-0 µm/px (CD34 is read at 0.25 µm/px when the slide has it, four times the pixels per mm²).

Usage: python scripts/bench_ihc.py [--size-px 28000] [--workers 2] [--slide PATH] [--pools thread,process]
                                   [--marker ALK] [--slide-mpp 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from _bench import make_slide, rss_mb  # scripts/ is on sys.path when a script runs

TARGET_S = 120.0
TARGET_MM2 = 100.0


def _cpu_s() -> float:
    a = resource.getrusage(resource.RUSAGE_SELF)
    b = resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def run_once(path: Path, workers: int, pool: str, marker: str = "ALK") -> dict:
    """Score the whole slide once; seconds and throughput."""
    from histo.ihc import load_panel, score_slide

    spec = load_panel()[marker]
    cpu0 = _cpu_s()
    t0 = time.perf_counter()
    r = score_slide(path, spec, workers=workers, pool=pool)
    s = time.perf_counter() - t0
    cpu = _cpu_s() - cpu0
    tiles = len(r.tiles)
    return {
        "marker": marker, "pool": pool, "workers": workers, "seconds": round(s, 2), "n_tiles": tiles, "n_cells": int(len(r.cells)),
        "cells_per_s": round(len(r.cells) / s, 1), "tiles_per_s": round(tiles / s, 3),
        "tissue_area_mm2": round(r.qc_values["tissue_area_mm2"], 2), "timing_s": {k: round(v, 2) for k, v in r.timing.items()},
        "mpp_analysis": r.mpp_analysis, "tile_px": r.tile_px, "qc": [f.name for f in r.qc],
        # CPU seconds of this process and its finished children: on a shared machine wall time depends on
        # the others' load; cpu_s / 2 is what two idle cores would need at best.
        "cpu_s": round(cpu, 1), "cpu_s_per_2_cores": round(cpu / 2, 1), "cpu_s_per_tile": round(cpu / max(tiles, 1), 3),
        "load_avg_1min_after": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    """Write/reuse the slide, time score_slide, print one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-px", type=int, default=28000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--slide", type=Path, default=None, help="use this slide (default: a cached generated one)")
    ap.add_argument("--pools", default="thread", help="comma-separated: thread,process")
    ap.add_argument("--marker", default="ALK", help="panel marker to score (default ALK)")
    ap.add_argument("--slide-mpp", type=float, default=0.5, help="level-0 µm/px of the generated slide (default 0.5)")
    a = ap.parse_args(argv)
    suffix = "" if a.slide_mpp == 0.5 else f"_mpp{a.slide_mpp:g}"
    path = a.slide or Path(tempfile.gettempdir()) / f"histo_bench_ihc_{a.size_px}_s{a.seed}{suffix}.tiff"
    made_s = None
    if not path.is_file():
        made_s = round(make_slide(path, a.size_px, a.seed, mpp=a.slide_mpp, tissue_fraction=0.55), 1)
    out: dict = {"slide": str(path), "slide_written_s": made_s, "cpu_count": os.cpu_count(),
                 "target": f"< {TARGET_S:g} s for >= {TARGET_MM2:g} mm² tissue at 0.5 µm/px on 2 cores"}
    runs = [run_once(path, a.workers, pool, a.marker) for pool in a.pools.split(",")]
    out["runs"] = runs
    best = min(runs, key=lambda r: r["seconds"])
    out["best"] = best["pool"]
    out["seconds"] = best["seconds"]
    out["cells_per_s"] = best["cells_per_s"]
    out["tiles_per_s"] = best["tiles_per_s"]
    out["tissue_area_mm2"] = best["tissue_area_mm2"]
    # Scale to exactly 1 cm² so the target reads the same whatever the slide's tissue area.
    out["seconds_per_cm2"] = round(best["seconds"] * 100.0 / max(best["tissue_area_mm2"], 1e-9), 1)
    out["peak_rss_mb"] = round(rss_mb(resource.RUSAGE_SELF), 1)
    out["peak_rss_children_mb"] = round(rss_mb(resource.RUSAGE_CHILDREN), 1)
    # The target is stated for analysis at 0.5 µm/px; a run at another resolution reports seconds_per_cm2 only.
    at_target_mpp = abs(best["mpp_analysis"] - 0.5) < 1e-6
    out["target_met"] = bool(at_target_mpp and best["tissue_area_mm2"] >= TARGET_MM2 and best["seconds"] < TARGET_S)
    out["target_met_on_idle_2_cores_estimate"] = bool(at_target_mpp and best["tissue_area_mm2"] >= TARGET_MM2
                                                      and best["cpu_s_per_2_cores"] < TARGET_S)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
