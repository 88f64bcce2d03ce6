"""`histo register FIXED MOVING --out DIR`: register a moving slide (e.g. an IHC section) onto a fixed one (its H&E)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add the `register` subcommand."""
    p = sub.add_parser(
        "register",
        help="register a moving slide onto a fixed one (any rotation or flip, affine, non-rigid)",
        description="Register MOVING onto FIXED from low-resolution views (rigid with any rotation or flip, then "
                    "affine, then a smooth displacement field) and write DIR/registration.json (transform in µm, "
                    "both slides' level-0 frames, quality and status ok | poor | failed), DIR/registration_qc.png "
                    "(before | after overlay) and, with --landmarks, DIR/landmarks_in_fixed.csv. "
                    "Exit 0 when the status is ok or poor, 1 when failed, 2 on bad input.",
    )
    p.add_argument("fixed", help="fixed slide (e.g. the H&E)")
    p.add_argument("moving", help="moving slide (e.g. an IHC section of the same block)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mpp", type=float, default=None,
                   help="level-0 µm/px of both slides when their files lack it")
    p.add_argument("--landmarks", default=None,
                   help="CSV with header X,Y of points on MOVING (level-0 px); writes landmarks_in_fixed.csv")
    p.add_argument("--no-nonrigid", action="store_true", help="stop after the affine step")
    p.add_argument("--quiet", action="store_true", help="only the status line (no reasons on stderr)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Register, write the outputs, print the status line; exit 1 when the registration failed."""
    from histo.register import read_landmarks, register_slides, write_registration

    landmarks = read_landmarks(args.landmarks) if args.landmarks else None  # bad CSV: error before any work
    reg = register_slides(args.fixed, args.moving, fixed_mpp=args.mpp, moving_mpp=args.mpp,
                          nonrigid=not args.no_nonrigid)
    path = write_registration(reg, Path(args.out), landmarks)
    q, t = reg.quality, reg.transform
    err = q.get("estimated_error_um")
    line = (f"{reg.status:<6} {Path(args.moving).name} -> {Path(args.fixed).name}: rotation {t.rotation_deg():.1f}°"
            f"{', flipped' if t.flipped() else ''}, {'non-rigid' if t.field is not None else 'affine'}, "
            f"Dice {q['dice']:.3f}, estimated error {'n/a' if err is None else f'{err:.1f} µm'}"
            f" [{reg.timing_s['total']:.1f} s]; {path}")
    print(line)
    if q.get("reasons") and not args.quiet:
        print("  " + "; ".join(q["reasons"]), file=sys.stderr)
    return 1 if reg.status == "failed" else 0
