"""`histo ihc SLIDES... --marker ALK --out DIR`: score IHC slides for one marker (DAB per cell, H-score, call).

Per slide, DIR/<slide_stem>/ holds contract D (ihc.json, ihc_cells.parquet, ihc_tiles.parquet,
ihc_cells.geojson, ihc_heatmap.png); DIR/status.csv has one row per slide (merged in under the table's lock
after each) and DIR/ihc_run.yaml the resolved settings. A slide whose ihc.json holds the same run key (the
slide file, its mpp, the marker's panel entry, the analysis options, the tumour map file and the necrosis
rules) is skipped on rerun, and redone otherwise, the reason naming what changed; a failed slide is
reported and the batch goes on. Exit 0 when every slide is done, 1 when some failed, 2 for bad usage
(unknown marker, bad panel).

--tumour-tiles gives the counting region from H&E predictions (contract C tiles.parquet): one path per
slide (a tiles.parquet or a prediction folder), or one folder holding a prediction folder per H&E slide,
matched by slide stem (<stem>, or <case>_HE for an IHC slide named <case>_IHC_<marker>). The H&E and IHC
slides must share a level-0 frame (phantom pairs do; serial sections need registration, not done here).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from histo.atomic import write_text
from histo.cli.batch import report_problem
from histo.errors import ConfigError, HistoError
from histo.rerun import (
    describe_changes,
    file_fingerprint,
    read_json,
    redo_reason,
    stored_settings,
)
from histo.status import update_status


@dataclass
class IHCStatus:
    """One row of status.csv."""

    slide: str
    path: str
    status: str  # ok | no_tissue | skipped | failed
    reason: str = ""
    marker: str = ""
    region: str = ""
    call: str = ""
    n_cells: int = 0
    pct_positive: float | str = ""
    h_score: float | str = ""
    seconds: float = 0.0


STATUS_FIELDS = list(IHCStatus.__dataclass_fields__)


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
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mpp", type=float, help="level-0 µm/px for slides whose file lacks it")
    p.add_argument("--analysis-mpp", type=float, default=None,
                   help="µm/px cells are analysed at (default: the marker's analysis_mpp in the panel, never finer "
                        "than the slide; else 0.5)")
    p.add_argument("--stain", choices=["ruifrok", "estimate"], default="ruifrok",
                   help="stain vectors: Ruifrok H-DAB (default) or estimated per slide")
    p.add_argument("--workers", type=int, default=2, help="tiles scored at once (0 = in this thread)")
    p.add_argument("--pool", choices=["thread", "process"], default="thread", help="worker kind (default thread)")
    p.add_argument("--non-spindle-class", default="none", help="pattern class that is not tumour (default none)")
    p.add_argument("--necrosis-min-p", type=float, default=None,
                   help="p_necrosis that seeds a necrotic region, which is not counted (default: the grading config's, "
                        "0.5; regions grow and are filtered as in histo report)")
    p.add_argument("--allow-frame-mismatch", action="store_true",
                   help="accept a tumour map from a slide of another size (stretched; only right for pure scale changes)")
    p.add_argument("--overwrite", action="store_true", help="redo slides that are already done")
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


def match_prediction(folder: Path, stem: str) -> Path:
    """The tiles.parquet for an IHC slide in a folder of prediction folders, matched by slide stem."""
    if (folder / "tiles.parquet").is_file():
        return folder / "tiles.parquet"
    case = stem.split("_IHC")[0]
    tried = [stem, f"{case}_HE", case]
    for name in dict.fromkeys(tried):
        p = folder / name / "tiles.parquet"
        if p.is_file():
            return p
    raise HistoError(f"no prediction for slide {stem!r} in {folder} (looked for {', '.join(n + '/tiles.parquet' for n in dict.fromkeys(tried))})")


def _settings(args: argparse.Namespace, spec: Any, tumour: Path | None, slide_path: Path, slide_mpp: float) -> dict[str, Any]:
    """The run key of one IHC slide: everything that changes its cells, scores and call."""
    tumour_file = (tumour / "tiles.parquet" if tumour.is_dir() else tumour) if tumour is not None else None
    return {
        "slide": file_fingerprint(slide_path),
        "mpp": float(slide_mpp),
        "marker": spec.name,
        "compartment": spec.compartment,
        "thresholds_od": list(spec.thresholds_od),
        "call": asdict(spec.call),
        "cell_params": asdict(spec.cell_params),
        "analysis_mpp": args.analysis_mpp,
        "panel_analysis_mpp": spec.analysis_mpp,
        "stain": args.stain,
        "tumour_tiles": ({"path": str(tumour_file.resolve()), **file_fingerprint(tumour_file)}
                         if tumour_file is not None and tumour_file.is_file() else
                         (str(tumour.resolve()) if tumour is not None else None)),
        "non_spindle_class": args.non_spindle_class,
        "necrosis": asdict(_necrosis_rules(args).tiles) if tumour is not None else None,
        "allow_frame_mismatch": bool(args.allow_frame_mismatch),
    }


def _necrosis_rules(args: argparse.Namespace) -> Any:
    """The grading config whose tile rules find the necrotic regions left out of the IHC count: the
    case's (``args.grading_config``, set by ``histo case``) or the default, with ``--necrosis-min-p``."""
    import dataclasses

    from histo.aggregate import GradingConfig

    cfg = getattr(args, "grading_config", None) or GradingConfig()
    if args.necrosis_min_p is not None:
        if not 0.0 < args.necrosis_min_p <= 1.0:
            raise HistoError(f"--necrosis-min-p must lie in (0, 1], got {args.necrosis_min_p}")
        t = cfg.tiles
        cfg = dataclasses.replace(cfg, tiles=dataclasses.replace(
            t, necrosis_min_p=args.necrosis_min_p, necrosis_grow_p=min(t.necrosis_grow_p, args.necrosis_min_p)))
    return cfg


def score_one(path: Path, spec: Any, args: argparse.Namespace, tumour_src: Path | None, out: Path) -> IHCStatus:
    """Score one slide and write its outputs; a finished slide with the same settings is skipped."""
    from histo.aggregate import necrotic_mask
    from histo.ihc import (
        read_prediction_tiles,
        score_slide,
        tumour_mask_from_tiles,
        write_ihc_outputs,
    )
    from histo.slide import open_slide

    t0 = time.perf_counter()
    slide_dir = out / path.stem
    tumour = match_prediction(tumour_src, path.stem) if tumour_src is not None and tumour_src.is_dir() else tumour_src
    reason = ""
    with open_slide(path, mpp=args.mpp) as slide:
        settings = _settings(args, spec, tumour, path, slide.mpp)  # MppError when unknown: nothing written
        prev = None if args.overwrite else read_json(slide_dir / "ihc.json")
        if prev is not None:
            changes = describe_changes(stored_settings(prev), settings)
            if not changes:
                return IHCStatus(path.stem, str(path), "skipped",
                                 "ihc.json exists with the same slide, mpp and settings (--overwrite redoes it)",
                                 spec.name, prev.get("region", ""), (prev.get("call") or {}).get("label", ""),
                                 int(prev.get("n_cells") or 0), _fmt(prev.get("pct_positive")), _fmt(prev.get("h_score")),
                                 0.0)
            reason = redo_reason(changes)
            # The old completion mark must not vouch for the files while they are being replaced.
            (slide_dir / "ihc.json").unlink(missing_ok=True)
        tmask = None
        if tumour is not None:
            tiles, meta = read_prediction_tiles(tumour)
            he_mpp = float(meta.get("slide_mpp") or slide.mpp)
            he_dims = meta.get("slide_dimensions") or meta.get("dimensions")
            if not he_dims and abs(he_mpp - slide.mpp) / slide.mpp > 0.03 and not args.allow_frame_mismatch:
                raise HistoError(f"{tumour}: the H&E slide was {he_mpp:g} µm/px, this IHC slide {slide.mpp:g} µm/px: "
                                 "not the same level-0 frame (serial sections need registration, which histo does not do)")
            # Necrosis as the H&E report measured it (regions, not single tiles), so the IHC is counted
            # in the viable tumour the report shows.
            necrotic = necrotic_mask(tiles, he_mpp, _necrosis_rules(args))
            tmask = tumour_mask_from_tiles(tiles, tuple(he_dims) if he_dims else slide.dimensions, slide_mpp=he_mpp,
                                           non_spindle_class=args.non_spindle_class, necrotic=necrotic)
        result = score_slide(slide, spec, analysis_mpp=args.analysis_mpp, tumour_mask=tmask, stain=args.stain,
                             workers=args.workers, pool=args.pool, progress=not args.quiet,
                             allow_frame_mismatch=args.allow_frame_mismatch)
        summary = write_ihc_outputs(result, slide_dir, slide=slide, extra={"run_settings": settings})
    status = "no_tissue" if "no_tissue" in summary["qc"] else "ok"
    sentence = f"{reason} — {result.sentence}" if reason else result.sentence
    return IHCStatus(path.stem, str(path), status, sentence, spec.name, result.region, result.call.call,
                     result.score.n_cells, _fmt(result.score.pct_positive), _fmt(result.score.h_score),
                     round(time.perf_counter() - t0, 2))


def _fmt(v: Any) -> float | str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return ""
    return round(f, 2) if f == f else ""


def run(args: argparse.Namespace) -> int:
    """Score every slide; one status row each; exit 1 if any failed."""
    from histo.ihc import load_panel

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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run_cfg = {k: v for k, v in vars(args).items() if k not in ("run", "command")}
    write_text(out / "ihc_run.yaml", yaml.safe_dump(json.loads(json.dumps(run_cfg, default=str)), sort_keys=False))
    failed = 0
    bar = tqdm(slides, desc="slides", unit="slide", disable=args.quiet or len(slides) < 2)
    for path in bar:
        try:
            row = score_one(path, spec, args, sources[path.stem], out)
        except HistoError as exc:
            row = IHCStatus(path.stem, str(path), "failed", str(exc), spec.name)
        except Exception as exc:  # noqa: BLE001 - one broken slide must not lose the rest of the batch
            row = IHCStatus(path.stem, str(path), "failed", f"unexpected {type(exc).__name__}: {exc}", spec.name)
        failed += row.status == "failed"
        update_status(out / "status.csv", {row.slide: asdict(row)}, STATUS_FIELDS)
        _report(row)
    print(f"histo ihc: {len(slides) - failed} of {len(slides)} slides done, {failed} failed; status in {out / 'status.csv'}",
          file=sys.stderr)
    return 1 if failed else 0


def _report(r: IHCStatus) -> None:
    if not report_problem(r):
        print(f"{r.status:<8} {r.slide}: {r.reason} [{r.seconds:.1f} s]")
