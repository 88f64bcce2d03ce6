"""The case report and the IHC section show each IHC slide's registration onto the H&E, and a fallback says so."""

from __future__ import annotations

import json

from histo.report import html as H
from histo.report.case import write_case_report


def _ihc(marker, registration):
    return {"schema": "histo.ihc/1", "slide": f"c_IHC_{marker}", "marker": marker, "region": "tissue" if registration
            and registration["status"] in ("poor", "failed") else "tumour", "n_cells": 900, "counts": [300, 300, 200, 100],
            "pct_positive": 66.7, "h_score": 122.0, "call": {"label": "positive", "reason": "≥ 10 % positive"},
            "qc": [], "qc_values": {} if registration is None else {"registration": registration}}


def test_case_report_shows_registration_status_error_and_fallback(tmp_path):
    ok = {"status": "ok", "estimated_error_um": 7.84, "applied": "tumour mask warped onto this slide"}
    poor = {"status": "poor", "estimated_error_um": 64.2, "applied": "none: counted in all tissue"}
    gone = {"status": "not_registered", "estimated_error_um": None, "applied": "same frame assumed"}
    paths = write_case_report(tmp_path, "c", None, [_ihc("ALK", ok), _ihc("S100", poor), _ihc("CD34", gone),
                                                     _ihc("SMA", None)])
    case = json.loads(paths.json.read_text())
    assert [r["registration"] and r["registration"]["status"] for r in case["ihc"]] == ["ok", "poor", "not_registered", None]
    page = paths.html.read_text()
    assert "<th>Registration</th>" in page
    assert "ok, estimated error 7.8 µm (tumour mask carried over)" in page
    assert "poor, estimated error 64.2 µm: the tumour mask was not used; counted in all tissue" in page
    assert "not possible (H&amp;E slide not found)" in page
    assert "<td>not registered</td>" in page


def test_ihc_section_has_a_registration_row():
    frames = {"status": "ok", "estimated_error_um": 0.4, "applied": "identity: the frames agree"}
    assert "ok, estimated error 0.4 µm (frames agree)" in H.ihc_section(_ihc("ALK", frames))
    failed = {"status": "failed", "estimated_error_um": None, "applied": "none: counted in all tissue"}
    assert "failed: the tumour mask was not used; counted in all tissue" in H.ihc_section(_ihc("ALK", failed))
