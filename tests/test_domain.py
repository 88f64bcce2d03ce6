"""Domain honesty: the training domain in the card, ood_score/in_domain per tile, grading that does not
overreach (out-of-domain tiles uncounted, verdict withheld), and the phantom model on real tissue."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from aggregate_tables import make_tiles, points

from histo.aggregate import GradingConfig, assess_slide
from histo.aggregate.domain import summarise_domain
from histo.errors import ModelError
from histo.models import MultiTaskNet, load_model, save_model
from histo.models.card import ModelCard
from histo.models.domain import METHOD, METHOD_V1, DomainHead, fit_bank, fit_gaussian, mahalanobis
from histo.predict import predict_image, predict_slide
from histo.train.domain import TRAINING_DATA, calibrate_scale, calibration_data, domain_card

torch.set_num_threads(1)


def _batches(x: torch.Tensor, bs: int):
    return [{"image": x[i:i + bs]} for i in range(0, len(x), bs)]


def _pink(n: int, seed: int) -> torch.Tensor:
    """Normalised 'H&E-like' tiles: pink/purple noise with blobs (the in-domain kind for these tests)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor([0.85, 0.55, 0.75]).view(1, 3, 1, 1)
    x = (base + 0.08 * torch.randn(n, 3, 64, 64, generator=g)).clamp(0, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    torch.manual_seed(0)
    net = MultiTaskNet("tiny", ["necrosis"]).eval()
    fig = calibrate_scale(net, _batches(_pink(400, 1), 50), _batches(_pink(200, 2), 50),
                          input_mean=(0.485, 0.456, 0.406), input_std=(0.229, 0.224, 0.225))
    card = ModelCard(name="dom", backbone="tiny", heads=net.heads_config, tile_px=64, mpp=1.0,
                     domain=domain_card({"main": fig}))
    folder = tmp_path_factory.mktemp("dom")
    save_model(net, card, folder)
    return (*load_model(folder), fig)


def test_card_records_the_domain_and_the_weights_carry_it(calibrated):
    model, card, fig = calibrated
    d = card.domain
    assert d["method"] and d["percentile"] == 99.5 and set(d["scales"]["main"]["thresholds"]) == {"texture_colour", "semantic"}
    assert 0.95 <= fig["val_in_domain_fraction"] <= 1.0  # the threshold sits at the validation tiles' 99.5th pct
    assert d["calibration_data"] == TRAINING_DATA
    assert model.domain is not None and float(model.domain.texture_colour_threshold) == pytest.approx(
        d["scales"]["main"]["thresholds"]["texture_colour"], rel=1e-5)


def test_the_nearest_neighbour_bank_travels_with_the_weights(calibrated):
    """A training tile is at distance 0 from the bank; the card says how many rows it holds (load_model needs it)."""
    model, card, fig = calibrated
    head = model.domain
    assert card.domain["method"] == METHOD and fig["kinds"] == {"texture_colour": "knn", "semantic": "mahalanobis"}
    # four passes over 400 training tiles: fewer than BANK_TILES, so all of them
    assert fig["n_train_tiles"] == 1600 and fig["bank_tiles"] == 1600 and head.texture_colour_bank.shape[0] == 1600
    x = _pink(400, 1)[:5]  # tiles of the training set
    with torch.no_grad():
        feats = head.features(x, model.backbone.forward_pyramid(x))
        d = head.feature_distances(feats)[0]
    assert torch.all(d < 0.05 * head.texture_colour_threshold)  # float16 bank: not exactly 0


def test_fit_bank_standardises_and_fills_the_bank():
    v = torch.tensor([[0.0, 10.0], [2.0, 30.0]])
    center, scale, bank = fit_bank(v, bank_tiles=5)
    torch.testing.assert_close(center, torch.tensor([1.0, 20.0]))
    torch.testing.assert_close(scale, torch.tensor([1.0, 10.0]))
    assert bank.shape == (5, 2) and bank.dtype == torch.float16  # rows repeat: no nearest distance changes
    assert {tuple(r) for r in bank.float().tolist()} == {(-1.0, -1.0), (1.0, 1.0)}
    _, _, drawn = fit_bank(torch.randn(50, 3), bank_tiles=8)
    assert drawn.shape == (8, 3)


def test_out_of_focus_tiles_are_flagged(calibrated):
    """Blur (a focus or scanner shift) leaves colour alone; the sharpness descriptors catch it."""
    model, _, _ = calibrated
    x = _pink(32, 5)
    blurred = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
    with torch.no_grad():
        own, soft = model(x)["ood"], model(blurred)["ood"]
    assert (own <= 1).float().mean() >= 0.9 and (soft > 1).all()


def test_a_model_calibrated_by_an_earlier_histo_still_loads_and_scores(tmp_path):
    """Cards of METHOD_V1 (two Gaussians, no bank) rebuild the head they were saved with."""
    net = MultiTaskNet("tiny", ["necrosis"]).eval()
    head = DomainHead(net.backbone.feature_channels, METHOD_V1)
    with torch.no_grad():
        x = _pink(64, 1)
        feats = head.features(x, net.backbone.forward_pyramid(x))
        for name, v in zip(("texture_colour", "semantic"), feats):
            mean, prec = fit_gaussian(v)
            getattr(head, f"{name}_mean").copy_(mean)
            getattr(head, f"{name}_precision").copy_(prec)
            getattr(head, f"{name}_threshold").fill_(float(mahalanobis(v, mean, prec).max()))
    net.attach_domain(head)
    domain = {**domain_card({"main": {"statistics": ["texture_colour", "semantic"], "thresholds": {}}}),
              "method": METHOD_V1}
    card = ModelCard(name="old", backbone="tiny", heads=net.heads_config, tile_px=64, mpp=1.0, domain=domain)
    save_model(net, card, tmp_path)
    model, loaded = load_model(tmp_path)
    assert loaded.domain["method"] == METHOD_V1 and model.domain.method == METHOD_V1
    with torch.no_grad():
        torch.testing.assert_close(model(x)["ood"], net(x)["ood"])
        assert (model(x)["ood"] <= 1).all()
    with pytest.raises(ModelError, match="unknown training-domain method"):
        DomainHead((8, 16), "a_method_from_the_future")


def test_a_domain_fitted_on_part_of_the_training_data_says_so():
    """scripts/calibrate_domain.py --set ... records its overrides in the card: a reader sees a subset was used."""
    text = calibration_data(("data.phantoms.seeds=[0,1]",))
    assert text != TRAINING_DATA and "data.phantoms.seeds=[0,1]" in text and "subset" in text
    assert domain_card({}, calibration_data=text)["calibration_data"] == text


def test_colour_shifted_tiles_are_flagged_and_batch_size_does_not_matter(calibrated):
    model, _, _ = calibrated
    x = _pink(64, 3)
    with torch.no_grad():
        own = model(x)["ood"]
        blue = model(x[:, [2, 1, 0]])["ood"]  # channels swapped: a strongly colour-shifted stain
        one_by_one = torch.cat([model(x[i:i + 1])["ood"] for i in range(len(x))])
    assert (own <= 1).float().mean() >= 0.9
    assert (blue > 1).all()
    torch.testing.assert_close(one_by_one, own, rtol=1e-4, atol=1e-5)
    assert torch.equal(one_by_one <= 1, own <= 1)


def _domain_tiles(n_in: int, n_out: int) -> pd.DataFrame:
    t = make_tiles(n_in + n_out, 1, 500, necrosis=lambda r, c: False)
    return t.assign(in_domain=[True] * n_in + [False] * n_out, ood_score=[0.5] * n_in + [3.0] * n_out)


def test_out_of_domain_tiles_count_neither_areas_nor_mitoses():
    tiles = _domain_tiles(6, 4)  # tiles 500 px wide along x, mpp 0.5: 250 µm each
    mit = points([[100, 100], [1600, 100], [2100, 100]])  # one in an in-domain tile, two in out-of-domain ones
    a = assess_slide(tiles, mit, 0.5, GradingConfig.from_dict({"domain": {"withhold_below": 0.5}}))
    assert a.measurements.mitoses.count == 1
    assert a.measurements.tissue_area_mm2 == pytest.approx(6 * 0.25 * 0.25)
    assert a.domain.status == "partly_out_of_domain" and a.domain.in_domain_fraction == pytest.approx(0.6)
    assert a.grading.high_grade.high_grade is not None  # 60 % in domain >= withhold_below 0.5: graded


def test_verdict_withheld_below_the_in_domain_fraction():
    tiles = _domain_tiles(1, 9)
    a = assess_slide(tiles, points([[100, 100]] * 3), 0.5).to_dict()
    hg = a["grading"]["high_grade"]
    assert hg["high_grade"] is None and hg["assessable"] is False and a["grading"]["status"] == "not_assessable"
    assert hg["reason"].startswith("Not assessable by this model: 90 % of the tissue is unlike its training data")
    assert a["domain"]["status"] == "out_of_domain"
    off = assess_slide(tiles, None, 0.5, GradingConfig.from_dict({"domain": {"check": False}})).to_dict()
    assert off["domain"]["status"] == "check_off" and "turned off" in off["domain"]["notes"][0]
    assert off["grading"]["high_grade"]["high_grade"] is not None
    legacy = summarise_domain(tiles.drop(columns=["in_domain", "ood_score"]))
    assert legacy.status == "unchecked" and not legacy.withheld


def test_predict_writes_ood_score_and_in_domain(calibrated, test_slide_path, tmp_path):
    model, card, _ = calibrated
    r = predict_slide(test_slide_path, model, card, tmp_path, workers=0, device="cpu", progress=False)
    tiles = pd.read_parquet(tmp_path / r.name / "tiles.parquet")
    assert {"ood_score", "in_domain"} <= set(tiles.columns)
    assert tiles["in_domain"].dtype == bool and np.isfinite(tiles["ood_score"]).all()
    assert (tiles["in_domain"] == (tiles["ood_score"] <= 1)).all()
    info = json.loads((tmp_path / r.name / "prediction.json").read_text())
    assert info["domain"]["status"] in ("in_domain", "partly_out_of_domain", "out_of_domain")
    again = predict_slide(test_slide_path, model, card, tmp_path / "w2", workers=2, batch_size=7, device="cpu",
                          progress=False)
    tiles2 = pd.read_parquet(tmp_path / "w2" / again.name / "tiles.parquet")
    np.testing.assert_allclose(tiles2["ood_score"], tiles["ood_score"], rtol=1e-4, atol=1e-5)
    assert (tiles2["in_domain"] == tiles["in_domain"]).all()


@pytest.mark.real_data
@pytest.mark.slow
def test_phantom_model_calls_real_tissue_out_of_domain_and_gives_no_verdict(real_data, tmp_path):
    from histo.cli import main
    from histo.cli.demo import demo_model_dir
    from histo.data.image_tiles import read_rgb

    model, card = load_model(demo_model_dir())
    assert card.synthetic_only and card.domain is not None
    out = tmp_path / "pred"
    rc = main(["predict", str(real_data / "slides" / "CMU-1-Small-Region.svs"), "--out", str(out), "--workers", "0",
               "--device", "cpu", "--quiet", "--model", str(demo_model_dir())])
    assert rc == 0
    rep = json.loads((out / "CMU-1-Small-Region" / "report.json").read_text())
    assert rep["domain"]["status"] == "out_of_domain" and rep["verdict"]["high_grade"] == "not_assessable"
    assert "Not assessable by this model" in rep["verdict"]["line"]
    html = (out / "CMU-1-Small-Region" / "report.html").read_text()
    assert "trained on synthetic phantoms only" in html and "Not assessable by this model" in html
    assert "not_assessable" in (out / "status.csv").read_text()
    for name, mpp in (("mitosis/mitos_atypia14_hamamatsu/images/H05_00Aa.jpg", 0.227),
                      ("ihc/bcdata_ki67/1.images/test/0.png", 0.5)):
        pred = predict_image(read_rgb(str(real_data / name)), mpp, model, card, device="cpu")
        assert pred.tiles["in_domain"].mean() < 0.2, name


@pytest.fixture(scope="module")
def small_phantom(tmp_path_factory):
    from histo.synth.phantom import make_phantom

    out = tmp_path_factory.mktemp("ph")
    ph = make_phantom("configs/synth/high_grade_alk_positive.yaml", out, seed=321, size_px=(2048, 2048), ihc=False)
    return ph.he_path


@pytest.mark.slow
def test_phantom_model_calls_a_phantom_in_domain_and_a_colour_shifted_one_out(small_phantom):
    from histo.cli.demo import demo_model_dir
    from histo.slide import open_slide

    model, card = load_model(demo_model_dir())
    with open_slide(small_phantom) as s:
        w, h = s.dimensions
        rgb = s.read(0, 0, w, h, mpp=s.mpp)
        mpp = s.mpp
    same = predict_image(rgb, mpp, model, card, device="cpu")
    assert same.tiles["in_domain"].mean() >= 0.8
    shifted = rgb.copy()
    shifted[..., 0] = (shifted[..., 0] * 0.55).astype(np.uint8)  # red faded to half: a strong stain shift
    from histo.tiling import GridConfig, TilingConfig

    every = TilingConfig(grid=GridConfig(min_tissue_fraction=0.0))  # tissue detection may miss a shifted stain
    flagged = predict_image(shifted, mpp, model, card, device="cpu", tiling=every).tiles
    on_tissue = flagged.merge(same.tiles[["x", "y"]], on=["x", "y"])  # the tiles that were tissue before the shift
    assert len(on_tissue) == len(same.tiles) and on_tissue["in_domain"].mean() <= 0.2


def test_the_default_model_is_shipped_with_its_domain_and_provenance():
    from histo.models import default_model_dir

    model, card = load_model(default_model_dir())
    assert set(card.scales) == {"cells", "tissue"} and card.scale_of("mitosis") == "cells"
    assert card.scales["cells"].mpp == 0.5 and card.scales["tissue"].mpp == 1.0
    assert card.domain is not None and set(card.domain["scales"]) == {"cells", "tissue"}
    prov = card.provenance
    assert prov["mitosis"]["real"] and prov["necrosis"]["real"] and not prov["pattern"]["real"]
    assert "MITOS-ATYPIA-14" in prov["mitosis"]["summary"]
    assert "synthetic phantoms only" in prov["pattern"]["summary"]
    assert card.threshold_selection["method"] == "f1_optimal" and 0 < card.mitosis_threshold < 1
    assert not card.synthetic_only


@pytest.mark.real_data
@pytest.mark.slow
def test_the_default_model_calls_its_own_validation_frames_in_domain(real_data):
    from histo.data.image_tiles import read_rgb
    from histo.models import default_model_dir

    model, card = load_model(default_model_dir())
    val_groups = {g for r in card.provenance["mitosis"]["validation"]["sources"] for g in r["groups"]}
    assert "H14" in val_groups
    frames = sorted((real_data / "mitosis" / "mitos_atypia14_hamamatsu" / "images").glob("H14_*.jpg"))[:3]
    fractions = [predict_image(read_rgb(str(f)), 0.227, model, card, device="cpu").tiles["in_domain"].mean()
                 for f in frames]
    assert min(fractions) >= 0.8, fractions


def test_eval_domain_auroc_and_its_interval_resample_images():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import eval_domain

    val = np.array([0.1, 0.2, 0.3, 0.4])
    assert eval_domain.auroc(val, np.array([2.0, 3.0])) == 1.0
    assert eval_domain.auroc(val, val.copy()) == pytest.approx(0.5)  # ties count half
    assert eval_domain.bootstrap_auroc(val, [np.array([2.0, 3.0]), np.array([5.0])], n=50) == (1.0, 1.0)
    lo, hi = eval_domain.bootstrap_auroc(val, [np.array([0.05]), np.array([0.25, 9.0]), np.array([8.0])], n=200)
    assert 0 <= lo < eval_domain.auroc(val, np.array([0.05, 0.25, 9.0, 8.0])) < hi <= 1


def test_sharpness_quantiles_match_torch_quantile_without_its_size_limit():
    from histo.models.domain import _row_quantiles

    v = torch.rand(7, 1001, generator=torch.Generator().manual_seed(0))
    fractions = (0.0, 0.5, 0.9, 0.99, 1.0)
    torch.testing.assert_close(_row_quantiles(v, fractions), torch.quantile(v, torch.tensor(fractions), dim=1).T)


def test_ood_score_is_float32_and_stable_under_mixed_precision(calibrated):
    """On a GPU predict runs under autocast (bf16); the domain statistics are computed in float32 regardless."""
    model, _, _ = calibrated
    x = _pink(16, 7)
    with torch.inference_mode():
        full = model(x)["ood"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(x)["ood"]
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, full, rtol=0.05, atol=0.05)


def test_a_multiscale_export_keeps_each_scales_own_bank_size():
    """histo train with several scales combines the calibrated nets: a bank smaller than BANK_TILES must fit."""
    from histo.train.fit import _combine

    cells, tissue = MultiTaskNet("tiny", ["necrosis"]).eval(), MultiTaskNet("tiny", ["pattern"]).eval()
    calibrate_scale(cells, _batches(_pink(100, 1), 50), _batches(_pink(50, 2), 50),
                    input_mean=(0.485, 0.456, 0.406), input_std=(0.229, 0.224, 0.225))
    combined = _combine({"cells": cells, "tissue": tissue}).eval()
    assert combined.nets["cells"].domain.texture_colour_bank.shape[0] == 400 and combined.nets["tissue"].domain is None
    x = _pink(8, 3)
    with torch.no_grad():
        torch.testing.assert_close(combined(x, "cells")["ood"], cells(x)["ood"])
