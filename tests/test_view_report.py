"""Report pictures a pathologist reads: the IHC heatmap over tissue only, in a colour map that ends in a colour."""

from __future__ import annotations

import colorsys
from types import SimpleNamespace

import numpy as np
import pandas as pd
from PIL import Image

from histo.ihc import outputs


def _fake_result(slide_path):
    """What heatmap_png reads of a SlideIHCResult: one tile over the whole test slide at 100 % positive."""
    tiles = pd.DataFrame({"x": [0.0], "y": [0.0], "w": [2048.0], "h": [1536.0], "pct_positive": [100.0]})
    return SimpleNamespace(slide_dimensions=(2048, 1536), slide_path=str(slide_path), slide_mpp=0.25, tiles=tiles,
                           slide="test_slide", sentence="ALK positive", region="tissue")


def _hot_pixels(png_path) -> int:
    img = np.asarray(Image.open(png_path).convert("RGB")).astype(int)
    # the dark red of 100 % blended over pink tissue or grey glass: red well above green
    return int(((img[..., 0] > 130) & (img[..., 1] < 110) & (img[..., 0] - img[..., 1] > 50)).sum())


def test_ihc_heatmap_paints_tissue_only(tmp_path, test_slide_path, monkeypatch):
    outputs.heatmap_png(_fake_result(test_slide_path), tmp_path / "tissue_only.png")
    on_tissue = _hot_pixels(tmp_path / "tissue_only.png")
    import histo.tissue

    monkeypatch.setattr(histo.tissue, "tissue_mask", lambda rgb, mpp: np.ones(rgb.shape[:2], bool))
    outputs.heatmap_png(_fake_result(test_slide_path), tmp_path / "everywhere.png")
    everywhere = _hot_pixels(tmp_path / "everywhere.png")
    # the tissue box is a third of the slide: the glass around it stays unpainted
    assert on_tissue > 20_000
    assert 0.2 < on_tissue / everywhere < 0.55


def test_ihc_colour_map_ends_in_a_saturated_colour_not_grey():
    from matplotlib import colormaps

    r, g, b, _ = colormaps[outputs.HEATMAP_CMAP](1.0)
    _, sat, val = colorsys.rgb_to_hsv(r, g, b)
    assert sat > 0.8 and val > 0.3  # dark red, not grey or black
    r0, g0, b0, _ = colormaps[outputs.HEATMAP_CMAP](0.0)
    assert min(r0, g0) > 0.9  # 0 % is pale: it reads as 'little'


def test_report_has_gallery_closeup_scale_bars_view_command_and_print_css(tmp_path, test_slide_path):
    import json
    import re

    from test_report_tables import mitoses_table, tiles_table, write_prediction_folder
    from test_view import SMALL_HPF

    from histo.cli import main
    from histo.report.images import decode_png

    m = mitoses_table()
    m.loc[:4, "score"] = [0.95, 0.7, 0.99, 0.8, 0.6]  # distinct scores: the gallery is sorted by them
    pred = write_prediction_folder(tmp_path / "slideA", test_slide_path, tiles_table(), m)
    assert main(["report", "--thumbnail-px", "256", str(pred), *SMALL_HPF]) == 0
    report = json.loads((pred / "report.json").read_text())
    page = (pred / "report.html").read_text()
    gallery = page[page.index("Mitoses counted in the hotspot"):]
    scores = [float(s) for s in re.findall(r'alt="mitosis ([0-9.]+)"', gallery)]
    assert len(scores) == report["hotspot"]["count"] == 30
    assert scores == sorted(scores, reverse=True) and scores[0] == 0.99
    assert "each crop is 64 µm wide" in gallery
    crop = re.search(r'<img src="data:image/png;base64,([^"]+)" alt="mitosis', gallery).group(1)
    import base64

    assert decode_png(base64.b64decode(crop)).shape == (96, 96, 3)
    assert 'alt="hotspot close-up"' in page
    assert f"histo view {pred}" in page
    assert "@media print" in page and "@page" in page
    # a black scale bar with a white edge at the bottom left of every map
    for key in ("thumbnail", "necrosis", "pattern", "mitoses"):
        img = decode_png((pred / "images" / f"{key}.png").read_bytes())
        rows = np.where((img[:, :60] < 30).all(-1).sum(1) >= 20)[0]
        assert len(rows), key
