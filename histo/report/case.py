"""The case report: one H&E slide report plus the case's IHC results → case_report.json + case_report.html."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from histo import __version__
from histo.atomic import write_text
from histo.errors import HistoError
from histo.jsonsafe import json_safe
from histo.report import html as H
from histo.report.schema import CASE_REPORT_SCHEMA, validate_case_report, validate_report
from histo.report.sentences import (
    CO_EXPRESSION_PAIR,
    case_sentence,
    co_expression,
    hotspot_phrase,
    ihc_label,
    ihc_sentence,
    qc_names,
    whole_tumour_phrase,
)
from histo.report.slide import IhcInput, load_ihc

CASE_JSON, CASE_HTML = "case_report.json", "case_report.html"


@dataclass(frozen=True)
class CaseReportPaths:
    """The files of one case report."""

    folder: Path
    json: Path
    html: Path
    report: dict[str, Any] = field(default_factory=dict)  # what case_report.json holds


def _he_digest(he: Mapping[str, Any]) -> dict[str, Any]:
    m = he["measurements"]
    hs = m["mitoses"].get("hotspot") or {}
    return {
        "slide": he["slide"]["name"],
        "verdict": he["verdict"]["high_grade"],
        "measurements": {
            "tumour_area_mm2": m.get("tumour_area_mm2"),
            "necrosis_pct_of_tumour": m.get("necrosis_pct_of_tumour"),
            "hotspot_per_10hpf": hs.get("per_10hpf"),
            # every per-10-HPF figure with the raw count and the area it was counted in
            "hotspot_count": hs.get("count"),
            "hotspot_counted_area_mm2": hs.get("counted_area_mm2"),
            "hotspot_counted_in": hs.get("counted_in"),
            "hotspot_text": hotspot_phrase(hs) if hs else None,
            "per_10hpf_whole_tumour": m["mitoses"].get("per_10hpf"),
            "count_whole_tumour": m["mitoses"].get("count"),
            "viable_tumour_area_mm2": m.get("viable_tumour_area_mm2"),
            "whole_tumour_text": whole_tumour_phrase(m["mitoses"]),
            "dominant_pattern": m["pattern"].get("dominant"),
            "hpf_area_mm2": m["mitoses"].get("hpf_area_mm2"),
        },
    }


def _ihc_row(r: Mapping[str, Any]) -> dict[str, Any]:
    raw_call = r.get("call")
    call: Mapping[str, Any] = raw_call if isinstance(raw_call, Mapping) else {}
    return {
        "marker": str(r.get("marker", "?")), "call": ihc_label(r), "reason": call.get("reason"),
        "h_score": r.get("h_score"), "pct_positive": r.get("pct_positive"), "n_cells": r.get("n_cells"),
        "counts": r.get("counts"), "region": r.get("region"), "qc": qc_names(r), "slide": r.get("slide"),
        "sentence": ihc_sentence(r),
        # registration of this IHC slide onto the H&E (status, estimated error µm); None when not registered
        "registration": (r.get("qc_values") or {}).get("registration") if isinstance(r.get("qc_values"), Mapping) else None,
    }


def build_case_report(case_id: str, he_report: Mapping[str, Any] | None,
                      ihc_results: Sequence[Mapping[str, Any]], slide_links: Sequence[str] = ()) -> dict[str, Any]:
    """The case_report.json dict (files: the json/html names and the slide report links given)."""
    if not isinstance(case_id, str) or not case_id.strip():
        raise HistoError(f"case id must be a non-empty string, got {case_id!r}")
    if he_report is not None:
        validate_report(he_report)
    he_assessment = None
    if he_report is not None:
        he_assessment = {"grading": he_report["grading"]}
    ihc_results = [dict(r) for r in ihc_results]
    case = {
        "schema": CASE_REPORT_SCHEMA,
        "histo_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "case_id": case_id,
        "summary": case_sentence(he_assessment, ihc_results),
        "high_grade": None if he_report is None else {
            "verdict": he_report["verdict"]["high_grade"], "line": he_report["verdict"]["line"],
            "slide": he_report["slide"]["name"],
        },
        "he": None if he_report is None else _he_digest(he_report),
        "model": None if he_report is None else he_report.get("model"),
        "domain": None if he_report is None else he_report.get("domain"),
        "ihc": [_ihc_row(r) for r in ihc_results],
        "co_expression": {"markers": list(CO_EXPRESSION_PAIR), "co_expressed": co_expression(ihc_results)},
        "files": {"json": CASE_JSON, "html": CASE_HTML, "slides": list(slide_links)},
    }
    case = json_safe(case)
    validate_case_report(case)
    return case


def write_case_report(
    out_dir: str | os.PathLike[str],
    case_id: str,
    he_report: Mapping[str, Any] | str | os.PathLike[str] | None,
    ihc_results: Sequence[Mapping[str, Any] | str | os.PathLike[str] | IhcInput] = (),
    slide_html_paths: Sequence[str | os.PathLike[str]] = (),
) -> CaseReportPaths:
    """Write case_report.json and case_report.html; he_report is a report.json dict or its path."""
    out = Path(out_dir)
    he: Mapping[str, Any] | None
    if he_report is not None and not isinstance(he_report, Mapping):
        p = Path(he_report)
        try:
            he = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise HistoError(f"{p}: cannot read the H&E report ({exc})") from exc
    else:
        he = he_report
    results = [load_ihc(r).data for r in ihc_results]
    out.mkdir(parents=True, exist_ok=True)
    links = [Path(os.path.relpath(Path(p).resolve(), out.resolve())).as_posix() for p in slide_html_paths]
    case = build_case_report(case_id, he, results, links)
    labels = [_link_label(Path(p)) for p in slide_html_paths]
    html_path = write_text(out / CASE_HTML, H.case_page(case, list(zip(labels, links))))
    json_path = write_text(out / CASE_JSON, json.dumps(case, indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return CaseReportPaths(out, json_path, html_path, case)


def _link_label(path: Path) -> str:
    """A slide report's link text: the slide name from its report.json when beside it, else the folder name."""
    rj = path.with_name("report.json")
    try:
        return str(json.loads(rj.read_text(encoding="utf-8"))["slide"]["name"])
    except (OSError, ValueError, KeyError, TypeError):
        return path.parent.name or path.name


def case_report(case_id: str, he: Mapping[str, Any] | None, ihc: Sequence[Mapping[str, Any]],
                out_dir: str | os.PathLike[str]) -> CaseReportPaths:
    """Contract E: write the case report of an H&E report dict and IHC result dicts."""
    return write_case_report(out_dir, case_id, he, ihc)
