"""Every per-10-HPF figure in report.json, the HTML and the case report carries its count, counted area and HPF area."""

from __future__ import annotations

import html as html_lib
import json

import numpy as np
import pytest
from aggregate_tables import make_tiles, points

from histo.aggregate import assess_slide
from histo.report import ReportSchemaError, validate_report, write_case_report, write_slide_report
from histo.report.images import HotspotBox

CARD = {"name": "demo", "backbone": "tiny", "classes": ["none", "fascicular", "haphazard"], "tile_px": 200,
        "mpp": 0.5, "metrics": {}}
# the slide: 1.97 mm² of viable tumour (smaller than the 2.37 mm² window), 17 mitoses
WHOLE = ("17 mitoses in 1.97 mm² of viable tumour (the whole viable tumour is the hotspot) = 20.5 per 10 HPF "
         "(HPF 0.237 mm²)")


@pytest.fixture(scope="module")
def small_tumour(tmp_path_factory):
    """A report of 1.97 mm² of viable tumour at the slide's left edge holding 17 mitoses."""
    skip = {(9, 19), (9, 18), (9, 17)}
    tiles = make_tiles(20, 10, 200, tumour=lambda r, c: (r, c) not in skip)  # 100 µm tiles at 0.5 µm/px
    rng = np.random.default_rng(1)
    xy = np.concatenate([np.column_stack([rng.uniform(10, 600, 12), rng.uniform(10, 990, 12)]),
                         np.column_stack([rng.uniform(1700, 1890, 5), rng.uniform(10, 890, 5)])])
    mit = points(xy)
    a = assess_slide(tiles, mit, 0.5, slide_size_px=(4000, 2000))
    out = tmp_path_factory.mktemp("small")
    paths = write_slide_report(out / "slide", assessment=a, tiles=tiles, mitoses=mit, card_summary=CARD,
                               slide_name="small", thumbnail_px=256, geojson_tiles=False)
    case = write_case_report(out / "case", "C1", paths.json, [], [paths.html])
    return {"a": a, "report": json.loads(paths.json.read_text()), "html": paths.html.read_text(),
            "case": json.loads(case.json.read_text()), "case_html": case.html.read_text()}


def test_report_json_hotspot_states_count_area_and_hpf(small_tumour):
    r = small_tumour["report"]
    hs = r["hotspot"]
    assert hs["counted_in"] == "whole_viable_tumour" and hs["window_exceeds_tumour"] is True
    assert hs["count"] == 17 and hs["counted_area_mm2"] == pytest.approx(1.97) and hs["hpf_area_mm2"] == 0.237
    assert hs["per_10hpf"] == pytest.approx(17 / 1.97 * 2.37)
    assert hs["window_count"] < 17
    assert hs["text"] == WHOLE
    ev = r["grading"]["mitotic_score"]["evidence"]
    assert (ev["count"], ev["hpf_area_mm2"]) == (17, 0.237) and ev["counted_area_mm2"] == pytest.approx(1.97)
    assert r["grading"]["mitotic_score"]["score"] == 3
    assert WHOLE in r["verdict"]["line"]
    reasons = " ".join(r["verdict"]["reasons"])
    assert WHOLE in reasons and "the viable tumour is smaller than one 10-HPF window (2.37 mm²)" in reasons
    whole = r["measurements"]["mitoses"]
    assert whole["counted_area_mm2"] == pytest.approx(1.97) and whole["count"] == 17


def test_html_shows_every_rate_with_its_count_and_area(small_tumour):
    page = html_lib.unescape(small_tumour["html"])
    assert "17 mitoses in 1.97 mm² of viable tumour = 20.5 per 10 HPF (HPF 0.237 mm²)" in page  # whole tumour row
    assert WHOLE in page  # hotspot row, evidence table, verdict
    assert "in 10 HPF =" not in page  # the old "8 in 10 HPF = 20.8 per 10 HPF"


def test_case_report_shows_the_rates_with_count_and_area(small_tumour):
    case = small_tumour["case"]
    m = case["he"]["measurements"]
    assert m["hotspot_text"] == WHOLE
    assert m["whole_tumour_text"] == "17 mitoses in 1.97 mm² of viable tumour = 20.5 per 10 HPF (HPF 0.237 mm²)"
    assert (m["hotspot_count"], m["hotspot_counted_in"]) == (17, "whole_viable_tumour")
    assert "17 in 1.97 mm² of viable tumour" in case["summary"]
    page = html_lib.unescape(small_tumour["case_html"])
    assert WHOLE in page and m["whole_tumour_text"] in page


def test_hotspot_box_never_leaves_the_slide(small_tumour):
    r = small_tumour["report"]
    x0, y0, x1, y1 = r["hotspot"]["box_um"]
    assert x0 >= 0 and y0 >= 0 and x1 <= 2000 and y1 <= 1000  # slide 4000 x 2000 px at 0.5 µm/px
    assert r["hotspot"]["box_px"][0] >= 0
    validate_report(r)
    bad = json.loads(json.dumps(r))
    bad["slide"]["dimensions"] = [4000, 2000]
    bad["hotspot"]["box_px"][0] = -28.0  # the box drawn from x = -14 µm
    with pytest.raises(ReportSchemaError, match="reaches past the slide"):
        validate_report(bad)


def test_schema_refuses_a_rate_that_is_not_count_over_area(small_tumour):
    bad = json.loads(json.dumps(small_tumour["report"]))
    bad["hotspot"]["per_10hpf"] = 14.4  # the old figure: window count scaled by window / tumour area
    with pytest.raises(ReportSchemaError, match="is not count / counted_area_mm2"):
        validate_report(bad)


def test_clipped_circle_is_drawn_from_its_centre():
    hs = {"shape": "circle", "area_mm2": 2.37, "centre_um": [100.0, 800.0], "box_px": [0.0, 0.0, 3000.0, 3000.0]}
    box = HotspotBox.from_report(hs, 0.5, "x")
    cx, cy, r = box.circle_px
    assert (cx, cy) == (200.0, 1600.0) and r == pytest.approx((2.37e6 / np.pi) ** 0.5 / 0.5)
