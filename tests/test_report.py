"""histo.report: report.json schema, self-contained HTML, QuPath GeoJSON, heatmaps and the report sentences."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
from shapely.geometry import shape
from test_report_tables import (
    CARD,
    MPP,
    NECROTIC,
    TILE_PX,
    ihc_result,
    mitoses_table,
    small_hotspot_config,
    tiles_table,
)

from histo.aggregate import GradingConfig, assess_slide
from histo.report import (
    DISCLAIMER,
    HOTSPOT_RGB,
    ReportSchemaError,
    case_sentence,
    decode_png,
    ihc_sentence,
    ihc_summary,
    validate_case_report,
    validate_report,
    verdict_line,
    write_case_report,
    write_slide_report,
)
from histo.report.images import Canvas, mitoses_per_tile, rasterise
from histo.report.sentences import fmt_vs, high_grade_summary

NAME = "slide <A&B>"


@pytest.fixture(scope="module")
def odd_slide(tmp_path_factory, test_slide_path) -> Path:
    """The conftest test slide under a name that needs escaping in HTML."""
    p = tmp_path_factory.mktemp("odd") / f"{NAME}.tiff"
    p.symlink_to(test_slide_path)
    return p


@pytest.fixture(scope="module")
def example(tmp_path_factory, odd_slide):
    """One written report: necrosis in 2 of 16 tumour tiles, a cluster of 30 mitoses, ALK/S100/CD34 results."""
    tiles, mitoses = tiles_table(), mitoses_table()
    a = assess_slide(tiles, mitoses, MPP, small_hotspot_config())
    out = tmp_path_factory.mktemp("report")
    ihc = [ihc_result("ALK", "positive"), ihc_result("S100", "positive", qc=[{"name": "weak_stain", "value": 0.1,
           "limit": 0.2, "message": "DAB <weak>"}]), ihc_result("CD34", "negative", h_score=12, pct=4)]
    paths = write_slide_report(out, assessment=a, tiles=tiles, mitoses=mitoses, slide=odd_slide, card_summary=CARD,
                               prediction_meta={"schema": "histo.predict/1", "slide": str(odd_slide)}, ihc=ihc,
                               thumbnail_px=512)
    return {"a": a, "paths": paths, "tiles": tiles, "mitoses": mitoses, "report": json.loads(paths.json.read_text())}


# -- report.json --------------------------------------------------------------------------------------------

def test_report_json_validates_and_holds_the_assessment(example):
    r, a = example["report"], example["a"].to_dict()
    validate_report(r)
    assert r["schema"] == "histo.report/1"
    assert r["measurements"] == json.loads(json.dumps(a["measurements"]))
    assert r["grading"]["high_grade"]["high_grade"] is True and r["verdict"]["high_grade"] == "yes"
    assert r["measurements"]["necrosis_pct_of_tumour"] == pytest.approx(100 * 2 / 16)
    assert r["measurements"]["mitoses"]["hotspot"]["count"] == 30
    assert r["slide"] == {"name": NAME, "path": r["slide"]["path"], "mpp": MPP, "dimensions": [2048, 1536],
                          "vendor": r["slide"]["vendor"]}
    assert r["model"]["classes"] == ["none", "fascicular", "haphazard"] and r["model"]["metrics"] == {"val_pattern_acc": 0.875}
    hs = r["hotspot"]
    assert hs["box_px"] == pytest.approx([v / MPP for v in hs["box_um"]])
    assert hs["box_um"][2] - hs["box_um"][0] == pytest.approx(100.0)  # 10 HPF x 0.001 mm² = 100 µm square
    assert [i["marker"] for i in r["ihc"]] == ["ALK", "S100", "CD34"]
    for key, rel in r["files"]["images"].items():
        assert (example["paths"].folder / rel).is_file(), key
    assert set(r["files"]["images"]) == {"thumbnail", "necrosis", "pattern", "mitoses"}


def test_validate_report_names_each_problem(example):
    bad = json.loads(json.dumps(example["report"]))
    del bad["verdict"]["line"]
    bad["verdict"]["high_grade"] = "no"  # contradicts grading.high_grade = True
    bad["files"]["html"] = "/etc/report.html"
    with pytest.raises(ReportSchemaError) as e:
        validate_report(bad)
    msg = str(e.value)
    assert "report.verdict.line: missing" in msg
    assert "contradicts grading.high_grade" in msg
    assert "report.files.html: must be a relative path" in msg
    with pytest.raises(ReportSchemaError, match="report.slide: missing"):
        validate_report({k: v for k, v in example["report"].items() if k != "slide"})


# -- HTML ---------------------------------------------------------------------------------------------------

def test_html_is_self_contained_escaped_and_states_the_verdict(example):
    html = example["paths"].html.read_text(encoding="utf-8")
    # every src/href is an inline data URI: no other file, no network
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", html, flags=re.I)
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs)
    assert not re.search(r"<script|<link|url\(|@import|https?://", html, flags=re.I)
    assert html.count(DISCLAIMER) == 2
    line = example["report"]["verdict"]["line"]
    assert line.startswith("High grade: YES — mitotic activity 30 mitoses in the 0.01 mm² square hotspot window (10 HPF) = 30 per 10 HPF (HPF 0.001 mm²) ≥ 10 (threshold)")
    assert "tumour necrosis 12.5 % ≥ 1 % (threshold)" in line
    assert line in html
    assert "slide &lt;A&amp;B&gt;" in html and NAME not in html
    assert "DAB &lt;weak&gt;" in html and "<weak>" not in html  # IHC QC messages are escaped too
    assert "ALK positive (H-score 180; 72 % of tumour cells ≥ 1+)." in html
    # 4 maps + the hotspot close-up + one gallery crop per mitosis counted in the hotspot (30)
    assert len(re.findall(r"<img ", html)) == 4 + 1 + 30


# -- GeoJSON ------------------------------------------------------------------------------------------------

def test_geojson_follows_qupath_conventions(example):
    gj = json.loads(example["paths"].geojson.read_text())
    assert gj["type"] == "FeatureCollection"
    for f in gj["features"]:
        p = f["properties"]
        assert p["objectType"] in {"annotation", "detection", "tile"}
        assert isinstance(p["classification"]["name"], str) and ":" not in p["classification"]["name"]
        assert len(p["classification"]["color"]) == 3 and all(isinstance(c, int) for c in p["classification"]["color"])
        assert all(isinstance(v, float) for v in p.get("measurements", {}).values())
    mit = [f for f in gj["features"] if f["properties"]["classification"]["name"] == "Mitosis"]
    m = example["mitoses"]
    assert len(mit) == int((m["score"] >= 0.5).sum()) == 30
    assert all(f["properties"]["objectType"] == "detection" and f["geometry"]["type"] == "Point" for f in mit)
    assert sorted(f["properties"]["measurements"]["score"] for f in mit) == sorted(m.loc[m.score >= 0.5, "score"])
    (hs,) = [f for f in gj["features"] if f["properties"]["classification"]["name"] == "Mitotic hotspot"]
    assert shape(hs["geometry"]).bounds == pytest.approx(tuple(example["report"]["hotspot"]["box_px"]), abs=0.01)
    assert hs["properties"]["measurements"]["Mitoses"] == 30.0
    tiles = [f for f in gj["features"] if f["properties"]["objectType"] == "tile"]
    assert len(tiles) == 16  # tissue tiles only
    assert {"p_necrosis", "p_pattern_none", "p_pattern_fascicular", "p_pattern_haphazard"} <= set(tiles[0]["properties"]["measurements"])


def test_geojson_necrosis_polygon_covers_the_necrotic_tiles(example):
    gj = json.loads(example["paths"].geojson.read_text())
    (nec,) = [f for f in gj["features"] if f["properties"]["classification"]["name"] == "Necrosis"
              and f["properties"]["objectType"] == "annotation"]
    poly = shape(nec["geometry"])
    boxes = [shapely.box(c * TILE_PX, r * TILE_PX, (c + 1) * TILE_PX, (r + 1) * TILE_PX) for r, c in NECROTIC]
    assert poly.area == pytest.approx(len(NECROTIC) * TILE_PX**2)
    assert all(poly.covers(b) for b in boxes)
    fasc = [f for f in gj["features"] if f["properties"]["classification"]["name"] == "Pattern fascicular"
            and f["properties"]["objectType"] == "annotation"]
    assert shape(fasc[0]["geometry"]).area == pytest.approx(8 * TILE_PX**2)  # 2 columns x 4 rows of tumour


# -- images -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["thumbnail", "necrosis", "mitoses"])
def test_hotspot_rectangle_is_drawn_where_the_hotspot_is(example, key):
    r = example["report"]
    png = (example["paths"].folder / r["files"]["images"][key]).read_bytes()
    img = decode_png(png)
    sx = 512 / 2048  # thumbnail_px=512 over a 2048 px wide slide
    top = 34  # title band above the map (histo.report.images._TITLE_PX)
    x0, y0, x1, y1 = r["hotspot"]["box_px"]
    ym = int(top + (y0 + y1) / 2 * sx)
    left, right = round(x0 * sx), round(x1 * sx)
    assert tuple(img[ym, left + 1]) == HOTSPOT_RGB
    assert tuple(img[ym, right - 2]) == HOTSPOT_RGB
    assert tuple(img[int(top + y0 * sx) + 1, round((x0 + x1) / 2 * sx)]) == HOTSPOT_RGB
    assert tuple(img[ym, round((x0 + x1) / 2 * sx)]) != HOTSPOT_RGB  # hollow
    assert tuple(img[ym, left - 6]) != HOTSPOT_RGB


def test_necrosis_heatmap_colours_the_necrotic_tiles(example):
    r = example["report"]
    img = decode_png((example["paths"].folder / r["files"]["images"]["necrosis"]).read_bytes()).astype(int)
    s, top = 512 / 2048, 34
    necrotic = img[top + int(2.5 * TILE_PX * s), int(5.5 * TILE_PX * s)]
    viable = img[top + int(4.5 * TILE_PX * s), int(4.5 * TILE_PX * s)]
    glass = img[top + int(0.5 * TILE_PX * s), int(0.5 * TILE_PX * s)]
    # inferno: high p is bright yellow, low p near black; glass tiles are not painted (stay near-white)
    assert necrotic.sum() > viable.sum() + 150
    assert glass.min() > 230


def test_rasterise_averages_overlapping_tiles_and_counts_mitoses_per_tile():
    tiles = pd.DataFrame({"x": [0.0, 50.0], "y": [0.0, 0.0], "w": [100.0, 100.0], "h": [100.0, 100.0]})
    canvas = Canvas(np.zeros((100, 150, 3), np.uint8), 1.0, 1.0)
    mean, covered = rasterise(tiles, np.array([1.0, 3.0]), canvas)
    assert mean[50, 25] == 1.0 and mean[50, 75] == pytest.approx(2.0) and mean[50, 125] == 3.0
    assert covered.all()
    m = pd.DataFrame({"x_um": [10.0, 70.0, 70.0], "y_um": [10.0, 10.0, 10.0], "score": [0.9, 0.9, 0.1]})
    per_mm2 = mitoses_per_tile(tiles, m, 0.5, mpp=1.0)  # a 100 µm tile is 0.01 mm²
    assert per_mm2 == pytest.approx([200.0, 100.0])


def test_report_without_slide_draws_on_white(tmp_path):
    tiles, mitoses = tiles_table(), mitoses_table()
    a = assess_slide(tiles, mitoses, MPP, small_hotspot_config())
    paths = write_slide_report(tmp_path, assessment=a, tiles=tiles, mitoses=mitoses, slide=None, card_summary=CARD,
                               thumbnail_px=256, geojson_tiles=False)
    r = json.loads(paths.json.read_text())
    validate_report(r)
    assert r["slide"]["dimensions"] is None and "thumbnail" not in r["files"]["images"]
    assert not [f for f in json.loads(paths.geojson.read_text())["features"] if f["properties"]["objectType"] == "tile"]


def test_slide_without_tiles_is_reported_not_assessable(tmp_path):
    tiles = tiles_table().iloc[:0]
    a = assess_slide(tiles, None, MPP, GradingConfig())
    paths = write_slide_report(tmp_path, assessment=a, tiles=tiles, mitoses=None, card_summary=CARD, thumbnail_px=128)
    r = json.loads(paths.json.read_text())
    validate_report(r)
    assert r["verdict"]["high_grade"] == "not_assessable" and r["hotspot"] is None
    assert json.loads(paths.geojson.read_text())["features"] == []
    assert "High grade: NOT ASSESSABLE" in paths.html.read_text()


def test_wrong_slide_is_refused(tmp_path, blank_slide_path):
    tiles = tiles_table()  # reaches 2048 x 1536 px; the blank slide is 1024 x 1024
    a = assess_slide(tiles, None, MPP, GradingConfig())
    from histo.errors import HistoError

    with pytest.raises(HistoError, match="is this the slide that was predicted"):
        write_slide_report(tmp_path, assessment=a, tiles=tiles, mitoses=None, slide=blank_slide_path, card_summary=CARD)
    assert not (tmp_path / "report.json").exists()


# -- sentences ----------------------------------------------------------------------------------------------

def _assess(necrotic=NECROTIC, mitoses=None, tumour=True, **high_grade):
    tiles = tiles_table(necrotic)
    if not tumour:
        tiles["p_tumour"] = 0.1
        tiles["p_necrosis"] = 0.05
    return assess_slide(tiles, mitoses, MPP, small_hotspot_config(**high_grade)).to_dict()


def test_high_grade_sentence_variants():
    yes = _assess(mitoses=mitoses_table())
    assert high_grade_summary(yes) == ("High grade: yes (mitoses 30 in the 0.01 mm² square hotspot window (10 HPF) = 30 per 10 HPF (HPF 0.001 mm²) ≥ 10; "
                                       "necrosis 12.5 % ≥ 1 %).")
    no = _assess(necrotic=set(), mitoses=None)
    assert high_grade_summary(no) == ("High grade: no (mitoses 0 in the 0.01 mm² square hotspot window (10 HPF) = 0 per 10 HPF (HPF 0.001 mm²) < 10; "
                                      "necrosis 0 % < 1 %).")
    assert verdict_line(no).startswith("High grade: NO — mitotic activity 0 mitoses in the 0.01 mm² square hotspot window (10 HPF) = 0 per 10 HPF (HPF 0.001 mm²) < 10 (threshold)")
    na = _assess(tumour=False)
    s = high_grade_summary(na)
    assert s.startswith("High grade: not assessable (mitoses not assessable: no viable tumour tiles")
    assert "; necrosis not assessable: no tumour tiles (tumour area is 0))." in s
    assert verdict_line(na).startswith("High grade: NOT ASSESSABLE — mitotic activity not assessable: ")
    # a raised threshold flips the mitotic criterion while necrosis still carries the verdict
    raised = _assess(mitoses=mitoses_table(), mitoses_min_per_10hpf=500)
    assert high_grade_summary(raised) == ("High grade: yes (mitoses 30 in the 0.01 mm² square hotspot window (10 HPF) = 30 per 10 HPF (HPF 0.001 mm²) < 500; "
                                          "necrosis 12.5 % ≥ 1 %).")


def test_values_near_a_threshold_never_print_equal_to_it():
    assert fmt_vs(9.96, 10) == ("9.96", "10")
    assert fmt_vs(0.9999, 1.0) == ("0.9999", "1")
    assert fmt_vs(25.0, 1.0) == ("25", "1")


def test_ihc_sentence_variants():
    assert ihc_sentence(ihc_result("ALK", "positive")) == "ALK positive (H-score 180; 72 % of tumour cells ≥ 1+)."
    assert ihc_sentence(ihc_result("ALK", "negative", h_score=12, pct=4.5, region="tissue")) == \
        "ALK negative (H-score 12; 4.5 % of cells ≥ 1+)."
    assert ihc_sentence(ihc_result("ALK", "insufficient_cells", n_cells=23)) == \
        "ALK not assessable: too few cells (23 scored cells < min_cells 50)."
    assert ihc_sentence(ihc_result("Ki67", "index", pct=35, h_score=60)).startswith("Ki67 index 35 % of tumour cells ≥ 1+")
    assert ihc_sentence({**ihc_result("ALK", "negative"), "call": {"label": "no_tissue", "reason": "r"}}) == \
        "ALK not assessable: no tissue found on the slide."
    flagged = ihc_result("ALK", "positive", qc=["weak_stain", {"name": "blur", "message": "m"}])
    assert ihc_sentence(flagged).endswith("ALK QC flags: weak_stain, blur.")


def test_co_expression_only_when_s100_and_cd34_are_both_positive():
    s100, cd34 = ihc_result("S100", "positive", h_score=150, pct=60), ihc_result("CD34", "positive", h_score=120, pct=55)
    joint = ihc_summary([ihc_result("ALK", "positive"), s100, cd34])
    assert joint == ["ALK positive (H-score 180; 72 % of tumour cells ≥ 1+).",
                     "S100 and CD34 co-expressed (S100 H-score 150; 60 % of tumour cells ≥ 1+; "
                     "CD34 H-score 120; 55 % of tumour cells ≥ 1+)."]
    neg = ihc_summary([s100, ihc_result("CD34", "negative", h_score=5, pct=2)])
    assert neg == ["S100 positive (H-score 150; 60 % of tumour cells ≥ 1+).",
                   "CD34 negative (H-score 5; 2 % of tumour cells ≥ 1+)."]
    assert ihc_summary([s100]) == ["S100 positive (H-score 150; 60 % of tumour cells ≥ 1+)."]
    assert "co-expressed" in " ".join(ihc_summary([ihc_result("s-100", "positive"), cd34]))


def test_case_sentence_and_case_report(example, tmp_path):
    ihc = [ihc_result("ALK", "positive"), ihc_result("S100", "positive"), ihc_result("CD34", "positive")]
    assert case_sentence(example["a"].to_dict(), ihc) == (
        "High grade: yes (mitoses 30 in the 0.01 mm² square hotspot window (10 HPF) = 30 per 10 HPF (HPF 0.001 mm²) ≥ 10; necrosis 12.5 % ≥ 1 %). "
        "ALK positive (H-score 180; 72 % of tumour cells ≥ 1+). "
        "S100 and CD34 co-expressed (S100 H-score 180; 72 % of tumour cells ≥ 1+; CD34 H-score 180; 72 % of tumour cells ≥ 1+).")
    paths = write_case_report(tmp_path / "case", "CASE<1>", example["paths"].json, ihc, [example["paths"].html])
    case = json.loads(paths.json.read_text())
    validate_case_report(case)
    assert case["summary"] == case_sentence(example["a"].to_dict(), ihc)
    assert case["co_expression"]["co_expressed"] is True and case["high_grade"]["verdict"] == "yes"
    link = case["files"]["slides"][0]
    assert not Path(link).is_absolute() and (paths.folder / link).resolve() == example["paths"].html.resolve()
    html = paths.html.read_text()
    assert html.count(DISCLAIMER) == 2 and "CASE&lt;1&gt;" in html
    assert "S100 and CD34 co-expressed" in html and "https://" not in html
    with pytest.raises(ReportSchemaError, match="case_report.ihc\\[0\\].sentence: missing"):
        bad = json.loads(json.dumps(case))
        del bad["ihc"][0]["sentence"]
        validate_case_report(bad)


def test_ihc_folder_heatmap_is_embedded(tmp_path, example):
    from histo.report.images import png_size

    folder = tmp_path / "ihc_alk"
    folder.mkdir()
    (folder / "ihc.json").write_text(json.dumps({**ihc_result("ALK", "positive"), "h_score": float("nan")}))
    pd.DataFrame({"x": [0.0, 512.0], "y": [0.0, 0.0], "w": [512.0] * 2, "h": [512.0] * 2, "n_cells": [10, 20],
                  "n_positive": [5, 20], "pct_positive": [50.0, 100.0], "h_score": [100.0, 300.0]}
                 ).to_parquet(folder / "ihc_tiles.parquet")
    tiles, mitoses = tiles_table(), mitoses_table()
    a = assess_slide(tiles, mitoses, MPP, small_hotspot_config())
    paths = write_slide_report(tmp_path / "r", assessment=a, tiles=tiles, mitoses=mitoses, card_summary=CARD,
                               ihc=[folder], thumbnail_px=256, geojson_tiles=False)
    r = json.loads(paths.json.read_text())
    assert r["ihc"][0]["h_score"] is None  # NaN is written as null, never as invalid JSON
    png = (paths.folder / r["files"]["images"]["ihc_ALK"]).read_bytes()
    assert png_size(png)[0] > 0
    assert paths.html.read_text().count("<img ") == 4  # necrosis, pattern, mitoses + the IHC heatmap
