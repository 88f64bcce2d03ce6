"""scripts/bench_register.py writes a true pair: the moving slide shows the fixed slide's tissue under the transform."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_register as br


def test_bench_pair_moving_slide_is_the_fixed_one_transformed(tmp_path):
    size = 1024
    a = br.truth_matrix(-23.0, True, (0.03, -0.02))
    fixed = tifffile.imread(br.write_pair_slide(tmp_path / "f.tiff", size, None), level=0).astype(np.int16)
    moving = tifffile.imread(br.write_pair_slide(tmp_path / "m.tiff", size, np.linalg.inv(a)), level=0).astype(np.int16)
    rng = np.random.default_rng(0)
    uv = rng.uniform(0, 1, (20000, 2))
    uv = uv[br.inside(uv[:, 0], uv[:, 1])]  # fixed tissue points
    pm = (a @ np.c_[uv, np.ones(len(uv))].T).T[:, :2]  # the same points on the moving slide
    ok = np.all((pm > 0.01) & (pm < 0.99), axis=1)
    fi = np.floor(uv[ok] * size).astype(int)
    mi = np.floor(pm[ok] * size).astype(int)
    f_nuc = fixed[fi[:, 1], fi[:, 0]].sum(axis=1) < 400  # dark 'nuclei' of the fixed slide ...
    m_nuc = moving[mi[:, 1], mi[:, 0]].sum(axis=1) < 400
    # ... are nuclei on the moving slide too (JPEG and nearest-neighbour sampling miss a few pixels); an
    # untransformed texture matches them only by chance (about the nuclei's share of the tissue)
    assert f_nuc.sum() > 300 and (m_nuc[f_nuc]).mean() > 0.8
