"""`histo info SLIDE [--json]`: what a user needs to know about a slide before tiling it."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    """Add the `info` subcommand."""
    p = sub.add_parser("info", help="describe a slide: size, levels, µm/px, magnification, associated images",
                       description="Describe a slide: dimensions, pyramid levels, µm/px and where it comes from, "
                                   "objective power, associated images.")
    p.add_argument("slide", help="slide or image file")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--mpp", type=float, default=None, help="level-0 µm/px for a slide whose file lacks it")
    p.add_argument("--force-mpp", action="store_true",
                   help="use --mpp even when it is far (over 2.1x) from the µm/px the file states")
    p.add_argument("--quiet", action="store_true", help="accepted as by every histo command (info shows no progress)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the slide description."""
    from histo.slide import mpp_argument, open_slide

    with open_slide(args.slide, mpp=mpp_argument(args.mpp, args.force_mpp)) as slide:
        info = slide.info()
    if args.json:
        print(json.dumps(info))
        return 0
    print(format_info(info))
    return 0


def format_info(info: dict[str, Any]) -> str:
    """Human-readable lines of a slide description."""
    lines = [
        f"file:        {info['path']} ({info['file_size_bytes'] / 1e6:.1f} MB)",
        f"format:      {info['vendor']}",
        f"read by:     {info.get('backend', '?')} ({info.get('backend_reason', '')})",
        f"modality:    {info.get('modality', '?')} ({info.get('modality_reason', '')})",
        f"size:        {info['width_px']} x {info['height_px']} px",
    ]
    if info["mpp"] is not None:
        lines.append(f"resolution:  {info['mpp']} µm/px ({info['mpp_source']}); "
                     f"{info['width_mm']} x {info['height_mm']} mm")
    else:
        lines.append(f"resolution:  UNKNOWN: {info['mpp_problem']}; pass --mpp to tile this slide")
    op = info["objective_power"]
    lines.append(f"objective:   {op:g}x" if op else "objective:   not stated")
    lines.append(f"levels:      {len(info['levels'])}")
    for lv in info["levels"]:
        mpp = f"{lv['mpp']:.4f} µm/px" if lv["mpp"] is not None else "? µm/px"
        lines.append(f"  {lv['level']:>2}: {lv['width_px']:>7} x {lv['height_px']:<7} downsample {lv['downsample']:<8g} {mpp}")
    lines.append(f"associated:  {', '.join(info['associated_images']) or 'none'}")
    return "\n".join(lines)
