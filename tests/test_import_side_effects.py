"""Importing histo and writing its images leaves process-wide settings alone (matplotlib backend, PIL limit)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_ihc_heatmap_and_report_images_keep_the_users_matplotlib_backend(tmp_path) -> None:
    # A notebook picks its backend (inline, widget ...); histo must draw without switching it.
    code = f"""
        import matplotlib
        matplotlib.use("svg")
        from pathlib import Path
        from types import SimpleNamespace
        import pandas as pd
        import histo.report, histo.ihc
        from histo.ihc.outputs import heatmap_png
        tiles = pd.DataFrame({{"x": [0.0], "y": [0.0], "w": [64.0], "h": [64.0], "pct_positive": [40.0]}})
        r = SimpleNamespace(slide_dimensions=(128, 128), slide_path="{tmp_path}/missing.tiff", slide_mpp=0.5,
                            tiles=tiles, slide="s", sentence="ALK 40%", region="tissue")
        heatmap_png(r, Path("{tmp_path}") / "h.png", thumb_px=128)
        assert (Path("{tmp_path}") / "h.png").stat().st_size > 0
        print(matplotlib.get_backend())
    """
    assert _run(code) == "svg"


def test_import_keeps_pil_image_limit() -> None:
    code = """
        from PIL import Image
        before = Image.MAX_IMAGE_PIXELS
        import histo.slide, histo.tiling, histo.ihc, histo.report, histo.case
        print(Image.MAX_IMAGE_PIXELS == before)
    """
    assert _run(code) == "True"
