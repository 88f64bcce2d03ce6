"""`histo predict SLIDES... --model MODEL --out DIR`: tile probabilities and mitosis points per slide.

Writes OUT/<slide_stem>/{tiles.parquet, mitoses.parquet, prediction.json} (contract C) and
OUT/status.csv (slide, status, reason, n_tiles, seconds). A slide already predicted with the same run
key (slide file, its mpp, tiling/tissue settings, model) is skipped; one predicted with another is
redone and its reason says why ("redone: mpp 0.5 → 0.25"); its report is redone when the grading
differs. A slide that fails (corrupt file, resolution the model cannot use) gets a failed row and the
others go on. Under torchrun (WORLD_SIZE > 1) each rank takes its share of the slides, on its own GPU,
and adds its rows to OUT/status.csv under the table's lock (histo.status), as two commands on one
--out do.

Exit codes: 0 every slide ok / no_tissue / skipped; 1 some failed; 2 bad usage (model, options).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from histo.cli.batch import report_problem
from histo.errors import ConfigError, HistoError
from histo.isolate import probe_isolated, unexpected_reason

# torch and the models are imported in run(): every `histo` command builds this parser, few need torch.


def register(sub: Any) -> None:
    """Add the `predict` subcommand."""
    p = sub.add_parser(
        "predict",
        help="run a model over slides: tile probabilities and mitosis points",
        description="Detect tissue, read tiles at the model's resolution and write per-tile pattern and "
                    "necrosis probabilities and mitosis points (µm) per slide. Resumable; under torchrun "
                    "the slides are shared between the processes.",
    )
    p.add_argument("slides", nargs="+", help="slide files (any OpenSlide format, or PNG/JPEG/TIFF with --mpp)")
    p.add_argument("--model", default=None,
                   help="model: a folder holding one <name>.card.json + <name>.safetensors, or the path prefix / "
                        "card / weights file of one (default: the default model shipped with histo; see its card)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=64, help="tiles per model call (default 64)")
    p.add_argument("--workers", type=int, default=2, help="worker processes reading tiles (0 = in this process; default 2)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto: a GPU when present)")
    p.add_argument("--mpp", type=float, help="level-0 µm/px for slides whose file lacks it")
    p.add_argument("--force-mpp", action="store_true",
                   help="use --mpp even when it is far (over 2.1x) from the µm/px the file states")
    p.add_argument("--overlap-px", type=int, default=0, help="tile overlap in model input px (default 0)")
    p.add_argument("--min-tissue-fraction", type=float,
                   help="share of a tile that must be tissue (default: the tiling default, 0.5)")
    p.add_argument("--grading", help="grading config YAML for the reports (default: built-in, as configs/grading/default.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a grading key, e.g. --set hpf.preset=fnclcc (repeatable)")
    p.add_argument("--no-report", action="store_true",
                   help="write the prediction tables only (grade and report later with `histo report`)")
    p.add_argument("--overwrite", action="store_true", help="redo slides that are already done")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average each tile over 8 flips and turns (8x the model time); "
                        "the report gives the spread of each measurement over the 8")
    p.add_argument("--csv", action="store_true",
                   help="also write tiles.csv and mitoses.csv beside the Parquet tables (same columns)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def _tiling(args: argparse.Namespace) -> Any:
    from histo.tiling import TilingConfig

    cfg = TilingConfig()
    if args.min_tissue_fraction is not None:
        try:
            grid = dataclasses.replace(cfg.grid, min_tissue_fraction=args.min_tissue_fraction)
        except ValueError as exc:
            raise ConfigError(f"--min-tissue-fraction: {exc}") from exc
        cfg = dataclasses.replace(cfg, grid=grid)
    return cfg


def run(args: argparse.Namespace) -> int:
    """Predict this rank's share of the slides; one status row each; exit 1 if any failed."""
    from histo.slide import mpp_argument

    args.mpp = mpp_argument(args.mpp, args.force_mpp)  # issue 17: a bad --mpp exits 2 here as in `info`
    from tqdm.auto import tqdm

    from histo.models import describe_model, load_model, resolve_model
    from histo.predict import distributed as dist
    from histo.predict.engine import resolve_device
    from histo.predict.run import STATUS_FIELDS, PredictResult, predict_slide
    from histo.status import STATUS_FILE, update_status

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.workers < 0:
        raise ConfigError(f"--workers must be >= 0, got {args.workers}")
    if args.overlap_px < 0:
        raise ConfigError(f"--overlap-px must be >= 0, got {args.overlap_px}")
    slides = [Path(s) for s in args.slides]
    names: dict[str, Path] = {}
    for s in slides:
        if s.stem in names and names[s.stem].resolve() != s.resolve():
            raise ConfigError(f"two slides share the name {s.stem!r} ({names[s.stem]} and {s}); "
                              "outputs are named by slide, so predict them into different --out folders")
        names[s.stem] = s
    slides = list(names.values())  # the same file named twice is done once
    tiling = _tiling(args)
    grading = None
    if not args.no_report:
        from histo.cli.report import resolve_grading

        grading = resolve_grading(args)  # a bad grading config fails before any slide is read
    info = dist.rank_info()
    device = resolve_device(dist.rank_device(args.device, info))
    model_path, how = resolve_model(args.model)
    model, card = load_model(model_path, "cpu")
    if not getattr(args, "quiet", False):
        print(f"histo {args.command}: {describe_model(card, model_path, how)}", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    distributed = dist.init(info)
    mine = dist.shard(slides, info)
    status_path = out / STATUS_FILE
    failed = 0
    bar = tqdm(mine, desc=f"slides (rank {info.rank})" if distributed else "slides", unit="slide",
               disable=args.quiet or len(mine) < 2)
    for path in bar:
        try:
            probe_isolated(path)  # issue 17: a slide that crashes native code fails alone
            result = predict_slide(path, model, card, out, batch_size=args.batch_size, workers=args.workers,
                                   device=device, mpp=args.mpp, tiling=tiling, overlap_px=args.overlap_px,
                                   overwrite=args.overwrite, progress=not args.quiet,
                                   tta=args.tta)
            if args.csv and result.status != "failed":
                from histo.prediction import write_csv_tables

                write_csv_tables(result.out_dir)  # tiles.csv, mitoses.csv
        except HistoError as exc:
            result = PredictResult(str(path), path.stem, "failed", reason=str(exc))
        except Exception as exc:  # noqa: BLE001 - one broken slide must not lose the rest of the batch
            result = PredictResult(str(path), path.stem, "failed", reason=unexpected_reason(exc))
        if grading is not None and result.status != "failed":
            result = _write_report(result, path, grading)
        failed += result.status == "failed"
        update_status(status_path, {result.slide: result.status_row()}, STATUS_FIELDS)
        _report(result)

    if distributed:
        dist.barrier()  # every rank has added its rows
        failed = dist.sum_all(failed)
        dist.shutdown()
    if info.rank == 0:
        print(f"histo predict: {len(slides) - failed} of {len(slides)} slides done, {failed} failed; "
              f"status in {out / STATUS_FILE}", file=sys.stderr)
    return 1 if failed else 0


def _report_changes(folder: Path, grading: Any) -> tuple[list[str] | None, str]:
    """(what differs between the grading of the folder's report.json and ``grading``, its verdict);
    (None, "") when there is no readable report."""
    from histo.rerun import describe_changes, read_json

    old = read_json(folder / "report.json")
    if old is None or not isinstance(old.get("grading_config"), dict):
        return None, ""
    verdict = old.get("verdict", {}).get("high_grade", "") if isinstance(old.get("verdict"), dict) else ""
    if hasattr(grading, "for_model"):  # the report holds the config as applied: a null min_score resolved
        model = (read_json(folder / "prediction.json") or {}).get("model") or {}
        try:
            grading = grading.for_model(model.get("mitosis_threshold"))
        except HistoError:
            return None, ""  # report_prediction will say why
    return describe_changes(old["grading_config"], grading.to_dict()), str(verdict)


def _write_report(result: Any, slide: Path, grading: Any) -> Any:
    """Grade a predicted slide and write its report beside the predictions; a report failure fails the slide.

    A skipped slide keeps its report when it was made with the same grading; otherwise the report is
    redone from the unchanged predictions and the row says so."""
    from histo.case import report_prediction

    folder = Path(result.out_dir)
    if result.status == "skipped":
        changes, verdict = _report_changes(folder, grading)
        if changes == []:  # the same grading: the report stands, and so does its row
            return dataclasses.replace(result, verdict=verdict, report=str(folder / "report.html"))
        why = f"grading changed: {'; '.join(changes[:4])}" if changes else "no report yet"
        result = dataclasses.replace(result, status="no_tissue" if result.n_tiles == 0 else "ok",
                                     reason=f"report redone ({why}); predictions unchanged")
    try:
        done = report_prediction(folder, folder, grading, slides=[slide])
    except HistoError as exc:
        return dataclasses.replace(result, status="failed", reason=f"report: {exc} (predictions kept in {folder})")
    return dataclasses.replace(result, verdict=done.verdict, report=str(done.paths.html))


def _report(r: Any) -> None:
    """One line per slide on stderr."""
    if report_problem(r, width=10):
        return
    if r.status == "no_tissue":
        print(f"no tissue {r.slide}: empty tables written to {r.out_dir}", file=sys.stderr)
    else:
        print(f"ok        {r.slide}: {r.n_tiles} tiles, {r.n_mitoses} mitoses, {r.seconds:.1f} s -> {r.out_dir}",
              file=sys.stderr)
    if r.reason.startswith(("redone", "report redone")):
        print(f"          {r.reason}", file=sys.stderr)
    if r.report:
        print(f"          high grade: {r.verdict.replace('_', ' ')}; report {r.report}", file=sys.stderr)
