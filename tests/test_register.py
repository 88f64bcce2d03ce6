"""histo.register: any rotation or flip recovered, both-way point maps, mask warping, status, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from histo.cli import main
from histo.register import SlideTransform, load_transform, register_slides, warp_view_image
from histo.slide import Slide
from histo.tissue import TissueMask

MPP = 4.0
SIZE = 600


def _pair_images(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An 'H&E' and an 'IHC' image of the same three tissue fragments (textures correlated, colours differ)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    m = np.zeros((SIZE, SIZE), bool)
    for cx, cy, r in [(190, 220, 110), (420, 190, 75), (340, 430, 95)]:  # several fragments, none symmetric
        m |= (xx - cx) ** 2 / (r * 1.3) ** 2 + (yy - cy) ** 2 / r**2 < 1
    tex = ndi.gaussian_filter(rng.normal(size=m.shape), 4)
    tex = (tex - tex.min()) / (tex.max() - tex.min())
    tex2 = ndi.gaussian_filter(rng.normal(size=m.shape), 2)
    tex2 = (tex2 - tex2.min()) / (tex2.max() - tex2.min())
    he = np.full((SIZE, SIZE, 3), 240.0)
    he[m] = np.array([200, 110, 180]) * (0.55 + 0.6 * tex[m, None])
    ihc = np.full((SIZE, SIZE, 3), 238.0)
    ihc[m] = np.array([150, 160, 215]) * (0.55 + 0.6 * (0.7 * tex[m, None] + 0.3 * tex2[m, None]))
    return np.clip(he, 0, 255).astype(np.uint8), np.clip(ihc, 0, 255).astype(np.uint8), m


def _truth(theta_deg: float, flip: bool, scale: float = 1.03, shift_um=(120.0, -70.0)) -> np.ndarray:
    """3×3 fixed µm → moving µm about the image centre."""
    t = math.radians(theta_deg)
    r = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]]) * scale
    if flip:
        r = r @ np.diag([-1.0, 1.0])
    c = np.array([SIZE * MPP / 2] * 2)
    a = np.eye(3)
    a[:2, :2] = r
    a[:2, 2] = c - r @ c + np.asarray(shift_um)
    return a


def _moving(ihc: np.ndarray, a: np.ndarray) -> np.ndarray:
    gen = SlideTransform((SIZE, SIZE), MPP, (SIZE, SIZE), MPP, np.linalg.inv(a))  # moving px → fixed image
    return np.ascontiguousarray(warp_view_image(gen, ihc, MPP, (SIZE, SIZE), MPP, border=238))


@pytest.mark.parametrize("theta,flip", [(137.0, False), (250.0, True)])
def test_register_recovers_any_rotation_and_flip(theta, flip):
    he, ihc, m = _pair_images()
    a = _truth(theta, flip)
    reg = register_slides(Slide.from_array(he, MPP, "he"), Slide.from_array(_moving(ihc, a), MPP, "ihc"))
    assert reg.status == "ok", reg.quality
    assert reg.transform.flipped() == flip
    ys, xs = np.nonzero(m[::10, ::10])
    pf = np.stack([xs * 10.0, ys * 10.0], axis=1)  # fixed level-0 px inside the tissue
    pm_true = (pf * MPP) @ a[:2, :2].T + a[:2, 2]
    tre = np.hypot(*(reg.transform.fixed_to_moving(pf) * MPP - pm_true).T)
    assert np.median(tre) < 10.0 and tre.max() < 50.0
    back = reg.transform.moving_to_fixed(pm_true / MPP)
    assert np.median(np.hypot(*(back - pf).T)) * MPP < 10.0
    assert reg.estimated_error_um is not None and reg.estimated_error_um < 20.0


def test_mask_to_moving_and_back_and_identity():
    he, ihc, m = _pair_images()
    a = _truth(60.0, False)
    t = SlideTransform((SIZE, SIZE), MPP, (SIZE, SIZE), MPP, a)
    mask = TissueMask(mask=m[::2, ::2], mpp=2 * MPP, downsample=2.0, slide_dimensions=(SIZE, SIZE))
    on_moving = t.mask_to_moving(mask)
    assert on_moving.slide_dimensions == (SIZE, SIZE) and on_moving.mask.shape == mask.mask.shape
    assert abs(on_moving.mask.mean() - mask.mask.mean()) / mask.mask.mean() < 0.15  # area kept (scale 1.03)
    back = t.mask_to_fixed(on_moving)
    inter = (back.mask & mask.mask).sum()
    assert 2 * inter / (back.mask.sum() + mask.mask.sum()) > 0.95
    assert not (on_moving.mask == mask.mask).all()  # it really moved
    assert SlideTransform.identity((SIZE, SIZE), MPP).is_identity(1.0)
    assert not t.is_identity(1.0)


def test_registering_onto_blank_glass_fails_and_says_why():
    he, _, _ = _pair_images()
    blank = np.full_like(he, 240)
    reg = register_slides(Slide.from_array(he, MPP, "he"), Slide.from_array(blank, MPP, "blank"))
    assert reg.status == "failed"
    assert "no tissue" in " ".join(reg.quality["reasons"])


def test_cli_register_writes_json_qc_and_landmarks(tmp_path, capsys):
    from PIL import Image

    he, ihc, m = _pair_images()
    a = _truth(200.0, True)
    Image.fromarray(he).save(tmp_path / "he.png")
    Image.fromarray(_moving(ihc, a)).save(tmp_path / "ihc.png")
    pf = np.array([[190.0, 220.0], [420.0, 190.0], [340.0, 430.0]])  # fragment centres, fixed px
    pm = ((pf * MPP) @ a[:2, :2].T + a[:2, 2]) / MPP
    (tmp_path / "lm.csv").write_text("X,Y\n" + "".join(f"{x},{y}\n" for x, y in pm))
    out = tmp_path / "reg"
    rc = main(["register", str(tmp_path / "he.png"), str(tmp_path / "ihc.png"), "--out", str(out),
               "--mpp", str(MPP), "--landmarks", str(tmp_path / "lm.csv")])
    assert rc == 0
    assert capsys.readouterr().out.startswith("ok")
    d = json.loads((out / "registration.json").read_text())
    assert d["status"] == "ok" and d["units"] == "µm" and d["transform"]["flipped"] is True
    assert d["fixed"]["width_px"] == SIZE and d["moving"]["mpp"] == MPP
    assert d["quality"]["estimated_error_um"] is not None
    assert (out / d["files"]["qc"]).is_file()
    got = np.loadtxt(out / "landmarks_in_fixed.csv", delimiter=",", skiprows=1)
    assert np.median(np.hypot(*(got - pf).T)) * MPP < 10.0
    t, _ = load_transform(out)
    assert np.allclose(t.moving_to_fixed(pm), got, atol=0.01)


def test_cli_register_bad_landmarks_and_missing_slide(tmp_path, capsys):
    from PIL import Image

    he, _, _ = _pair_images()
    Image.fromarray(he).save(tmp_path / "he.png")
    (tmp_path / "lm.csv").write_text("a,b\n1,2\n")
    rc = main(["register", str(tmp_path / "he.png"), str(tmp_path / "he.png"), "--out", str(tmp_path / "o"),
               "--mpp", "4", "--landmarks", str(tmp_path / "lm.csv")])
    assert rc == 2 and "X and Y" in capsys.readouterr().err
    rc = main(["register", str(tmp_path / "he.png"), str(tmp_path / "nope.png"), "--out", str(tmp_path / "o"), "--mpp", "4"])
    assert rc == 2 and "no such file" in capsys.readouterr().err


def test_blank_moving_exits_1(tmp_path):
    from PIL import Image

    he, _, _ = _pair_images()
    Image.fromarray(he).save(tmp_path / "he.png")
    Image.fromarray(np.full_like(he, 240)).save(tmp_path / "blank.png")
    out = tmp_path / "o"
    assert main(["register", str(tmp_path / "he.png"), str(tmp_path / "blank.png"), "--out", str(out), "--mpp", "4"]) == 1
    assert json.loads((out / "registration.json").read_text())["status"] == "failed"


def test_synth_transform_is_exact_both_ways():
    from histo.synth.transform import IhcTransform

    t = IhcTransform.random(np.random.default_rng(5), 0.25, (4096, 3000))
    p = np.array([[10.0, 20.0], [2000.0, 1500.0], [4000.0, 2900.0]])
    assert np.allclose(t.moving_to_fixed(t.fixed_to_moving(p)), p, atol=1e-6)
    assert IhcTransform.from_dict(json.loads(json.dumps(t.to_dict()))) == t
    # the moving frame holds the whole transformed H&E frame
    corners = t.fixed_to_moving(np.array([[0, 0], [4096, 0], [0, 3000], [4096, 3000]], float))
    assert (corners >= 0).all() and (corners[:, 0] <= t.moving_dimensions[0]).all() and (corners[:, 1] <= t.moving_dimensions[1]).all()


@pytest.mark.real_data
@pytest.mark.slow
def test_real_birl_kidney_pair_rtre(real_data):
    from histo.register import read_landmarks

    base = real_data / "registration/birl/rat-kidney_/scale-5pc"
    reg = register_slides(base / "Rat-Kidney_HE.jpg", base / "Rat-Kidney_PanCytokeratin.jpg", fixed_mpp=4.0, moving_mpp=4.0)
    lf, lm = read_landmarks(base / "Rat-Kidney_HE.csv"), read_landmarks(base / "Rat-Kidney_PanCytokeratin.csv")
    n = min(len(lf), len(lm))
    w, h = reg.transform.fixed_dimensions
    rtre = np.hypot(*(reg.transform.moving_to_fixed(lm[:n]) - lf[:n]).T) / math.hypot(w, h)
    assert np.median(rtre) < 0.005
    assert reg.status == "ok"


def test_tissue_detection_and_ecc_work_on_bounded_views(monkeypatch):
    """Tissue detection and the affine ECC never see a view longer than mask_max_px / affine_max_px."""
    import cv2

    import histo.register.images as images
    from histo.register import RegisterConfig

    seen: dict[str, list[int]] = {"tissue": [], "ecc": []}
    real_mask, real_ecc = images.tissue_mask, cv2.findTransformECC

    def mask_spy(rgb, mpp, cfg=None):
        seen["tissue"].append(max(rgb.shape[:2]))
        return real_mask(rgb, mpp, cfg)

    def ecc_spy(a, b, *args):
        seen["ecc"].append(max(a.shape[:2]))
        return real_ecc(a, b, *args)

    monkeypatch.setattr(images, "tissue_mask", mask_spy)
    monkeypatch.setattr(cv2, "findTransformECC", ecc_spy)
    he, ihc, m = _pair_images()
    a = _truth(200.0, True)
    cfg = RegisterConfig(coarse_px=64, max_px=512, affine_max_px=256, mask_max_px=256)
    reg = register_slides(Slide.from_array(he, MPP, "he"), Slide.from_array(_moving(ihc, a), MPP, "ihc"), config=cfg)
    assert reg.levels_mpp[-1] < 2400 / 400  # the finest level (non-rigid, quality) is still ~512 px
    assert seen["tissue"] and max(seen["tissue"]) <= 256
    assert seen["ecc"] and max(seen["ecc"]) <= 256
    assert reg.status == "ok", reg.quality
    ys, xs = np.nonzero(m[::10, ::10])
    pf = np.stack([xs * 10.0, ys * 10.0], axis=1)
    pm_true = (pf * MPP) @ a[:2, :2].T + a[:2, 2]
    tre = np.hypot(*(reg.transform.fixed_to_moving(pf) * MPP - pm_true).T)
    assert np.median(tre) < 10.0 and tre.max() < 50.0


def test_no_field_when_the_slides_share_only_their_outline():
    """Sections whose insides do not correspond keep the affine map: optical flow would only fit noise."""
    he, _, m = _pair_images(0)
    _, ihc_other, _ = _pair_images(1)  # same outline, unrelated texture
    a = _truth(35.0, False)
    reg = register_slides(Slide.from_array(he, MPP, "he"), Slide.from_array(_moving(ihc_other, a), MPP, "ihc"))
    assert reg.transform.field is None
    ys, xs = np.nonzero(m[::10, ::10])
    pf = np.stack([xs * 10.0, ys * 10.0], axis=1)
    pm_true = (pf * MPP) @ a[:2, :2].T + a[:2, 2]
    tre = np.hypot(*(reg.transform.fixed_to_moving(pf) * MPP - pm_true).T)
    assert np.median(tre) < 20.0 and tre.max() < 60.0
