"""histo.annotations: QuPath GeoJSON parsing and tile labelling from polygons and points."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import shapely

from histo.annotations import (
    AnnotationError,
    LabelMap,
    area_fractions,
    label_tiles,
    parse_geojson,
    points_in_boxes,
    read_geojson,
)
from histo.errors import HistoError


def _poly(x0, y0, x1, y1):
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def _feat(geom, name=None, style="qupath"):
    props = {"objectType": "annotation"}
    if name is not None:
        if style == "qupath":
            props["classification"] = {"name": name, "color": [255, 0, 0]}
        elif style == "string":
            props["classification"] = name
        else:
            props["name"] = name
    return {"type": "Feature", "geometry": geom, "properties": props}


def test_qupath_list_form_classes_regions_and_points():
    feats = [
        _feat(_poly(0, 0, 100, 100), "Tumor"),
        _feat(_poly(100, 0, 200, 100), "Tumor"),  # two features of one class are unioned
        _feat({"type": "MultiPolygon", "coordinates": [_poly(0, 200, 10, 210)["coordinates"], _poly(20, 200, 30, 210)["coordinates"]]}, "Necrosis", "string"),
        _feat({"type": "Point", "coordinates": [5.5, 6.5]}, "Mitosis"),
        _feat({"type": "MultiPoint", "coordinates": [[1, 2], [3, 4]]}, "Mitosis", "name"),
        _feat(_poly(0, 0, 5, 5)),  # unclassified: no label
        _feat({"type": "LineString", "coordinates": [[0, 0], [1, 1]]}, "Ruler"),
    ]
    ann = parse_geojson(feats, "list.geojson")
    assert sorted(ann.regions) == ["Necrosis", "Tumor"]
    assert ann.regions["Tumor"].area == pytest.approx(20000.0)
    assert ann.regions["Necrosis"].area == pytest.approx(200.0)
    np.testing.assert_allclose(ann.points["Mitosis"], [[5.5, 6.5], [1, 2], [3, 4]])
    assert ann.classes == ["Mitosis", "Necrosis", "Tumor"]
    assert ann.region("Tumor", "Necrosis", "Absent").area == pytest.approx(20200.0)
    assert ann.point_array("Absent").shape == (0, 2)


def test_feature_collection_file_and_self_intersecting_ring(tmp_path):
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]}
    fc = {"type": "FeatureCollection", "features": [_feat(_poly(0, 0, 4, 4), "Stroma"), _feat(bowtie, "Tumor")]}
    p = tmp_path / "a.geojson"
    p.write_text(json.dumps(fc))
    ann = read_geojson(p)
    assert ann.source == str(p)
    assert ann.regions["Stroma"].area == 16.0
    assert ann.regions["Tumor"].is_valid and ann.regions["Tumor"].area == pytest.approx(50.0)


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"type": "Topology"}), "not QuPath GeoJSON"),
        (json.dumps([_feat(_poly(0, 0, 1, 1), "A"), {"type": "Feature"}]), "feature 1"),
        (json.dumps([_feat({"type": "Polygon", "coordinates": [[[0, 0], [1]]]}, "Tumor")]), "feature 0 ('Tumor'): broken Polygon"),
        (json.dumps([_feat({"type": "Circle", "coordinates": [0, 0]}, "A")]), "unknown geometry type 'Circle'"),
    ],
)
def test_broken_geojson_errors_name_file_and_feature(tmp_path, content, fragment):
    p = tmp_path / "bad.geojson"
    p.write_text(content)
    with pytest.raises(AnnotationError, match="bad.geojson") as exc:
        read_geojson(p)
    assert fragment in str(exc.value)
    assert isinstance(exc.value, HistoError)


def test_missing_file_error(tmp_path):
    with pytest.raises(AnnotationError, match="annotation file not found"):
        read_geojson(tmp_path / "nope.geojson")


def test_area_fractions_exact():
    rect = shapely.box(0, 0, 150, 100)
    tri = shapely.Polygon([(300, 0), (400, 0), (400, 100)])  # half of the tile at x=300
    x = np.array([0.0, 100.0, 200.0, 300.0, 50.0])
    y = np.array([0.0, 0.0, 0.0, 0.0, 50.0])
    np.testing.assert_allclose(area_fractions(rect, x, y, 100.0, 100.0), [1.0, 0.5, 0.0, 0.0, 0.5])
    np.testing.assert_allclose(area_fractions(tri, x, y, 100.0, 100.0), [0.0, 0.0, 0.0, 0.5, 0.0])
    assert area_fractions(shapely.Polygon(), x, y, 100.0, 100.0).sum() == 0.0


def test_points_in_boxes_half_open():
    pts = np.array([[0.0, 0.0], [99.9, 50.0], [100.0, 50.0], [250.0, 10.0]])
    got = points_in_boxes(pts, np.array([0.0, 100.0, 1000.0]), np.zeros(3), 100.0, 100.0)
    np.testing.assert_allclose(got[0], [[0.0, 0.0], [99.9, 50.0]])
    np.testing.assert_allclose(got[1], [[100.0, 50.0]])
    assert got[2].shape == (0, 2)


def _hand_made():
    # Four 100x100 tiles in a row. Tissue everywhere; fascicular tumour on all of tile 0 and 60 % of tile 1
    # (the other 40 % plain tissue); necrosis on all of tile 2; a pen mark on 1 % of tile 3.
    feats = [
        _feat(_poly(0, 0, 400, 100), "Tissue"),
        _feat(_poly(0, 0, 160, 100), "Tumor-fascicular"),
        _feat(_poly(200, 0, 300, 100), "Necrosis"),
        _feat(_poly(390, 0, 400, 10), "Pen"),
        _feat({"type": "MultiPoint", "coordinates": [[10, 10], [150, 90], [399, 99]]}, "Mitosis"),
    ]
    table = pd.DataFrame({"x": [0.0, 100.0, 200.0, 300.0], "y": 0.0, "w": 100.0, "h": 100.0, "tissue_fraction": 1.0})
    return parse_geojson(feats, "hand.geojson"), table


def test_label_tiles_fractions_labels_and_points():
    ann, table = _hand_made()
    lab = label_tiles(table, ann, LabelMap(), ["none", "fascicular", "haphazard"])
    t = lab.table
    np.testing.assert_allclose(t["frac_fascicular"], [1.0, 0.6, 0.0, 0.0], atol=1e-6)
    # The background class yields to tumour and necrosis where they overlap the Tissue outline.
    np.testing.assert_allclose(t["frac_none"], [0.0, 0.4, 0.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(t["frac_necrosis"], [0.0, 0.0, 1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(t["frac_ignore"], [0.0, 0.0, 0.0, 0.01], atol=1e-6)
    assert list(t["pattern"]) == [1, 1, -1, 0]
    assert list(t["necrosis"]) == [0.0, 0.0, 1.0, 0.0]
    assert list(t["keep"]) == [True, True, True, False]
    assert [len(p) for p in lab.points] == [1, 1, 0, 1]
    np.testing.assert_allclose(lab.points[1], [[150, 90]])


def test_label_thresholds_unlabelled_between():
    ann, table = _hand_made()
    strict = LabelMap(pattern_min_fraction=0.7, necrosis_positive_min=0.5, necrosis_negative_max=0.05)
    t = label_tiles(table, ann, strict, ["none", "fascicular", "haphazard"]).table
    assert list(t["pattern"]) == [1, -1, -1, 0]  # 60 % fascicular is below 0.7
    # A tile 20 % necrotic is neither necrotic nor clear of necrosis.
    ann2 = parse_geojson([_feat(_poly(0, 0, 100, 100), "Tissue"), _feat(_poly(0, 0, 20, 100), "Necrosis")], "n.geojson")
    t2 = label_tiles(table.iloc[:1], ann2, LabelMap(), ["none", "fascicular", "haphazard"]).table
    assert t2["necrosis"].tolist() == [-1.0]
    # Partly annotated tile: 30 % annotated tumour, tissue mask says the tile is full: no label.
    ann3 = parse_geojson([_feat(_poly(0, 0, 30, 100), "Tumor-fascicular")], "p.geojson")
    t3 = label_tiles(table.iloc[:1], ann3, LabelMap(), ["none", "fascicular", "haphazard"]).table
    assert t3["pattern"].tolist() == [-1] and t3["necrosis"].tolist() == [-1.0]


def test_label_map_class_not_in_model_classes():
    ann, table = _hand_made()
    with pytest.raises(AnnotationError, match="not model classes"):
        label_tiles(table, ann, LabelMap(), ["fascicular", "haphazard"])


def test_labelling_is_fast_on_50k_tiles():
    # A wiggly 2000-vertex polygon over a 224 x 224 grid of 256 px tiles.
    t = np.linspace(0, 2 * np.pi, 2000, endpoint=False)
    r = 20000 + 3000 * np.sin(7 * t)
    tumour = shapely.Polygon(np.c_[28000 + r * np.cos(t), 28000 + r * np.sin(t)])
    ann = parse_geojson([_feat(shapely.geometry.mapping(tumour), "Tumor-fascicular"),
                         _feat(_poly(0, 0, 57344, 57344), "Tissue")], "big.geojson")
    xs, ys = np.meshgrid(np.arange(224) * 256.0, np.arange(224) * 256.0)
    table = pd.DataFrame({"x": xs.ravel(), "y": ys.ravel(), "w": 256.0, "h": 256.0})
    import time

    t0 = time.perf_counter()
    lab = label_tiles(table, ann, LabelMap(), ["none", "fascicular", "haphazard"])
    seconds = time.perf_counter() - t0
    got = (lab.table["frac_fascicular"] * 256.0**2).sum()
    assert got == pytest.approx(tumour.area, rel=1e-6)  # fractions are stored as float32
    assert seconds < 10.0, f"labelling 50k tiles took {seconds:.1f} s"
