"""`histo cohort`: one row per slide or case with every measurement, scores, verdict, domain, markers, model and version."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from test_report_tables import mitoses_table, tiles_table, write_prediction_folder
from test_view import SMALL_HPF, write_case_folder, write_ihc_folder

from histo.cli import main


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, test_slide_path):
    """A case (H&E + ALK), a lone graded slide and a lone IHC result, and the cohort written from them."""
    root = tmp_path_factory.mktemp("cohort")
    write_case_folder(root / "cases", test_slide_path)
    lone = write_prediction_folder(root / "run" / "slideB", test_slide_path, tiles_table(), mitoses_table(n_cluster=3))
    assert main(["report", "--thumbnail-px", "128", str(lone), *SMALL_HPF]) == 0
    write_ihc_folder(root / "ihc_run" / "slideB_S100", test_slide_path, n_cells=20).joinpath("ihc.json")
    info = json.loads((root / "ihc_run" / "slideB_S100" / "ihc.json").read_text())
    info["marker"] = "S100"
    (root / "ihc_run" / "slideB_S100" / "ihc.json").write_text(json.dumps(info))
    out = root / "out"
    assert main(["cohort", str(root / "cases"), str(root / "run"), str(root / "ihc_run"), "--out", str(out), "--csv"]) == 0
    return root, out


def test_one_row_per_case_and_slide_with_the_report_figures(cohort):
    root, out = cohort
    df = pd.read_parquet(out / "cohort.parquet")
    assert list(df["kind"]) == ["case", "slide", "ihc"]
    case, slide, ihc = (df.iloc[i] for i in range(3))
    rep = json.loads((root / "cases" / "case1" / "he" / "case1_HE" / "report.json").read_text())
    m = rep["measurements"]
    assert case["case_id"] == "case1" and case["slide"] == "case1_HE"
    assert case["verdict"] == rep["verdict"]["high_grade"] == "yes"
    assert case["fnclcc_mitotic_score"] == rep["grading"]["mitotic_score"]["score"]
    assert case["fnclcc_necrosis_score"] == rep["grading"]["necrosis_score"]["score"]
    assert case["necrosis_pct_of_tumour"] == pytest.approx(m["necrosis_pct_of_tumour"])
    assert case["mitoses_hotspot_per_10hpf"] == pytest.approx(m["mitoses"]["hotspot"]["per_10hpf"])
    assert case["tumour_area_mm2"] == pytest.approx(m["tumour_area_mm2"])
    assert case["pattern_dominant"] == m["pattern"]["dominant"]
    assert case["model_name"] == "test-net" and case["histo_version"] == rep["histo_version"]
    ihc_json = json.loads((root / "cases" / "case1" / "ihc" / "ALK" / "case1_ALK" / "ihc.json").read_text())
    assert case["ALK_pct_positive"] == pytest.approx(ihc_json["pct_positive"]) and case["ALK_h_score"] == 150.0
    assert case["ALK_call"] == "positive" and case["ALK_cells_3plus"] == ihc_json["counts"][3]
    assert pd.isna(slide["ALK_pct_positive"]) and slide["mitoses_count"] < case["mitoses_count"]
    assert ihc["S100_call"] == "positive" and ihc["slide"] == "slideB_S100"
    assert "domain_status" in df.columns
    csv = pd.read_csv(out / "cohort.csv")
    assert list(csv.columns) == list(df.columns) and len(csv) == 3
    assert csv["mitoses_count"].tolist()[:2] == df["mitoses_count"].tolist()[:2]


def test_html_is_a_sortable_table_with_a_thumbnail_per_slide(cohort):
    _, out = cohort
    page = (out / "cohort.html").read_text()
    assert page.count("<tr>") == 4  # header + 3 rows
    assert page.count('<img src="data:image/png;base64,') == 2  # the two H&E slides have report thumbnails
    assert "addEventListener('click'" in page and "<th>fnclcc_mitotic_score</th>" in page
    assert "Research use only" in page


def test_csv_export_stacks_tile_mitosis_and_cell_tables(cohort):
    _, out = cohort
    tiles, mitoses, cells = (pd.read_csv(out / n) for n in ("tiles.csv", "mitoses.csv", "cells.csv"))
    assert len(tiles) == 2 * len(tiles_table()) and set(tiles["slide"]) == {"case1_HE", "slideB"}
    assert {"x", "y", "w", "h", "p_necrosis"} <= set(tiles.columns)
    assert len(mitoses) == len(mitoses_table()) + len(mitoses_table(n_cluster=3))
    assert mitoses.loc[mitoses["slide"] == "case1_HE", "score"].max() == pytest.approx(0.9)
    assert sorted(cells.groupby("marker").size().to_dict().items()) == [("ALK", 60), ("S100", 20)]
    assert {"case_id", "slide", "marker", "x", "y", "ihc_class"} <= set(cells.columns)


def test_no_report_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["cohort", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no finished report" in capsys.readouterr().err


def test_a_null_hotspot_box_leaves_no_stray_column(tmp_path, test_slide_path):
    """A report without a hotspot box (box_um null) next to one with a box: only the four corner columns."""
    a = write_prediction_folder(tmp_path / "run" / "a", test_slide_path, tiles_table(), mitoses_table())
    b = write_prediction_folder(tmp_path / "run" / "b", test_slide_path, tiles_table(), mitoses_table(n_cluster=3))
    for folder in (a, b):
        assert main(["report", "--thumbnail-px", "64", str(folder), *SMALL_HPF]) == 0
    rep = json.loads((b / "report.json").read_text())
    assert rep["measurements"]["mitoses"]["hotspot"]["box_um"] is not None
    rep["measurements"]["mitoses"]["hotspot"]["box_um"] = None
    (b / "report.json").write_text(json.dumps(rep))
    assert main(["cohort", str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    df = pd.read_parquet(tmp_path / "out" / "cohort.parquet")
    box = [c for c in df.columns if c.startswith("mitoses_hotspot_box_um")]
    assert box == [f"mitoses_hotspot_box_um_{i}" for i in range(4)]
    assert df[box].iloc[0].notna().all() and df[box].iloc[1].isna().all()
    assert list(pd.read_csv(tmp_path / "out" / "cohort.csv").columns) == list(df.columns)
