"""One case end to end: predict the H&E slide → grade and report it → IHC in its tumour → the case report.

Per case, under ``out_dir/<case_id>/``: ``he/<slide>/`` (predictions + report.json/html/geojson),
``ihc/<marker>/<slide>/`` (ihc.json and friends) and ``case_report.{json,html}``. On rerun each step is
skipped only when its run key is unchanged (the H&E prediction: slide file, mpp, model; each IHC slide:
slide file, mpp, panel entry, tumour map, necrosis rules; the reports: grading, markers and slides, in
``case_run.json``), and redone otherwise, the result's reason saying what changed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histo.atomic import write_text
from histo.case.casefile import Case, load_case
from histo.case.ihc import IHCOptions, IHCSlideResult, score_ihc_slide
from histo.case.report import SlideReport, load_grading, report_prediction
from histo.errors import ConfigError
from histo.rerun import (
    RUN_SETTINGS_KEY,
    describe_changes,
    plain,
    read_json,
    redo_reason,
    stored_settings,
)

if TYPE_CHECKING:
    from histo.aggregate import GradingConfig
    from histo.ihc import MarkerSpec
    from histo.models import ModelCard
    from histo.predict import PredictResult
    from histo.report import CaseReportPaths

CASE_RUN_FILE = "case_run.json"  # the run key of the case's reports, written after them


@dataclass(frozen=True)
class CaseOptions:
    """How a case is run: model batching and device, worker count, reruns, progress bars."""

    batch_size: int = 64  # tiles per model call
    workers: int = 2  # tile reader processes for the model, and threads scoring IHC tiles (0 = in this process)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    overwrite: bool = False  # redo finished steps
    progress: bool = False  # progress bars
    tta: bool = False  # test-time augmentation of the H&E model (8 flips and turns; the report gives the spread)


@dataclass
class CaseResult:
    """A reported case: its verdict and summary sentence, what each step did, and the case report's files."""

    case_id: str
    status: str  # ok | skipped
    verdict: str
    summary: str
    reason: str  # what was redone and why ('' when nothing was)
    report: Path  # case_report.html
    he: PredictResult | None = None
    he_report: SlideReport | None = None  # None when the case was skipped
    ihc: list[IHCSlideResult] = field(default_factory=list)
    case_report: CaseReportPaths | None = None  # None when the case was skipped

    def status_row(self) -> dict[str, Any]:
        """Its row of `histo case`'s status.csv (without seconds and case_file)."""
        return {"case": self.case_id, "status": self.status, "verdict": self.verdict, "summary": self.summary,
                "reason": self.reason, "report": str(self.report)}


def predict_he(case: Case, model: Any, card: ModelCard, out_dir: str | os.PathLike[str],
               options: CaseOptions | None = None) -> PredictResult:
    """Step 1: the H&E slide's predictions in ``out_dir/<slide>/`` (skipped when done with the same run key)."""
    from histo.predict.run import predict_slide

    o = options or CaseOptions()
    return predict_slide(case.he_path, model, card, out_dir, batch_size=o.batch_size, workers=o.workers,
                         device=o.device, mpp=case.mpp, overwrite=o.overwrite, progress=o.progress, tta=o.tta)


def score_case_ihc(case: Case, panel: dict[str, MarkerSpec], he_prediction: str | os.PathLike[str],
                   out_dir: str | os.PathLike[str], grading: GradingConfig | None = None,
                   options: CaseOptions | None = None) -> list[IHCSlideResult]:
    """Step 3: each IHC slide scored for its marker in the H&E tumour, into ``out_dir/<marker>/<slide>/``."""
    o = options or CaseOptions()
    unknown = [m for m in case.ihc_paths if m not in panel]
    if unknown:
        raise ConfigError(f"{case.source}: marker(s) {', '.join(unknown)} not in the panel (it has {', '.join(panel)})")
    ihc_opts = IHCOptions(mpp=case.mpp, workers=o.workers, overwrite=o.overwrite, progress=o.progress)
    # necrotic regions left out of the IHC count follow the case's grading rules
    return [score_ihc_slide(path, panel[marker], Path(out_dir) / marker, tumour_tiles=he_prediction,
                            grading=grading, options=ihc_opts, he_slide=case.he_path)
            for marker, path in case.ihc_paths.items()]


def write_case(case: Case, he_report: SlideReport, ihc: list[IHCSlideResult],
               out_dir: str | os.PathLike[str]) -> CaseReportPaths:
    """Step 4: case_report.json + case_report.html from the H&E report and the IHC results."""
    from histo.report import IhcInput, write_case_report

    return write_case_report(out_dir, case.case_id, he_report.report,
                             [IhcInput(r.summary, r.folder) for r in ihc], [he_report.paths.html])


def _log_nothing(_: str) -> None:
    return None


def run_case(case: str | os.PathLike[str] | Case, out_dir: str | os.PathLike[str], *,
             model: Any = None, card: ModelCard | None = None, grading: GradingConfig | None = None,
             panel: dict[str, MarkerSpec] | None = None, options: CaseOptions | None = None,
             log: Callable[[str], None] | None = None) -> CaseResult:
    """Predict, grade, score IHC and report one case (a case file or a loaded Case) into ``out_dir/<case_id>/``.

    ``model``/``card`` default to the model shipped with histo, ``grading`` to the built-in rules,
    ``panel`` to configs/markers/panel.yaml. ``log`` receives one line per step. Raises HistoError
    when the case cannot be reported."""
    from histo.ihc import load_panel

    say = log or _log_nothing
    o = options or CaseOptions()
    if o.batch_size < 1 or o.workers < 0:
        raise ConfigError("batch_size must be >= 1 and workers >= 0")
    c = case if isinstance(case, Case) else load_case(case)
    if model is None or card is None:
        from histo.models import load_model, resolve_model

        model, card = load_model(resolve_model(None)[0], "cpu")
    grading = grading or load_grading()
    panel = panel if panel is not None else load_panel()
    case_dir = Path(out_dir) / c.case_id
    unknown = [m for m in c.ihc_paths if m not in panel]
    if unknown:  # before the H&E step: a bad case file must not cost a prediction
        raise ConfigError(f"{c.source}: marker(s) {', '.join(unknown)} not in the panel (it has {', '.join(panel)})")

    he = predict_he(c, model, card, case_dir / "he", o)
    say(f"{c.case_id} H&E: {he.status} {he.reason}")
    he_pred = Path(he.out_dir)
    redone: list[str] = [f"H&E {he.reason}"] if he.reason.startswith("redone") else []
    ihc = score_case_ihc(c, panel, he_pred, case_dir / "ihc", grading, o)
    for r in ihc:
        say(f"{c.case_id} {r.status.marker}: {r.status.status} {r.status.reason}")
        if r.status.reason.startswith("redone"):
            redone.append(f"{r.status.marker} {r.status.reason.partition(' — ')[0]}")
    all_skipped = he.status == "skipped" and all(r.status.status == "skipped" for r in ihc)

    key = {"he": str(c.he_path), "ihc": {m: str(p) for m, p in c.ihc_paths.items()}, "grading": grading.to_dict()}
    done = read_json(case_dir / CASE_RUN_FILE)
    report_changes = describe_changes(stored_settings(done), key) if done is not None else ["no case report yet"]
    if (all_skipped and not report_changes and not o.overwrite and (case_dir / "case_report.json").is_file()
            and (he_pred / "report.json").is_file()):
        old = read_json(case_dir / "case_report.json") or {}
        he_old = read_json(he_pred / "report.json") or {}
        return CaseResult(c.case_id, "skipped", he_old.get("verdict", {}).get("high_grade", ""),
                          old.get("summary", ""),
                          "already done with the same slides, mpp, model, panel and grading (--overwrite redoes it)",
                          case_dir / "case_report.html", he=he, ihc=ihc)
    (case_dir / CASE_RUN_FILE).unlink(missing_ok=True)
    from histo.report import IhcInput

    he_report = report_prediction(he_pred, he_pred, grading, slides=[c.he_path],
                                  ihc=[IhcInput(r.summary, r.folder) for r in ihc])
    paths = write_case(c, he_report, ihc, case_dir)
    write_text(case_dir / CASE_RUN_FILE, json.dumps({RUN_SETTINGS_KEY: plain(key)}, indent=1) + "\n")
    if done is not None and report_changes:
        redone.append(f"reports {redo_reason(report_changes)}")
    return CaseResult(c.case_id, "ok", he_report.verdict, str(paths.report.get("summary", "")), "; ".join(redone),
                      paths.html, he=he, he_report=he_report, ihc=ihc, case_report=paths)
