"""`histo demo`: the end-to-end job on built-in data, for a newcomer with no slides of their own.

For now: write a generated pyramidal slide (procedural tissue with a pen stroke), tile it at 0.5 µm/px
with tile QC and JPEG extraction, and print where everything is.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from histo.synth.simple import write_simple_slide
from histo.tiling import TileGrid, TilingConfig, make_pool, tile_slide


def register(sub: Any) -> None:
    """Add the `demo` subcommand."""
    p = sub.add_parser("demo", help="run the main job end to end on a generated demo slide",
                       description="Generate a demo slide and tile it (tissue detection, 0.5 µm/px grid, QC, "
                                   "extraction); prints where the outputs are.")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--size-px", type=int, default=12000, help="demo slide edge in pixels at 0.25 µm/px")
    p.add_argument("--workers", type=int, default=2, help="reader threads")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Make the demo slide (once) and tile it."""
    out = Path(args.out)
    slides = out / "slides"
    slides.mkdir(parents=True, exist_ok=True)
    slide = slides / "demo_slide.tiff"
    t0 = time.perf_counter()
    if not slide.is_file():
        print(f"writing demo slide {slide} ({args.size_px} x {args.size_px} px at 0.25 µm/px) ...", file=sys.stderr)
        write_simple_slide(slide, args.size_px, args.size_px, mpp=0.25, seed=7, pen=True, progress=True)
    config = TilingConfig.from_dict({"grid": {"tile_px": 256, "mpp": 0.5}, "qc": {"enabled": True},
                                     "extract": {"format": "jpeg", "store": "files"}, "workers": args.workers},
                                    "<histo demo>")
    pool = make_pool(config.workers, config.pool)
    try:
        result = tile_slide(slide, out / "tiles", config, pool=pool)
    finally:
        if pool is not None:
            pool.shutdown()
    grid = TileGrid.load(result.grid_path)
    passed = int(grid.table["qc_pass"].sum()) if "qc_pass" in grid.table else len(grid)
    print(f"\nhisto demo finished in {time.perf_counter() - t0:.0f} s")
    print(f"  slide:        {slide}")
    print(f"  tissue:       {result.tissue_area_mm2:.1f} mm² (mask: {out / 'tiles' / slide.stem / 'tissue.png'})")
    print(f"  tile table:   {result.grid_path} ({result.n_tiles} tiles of 256 px at 0.5 µm/px, "
          f"{passed} pass QC)")
    print(f"  tile images:  {out / 'tiles' / slide.stem / 'tiles'}")
    return 0
