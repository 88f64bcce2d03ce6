"""IHC scoring registers the IHC slide onto the H&E before using its tumour mask; a bad registration falls back."""

from __future__ import annotations

import numpy as np
from test_register import MPP, SIZE, _moving, _pair_images, _truth

from histo.ihc import load_panel, score_slide
from histo.register import SlideTransform, warp_view_image
from histo.slide import Slide
from histo.tissue import TissueMask


def _fragment_mask(m: np.ndarray) -> TissueMask:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    frag = m & ((xx - 190) ** 2 + (yy - 220) ** 2 < 150**2)  # the first fragment only
    return TissueMask(mask=frag[::2, ::2], mpp=2 * MPP, downsample=2.0, slide_dimensions=(SIZE, SIZE))


def test_tumour_mask_is_carried_onto_a_rotated_ihc_slide():
    he, ihc, m = _pair_images()
    a = _truth(120.0, True)
    mov = _moving(ihc, a)
    spec = load_panel()["ALK"]
    tmask = _fragment_mask(m)
    res = score_slide(Slide.from_array(mov, MPP, "ihc"), spec, tumour_mask=tmask, he_slide=Slide.from_array(he, MPP, "he"),
                      workers=0, analysis_mpp=1.0)
    reg = res.qc_values["registration"]
    assert reg["status"] == "ok" and reg["flipped"] is True
    assert res.region == "tumour"
    # the carried mask sits where the fragment landed on the IHC slide, not where it was on the H&E
    gen = SlideTransform((SIZE, SIZE), MPP, (SIZE, SIZE), MPP, np.linalg.inv(a))
    want = warp_view_image(gen, tmask.mask.repeat(2, 0).repeat(2, 1).astype(np.uint8), MPP, (SIZE, SIZE), MPP,
                           nearest=True) > 0
    got = res.tumour_mask.mask.repeat(2, 0).repeat(2, 1)
    assert 2 * (got & want).sum() / (got.sum() + want.sum()) > 0.85


def test_failed_registration_counts_in_all_tissue_and_says_so():
    _, ihc, m = _pair_images()
    spec = load_panel()["ALK"]
    blank_he = Slide.from_array(np.full((SIZE, SIZE, 3), 240, np.uint8), MPP, "he")
    res = score_slide(Slide.from_array(ihc, MPP, "ihc"), spec, tumour_mask=_fragment_mask(m), he_slide=blank_he,
                      workers=0, analysis_mpp=1.0)
    assert res.region == "tissue"
    assert res.qc_values["registration"]["status"] == "failed"
    assert any(f.name == "registration_failed" and "all tissue" in f.message for f in res.qc)
