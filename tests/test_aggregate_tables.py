"""histo.aggregate input contract: missing columns, bad values, mpp, and the module's import purity."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from aggregate_tables import make_tiles, points

from histo.aggregate import TableError, measure_slide, validate_mitosis_table, validate_tile_table
from histo.errors import HistoError, MppError

CLASSES = ("none", "fascicular", "haphazard")

def test_missing_tile_columns_are_all_named():
    tiles = make_tiles(2, 2, 200).drop(columns=["tissue_fraction", "p_pattern_haphazard"])
    with pytest.raises(TableError) as e:
        measure_slide(tiles, None, 0.5)
    msg = str(e.value)
    assert "missing column(s) tissue_fraction, p_pattern_haphazard" in msg
    assert isinstance(e.value, ValueError) and isinstance(e.value, HistoError)


def test_p_tumour_is_optional():
    out = validate_tile_table(make_tiles(2, 1, 200, with_p_tumour=False), CLASSES)
    assert "p_tumour" not in out.columns and len(out) == 2


def test_missing_mitosis_columns_are_named():
    with pytest.raises(TableError, match="mitosis table is missing column\\(s\\) score"):
        validate_mitosis_table(pd.DataFrame({"x_um": [1.0], "y_um": [2.0]}))
    assert len(validate_mitosis_table(None)) == 0
    assert len(validate_mitosis_table(points(np.zeros((0, 2))))) == 0


def test_pattern_column_of_unconfigured_class():
    tiles = make_tiles(1, 1, 200).assign(p_pattern_storiform=0.0)
    with pytest.raises(TableError, match="p_pattern_storiform"):
        validate_tile_table(tiles, CLASSES)


@pytest.mark.parametrize("column,value,match", [
    ("tissue_fraction", 1.5, "tissue_fraction must be within 0..1"),
    ("p_necrosis", -0.1, "p_necrosis must be within 0..1"),
    ("p_tumour", np.nan, "p_tumour has 1 missing"),
    ("x", "left", "column x must be numeric"),
    ("w", 0, "w or h <= 0"),
    ("p_pattern_none", 0.5, "must sum to 1"),
])
def test_bad_tile_values(column, value, match):
    tiles = make_tiles(2, 1, 200)
    tiles[column] = tiles[column].astype(object)
    tiles.loc[1, column] = value
    with pytest.raises(TableError, match=match):
        validate_tile_table(tiles, CLASSES)


def test_bad_inputs_types_and_mpp():
    with pytest.raises(TableError, match="DataFrame"):
        validate_tile_table({"x": [1]}, CLASSES)
    with pytest.raises(TableError, match="score has 1 missing"):
        validate_mitosis_table(pd.DataFrame({"x_um": [1.0], "y_um": [1.0], "score": [None]}))
    for mpp in (0, -0.25, float("nan"), 250.0, "0.25"):
        with pytest.raises(MppError):
            measure_slide(make_tiles(1, 1, 200), None, mpp)


def test_import_pulls_in_no_heavy_or_sibling_modules():
    code = (
        "import sys, histo.aggregate; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'openslide', 'scipy', 'skimage') "
        # histo.config (the one YAML loader), histo.inputs (shared constants) and histo.jsonsafe (the one JSON
        # cleaner, standard library only) are leaves like histo.errors
        "or (m.startswith('histo.') and not m.startswith(('histo.aggregate', 'histo.errors', 'histo.config', "
        "'histo.inputs', 'histo.jsonsafe')))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
