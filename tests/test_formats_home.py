"""One home per file format: GeoJSON through histo.annotations, prediction folders through histo.prediction."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from histo.errors import HistoError
from histo.ihc import mask_from_geojson, read_prediction_tiles
from histo.prediction import PredictionFolderError, load_prediction, read_done, read_tiles, write_prediction
from histo.report import read_prediction


def _square(x0: float, y0: float, side: float) -> list[list[list[float]]]:
    return [[[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side], [x0, y0]]]


def test_mask_from_geojson_accepts_string_classification() -> None:
    # older QuPath exports write "classification": "Tumor"; histo.annotations reads it, so must the IHC mask
    data = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": _square(0, 0, 400)},
         "properties": {"classification": "Tumor"}},
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": _square(100, 100, 100)},
         "properties": {"classification": {"name": "Necrosis"}}},
    ]}
    m = mask_from_geojson(data, (800, 800), slide_mpp=1.0, include=["Tumor"], exclude=["Necrosis"], mask_mpp=4.0)
    assert m.mask.shape == (200, 200)
    assert 9000 < m.mask[:100, :100].sum() < 100 * 100  # the tumour square minus the necrotic one
    assert not m.mask[100:, :].any() and not m.mask[:, 100:].any()
    data["features"][0]["properties"] = {"classification": {"name": "Tumor"}}  # QuPath's current form
    same = mask_from_geojson(data, (800, 800), slide_mpp=1.0, include=["Tumor"], exclude=["Necrosis"], mask_mpp=4.0)
    assert np.array_equal(m.mask, same.mask)


def test_mask_from_geojson_reads_a_file_and_reports_bad_json(tmp_path: Path) -> None:
    p = tmp_path / "a.geojson"
    p.write_text(json.dumps([{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": _square(0, 0, 40)},
                              "properties": {"name": "Tumor"}}]))
    assert mask_from_geojson(p, (80, 80), slide_mpp=1.0, include=["Tumor"], mask_mpp=4.0).mask.sum() == 100
    p.write_text("{not json")
    with pytest.raises(HistoError, match="not valid JSON"):
        mask_from_geojson(p, (80, 80), slide_mpp=1.0, include=["Tumor"])


def _folder(tmp_path: Path) -> Path:
    d = tmp_path / "slide"
    tiles = pd.DataFrame({"x": [0.0, 64.0], "y": [0.0, 0.0], "w": [64.0, 64.0], "h": [64.0, 64.0],
                          "p_necrosis": np.array([0.1, 0.9], np.float32)})
    mitoses = pd.DataFrame({"x_um": [1.0], "y_um": [2.0], "score": [0.9], "x": [4.0], "y": [8.0]})
    write_prediction(d, tiles, mitoses, {"slide_mpp": 0.25, "slide_dimensions": [128, 64]},
                     {"schema": "histo.predict/1", "slide_mpp": 0.25})
    return d


def test_every_reader_of_a_prediction_folder_reads_the_same(tmp_path: Path) -> None:
    d = _folder(tmp_path)
    tiles, mitoses, meta = load_prediction(d)
    r_tiles, r_mitoses, r_meta = read_prediction(d)  # histo.report's name for the same reader
    i_tiles, i_meta = read_prediction_tiles(d)  # histo.ihc's
    pd.testing.assert_frame_equal(tiles, r_tiles)
    pd.testing.assert_frame_equal(tiles, i_tiles)
    pd.testing.assert_frame_equal(mitoses, r_mitoses)
    assert meta == r_meta == read_done(d) and meta["slide_mpp"] == 0.25
    assert i_meta == read_tiles(d / "tiles.parquet")[1] == {"slide_mpp": 0.25, "slide_dimensions": [128, 64]}
    for name in ("tiles.parquet", "mitoses.parquet", "prediction.json"):
        mode = stat.S_IMODE((d / name).stat().st_mode)
        assert mode & 0o044 == 0o044, f"{name} is mode {oct(mode)}: outputs must be readable by others"


def test_unfinished_prediction_folder_is_one_named_error(tmp_path: Path) -> None:
    d = _folder(tmp_path)
    (d / "prediction.json").unlink()
    assert read_done(d) is None
    with pytest.raises(PredictionFolderError, match="missing prediction.json"):
        read_prediction(d)
    with pytest.raises(FileNotFoundError):  # the error load_prediction raised before it was a HistoError
        load_prediction(d)
    (d / "tiles.parquet").write_bytes(b"not parquet")
    with pytest.raises(HistoError, match="cannot read the tile table"):
        read_prediction_tiles(d)


def test_synth_writers_write_ordinary_file_modes(tmp_path: Path) -> None:
    # they used mkstemp without histo.atomic and left mode-0600 files other users could not read
    import os

    from histo.synth.phantom.truth import write_json_atomic, write_parquet_atomic
    from histo.synth.tiff_writer import write_pyramidal_tiff

    old = os.umask(0o022)
    try:
        paths = [write_json_atomic(tmp_path / "s.json", {"a": 1}),
                 write_parquet_atomic(tmp_path / "c.parquet", pd.DataFrame({"x": [1.0]})),
                 write_pyramidal_tiff(tmp_path / "p.tiff", 64, 64, 0.5,
                                      lambda x, y, w, h: np.full((h, w, 3), 200, np.uint8))]
    finally:
        os.umask(old)
    for p in paths:
        assert stat.S_IMODE(Path(p).stat().st_mode) == 0o644, p
    assert json.loads((tmp_path / "s.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.parquet", "p.tiff", "s.json"]  # no temp files left
