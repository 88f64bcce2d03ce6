"""histo.case.run_case from Python: the same case as `histo case`, its results typed, its steps reusable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_case_cli import _case_file, model_dir, phantom  # noqa: F401 - pytest fixtures shared with the CLI tests

from histo.case import CaseOptions, IHCOptions, load_case, load_grading, run_case, score_ihc_slide
from histo.errors import ConfigError
from histo.ihc import load_panel
from histo.models import load_model


@pytest.mark.slow
def test_run_case_returns_what_it_wrote_and_skips_a_rerun(phantom, model_dir, tmp_path):  # noqa: F811
    model, card = load_model(model_dir)
    case = load_case(_case_file(tmp_path, phantom))
    opts = CaseOptions(workers=0)
    grading = load_grading(None, ["hpf.preset=fnclcc"])
    r = run_case(case, tmp_path / "out", model=model, card=card, grading=grading, options=opts)
    on_disk = json.loads((tmp_path / "out" / "C1" / "case_report.json").read_text(encoding="utf-8"))
    assert r.status == "ok" and r.case_id == "C1"
    assert r.summary == on_disk["summary"] and r.case_report is not None and r.case_report.report == on_disk
    assert r.report == tmp_path / "out" / "C1" / "case_report.html" and r.report.is_file()
    assert r.verdict == on_disk["high_grade"]["verdict"]
    assert r.he_report is not None and r.he_report.report["grading_config"]["hpf"]["preset"] == "fnclcc"
    [ihc] = r.ihc
    ihc_json = json.loads((ihc.folder / "ihc.json").read_text(encoding="utf-8"))
    assert ihc.status.marker == "ALK" and ihc.summary["h_score"] == ihc_json["h_score"] and ihc_json["region"] == "tumour"

    again = run_case(case, tmp_path / "out", model=model, card=card, grading=grading, options=opts)
    assert again.status == "skipped" and again.summary == r.summary and again.verdict == r.verdict
    # the IHC step alone, on the same H&E prediction: skipped too (same run key, same necrosis rules)
    one = score_ihc_slide(phantom.ihc_path, load_panel()["ALK"], tmp_path / "out" / "C1" / "ihc" / "ALK",
                          tumour_tiles=Path(r.he.out_dir), grading=grading, options=IHCOptions(workers=0))
    assert one.status.status == "skipped" and one.summary["h_score"] == ihc_json["h_score"]
    # another necrosis rule is another run key: the slide would be redone, so it is not skipped
    other = score_ihc_slide(phantom.ihc_path, load_panel()["ALK"], tmp_path / "out" / "C1" / "ihc" / "ALK",
                            tumour_tiles=Path(r.he.out_dir), grading=grading,
                            options=IHCOptions(workers=0, necrosis_min_p=0.9))
    assert other.status.status != "skipped" and other.status.reason.startswith("redone")


def test_run_case_refuses_a_marker_outside_the_panel_before_predicting(phantom, tmp_path):  # noqa: F811
    case = load_case(_case_file(tmp_path, phantom))
    panel = {k: v for k, v in load_panel().items() if k != "ALK"}
    with pytest.raises(ConfigError, match="ALK not in the panel"):
        run_case(case, tmp_path / "out", model=object(), card=object(), panel=panel)  # type: ignore[arg-type]
    assert not (tmp_path / "out" / "C1" / "he").exists()
