"""`histo case CASE.yaml... --model MODEL --out DIR`: one H&E slide and its IHC slides → one case report.

A case file (YAML; paths relative to the file)::

    case_id: CASE-001            # names the output folder OUT/<case_id>/
    he: slides/case1_HE.tiff     # the H&E slide: graded by the model
    ihc:                         # marker -> IHC slide (markers from the panel: ALK, S100, CD34, SMA, ROS1, Ki67 …)
      ALK: slides/case1_IHC_ALK.tiff
      S100: slides/case1_IHC_S100.tiff
    mpp: null                    # level-0 µm/px for every slide of the case whose file lacks it

Per case: OUT/<case_id>/he/<slide>/ (predictions + report.json/html/geojson), OUT/<case_id>/ihc/<marker>/<slide>/
(contract D), and OUT/<case_id>/case_report.{json,html}. IHC cells are counted in the H&E model's tumour
map; the H&E and IHC slides must share a level-0 frame (phantom pairs do; serial sections need
registration, which histo does not do). OUT/status.csv has one row per case, merged in under the table's
lock (rows of other cases and runs are kept). On rerun each step is skipped only when its run key is
unchanged (the H&E prediction: slide file, mpp, model; each IHC slide: slide file, mpp, panel entry,
tumour map, necrosis rules; the reports: grading, markers and slides, in OUT/<case_id>/case_run.json),
and redone otherwise, the row's reason saying what changed. A case_id met twice in one run is refused
for the second case (failed row) so the first case's report is not overwritten. Exit 0 when every case
is reported, 1 when some failed, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from histo.atomic import write_text
from histo.config import from_dict, load_yaml
from histo.errors import ConfigError, HistoError
from histo.rerun import (
    RUN_SETTINGS_KEY,
    describe_changes,
    plain,
    read_json,
    redo_reason,
    stored_settings,
)
from histo.status import update_status

STATUS_FIELDS = ["case", "status", "verdict", "summary", "reason", "report", "seconds", "case_file"]
CASE_RUN_FILE = "case_run.json"  # the run key of the case's reports, written after them


@dataclass(frozen=True)
class CaseFile:
    """A case: one H&E slide and its IHC slides by marker."""

    case_id: str
    he: str
    ihc: dict[str, str] = field(default_factory=dict)
    mpp: float | None = None


def load_case(path: str | Path) -> tuple[CaseFile, Path, dict[str, Path]]:
    """Read and check a case file; returns the case, its H&E path and IHC paths (resolved, existing)."""
    p = Path(path)
    case = from_dict(CaseFile, load_yaml(p), source=str(p))
    if not case.case_id.strip() or any(c in case.case_id for c in "/\\:") or case.case_id in (".", ".."):
        raise ConfigError(f"{p}: case_id {case.case_id!r} must be a plain name (it names the output folder)")
    base = p.parent

    def _file(rel: Any, key: str) -> Path:
        if not isinstance(rel, str) or not rel:
            raise ConfigError(f"{p}: '{key}' must be a slide path, got {rel!r}")
        f = (base / rel).resolve() if not Path(rel).is_absolute() else Path(rel)
        if not f.is_file():
            raise ConfigError(f"{p}: {key}: slide file not found: {f}")
        return f

    he = _file(case.he, "he")
    ihc = {marker: _file(rel, f"ihc.{marker}") for marker, rel in case.ihc.items()}
    return case, he, ihc


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
    p.add_argument("--workers", type=int, default=2, help="reader processes / IHC tile workers (default 2)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--overwrite", action="store_true", help="redo finished steps")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def _ihc_args(ihc_path: Path, marker: str, out: Path, he_pred: Path, args: argparse.Namespace, mpp: float | None,
              grading: Any = None) -> argparse.Namespace:
    """The `histo ihc` arguments for one IHC slide of a case, with that command's defaults."""
    from histo.cli import build_parser

    argv = ["ihc", str(ihc_path), "--marker", marker, "--out", str(out), "--tumour-tiles", str(he_pred),
            "--workers", str(args.workers)]
    if args.panel:
        argv += ["--panel", args.panel]
    if mpp is not None:
        argv += ["--mpp", str(mpp)]
    if args.overwrite:
        argv.append("--overwrite")
    if args.quiet:
        argv.append("--quiet")
    ns = build_parser().parse_args(argv)
    ns.grading_config = grading  # necrotic regions left out of the IHC count follow the case's grading rules
    return ns


def run_case(case_path: Path, model: Any, card: Any, args: argparse.Namespace, grading: Any, panel: dict[str, Any],
             out_root: Path, loaded: tuple[CaseFile, Path, dict[str, Path]] | None = None) -> dict[str, Any]:
    """Predict, grade, score IHC and report one case; returns its status row (raises HistoError on failure).

    ``loaded`` is the case as ``load_case`` returned it, when the caller has read it already."""
    import json

    from histo.cli.ihc import score_one
    from histo.cli.report import report_folder
    from histo.predict.run import predict_slide
    from histo.report import write_case_report

    case, he_path, ihc_paths = loaded or load_case(case_path)
    unknown = [m for m in ihc_paths if m not in panel]
    if unknown:
        raise ConfigError(f"{case_path}: marker(s) {', '.join(unknown)} not in the panel (it has {', '.join(panel)})")
    case_dir = out_root / case.case_id
    he_root = case_dir / "he"
    res = predict_slide(he_path, model, card, he_root, batch_size=args.batch_size, workers=args.workers,
                        device=args.device, mpp=case.mpp, overwrite=args.overwrite, progress=not args.quiet)
    print(f"  {case.case_id} H&E: {res.status} {res.reason}", file=sys.stderr)
    he_pred = Path(res.out_dir)
    redone: list[str] = [f"H&E {res.reason}"] if res.reason.startswith("redone") else []
    ihc_dirs: list[Path] = []
    all_skipped = res.status == "skipped"
    for marker, path in ihc_paths.items():
        out = case_dir / "ihc" / marker
        row = score_one(path, panel[marker], _ihc_args(path, marker, out, he_pred, args, case.mpp, grading), he_pred, out)
        print(f"  {case.case_id} {marker}: {row.status} {row.reason}", file=sys.stderr)
        all_skipped &= row.status == "skipped"
        if row.reason.startswith("redone"):
            redone.append(f"{marker} {row.reason.partition(' — ')[0]}")
        ihc_dirs.append(out / path.stem)
    key = {"he": str(he_path), "ihc": {m: str(p) for m, p in ihc_paths.items()}, "grading": grading.to_dict()}
    done = read_json(case_dir / CASE_RUN_FILE)
    report_changes = describe_changes(stored_settings(done), key) if done is not None else ["no case report yet"]
    if (all_skipped and not report_changes and not args.overwrite and (case_dir / "case_report.json").is_file()
            and (he_pred / "report.json").is_file()):
        old = read_json(case_dir / "case_report.json") or {}
        he_old = read_json(he_pred / "report.json") or {}
        return {"case": case.case_id, "status": "skipped", "verdict": he_old.get("verdict", {}).get("high_grade", ""),
                "summary": old.get("summary", ""), "report": str(case_dir / "case_report.html"),
                "reason": "already done with the same slides, mpp, model, panel and grading (--overwrite redoes it)"}
    (case_dir / CASE_RUN_FILE).unlink(missing_ok=True)
    verdict, report_json, _ = report_folder(he_pred, he_pred, grading, slides=[he_path], n_folders=1,
                                            ihc=[str(d) for d in ihc_dirs], geojson_tiles=True)
    paths = write_case_report(case_dir, case.case_id, report_json, [d / "ihc.json" for d in ihc_dirs],
                              [report_json.with_name("report.html")])
    write_text(case_dir / CASE_RUN_FILE, json.dumps({RUN_SETTINGS_KEY: plain(key)}, indent=1) + "\n")
    summary = json.loads(paths.json.read_text(encoding="utf-8")).get("summary", "")
    if done is not None and report_changes:
        redone.append(f"reports {redo_reason(report_changes)}")
    return {"case": case.case_id, "status": "ok", "verdict": verdict, "summary": summary, "reason": "; ".join(redone),
            "report": str(paths.html)}


def run(args: argparse.Namespace) -> int:
    """Report every case; one status row each; exit 1 if any failed."""
    from histo.cli.report import resolve_grading
    from histo.ihc import load_panel
    from histo.models import describe_model, load_model, resolve_model

    if args.batch_size < 1 or args.workers < 0:
        raise ConfigError("--batch-size must be >= 1 and --workers >= 0")
    grading = resolve_grading(args)
    panel = load_panel(args.panel)
    model_path, how = resolve_model(args.model)
    model, card = load_model(model_path, "cpu")
    if not getattr(args, "quiet", False):
        print(f"histo {args.command}: {describe_model(card, model_path, how)}", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seen: dict[str, Path] = {}  # case_id -> the case file that claimed it in this run
    n = failed = 0
    for case_path in map(Path, args.cases):
        t0 = time.perf_counter()
        n += 1
        key = case_path.stem
        try:
            loaded = load_case(case_path)
            case_id = loaded[0].case_id
            if case_id in seen:
                key = str(case_path)  # its own row: the first case's row and report stay as they are
                raise ConfigError(f"case_id {case_id!r} is already used in this run by {seen[case_id]}; this case was "
                                  f"not run, so {out / case_id} keeps that case's report (give it another case_id)")
            seen[case_id] = case_path
            key = case_id
            row = run_case(case_path, model, card, args, grading, panel, out, loaded)
            tag = "skipped " if row["status"] == "skipped" else "ok      "
            print(f"{tag} {row['case']}: {row['summary']}\n         -> {row['report']}"
                  + (f"\n         {row['reason']}" if row["reason"] else ""), file=sys.stderr)
        except HistoError as exc:
            failed += 1
            row = {"case": key, "status": "failed", "reason": str(exc)}
            print(f"FAILED   {case_path}: {exc}", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - one broken case must not lose the rest of the batch
            failed += 1
            row = {"case": key, "status": "failed", "reason": f"unexpected {type(exc).__name__}: {exc}"}
            print(f"FAILED   {case_path}: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        row["case_file"] = str(case_path)
        update_status(out / "status.csv", {row["case"]: row}, STATUS_FIELDS, key="case")
    print(f"histo case: {n - failed} of {n} cases reported, {failed} failed; status in "
          f"{out / 'status.csv'}", file=sys.stderr)
    return 1 if failed else 0
