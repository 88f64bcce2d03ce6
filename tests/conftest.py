"""Shared fixtures: the real-data folder (skips with a reason when absent) and small written slides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One pytest-xdist worker per core: each runs torch (and OpenMP/BLAS) on one thread, before any test
    # imports them; the subprocesses tests start inherit it. A plain `pytest` run keeps the defaults.
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, "1")


def real_data_dir() -> Path:
    """Where ../shared/data/real is, or HISTO_REAL_DATA when set."""
    env = os.environ.get("HISTO_REAL_DATA")
    return Path(env) if env else _REPO.parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real reference data folder; skips the test when it is absent."""
    root = real_data_dir()
    if not root.is_dir():
        pytest.skip(f"real data folder {root} is absent (set HISTO_REAL_DATA or place ../shared/data/real beside the repo)")
    return root


# -- small written slides -------------------------------------------------------------------------------
# Level-0 content of the test slide: white glass with one pink "tissue" rectangle carrying a smooth
# purple texture (smooth so JPEG error stays small and resampling checks are meaningful).
TEST_SLIDE_W, TEST_SLIDE_H, TEST_SLIDE_MPP = 2048, 1536, 0.25
TISSUE_BOX = (512, 256, 1536, 1280)  # x0, y0, x1, y1 in level-0 px


def render_test_slide(x: int, y: int, w: int, h: int):
    """Pixels of the test slide's level-0 region (deterministic, seamless)."""
    import numpy as np

    yy, xx = np.mgrid[y : y + h, x : x + w].astype(np.float32)
    out = np.full((h, w, 3), 242, np.float32)
    x0, y0, x1, y1 = TISSUE_BOX
    inside = (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
    tex = 0.5 + 0.5 * np.sin(xx / 23.0) * np.cos(yy / 31.0)
    pink = np.stack([225 - 60 * tex, 140 - 50 * tex, 185 - 20 * tex], -1)
    out[inside] = pink[inside]
    return out.round().astype(np.uint8)


@pytest.fixture(scope="session")
def test_slide_path(tmp_path_factory) -> Path:
    """A 2048x1536 px pyramidal TIFF at 0.25 µm/px (2 levels) with a known tissue rectangle."""
    from histo.synth.tiff_writer import write_pyramidal_tiff

    path = tmp_path_factory.mktemp("slides") / "test_slide.tiff"
    return write_pyramidal_tiff(path, TEST_SLIDE_W, TEST_SLIDE_H, TEST_SLIDE_MPP, render_test_slide,
                                tile_px=256, chunk_px=512, jpeg_quality=95)


@pytest.fixture(scope="session")
def blank_slide_path(tmp_path_factory) -> Path:
    """A 1024x1024 px slide of empty glass (with sensor-like noise) at 0.25 µm/px."""
    import numpy as np

    from histo.synth.tiff_writer import write_pyramidal_tiff

    def render(x, y, w, h):
        rng = np.random.default_rng(x * 7919 + y)
        return (242 + rng.normal(0, 2, (h, w, 3))).clip(0, 255).astype(np.uint8)

    path = tmp_path_factory.mktemp("slides") / "blank.tiff"
    return write_pyramidal_tiff(path, 1024, 1024, 0.25, render, tile_px=256, chunk_px=512)


def pytest_configure(config) -> None:
    """Markers of the optional suites (the browser test needs chromium + chromedriver + selenium)."""
    config.addinivalue_line("markers", "browser: drives a real headless Chromium (histo view); .ci/run installs it")
