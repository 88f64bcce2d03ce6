"""`histo case CASE.yaml... --model MODEL --out DIR`: one H&E slide and its IHC slides → one case report.

A case file (YAML; paths relative to the file)::

    case_id: CASE-001            # names the output folder OUT/<case_id>/
    he: slides/case1_HE.tiff     # the H&E slide: graded by the model
    ihc:                         # marker -> IHC slide (markers from the panel: ALK, S100, CD34, SMA, ROS1, Ki67 …)
      ALK: slides/case1_IHC_ALK.tiff
      S100: slides/case1_IHC_S100.tiff
    mpp: null                    # level-0 µm/px for every slide of the case whose file lacks it

The pipeline is :func:`histo.case.run_case` (outputs and rerun rules there). OUT/status.csv has one row
per case, merged in under the table's lock (rows of other cases and runs are kept). A case_id met twice in
one run is refused for the second case (failed row) so the first case's report is not overwritten. Exit 0
when every case is reported, 1 when some failed, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from histo.errors import ConfigError, HistoError

STATUS_FIELDS = ["case", "status", "verdict", "summary", "reason", "report", "seconds", "case_file"]


def load_case(path: str | Path) -> Any:
    """histo.case.load_case (kept here for callers of the CLI module; the library loads on first use)."""
    from histo.case import load_case as _load_case

    return _load_case(path)


def register(sub: Any) -> None:
    """Add the `case` subcommand."""
    p = sub.add_parser(
        "case",
        help="grade a case's H&E slide, score its IHC slides in the tumour, and write one case report",
        description="For each case file: predict the H&E slide with the model, grade it, score each IHC slide "
                    "for its marker in the predicted tumour, and write the slide reports and one case report "
                    "(JSON + HTML). Research use only.",
    )
    p.add_argument("cases", nargs="+", metavar="CASE.yaml", help="case files (see `histo case --help` docs in README)")
    p.add_argument("--model", default=None,
                   help="model: a folder holding one <name>.card.json + <name>.safetensors, or the path prefix / "
                        "card / weights file of one (default: the default model shipped with histo; see its card)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--grading", help="grading config YAML (default: built-in, as configs/grading/default.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a grading key (repeatable)")
    p.add_argument("--panel", help="marker panel YAML (default: configs/markers/panel.yaml)")
    p.add_argument("--batch-size", type=int, default=64, help="tiles per model call (default 64)")
    p.add_argument("--workers", type=int, default=2,
                   help="worker processes reading H&E tiles for the model, and worker threads scoring IHC tiles "
                        "(0 = in this process; default 2)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--overwrite", action="store_true", help="redo finished steps")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation of the H&E model: 8 flips and turns (8x the model time); the slide "
                        "report gives the spread of each measurement")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def _log(line: str) -> None:
    print(f"  {line}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Report every case; one status row each; exit 1 if any failed."""
    from histo.case import CaseOptions, load_grading
    from histo.ihc import load_panel
    from histo.models import describe_model, load_model, resolve_model

    if args.batch_size < 1 or args.workers < 0:
        raise ConfigError("--batch-size must be >= 1 and --workers >= 0")
    grading = load_grading(args.grading, args.overrides)
    panel = load_panel(args.panel)
    model_path, how = resolve_model(args.model)
    model, card = load_model(model_path, "cpu")
    if not args.quiet:
        print(f"histo {args.command}: {describe_model(card, model_path, how)}", file=sys.stderr)
    options = CaseOptions(batch_size=args.batch_size, workers=args.workers, device=args.device,
                          overwrite=args.overwrite, progress=not args.quiet, tta=args.tta)
    return run_cases([Path(c) for c in args.cases], Path(args.out), model=model, card=card, grading=grading,
                     panel=panel, options=options)


def run_cases(case_files: list[Path], out: Path, *, model: Any, card: Any, grading: Any, panel: dict[str, Any],
              options: Any) -> int:
    """Run :func:`histo.case.run_case` on each case file, one status row each; 1 if any failed, else 0."""
    from histo.case import run_case
    from histo.isolate import probe_isolated, unexpected_reason
    from histo.status import update_status

    out.mkdir(parents=True, exist_ok=True)
    seen: dict[str, Path] = {}  # case_id -> the case file that claimed it in this run
    n = failed = 0
    for case_path in case_files:
        t0 = time.perf_counter()
        n += 1
        key = case_path.stem
        row: dict[str, Any]
        try:
            case = load_case(case_path)
            if case.case_id in seen:
                key = str(case_path)  # its own row: the first case's row and report stay as they are
                raise ConfigError(f"case_id {case.case_id!r} is already used in this run by {seen[case.case_id]}; "
                                  f"this case was not run, so {out / case.case_id} keeps that case's report "
                                  "(give it another case_id)")
            seen[case.case_id] = case_path
            key = case.case_id
            for slide_path in (case.he_path, *case.ihc_paths.values()):
                probe_isolated(slide_path, case.mpp)  # a slide that crashes native code fails its case alone
            result = run_case(case, out, model=model, card=card, grading=grading, panel=panel, options=options,
                              log=_log)
            row = result.status_row()
            tag = "skipped " if result.status == "skipped" else "ok      "
            print(f"{tag} {result.case_id}: {result.summary}\n         -> {result.report}"
                  + (f"\n         {result.reason}" if result.reason else ""), file=sys.stderr)
        except HistoError as exc:
            failed += 1
            row = {"case": key, "status": "failed", "reason": str(exc)}
            print(f"FAILED   {case_path}: {exc}", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - one broken case must not lose the rest of the batch
            failed += 1
            row = {"case": key, "status": "failed", "reason": unexpected_reason(exc)}
            print(f"FAILED   {case_path}: {row['reason']}", file=sys.stderr)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        row["case_file"] = str(case_path)
        update_status(out / "status.csv", {row["case"]: row}, STATUS_FIELDS, key="case")
    print(f"histo case: {n - failed} of {n} cases reported, {failed} failed; status in "
          f"{out / 'status.csv'}", file=sys.stderr)
    return 1 if failed else 0
