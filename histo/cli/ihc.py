"""`histo ihc SLIDES... --marker ALK --out DIR`: score IHC slides for one marker (DAB per cell, H-score, call).

Per slide, DIR/<slide_stem>/ holds ihc.json, ihc_cells.parquet, ihc_tiles.parquet, ihc_cells.geojson and
ihc_heatmap.png (docs/formats.md); DIR/status.csv has one row per slide (merged in under the table's lock
after each) and DIR/ihc_run.yaml the resolved settings. Each slide is :func:`histo.case.score_ihc_slide`
(skipped on rerun when its run key is unchanged, redone otherwise, the reason naming what changed); a
failed slide is reported and the batch goes on. Exit 0 when every slide is done, 1 when some failed, 2 for bad usage
(unknown marker, bad panel).

--tumour-tiles gives the counting region from H&E predictions (contract C tiles.parquet): one path per
slide (a tiles.parquet or a prediction folder), or one folder holding a prediction folder per H&E slide,
matched by slide stem (<stem>, or <case>_HE for an IHC slide named <case>_IHC_<marker>). Each IHC slide is
registered onto the H&E slide its prediction was made on (prediction.json's ``slide``; --he-slide overrides it)
before the tumour mask is carried over; when that H&E file is not found the slides must share a level-0 frame
and ihc.json says registration was not possible.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histo.cli.batch import report_problem
from histo.errors import ConfigError, HistoError
from histo.isolate import probe_isolated, unexpected_reason

if TYPE_CHECKING:
    from histo.case import IHCStatus


def register(sub: Any) -> None:
    """Add the `ihc` subcommand."""
    p = sub.add_parser(
        "ihc",
        help="score IHC slides for one marker: DAB per cell, %% positive, H-score and the marker call",
        description="Detect tissue and cells on IHC slides, measure DAB in the marker's compartment, classify "
                    "cells 0/1+/2+/3+, report % positive, H-score and the panel's call (research use only).",
    )
    p.add_argument("slides", nargs="+", help="IHC slide files")
    p.add_argument("--marker", required=True, help="marker name in the panel, e.g. ALK, S100, CD34, SMA, ROS1, Ki67")
    p.add_argument("--panel", help="marker panel YAML (default: configs/markers/panel.yaml)")
    p.add_argument("--tumour-tiles", nargs="+", metavar="PATH",
                   help="H&E prediction tiles.parquet / prediction folder per slide, or one folder of prediction folders")
    p.add_argument("--he-slide", nargs="+", metavar="PATH",
                   help="the H&E slide(s) the --tumour-tiles predictions were made on, registered onto before the "
                        "tumour mask is used: one for all slides or one per slide (default: the path prediction.json "
                        "records)")
    p.add_argument("--no-register", action="store_true",
                   help="do not register onto the H&E: the tumour map must be in the IHC slide's own frame")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mpp", type=float, help="level-0 µm/px for slides whose file lacks it")
    p.add_argument("--force-mpp", action="store_true",
                   help="use --mpp even when it is far (over 2.1x) from the µm/px the file states")
    p.add_argument("--analysis-mpp", type=float, default=None,
                   help="µm/px cells are analysed at (default: the marker's analysis_mpp in the panel, never finer "
                        "than the slide; else 0.5)")
    p.add_argument("--stain", choices=["ruifrok", "estimate"], default="ruifrok",
                   help="stain vectors: Ruifrok H-DAB (default) or estimated per slide")
    p.add_argument("--workers", type=int, default=2,
                   help="worker threads (or processes, with --pool process) scoring tiles (0 = in this process; "
                        "default 2)")
    p.add_argument("--pool", choices=["thread", "process"], default="thread",
                   help="kind of --workers: threads (default) or processes")
    p.add_argument("--non-spindle-class", default="none", help="pattern class that is not tumour (default none)")
    p.add_argument("--necrosis-min-p", type=float, default=None,
                   help="p_necrosis that seeds a necrotic region, which is not counted (default: the grading config's, "
                        "0.5; regions grow and are filtered as in histo report)")
    p.add_argument("--allow-frame-mismatch", action="store_true",
                   help="accept a tumour map from a slide of another size (stretched; only right for pure scale changes)")
    p.add_argument("--overwrite", action="store_true", help="redo slides that are already done")
    p.add_argument("--csv", action="store_true",
                   help="also write ihc_cells.csv and ihc_tiles.csv beside the Parquet tables (same columns)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def _tumour_sources(args: argparse.Namespace, slides: list[Path]) -> dict[str, Path | None]:
    """Slide stem → prediction tiles path (or a folder to search), None when no tumour map is asked for."""
    tt = args.tumour_tiles
    if not tt:
        return {s.stem: None for s in slides}
    paths = [Path(p) for p in tt]
    if len(paths) == len(slides) and not (len(paths) == 1 and paths[0].is_dir() and not (paths[0] / "tiles.parquet").is_file()):
        return {s.stem: p for s, p in zip(slides, paths)}
    if len(paths) == 1 and paths[0].is_dir():
        return {s.stem: paths[0] for s in slides}
    raise ConfigError(f"--tumour-tiles takes one path per slide ({len(slides)}) or one folder of prediction folders; "
                      f"got {len(paths)}")


def _he_slides(args: argparse.Namespace, slides: list[Path]) -> dict[str, Path | None]:
    """Slide stem → the H&E slide given with --he-slide (None: the one its prediction records)."""
    he = [Path(p) for p in (args.he_slide or [])]
    if he and not args.tumour_tiles:
        raise ConfigError("--he-slide needs --tumour-tiles (it is the slide those predictions were made on)")
    if he and args.no_register:
        raise ConfigError("--he-slide and --no-register contradict each other")
    if len(he) not in (0, 1, len(slides)):
        raise ConfigError(f"--he-slide takes one H&E slide for all or one per slide ({len(slides)}); got {len(he)}")
    missing = [str(p) for p in he if not p.is_file()]
    if missing:
        raise ConfigError(f"--he-slide: {', '.join(missing)} not found")
    if not he:
        return {s.stem: None for s in slides}
    return {s.stem: he[0] if len(he) == 1 else h for s, h in zip(slides, he if len(he) > 1 else he * len(slides))}


def run(args: argparse.Namespace) -> int:
    """Score every slide; one status row each; exit 1 if any failed."""
    from histo.slide import mpp_argument

    args.mpp = mpp_argument(args.mpp, args.force_mpp)  # issue 17: a bad --mpp exits 2 here as in `info`
    import yaml
    from tqdm.auto import tqdm

    from histo.atomic import write_text
    from histo.case import IHCOptions, IHCStatus, score_ihc_slide
    from histo.ihc import load_panel
    from histo.status import update_status

    panel = load_panel(args.panel)
    if args.marker not in panel:
        raise ConfigError(f"marker {args.marker!r} is not in the panel {args.panel or 'configs/markers/panel.yaml'} "
                          f"(it has {', '.join(panel)})")
    spec = panel[args.marker]
    slides = [Path(s) for s in args.slides]
    seen: dict[str, Path] = {}
    for s in slides:
        if s.stem in seen and seen[s.stem].resolve() != s.resolve():
            raise ConfigError(f"two slides share the name {s.stem!r} ({seen[s.stem]} and {s}); outputs are named by slide")
        seen[s.stem] = s
    sources = _tumour_sources(args, slides)
    he_slides = _he_slides(args, slides)
    options = IHCOptions(mpp=args.mpp, analysis_mpp=args.analysis_mpp, stain=args.stain,
                         non_spindle_class=args.non_spindle_class, necrosis_min_p=args.necrosis_min_p,
                         allow_frame_mismatch=args.allow_frame_mismatch, register=not args.no_register,
                         workers=args.workers, pool=args.pool,
                         overwrite=args.overwrite, progress=not args.quiet)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_cfg = {k: v for k, v in vars(args).items() if k not in ("run", "command")}
    write_text(out / "ihc_run.yaml", yaml.safe_dump(json.loads(json.dumps(run_cfg, default=str)), sort_keys=False))
    failed = 0
    bar = tqdm(slides, desc="slides", unit="slide", disable=args.quiet or len(slides) < 2)
    for path in bar:
        try:
            probe_isolated(path)  # issue 17: a slide that crashes native code fails alone
            done = score_ihc_slide(path, spec, out, tumour_tiles=sources[path.stem], options=options,
                                   he_slide=he_slides[path.stem])
            row = done.status
            if args.csv and row.status != "failed":
                from histo.ihc.outputs import write_csv_tables

                write_csv_tables(done.folder)  # ihc_cells.csv, ihc_tiles.csv
        except HistoError as exc:
            row = IHCStatus(path.stem, str(path), "failed", str(exc), spec.name)
        except Exception as exc:  # noqa: BLE001 - one broken slide must not lose the rest of the batch
            row = IHCStatus(path.stem, str(path), "failed", unexpected_reason(exc), spec.name)
        failed += row.status == "failed"
        update_status(out / "status.csv", {row.slide: asdict(row)}, list(IHCStatus.__dataclass_fields__))
        _report(row)
    print(f"histo ihc: {len(slides) - failed} of {len(slides)} slides done, {failed} failed; status in {out / 'status.csv'}",
          file=sys.stderr)
    return 1 if failed else 0


def _report(r: IHCStatus) -> None:
    if not report_problem(r):
        print(f"{r.status:<8} {r.slide}: {r.reason} [{r.seconds:.1f} s]")
