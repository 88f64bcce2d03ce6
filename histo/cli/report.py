"""`histo report PRED_DIR...`: re-grade prediction folders with a grading config and (re)write their reports.

A PRED_DIR is a slide folder of `histo predict` (tiles.parquet, mitoses.parquet, prediction.json) or a
run folder holding such slide folders. Reports go into each slide folder, or into OUT/<slide>/ with
--out (then OUT/status.csv and OUT/grading.yaml are written too; rows of other folders are kept).
Reports rewritten in place also update their slide's row in the run's status.csv (the folder's parent,
as `histo predict` wrote it): status, verdict, report and reason follow the new grading. A failed folder is reported and the
others go on; exit 0 when all succeeded, 1 when some failed, 2 on a bad config or usage.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histo.errors import ConfigError, HistoError

if TYPE_CHECKING:
    from histo.aggregate import GradingConfig

STATUS_FIELDS = ["folder", "status", "verdict", "reason", "report", "seconds"]


def register(sub: Any) -> None:
    """Add the `report` subcommand."""
    p = sub.add_parser(
        "report",
        help="re-grade prediction folders and write their reports (JSON, HTML, QuPath GeoJSON)",
        description="Apply a grading config to the predictions of each folder and write report.json, a "
                    "self-contained report.html, annotations.geojson and heatmap images. Research use only.",
    )
    p.add_argument("pred_dirs", nargs="+", metavar="PRED_DIR",
                   help="prediction folder of one slide, or a run folder holding several")
    p.add_argument("--grading", help="grading config YAML (default: the built-in defaults, as in "
                                     "configs/grading/default.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a grading key, e.g. --set grading.high_grade.mitoses_min_per_10hpf=20 (repeatable)")
    p.add_argument("--slide", dest="slides", action="append", default=[], metavar="PATH",
                   help="slide file for the thumbnail, matched to a folder by name (repeatable; default: the "
                        "path in prediction.json when it exists)")
    p.add_argument("--ihc", dest="ihc", action="append", default=[], metavar="PATH",
                   help="IHC result (ihc.json or its folder) to add to every report (repeatable)")
    p.add_argument("--out", help="write reports to OUT/<slide>/ instead of into the prediction folders")
    p.add_argument("--thumbnail-px", type=int, default=1024,
                   help="longest side of the thumbnail and heatmaps in pixels (default 1024)")
    p.add_argument("--no-tiles-geojson", action="store_true", help="leave per-tile objects out of annotations.geojson")
    p.add_argument("--quiet", action="store_true", help="print failures and the summary line only")
    p.set_defaults(run=run)


def resolve_grading(args: argparse.Namespace) -> GradingConfig:
    """The grading config of --grading plus --set overrides, validated."""
    from histo.case import load_grading

    return load_grading(args.grading, args.overrides)


def expand_pred_dirs(paths: list[str]) -> list[Path]:
    """Slide prediction folders: each path itself when it holds prediction.json, else its subfolders that do."""
    out: list[Path] = []
    for p in map(Path, paths):
        if (p / "prediction.json").is_file() or not p.is_dir():
            out.append(p)  # a missing folder fails on its own status row
            continue
        subs = sorted(d for d in p.iterdir() if d.is_dir() and (d / "prediction.json").is_file())
        out.extend(subs or [p])
    return out


def update_run_status(folder: Path, *, ok: bool, verdict: str, report: Path | None, reason: str) -> bool:
    """Set the re-graded slide's row in the run's status.csv (``folder``'s parent); True when a row was found.

    The row is the one `histo predict` wrote for the slide whose folder this is (matched by slide name);
    the table is changed under its lock, so rows other processes add meanwhile are kept."""
    from histo.status import edit_status

    table = folder.parent / "status.csv"
    if not table.is_file():
        return False
    found = []

    def _edit(rows: dict[str, dict[str, Any]]) -> None:
        for row in rows.values():
            if "verdict" not in row or Path(str(row.get("slide", ""))).stem != folder.name:
                continue
            found.append(row)
            if ok:
                row["status"] = "no_tissue" if row.get("status") == "no_tissue" else "ok"
                row.update(verdict=verdict, report=str(report.with_name("report.html")) if report else "",
                           reason=reason)
            else:
                row.update(status="failed", verdict="", report="", reason=f"report: {reason} (predictions kept in {folder})")

    edit_status(table, _edit)
    return bool(found)


def run(args: argparse.Namespace) -> int:
    """Report every prediction folder; one status line each; exit 1 if any failed."""
    import yaml

    from histo.atomic import write_text
    from histo.case import report_prediction
    from histo.status import update_status

    cfg = resolve_grading(args)
    if not 64 <= args.thumbnail_px <= 8192:
        raise ConfigError(f"--thumbnail-px must be within 64..8192, got {args.thumbnail_px}")
    slides = [Path(s) for s in args.slides]
    for s in slides:
        if not s.is_file():
            raise ConfigError(f"--slide {s}: file not found")
    folders = expand_pred_dirs(args.pred_dirs)
    out_root = Path(args.out) if args.out else None
    if out_root is not None:
        names = [f.name for f in folders]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"two prediction folders share the name {dup[0]!r}; reports are named by folder, "
                              "so report them into different --out folders")
        out_root.mkdir(parents=True, exist_ok=True)
        write_text(out_root / "grading.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    failed = 0
    source = f"{args.grading or 'built-in grading'}{' with --set overrides' if args.overrides else ''}"
    for folder in folders:
        t0 = time.perf_counter()
        target = out_root / folder.name if out_root is not None else folder
        row: dict[str, Any] = {"folder": str(folder)}
        try:
            done = report_prediction(folder, target, cfg, slides=slides, n_folders=len(folders), ihc=list(args.ihc),
                                     geojson_tiles=not args.no_tiles_geojson, thumbnail_px=args.thumbnail_px)
            verdict, json_path, slide = done.verdict, done.paths.json, done.slide
            row.update(status="ok", verdict=verdict, reason="" if slide else "no slide file: heatmaps on white",
                       report=str(json_path))
            if not args.quiet:
                print(f"ok       {folder}: high grade {verdict.replace('_', ' ')} -> {json_path.with_name('report.html')}"
                      + ("" if slide else " (no slide file found: heatmaps drawn on white)"), file=sys.stderr)
        except HistoError as exc:
            failed += 1
            row.update(status="failed", verdict="", reason=str(exc), report="")
            print(f"FAILED   {folder}: {exc}", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - one broken folder must not lose the rest of the batch
            failed += 1
            row.update(status="failed", verdict="", reason=f"unexpected {type(exc).__name__}: {exc}", report="")
            print(f"FAILED   {folder}: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        if out_root is not None:
            update_status(out_root / "status.csv", {row["folder"]: row}, STATUS_FIELDS, key="folder")
        elif folder.is_dir():
            ok = row["status"] == "ok"
            update_run_status(folder, ok=ok, verdict=row["verdict"], report=Path(row["report"]) if ok else None,
                              reason=f"re-graded by histo report ({source})" if ok else row["reason"])
    ok = len(folders) - failed
    print(f"histo report: {ok} of {len(folders)} folders reported, {failed} failed", file=sys.stderr)
    return 1 if failed else 0
