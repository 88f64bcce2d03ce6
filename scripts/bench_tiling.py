#!/usr/bin/env python
"""Benchmark tiling: planning (tissue + grid) and reading every tissue tile at 0.5 µm/px, 256 px.

Writes (once, cached) a generated slide of at least 40k x 40k px at 0.25 µm/px, then measures in one
process, one after the other on the same tiles:
  histo      histo.tiling.iter_batches: run-batched reads at the matching pyramid level in worker processes
  baseline_a the naive way: OpenSlide read_region at level 0 of the 2x box (512 px), then resize to 256
  baseline_b OpenSlide read_region at the matching level (level 1), one tile at a time in one process
and prints one JSON line with tiles/s of each, the ratios, planning seconds and peak RSS.
Targets (issue 2): planning < 5 s; histo >= 3x baseline_a and >= 1.5x baseline_b; peak RSS < 1.5 GB.

Usage: python scripts/bench_tiling.py [--size-px 40000] [--workers 2] [--slide PATH] [--max-tiles N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _bench import make_slide, rss_mb  # scripts/ is on sys.path when a script runs


def measure(slide_path: Path, workers: int, max_tiles: int | None) -> dict:
    """Planning, histo reading and both baselines on the same tiles."""
    import openslide
    from PIL import Image

    from histo.slide import open_slide
    from histo.tiling import TilingConfig, iter_batches, make_pool, plan_grid
    from histo.tiling.grid import TileGrid

    cfg = TilingConfig.from_dict({"grid": {"tile_px": 256, "mpp": 0.5, "min_tissue_fraction": 0.5}})
    t0 = time.perf_counter()
    with open_slide(slide_path) as s:
        grid, mask = plan_grid(s, cfg)
        level = s.best_level(0.5)
        dims = s.dimensions
    plan_s = time.perf_counter() - t0
    if max_tiles and len(grid) > max_tiles:
        grid = TileGrid(grid.table.iloc[:max_tiles].reset_index(drop=True), grid.slide, grid.settings)
    n = len(grid)
    xs, ys = grid.table["x"].to_numpy(), grid.table["y"].to_numpy()

    # histo: pool start-up is inside the timed region (a real run pays it once per command).
    t0 = time.perf_counter()
    pool = make_pool(workers)
    checksum_h = 0
    try:
        for batch in iter_batches(str(slide_path), grid, pool=pool, batch_tiles=cfg.batch_tiles):
            checksum_h += int(batch.tiles[:, ::64, ::64].sum())
    finally:
        if pool is not None:
            pool.shutdown()
    histo_s = time.perf_counter() - t0

    # baseline (b): matching level, one read_region per tile, one process.
    t0 = time.perf_counter()
    osr = openslide.OpenSlide(str(slide_path))
    ds = osr.level_downsamples[level]
    checksum_b = 0
    for x, y in zip(xs, ys):
        tile = np.asarray(osr.read_region((int(round(x)), int(round(y))), level, (256, 256)).convert("RGB"))
        checksum_b += int(tile[::64, ::64].sum())
    osr.close()
    b_s = time.perf_counter() - t0

    # baseline (a): level 0 of the 2x box, then resize, one process (the naive way).
    t0 = time.perf_counter()
    osr = openslide.OpenSlide(str(slide_path))
    for x, y in zip(xs, ys):
        img = osr.read_region((int(round(x)), int(round(y))), 0, (512, 512)).convert("RGB")
        tile = np.asarray(img.resize((256, 256), Image.Resampling.BILINEAR))
    osr.close()
    a_s = time.perf_counter() - t0

    rate = lambda s: round(n / s, 1) if s > 0 else None  # noqa: E731
    return {
        "slide_px": list(dims),
        "slide_mpp": 0.25,
        "target_mpp": 0.5,
        "tile_px": 256,
        "level_used": level,
        "level_downsample": ds,
        "tissue_fraction": round(mask.fraction, 3),
        "tiles": n,
        "workers": workers,
        "planning_s": round(plan_s, 3),
        "histo_tiles_per_s": rate(histo_s),
        "baseline_a_level0_resize_tiles_per_s": rate(a_s),
        "baseline_b_matching_level_tiles_per_s": rate(b_s),
        "ratio_vs_a": round(a_s / histo_s, 2),
        "ratio_vs_b": round(b_s / histo_s, 2),
        "same_pixels_as_b": checksum_h == checksum_b,
        "peak_rss_mb_main": round(rss_mb(resource.RUSAGE_SELF), 1),
        "peak_rss_mb_worker": round(rss_mb(resource.RUSAGE_CHILDREN), 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size-px", type=int, default=40000, help="slide edge in px at 0.25 µm/px (>= 40000 for the issue)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slide", type=Path, help="reuse this slide instead of the cached generated one")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "histo" / "bench")
    p.add_argument("--max-tiles", type=int, default=None, help="cap the tiles measured (default: all tissue tiles)")
    p.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.measure_only:
        print(json.dumps(measure(args.slide, args.workers, args.max_tiles)))
        return 0
    gen_s = None
    slide = args.slide
    if slide is None:
        args.cache.mkdir(parents=True, exist_ok=True)
        slide = args.cache / f"simple_{args.size_px}px_seed{args.seed}.tiff"
        if not slide.is_file():
            gen_s = round(make_slide(slide, args.size_px, args.seed, mpp=0.25, tissue_fraction=0.35), 1)
    # measure in a fresh process so peak RSS is that of tiling alone
    cmd = [sys.executable, __file__, "--measure-only", "--slide", str(slide), "--workers", str(args.workers)]
    if args.max_tiles:
        cmd += ["--max-tiles", str(args.max_tiles)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    result = json.loads(out)
    result["slide"] = str(slide)
    result["slide_write_s"] = gen_s
    result["peak_rss_mb"] = max(result["peak_rss_mb_main"], result["peak_rss_mb_worker"])
    result["targets_met"] = {
        "planning_under_5s": result["planning_s"] < 5,
        "ratio_vs_a_at_least_3": result["ratio_vs_a"] >= 3,
        "ratio_vs_b_at_least_1_5": result["ratio_vs_b"] >= 1.5,
        "peak_rss_under_1_5GB": result["peak_rss_mb"] < 1536,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
