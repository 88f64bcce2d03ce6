"""Every geometry histo writes to GeoJSON is valid OGC simple features, and region areas stay exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
from shapely.geometry import shape

from histo.report.geojson import (
    NECROSIS_CLASS,
    pattern_class_name,
    slide_geojson,
    union_of_tiles,
)

CLASSES = ("none", "fascicular", "haphazard")
# a 64 px tile at 1 µm/px read from a 0.499 µm/px slide: edges at col * 128.2565... px, as on CMU-1-Small-Region
SLIDE_MPP = 0.499
TILE_PX0 = 64 * 1.0 / SLIDE_MPP


def _written(collection: dict) -> list[dict]:
    """The features as a reader sees them: through JSON text, NaN refused as the report writer does."""
    return json.loads(json.dumps(collection, separators=(",", ":"), allow_nan=False))["features"]


def _invalid(features: list[dict]) -> list[str]:
    return [f"{f['properties']['classification']['name']}: {shapely.is_valid_reason(shape(f['geometry']))}"
            for f in features if not shape(f["geometry"]).is_valid]


def _grid(cells: list[tuple[int, int]], tile0: float = TILE_PX0, stride0: float | None = None) -> pd.DataFrame:
    """A tile table of the given (col, row) cells, level-0 boxes at col * stride0 (floats, as TileGrid makes)."""
    stride0 = tile0 if stride0 is None else stride0
    cols = np.array([c for c, _ in cells])
    rows = np.array([r for _, r in cells])
    return pd.DataFrame({"col": cols, "row": rows, "x": cols * stride0, "y": rows * stride0,
                         "w": np.full(len(cells), tile0), "h": np.full(len(cells), tile0),
                         "tissue_fraction": np.ones(len(cells), np.float32)})


def _block(c0: int, r0: int, c1: int, r1: int) -> list[tuple[int, int]]:
    return [(c, r) for r in range(r0, r1) for c in range(c0, c1)]


# a 5x4 block, an L, a ring around an empty centre (a hole), two squares meeting at one corner only
SHAPES = {
    "block": _block(3, 2, 8, 6),
    "L": _block(0, 0, 1, 6) + _block(1, 5, 6, 6),
    "ring": [c for c in _block(10, 10, 15, 15) if not (11 <= c[0] <= 13 and 11 <= c[1] <= 13)],
    "corner": _block(20, 0, 22, 2) + _block(22, 2, 24, 4),
}
PARTS = {"block": 1, "L": 1, "ring": 1, "corner": 2}


@pytest.mark.parametrize("name", list(SHAPES))
def test_union_of_adjacent_tiles_is_valid_with_the_tiles_total_area(name: str) -> None:
    cells = SHAPES[name]
    tiles = _grid(cells)
    geom = union_of_tiles(tiles, np.ones(len(tiles), bool))
    assert geom.is_valid, shapely.is_valid_reason(geom)
    assert len(shapely.get_parts(geom)) == PARTS[name]  # one polygon per connected group, not one per tile
    assert geom.area == pytest.approx(len(cells) * TILE_PX0 ** 2, rel=1e-12)
    if name == "ring":
        assert shapely.get_num_interior_rings(geom) == 1
    # what is written (coordinates rounded to 0.01 px) is valid too and still holds the same area
    feats = _written(slide_geojson(tiles.assign(p_necrosis=0.0, p_pattern_none=0.0, p_pattern_fascicular=1.0,
                                                p_pattern_haphazard=0.0),
                                   None, mpp=SLIDE_MPP, classes=CLASSES, necrotic=np.ones(len(tiles), bool),
                                   mitosis_min_score=0.5, include_tiles=True))
    assert not _invalid(feats)
    nec = next(f for f in feats if f["properties"]["classification"]["name"] == NECROSIS_CLASS and
               f["properties"]["objectType"] == "annotation")
    assert shape(nec["geometry"]).area == pytest.approx(len(cells) * TILE_PX0 ** 2, rel=1e-4)
    tile_mm2 = (64 * 1.0) ** 2 / 1e6  # 64 px at 1 µm/px
    assert nec["properties"]["measurements"]["Area mm2"] == pytest.approx(len(cells) * tile_mm2, rel=1e-12)


def test_overlapping_tiles_union_is_valid_with_the_covered_area() -> None:
    stride0 = 0.75 * TILE_PX0  # --overlap-px: neighbours overlap by a quarter tile
    tiles = _grid(_block(0, 0, 6, 4), stride0=stride0)
    geom = union_of_tiles(tiles, np.ones(len(tiles), bool))
    assert geom.is_valid and geom.geom_type == "Polygon"
    assert geom.area == pytest.approx((5 * stride0 + TILE_PX0) * (3 * stride0 + TILE_PX0), rel=1e-12)


def test_pattern_regions_of_a_random_map_are_valid_and_exact() -> None:
    rng = np.random.default_rng(7)
    cells = _block(0, 0, 23, 17)
    tiles = _grid(cells)
    p = rng.dirichlet(np.ones(3), len(tiles))
    tiles = tiles.assign(p_necrosis=rng.random(len(tiles)), p_pattern_none=p[:, 0], p_pattern_fascicular=p[:, 1],
                         p_pattern_haphazard=p[:, 2])
    feats = _written(slide_geojson(tiles, None, mpp=SLIDE_MPP, classes=CLASSES,
                                   necrotic=tiles["p_necrosis"].to_numpy() > 0.7, mitosis_min_score=0.5,
                                   hotspot={"box_px": [100.0, 200.0, 900.0, 1000.0], "shape": "circle", "count": 3,
                                            "per_10hpf": 3.0, "area_mm2": 0.1}))
    assert not _invalid(feats)
    top = p.argmax(1)
    for i, cls in enumerate(CLASSES):
        f = next(f for f in feats if f["properties"]["classification"]["name"] == pattern_class_name(cls)
                 and f["properties"]["objectType"] == "annotation")
        assert f["properties"]["measurements"]["Tiles"] == (top == i).sum()
        assert f["properties"]["measurements"]["Area mm2"] == pytest.approx((top == i).sum() * 64 ** 2 / 1e6, rel=1e-12)


@pytest.mark.real_data
@pytest.mark.slow
def test_report_geojson_of_the_real_slide_is_valid(real_data: Path, tmp_path: Path) -> None:
    from histo.cli import main
    from histo.cli.demo import demo_model_dir

    slide = real_data / "slides" / "CMU-1-Small-Region.svs"
    if not slide.is_file():
        pytest.skip(f"{slide} is absent")
    out = tmp_path / "pred"
    rc = main(["predict", str(slide), "--model", str(demo_model_dir()), "--out", str(out), "--workers", "0",
               "--device", "cpu", "--quiet"])
    assert rc == 0
    feats = json.loads((out / slide.stem / "annotations.geojson").read_text(encoding="utf-8"))["features"]
    regions = [f for f in feats if f["properties"]["objectType"] == "annotation"
               and f["properties"]["classification"]["name"].startswith("Pattern ")]
    assert regions, "no pattern region in the report's GeoJSON"
    assert not _invalid(feats)
    for f in regions:  # area written = the tiles' area (64 px tiles at 1 µm/px)
        m = f["properties"]["measurements"]
        assert m["Area mm2"] == pytest.approx(m["Tiles"] * 64 ** 2 / 1e6, rel=1e-9)
        assert shape(f["geometry"]).area * SLIDE_MPP ** 2 / 1e6 == pytest.approx(m["Area mm2"], rel=1e-4)


def test_ihc_cells_geojson_is_valid() -> None:
    from types import SimpleNamespace

    from histo.ihc import cells_geojson

    rng = np.random.default_rng(3)
    n = 500
    cells = pd.DataFrame({"x": rng.uniform(0, 5000, n), "y": rng.uniform(0, 5000, n), "ihc_class": rng.integers(0, 4, n),
                          "dab_od": rng.uniform(0, 1, n), "area_um2": rng.uniform(20, 80, n), "in_region": rng.random(n) < 0.8})
    spec = SimpleNamespace(name="ALK", compartment="cytoplasm", cell_params=SimpleNamespace(dab_statistic="mean"))
    result = SimpleNamespace(cells=cells, spec=spec, region="tumour")
    for cap in (10_000, 100):  # every cell, and a sample past the cap
        feats = _written(cells_geojson(result, max_features=cap))
        assert len(feats) == min(cap, int(cells["in_region"].sum()))
        assert all(f["geometry"]["type"] == "Point" for f in feats)
        assert not _invalid(feats)


@pytest.mark.parametrize("preset", ["high_grade_alk_positive", "artefacts"])
def test_phantom_truth_geojson_is_valid(preset: str) -> None:
    import dataclasses

    from histo.synth.phantom import build_phantom, geojson, load_spec
    from histo.synth.phantom.spec import replace_size

    spec = replace_size(load_spec(Path(__file__).resolve().parents[1] / "configs" / "synth" / f"{preset}.yaml"), 4096, 4096)
    ph = build_phantom(dataclasses.replace(spec, seed=42))
    for modality in ("he", "ihc"):
        feats = _written(geojson(ph, modality))
        assert any(f["geometry"]["type"] in ("Polygon", "MultiPolygon") for f in feats)
        assert not _invalid(feats)
