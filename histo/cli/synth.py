"""`histo synth`: write a phantom case (paired H&E and IHC slides with exact ground truth) from a YAML spec."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from histo.errors import ConfigError


def register(sub: Any) -> None:
    """Add the `synth` subcommand."""
    p = sub.add_parser(
        "synth",
        help="write a phantom: H&E + IHC pyramidal TIFFs, truth GeoJSON, summary.json",
        description="Render a histology phantom from a spec (see configs/synth/*.yaml): DIR/<case>/<case>_HE.tiff, "
                    "<case>_IHC_<marker>.tiff, truth.geojson, truth_ihc.geojson, summary.json, cells.parquet, spec.yaml.",
    )
    p.add_argument("-c", "--config", required=True, help="phantom spec YAML (e.g. configs/synth/demo_small.yaml)")
    p.add_argument("--out", required=True, help="output folder; the case goes in a subfolder named after it")
    p.add_argument("--seed", type=int, default=None, help="override the spec's seed")
    p.add_argument("--workers", type=int, default=2,
                   help="worker processes rendering the slides (0 or 1 = in this process; default 2)")
    p.add_argument("--size-px", type=int, nargs=2, metavar=("W", "H"), default=None,
                   help="override the slide size in level-0 pixels (quick previews)")
    p.add_argument("--no-ihc", action="store_true", help="write the H&E slide only")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    # before --quiet, synth showed its bar only on request; --progress is kept so old scripts still run
    p.add_argument("--progress", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--ihc-transform", choices=("none", "random"), default="none",
                   help="write the IHC slide under a known transform (random: any rotation, a flip half the time, "
                        "±5%% scale, a shift, a mild smooth warp), recorded in summary.json ihc_transform")
    p.add_argument("--transform-seed", type=int, default=0, help="seed of --ihc-transform random")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Build and write the phantom; print where the files are and the headline truth."""
    from histo.synth.phantom import make_phantom

    if args.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}")
    if args.size_px is not None and min(args.size_px) < 64:
        raise ConfigError(f"--size-px must be at least 64 x 64, got {args.size_px[0]} x {args.size_px[1]}")
    transformed = args.ihc_transform != "none" and not args.no_ihc
    out = make_phantom(Path(args.config), Path(args.out), seed=args.seed, workers=args.workers,
                       size_px=tuple(args.size_px) if args.size_px else None,
                       ihc=False if (args.no_ihc or transformed) else None, progress=not args.quiet)
    if transformed:
        out = _transform_ihc(out, args)
    s = out.summary
    print(f"phantom {s['case']} (seed {s['seed']}, {s['width_px']} x {s['height_px']} px at {s['mpp']} µm/px) in {out.folder}")
    print(f"  H&E:     {out.he_path}")
    if out.ihc_path:
        print(f"  IHC:     {out.ihc_path}")
    print(f"  truth:   {out.geojson_path}" + (f", {out.ihc_geojson_path}" if out.ihc_geojson_path else ""))
    print(f"  summary: {out.summary_path}")
    print(f"  cells:   {out.cells_path}")
    m, ihc, g = s["mitoses"], s["ihc"], s["grading"]
    print(f"  tumour {s['areas_mm2']['tumour']:.3f} mm², necrosis {s['necrosis_pct_of_tumour']:.1f} %, "
          f"mitoses {m['count']} ({m['per_10hpf']:.1f} per 10 HPF), {ihc['marker']} {ihc['pct_positive']:.1f} % positive "
          f"(H-score {ihc['h_score']:.0f}), verdict: {g['verdict']}")
    t = s["timing_s"]
    print(f"  time: build {t['build']:.1f} s, H&E {t['he']:.1f} s" + (f", IHC {t['ihc']:.1f} s" if "ihc" in t else "")
          + f", truth {t['truth']:.1f} s", file=sys.stderr)
    return 0


def _transform_ihc(out: Any, args: argparse.Namespace) -> Any:
    """Add the IHC slide under a random known transform to a phantom written without one."""
    import dataclasses
    import json

    import numpy as np
    import yaml

    from histo.synth.phantom import spec_from_dict
    from histo.synth.transform import IhcTransform, add_transformed_ihc

    spec = spec_from_dict(yaml.safe_load(out.spec_path.read_text(encoding="utf-8")))
    if not spec.ihc.enabled:
        return out
    tr = IhcTransform.random(np.random.default_rng(args.transform_seed), spec.mpp,
                             (spec.slide_width_px, spec.slide_height_px))
    ihc_path = add_transformed_ihc(out.folder, spec, tr, progress=not args.quiet)
    summary = json.loads(out.summary_path.read_text(encoding="utf-8"))
    return dataclasses.replace(out, ihc_path=ihc_path, ihc_geojson_path=out.folder / "truth_ihc.geojson", summary=summary)
