"""The level-0 µm/px override is called ``mpp`` in every public function (CLI --mpp, API mpp=); old keywords warn."""

from __future__ import annotations

import inspect

import pytest

from histo.errors import HistoError
from histo.ihc import score_slide
from histo.ihc.markers import load_panel
from histo.tiling import TileGrid, TilingConfig
from histo.tiling.reader import iter_batches
from histo.tiling.run import tile_slide, tile_slide_isolated

CFG = {"grid": {"tile_px": 128, "mpp": 0.5}, "workers": 0, "extract": {"format": "none"}, "qc": {"enabled": False}}


def _public() -> list:
    from histo.predict.run import predict_slide
    from histo.predict.scales import infer_scales, predict_scales

    return [tile_slide, tile_slide_isolated, iter_batches, score_slide, predict_slide, infer_scales, predict_scales]


@pytest.mark.parametrize("fn", _public(), ids=lambda f: f.__name__)
def test_override_is_called_mpp(fn) -> None:
    params = inspect.signature(fn).parameters
    assert "mpp" in params, f"{fn.__name__} has no mpp="
    for old in ("mpp_override", "slide_mpp"):
        if old in params:  # kept only as a deprecated keyword, after the new one, defaulting to None
            assert params[old].kind is inspect.Parameter.KEYWORD_ONLY and params[old].default is None
            assert list(params).index(old) > list(params).index("mpp")


def test_tile_slide_reads_with_mpp(test_slide_path, tmp_path) -> None:
    r = tile_slide(test_slide_path, tmp_path / "new", TilingConfig.from_dict(CFG), mpp=0.3, progress=False)
    assert TileGrid.load(r.grid_path).settings["run_settings"]["mpp"] == 0.3
    with pytest.warns(DeprecationWarning, match="mpp_override"):
        old = tile_slide(test_slide_path, tmp_path / "old", TilingConfig.from_dict(CFG), mpp_override=0.3,
                         progress=False)
    assert TileGrid.load(old.grid_path).settings["run_settings"]["mpp"] == 0.3
    with pytest.raises(TypeError, match="not both"), pytest.warns(DeprecationWarning):
        tile_slide(test_slide_path, tmp_path / "both", TilingConfig.from_dict(CFG), mpp=0.3, mpp_override=0.4,
                   progress=False)


def test_score_slide_old_keyword_still_reaches_the_slide(tmp_path) -> None:
    alk = load_panel()["ALK"]
    with pytest.warns(DeprecationWarning, match="slide_mpp"), pytest.raises(HistoError):
        score_slide(tmp_path / "missing.tiff", alk, slide_mpp=0.3, workers=0)
