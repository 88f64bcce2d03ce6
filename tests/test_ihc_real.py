"""histo.ihc evaluation helpers, and the Ki67 targets on real DeepLIIF tiles against their manual masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from histo.ihc import (
    cell_classes,
    deconvolve,
    detect_cells,
    load_panel,
    match_cells,
    nuclei_from_colour_mask,
    score_cells,
)

REPO = Path(__file__).resolve().parents[1]
KI67_MPP = 0.25  # DeepLIIF nuclei: median ~550 px ≈ 6.6 µm across at 0.25 µm/px (lymphoid size); 0.5 would make them 13 µm


def test_colour_mask_and_matching():
    mask = np.zeros((40, 60, 3), np.uint8)
    mask[5:15, 5:15] = (255, 0, 0)
    mask[5:15, 30:40] = (0, 0, 255)
    mask[30, 50] = (0, 0, 255)  # a speck, not a nucleus
    labels, pos, xy = nuclei_from_colour_mask(mask)
    assert labels.max() == 2 and pos.tolist() == [True, False]
    assert np.allclose(xy, [[9.5, 9.5], [34.5, 9.5]])
    det = np.array([[10.0, 10.0], [8.0, 8.0], [40.0, 9.0], [55.0, 35.0]])
    pairs = match_cells(det, labels, xy, radius_px=8.0)
    # closest of the two inside nucleus 0 wins; the third is within the radius of nucleus 1; the last matches nothing
    assert sorted(pairs) == [(0, 0), (2, 1)]


def _ki67(real_data: Path, tile: str) -> dict:
    spec = load_panel(REPO / "configs" / "markers" / "panel.yaml")["Ki67"]
    with Image.open(real_data / "ihc" / f"test_ihc_{tile}.png") as im:
        rgb = np.asarray(im.convert("RGB"))
    with Image.open(real_data / "ihc" / f"test_groundtruth_{tile}.png") as im:
        gt_labels, gt_pos, gt_xy = nuclei_from_colour_mask(np.asarray(im.convert("RGB")))
    det = detect_cells(deconvolve(rgb, background_rgb="estimate"), KI67_MPP, spec.cell_params)
    pos = cell_classes(det.table, spec.compartment, spec.thresholds_od) >= 1
    pairs = match_cells(det.table[["x_px", "y_px"]].to_numpy(), gt_labels, gt_xy, 4.0 / KI67_MPP, grow_px=4)
    di, gi = np.array(pairs).T
    region = ndi.binary_dilation(gt_labels > 0, iterations=4)  # the masks annotate only some nuclei
    s = score_cells(det.table, spec.compartment, spec.thresholds_od, region_mask=region)
    return {"agreement": float(np.mean(pos[di] == gt_pos[gi])), "recall": len(pairs) / len(gt_pos),
            "pct": s.pct_positive, "pct_gt": 100.0 * gt_pos.mean()}


@pytest.mark.real_data
@pytest.mark.parametrize("tile", ["22_2", "6_2"])
def test_ki67_agreement_and_percent_positive(real_data, tile):
    r = _ki67(real_data, tile)
    assert r["agreement"] >= 0.85, r
    assert abs(r["pct"] - r["pct_gt"]) <= 10.0, r
    assert r["recall"] >= 0.8, r  # the cells must be found, not only the few easy ones
