"""Slide and case reports: versioned JSON, self-contained HTML, QuPath GeoJSON and heatmap images.

Per slide (:func:`write_slide_report`): ``report.json`` (schema ``histo.report/1``, see
:mod:`histo.report.schema`), ``report.html`` (one file: inline CSS, images as data URIs, no script,
no network), ``annotations.geojson`` (QuPath objects in level-0 px) and ``images/*.png``.
Per case (:func:`write_case_report`): ``case_report.json`` (``histo.case_report/1``) and
``case_report.html`` with the summary sentence. Every page carries the research-use disclaimer.
"""

from histo.report.case import CaseReportPaths, build_case_report, case_report, write_case_report
from histo.report.geojson import slide_geojson
from histo.report.html import DISCLAIMER
from histo.report.images import HOTSPOT_RGB, RenderedImage, decode_png
from histo.report.schema import (
    CASE_REPORT_SCHEMA,
    REPORT_SCHEMA,
    ReportSchemaError,
    case_report_problems,
    report_problems,
    validate_case_report,
    validate_report,
)
from histo.report.sentences import (
    case_sentence,
    criterion_phrase,
    criterion_sentence,
    high_grade_summary,
    ihc_sentence,
    ihc_summary,
    verdict_line,
    verdict_reasons,
)
from histo.report.slide import (
    IhcInput,
    ReportPaths,
    load_ihc,
    read_prediction,
    slide_report,
    summarise_card,
    write_slide_report,
)

__all__ = [
    "CASE_REPORT_SCHEMA", "DISCLAIMER", "HOTSPOT_RGB", "REPORT_SCHEMA", "CaseReportPaths", "IhcInput", "RenderedImage",
    "ReportPaths", "ReportSchemaError", "build_case_report", "case_report", "case_report_problems", "case_sentence",
    "criterion_phrase", "criterion_sentence", "decode_png", "high_grade_summary", "ihc_sentence", "ihc_summary",
    "load_ihc", "read_prediction", "report_problems", "slide_geojson", "slide_report", "summarise_card",
    "validate_case_report", "validate_report", "verdict_line", "verdict_reasons", "write_case_report",
    "write_slide_report",
]
