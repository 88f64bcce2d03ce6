"""Phantom colours against real stained tissue: per-stain optical-density statistics after Ruifrok
deconvolution (skimage.color.rgb2hed, independent of the phantom's own stain code) must fall within
the range spanned by the real tiles in ../shared/data/real, widened by a stated margin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.color import rgb2hed

from histo.synth.phantom import build_phantom, load_spec
from histo.synth.phantom.layout import FASCICULAR, HAPHAZARD, NECROSIS, STROMA

PRESETS = Path(__file__).resolve().parents[1] / "configs" / "synth"
REAL_HE = [
    "he_tiles/tiatoolbox_stain_norm_target.png",
    "he_tiles/histoqc_template1.png",
    "he_tiles/histolab_tiles/tissue-level0-4302-10273-4814-10785.png",
    "he_tiles/histolab_tiles/high-nuclei-score-level0.png",
    "tissue_classes/STR-AACRYYNQ.tif",
    "tissue_classes/TUM-AACHEHDV.tif",
    "tissue_classes/DEB-ACHGAMCT.tif",
    "tissue_classes/MUS-AACVWIEK.tif",
    "tissue_classes/NORM-AAAWMSFI.tif",
    "tissue_classes/LYM-AATTSRNN.tif",
]
REAL_IHC = ["ihc/skimage_ihc_FHL2_DAB_colon.png", "ihc/test_ihc_22_2.png", "ihc/test_ihc_6_2.png"]
PCTS = (5, 50, 95)
MARGIN = 0.25  # relative widening of the real range on each side (in OD units, of the range width, min 0.01)


def od_stats(rgb: np.ndarray) -> np.ndarray:
    """(3 stains H, E, DAB) x (5th, 50th, 95th percentile) of rgb2hed OD over tissue pixels."""
    hed = rgb2hed(rgb[..., :3])
    tissue = rgb[..., :3].mean(-1) < 215
    return np.array([[np.percentile(hed[..., c][tissue], q) for q in PCTS] for c in range(3)])


def _real(root: Path, names: list[str]) -> np.ndarray:
    return np.stack([od_stats(np.asarray(Image.open(root / n).convert("RGB"))) for n in names])


def _inside(phantom: np.ndarray, real: np.ndarray, stains: list[int]) -> list[str]:
    lo, hi = real.min(0), real.max(0)
    pad = np.maximum((hi - lo) * MARGIN, 0.01)
    bad = []
    for c in stains:
        for j, q in enumerate(PCTS):
            v = phantom[c, j]
            if not (lo[c, j] - pad[c, j] <= v <= hi[c, j] + pad[c, j]):
                bad.append(f"{'HED'[c]} p{q}={v:.3f} outside [{lo[c, j]:.3f}, {hi[c, j]:.3f}] ± {pad[c, j]:.3f}")
    return bad


def _tiles(ph, render, labels, n=4, size=512):
    """Tiles (size² px) centred on cells in the given regions, chosen deterministically."""
    c = ph.cells
    rng = np.random.default_rng(5)
    out = []
    for lab in labels:
        idx = np.nonzero(c.region == lab)[0]
        for i in rng.choice(idx, n, replace=False):
            out.append(render(int(c.x[i]) - size // 2, int(c.y[i]) - size // 2, size, size))
    return out


@pytest.mark.real_data
@pytest.mark.slow
def test_he_colour_statistics_within_real_range(real_data):
    real = _real(real_data, REAL_HE)
    ph = build_phantom(load_spec(PRESETS / "high_grade_alk_positive.yaml"))
    bad = []
    for t in _tiles(ph, ph.render_he, [FASCICULAR, HAPHAZARD, STROMA, NECROSIS], n=2):
        bad += _inside(od_stats(t), real, [0, 1, 2])
    assert not bad, bad


@pytest.mark.real_data
@pytest.mark.slow
def test_ihc_colour_statistics_within_real_range(real_data):
    real = _real(real_data, REAL_IHC)
    ph = build_phantom(load_spec(PRESETS / "high_grade_alk_positive.yaml"))
    bad = []
    for t in _tiles(ph, ph.render_ihc, [FASCICULAR, HAPHAZARD], n=2):
        bad += _inside(od_stats(t), real, [0, 2])
    assert not bad, bad
