"""`histo predict --csv` and `histo ihc --csv`: the tile, mitosis and cell tables as CSV beside their Parquet files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_ihc_cli import slide  # noqa: F401 - the IHC slide fixture
from test_predict_cli import model_dir  # noqa: F401 - the tiny saved model fixture

from histo.cli import main
from histo.prediction import load_prediction, write_prediction


def _same(csv_path, parquet: pd.DataFrame) -> None:
    got = pd.read_csv(csv_path)
    assert list(got.columns) == list(parquet.columns) and len(got) == len(parquet)
    for c in parquet.columns:
        if pd.api.types.is_numeric_dtype(parquet[c]) or pd.api.types.is_bool_dtype(parquet[c]):
            np.testing.assert_allclose(got[c].to_numpy(float), parquet[c].to_numpy(float), rtol=1e-6, equal_nan=True)
        else:
            assert got[c].astype(str).tolist() == parquet[c].astype(str).tolist()


@pytest.mark.slow
def test_predict_csv_writes_tiles_and_mitoses_csv_and_a_rewrite_drops_them(test_slide_path, model_dir, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    assert main(["predict", str(test_slide_path), "--model", str(model_dir / "cli-tiny"), "--out", str(out),
                 "--workers", "0", "--device", "cpu", "--no-report", "--quiet", "--csv"]) == 0
    folder = out / test_slide_path.stem
    tiles, mitoses, meta = load_prediction(folder)
    assert len(tiles) > 0
    _same(folder / "tiles.csv", tiles)
    _same(folder / "mitoses.csv", mitoses)
    write_prediction(folder, tiles.iloc[:3], mitoses.iloc[:0], {}, meta)  # new tables: the old CSVs would lie
    assert not (folder / "tiles.csv").exists() and not (folder / "mitoses.csv").exists()


@pytest.mark.slow
def test_ihc_csv_writes_cells_and_tiles_csv(slide, tmp_path):  # noqa: F811
    out = tmp_path / "o"
    assert main(["ihc", str(slide), "--marker", "ALK", "--out", str(out), "--quiet", "--csv"]) == 0
    folder = out / slide.stem
    cells, tiles = pd.read_parquet(folder / "ihc_cells.parquet"), pd.read_parquet(folder / "ihc_tiles.parquet")
    assert len(cells) > 0 and {"x", "y", "ihc_class"} <= set(cells.columns)
    _same(folder / "ihc_cells.csv", cells)
    _same(folder / "ihc_tiles.csv", tiles)
    assert main(["ihc", str(slide), "--marker", "ALK", "--out", str(out), "--quiet", "--overwrite"]) == 0
    assert not (folder / "ihc_cells.csv").exists()  # rescored without --csv: no CSV of the old tables left
