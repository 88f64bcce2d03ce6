"""The JSON schemas of histo reports, and their validators.

report.json — schema ``histo.report/1``
-----------------------------------------
One H&E slide. Keys (all present; ``null`` where marked):

- ``schema``: ``"histo.report/1"``; ``histo_version``: str; ``created``: ISO 8601 UTC timestamp.
- ``slide``: ``{name: str, path: str|null, mpp: float (level-0 µm/px), dimensions: [w, h]|null (level-0 px),
  vendor: str|null}``.
- ``model``: the model card summary ``{name, backbone, classes: [str], tile_px, mpp, weights_sha256|null,
  metrics: {name: float}}`` (values null when the prediction folder did not record them).
- ``prediction``: the folder's ``prediction.json`` (docs/formats.md), verbatim, or null.
- ``assessment_schema_version``: int; ``measurements``, ``grading``, ``grading_config``: the three parts of
  ``histo.aggregate.SlideAssessment.to_dict()`` verbatim (areas mm², coordinates µm from the slide origin).
- ``grading_config_sha256``: sha256 of the grading config as canonical JSON (sorted keys), to tell runs apart.
- ``verdict``: ``{high_grade: "yes"|"no"|"not_assessable", status: grading status, line: str (the one-line
  verdict), reasons: [str] (one sentence per criterion, then the conclusion)}``.
- ``hotspot``: null when no mitosis was counted in viable tumour, else ``{shape, n_hpf, area_mm2 (window),
  count, counted_in: "window"|"whole_viable_tumour", counted_area_mm2, hpf_area_mm2, per_10hpf (= count /
  counted_area_mm2 × 10 × hpf_area_mm2), window_count (mitoses in the densest window), window_exceeds_tumour,
  text ("12 mitoses in … = 14.4 per 10 HPF (HPF 0.237 mm²)"), centre_um: [x, y] (of the densest window),
  box_um: [x0, y0, x1, y1], box_px: [x0, y0, x1, y1] (level 0; the window's box clipped to the slide)}``.
- ``ihc``: list of contract-D ``ihc.json`` dicts (empty when none), each with ``sentence`` added.
- ``files``: paths relative to the report folder: ``{json, html, geojson, images: {key: png path}}``; image
  keys: ``thumbnail``, ``necrosis``, ``pattern``, ``mitoses`` (a key is absent when its image was not made).

case_report.json — schema ``histo.case_report/1``
---------------------------------------------------
One case (an H&E slide plus its IHC slides): ``schema``, ``histo_version``, ``created``, ``case_id``: str,
``summary``: str (the case sentence), ``high_grade``: ``{verdict, line, slide}`` or null without an H&E report,
``he``: the H&E slide's ``{slide, verdict, measurements}`` digest or null, ``ihc``: list of ``{marker, call,
reason, h_score, pct_positive, n_cells, counts, region, qc, slide, sentence}``, ``co_expression``:
``{markers: [str], co_expressed: bool}``, ``files``: ``{json, html, slides: [paths to slide HTML relative to the case folder; may climb with ..]}``.

Readers call :func:`validate_report` / :func:`validate_case_report`; they raise :class:`ReportSchemaError`
listing every problem found.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from histo.errors import HistoError

REPORT_SCHEMA = "histo.report/1"
CASE_REPORT_SCHEMA = "histo.case_report/1"
_VERDICTS = ("yes", "no", "not_assessable")


class ReportSchemaError(HistoError, ValueError):
    """A report dict does not follow its schema; the message lists every problem."""


_NUM = (int, float)
_STR_OR_NONE = (str, type(None))

_REPORT_KEYS: dict[str, tuple[type, ...]] = {
    "schema": (str,), "histo_version": (str,), "created": (str,), "slide": (dict,), "model": (dict,),
    "prediction": (dict, type(None)), "assessment_schema_version": (int,), "measurements": (dict,),
    "grading": (dict,), "grading_config": (dict,), "grading_config_sha256": (str,), "verdict": (dict,),
    "hotspot": (dict, type(None)), "ihc": (list,), "files": (dict,),
}
_SLIDE_KEYS = {"name": (str,), "path": _STR_OR_NONE, "mpp": _NUM, "dimensions": (list, type(None)),
               "vendor": _STR_OR_NONE}
_MODEL_KEYS = {"name": _STR_OR_NONE, "backbone": _STR_OR_NONE, "classes": (list,), "tile_px": (int, type(None)),
               "mpp": (int, float, type(None)), "weights_sha256": _STR_OR_NONE, "metrics": (dict,)}
_VERDICT_KEYS = {"high_grade": (str,), "status": (str,), "line": (str,), "reasons": (list,)}
_HOTSPOT_KEYS = {"shape": (str,), "n_hpf": _NUM, "area_mm2": _NUM, "count": (int,), "per_10hpf": _NUM,
                 "counted_in": (str,), "counted_area_mm2": _NUM, "hpf_area_mm2": _NUM, "window_count": (int,),
                 "window_exceeds_tumour": (bool,), "text": (str,),
                 "centre_um": (list,), "box_um": (list,), "box_px": (list,)}
_COUNTED_IN = ("window", "whole_viable_tumour")
_FILES_KEYS = {"json": (str,), "html": (str,), "geojson": (str,), "images": (dict,)}
_MEASUREMENT_KEYS = ("tissue_area_mm2", "tumour_area_mm2", "necrosis_area_mm2", "necrosis_pct_of_tumour",
                     "pattern", "mitoses")
_GRADING_KEYS = ("status", "mitotic_score", "necrosis_score", "high_grade")

_CASE_KEYS: dict[str, tuple[type, ...]] = {
    "schema": (str,), "histo_version": (str,), "created": (str,), "case_id": (str,), "summary": (str,),
    "high_grade": (dict, type(None)), "he": (dict, type(None)), "ihc": (list,), "co_expression": (dict,),
    "files": (dict,),
}
_CASE_IHC_KEYS = {"marker": (str,), "call": (str,), "sentence": (str,)}


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def _check(obj: Any, spec: Mapping[str, tuple[type, ...]], where: str, problems: list[str]) -> None:
    if not isinstance(obj, Mapping):
        problems.append(f"{where}: expected an object, got {type(obj).__name__}")
        return
    for key, types in spec.items():
        if key not in obj:
            problems.append(f"{where}.{key}: missing")
        elif isinstance(obj[key], bool) and bool not in types:
            problems.append(f"{where}.{key}: expected {_type_names(types)}, got bool")
        elif not isinstance(obj[key], types):
            problems.append(f"{where}.{key}: expected {_type_names(types)}, got {type(obj[key]).__name__}")


def _relative(path: Any, where: str, problems: list[str], *, allow_parent: bool = False) -> None:
    if not isinstance(path, str) or not path:
        problems.append(f"{where}: expected a relative path, got {path!r}")
        return
    p = PurePosixPath(path)
    if p.is_absolute() or (".." in p.parts and not allow_parent) or "\\" in path or ":" in path:
        inside = "" if allow_parent else " inside the report folder"
        problems.append(f"{where}: must be a relative path{inside}, got {path!r}")


def _box(value: Any, where: str, problems: list[str]) -> None:
    if not (isinstance(value, list) and len(value) == 4 and all(isinstance(v, _NUM) and not isinstance(v, bool)
                                                                for v in value)):
        problems.append(f"{where}: expected [x0, y0, x1, y1] numbers, got {value!r}")
    elif not (value[0] <= value[2] and value[1] <= value[3]):
        problems.append(f"{where}: x0 <= x1 and y0 <= y1 needed, got {value!r}")


def _hotspot_consistency(hs: Mapping[str, Any], slide: Any, problems: list[str]) -> None:
    """The hotspot figure is its count over its counted area, and its box lies on the slide."""
    if hs.get("counted_in") not in _COUNTED_IN:
        problems.append(f"report.hotspot.counted_in: expected one of {', '.join(_COUNTED_IN)}, got {hs.get('counted_in')!r}")
    try:
        expected = hs["count"] / hs["counted_area_mm2"] * 10.0 * hs["hpf_area_mm2"]
        if abs(hs["per_10hpf"] - expected) > 1e-6 * max(1.0, abs(expected)):
            problems.append(f"report.hotspot.per_10hpf: {hs['per_10hpf']!r} is not count / counted_area_mm2 × 10 × "
                            f"hpf_area_mm2 = {expected!r}")
    except (KeyError, TypeError, ZeroDivisionError):
        pass  # missing or mistyped keys are reported by _check
    dims = slide.get("dimensions") if isinstance(slide, Mapping) else None
    box = hs.get("box_px")
    if isinstance(dims, list) and len(dims) == 2 and isinstance(box, list) and len(box) == 4:
        tol = 1e-6 * max(dims)
        try:
            if box[0] < -tol or box[1] < -tol or box[2] > dims[0] + tol or box[3] > dims[1] + tol:
                problems.append(f"report.hotspot.box_px: {box!r} reaches past the slide (0, 0, {dims[0]}, {dims[1]})")
        except TypeError:
            pass


def report_problems(report: Any) -> list[str]:
    """Every way a dict breaks the ``histo.report/1`` schema (empty list when it follows it)."""
    problems: list[str] = []
    _check(report, _REPORT_KEYS, "report", problems)
    if problems and not isinstance(report, Mapping):
        return problems
    if report.get("schema") not in (None, REPORT_SCHEMA) and isinstance(report.get("schema"), str):
        problems.append(f"report.schema: expected {REPORT_SCHEMA!r}, got {report['schema']!r}")
    if isinstance(report.get("slide"), Mapping):
        _check(report["slide"], _SLIDE_KEYS, "report.slide", problems)
        dims = report["slide"].get("dimensions")
        if isinstance(dims, list) and not (len(dims) == 2 and all(isinstance(d, int) and d > 0 for d in dims)):
            problems.append(f"report.slide.dimensions: expected [width, height] positive integers, got {dims!r}")
        mpp = report["slide"].get("mpp")
        if isinstance(mpp, _NUM) and not mpp > 0:
            problems.append(f"report.slide.mpp: must be positive, got {mpp!r}")
    if isinstance(report.get("model"), Mapping):
        _check(report["model"], _MODEL_KEYS, "report.model", problems)
    if isinstance(report.get("measurements"), Mapping):
        for k in _MEASUREMENT_KEYS:
            if k not in report["measurements"]:
                problems.append(f"report.measurements.{k}: missing")
    if isinstance(report.get("grading"), Mapping):
        for k in _GRADING_KEYS:
            if k not in report["grading"]:
                problems.append(f"report.grading.{k}: missing")
    v = report.get("verdict")
    if isinstance(v, Mapping):
        _check(v, _VERDICT_KEYS, "report.verdict", problems)
        if v.get("high_grade") not in _VERDICTS:
            problems.append(f"report.verdict.high_grade: expected one of {', '.join(_VERDICTS)}, got {v.get('high_grade')!r}")
        if isinstance(v.get("reasons"), list) and not all(isinstance(r, str) for r in v["reasons"]):
            problems.append("report.verdict.reasons: expected a list of sentences")
        g = report.get("grading")
        if isinstance(g, Mapping) and isinstance(g.get("high_grade"), Mapping):
            flag = g["high_grade"].get("high_grade")
            expected = "not_assessable" if flag is None else ("yes" if flag else "no")
            if v.get("high_grade") in _VERDICTS and v["high_grade"] != expected:
                problems.append(f"report.verdict.high_grade: {v['high_grade']!r} contradicts grading.high_grade ({flag!r})")
    hs = report.get("hotspot")
    if isinstance(hs, Mapping):
        _check(hs, _HOTSPOT_KEYS, "report.hotspot", problems)
        for k in ("box_um", "box_px"):
            if k in hs:
                _box(hs[k], f"report.hotspot.{k}", problems)
        _hotspot_consistency(hs, report.get("slide"), problems)
    if isinstance(report.get("ihc"), list):
        for i, item in enumerate(report["ihc"]):
            if not isinstance(item, Mapping) or "marker" not in item:
                problems.append(f"report.ihc[{i}]: expected an ihc.json object with a marker")
    f = report.get("files")
    if isinstance(f, Mapping):
        _check(f, _FILES_KEYS, "report.files", problems)
        for k in ("json", "html", "geojson"):
            if isinstance(f.get(k), str):
                _relative(f[k], f"report.files.{k}", problems)
        if isinstance(f.get("images"), Mapping):
            for k, p in f["images"].items():
                _relative(p, f"report.files.images.{k}", problems)
    return problems


def validate_report(report: Any) -> None:
    """Raise ReportSchemaError unless ``report`` follows the ``histo.report/1`` schema."""
    problems = report_problems(report)
    if problems:
        raise ReportSchemaError(f"not a valid {REPORT_SCHEMA} report: " + "; ".join(problems))


def case_report_problems(report: Any) -> list[str]:
    """Every way a dict breaks the ``histo.case_report/1`` schema (empty list when it follows it)."""
    problems: list[str] = []
    _check(report, _CASE_KEYS, "case_report", problems)
    if not isinstance(report, Mapping):
        return problems
    if isinstance(report.get("schema"), str) and report["schema"] != CASE_REPORT_SCHEMA:
        problems.append(f"case_report.schema: expected {CASE_REPORT_SCHEMA!r}, got {report['schema']!r}")
    hg = report.get("high_grade")
    if isinstance(hg, Mapping) and hg.get("verdict") not in _VERDICTS:
        problems.append(f"case_report.high_grade.verdict: expected one of {', '.join(_VERDICTS)}, got {hg.get('verdict')!r}")
    if isinstance(report.get("ihc"), list):
        for i, item in enumerate(report["ihc"]):
            _check(item, _CASE_IHC_KEYS, f"case_report.ihc[{i}]", problems)
    f = report.get("files")
    if isinstance(f, Mapping):
        for k in ("json", "html"):
            _relative(f.get(k), f"case_report.files.{k}", problems)
        slides = f.get("slides", [])
        if not isinstance(slides, list):
            problems.append("case_report.files.slides: expected a list of relative paths")
        else:
            for i, p in enumerate(slides):
                _relative(p, f"case_report.files.slides[{i}]", problems, allow_parent=True)
    return problems


def validate_case_report(report: Any) -> None:
    """Raise ReportSchemaError unless ``report`` follows the ``histo.case_report/1`` schema."""
    problems = case_report_problems(report)
    if problems:
        raise ReportSchemaError(f"not a valid {CASE_REPORT_SCHEMA} report: " + "; ".join(problems))
