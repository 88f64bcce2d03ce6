"""histo.models: backbone registry, heads, heatmap peaks, model card and model files (CPU, no network)."""

from __future__ import annotations

import json
import math
import re
import socket

import pytest
import torch
from safetensors.torch import save_file

from histo.errors import ModelError
from histo.models import (
    DEFAULT_PATTERN_CLASSES,
    ModelCard,
    MultiTaskNet,
    config_digest,
    create_backbone,
    heatmap_to_points,
    heatmaps_to_points,
    list_backbones,
    load_model,
    register_backbone,
    save_model,
)

torch.set_num_threads(1)  # the test machine is shared; tiny nets do not gain from threads


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a socket fails the test: nothing here may touch the network by default."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _card(net: MultiTaskNet, **kw) -> ModelCard:
    base = dict(name="tiny-test", backbone=net.backbone_name, heads=net.heads_config, tile_px=64, mpp=0.5,
                config_digest=config_digest("seed: 1\n"), metrics={"pattern_bacc": 0.81})
    base.update(kw)
    return ModelCard(**base)


# -- registry -----------------------------------------------------------------------------------------
def test_registry_names_and_unknown_backbone():
    names = list_backbones()
    for n in ("resnet18", "resnet34", "resnet50", "efficientnet_b0", "convnext_tiny", "densenet121", "small", "tiny"):
        assert n in names
    with pytest.raises(ModelError, match=r"unknown backbone 'resnet9'.*resnet18.*tiny"):
        create_backbone("resnet9")
    with pytest.raises(ModelError, match="already registered"):
        register_backbone("tiny")(lambda imagenet: None)


def test_tiny_backbone_size_and_outputs():
    bb, nf = create_backbone("tiny")
    n_params = sum(p.numel() for p in bb.parameters())
    assert 30_000 < n_params < 70_000
    x = torch.randn(2, 3, 64, 64)
    assert bb(x).shape == (2, nf)
    pyr = bb.forward_pyramid(x)
    assert [tuple(f.shape[-2:]) for f in pyr] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert [f.shape[1] for f in pyr] == list(bb.feature_channels)
    assert bb.forward_features(x).shape == (2, nf, 2, 2)
    with pytest.raises(ModelError, match="no ImageNet weights"):
        create_backbone("tiny", pretrained="imagenet")


def test_small_backbone_size_and_outputs():
    bb, nf = create_backbone("small")
    assert 300_000 < sum(p.numel() for p in bb.parameters()) < 700_000  # the demo model stays a few MB
    pyr = bb.forward_pyramid(torch.randn(2, 3, 64, 64))
    assert [tuple(f.shape[-2:]) for f in pyr] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert [f.shape[1] for f in pyr] == list(bb.feature_channels) and nf == bb.feature_channels[-1]
    with pytest.raises(ModelError, match="no ImageNet weights"):
        create_backbone("small", pretrained="imagenet")


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in list_backbones() if n != "tiny"])
def test_every_backbone_forward_shapes(name):
    torch.manual_seed(0)
    net = MultiTaskNet(name).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 64))
    assert out["pattern"].shape == (1, 3)
    assert out["necrosis"].shape == (1,)
    assert out["mitosis"].shape == (1, 1, 16, 16)
    feats = net.backbone(torch.randn(1, 3, 64, 64))
    assert feats.shape == (1, net.backbone.num_features)


def test_pretrained_from_local_safetensors(tmp_path):
    torch.manual_seed(1)
    src, _ = create_backbone("tiny")
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    dst, _ = create_backbone("tiny", pretrained=path)
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k])
    # Through MultiTaskNet too: the backbone gets the weights, the heads start fresh.
    net = MultiTaskNet("tiny", ["pattern"], pretrained=str(path))
    assert torch.equal(net.backbone.stem[0][0].weight, src.stem[0][0].weight)


def test_pretrained_torchvision_names_and_classifier_dropped(tmp_path):
    import torchvision

    tv = torchvision.models.resnet18(weights=None)  # plain torchvision key names, with the fc classifier
    path = tmp_path / "r18.safetensors"
    save_file(tv.state_dict(), str(path))
    bb, nf = create_backbone("resnet18", pretrained=path)
    assert nf == 512
    assert torch.equal(bb.body.conv1.weight, tv.conv1.weight)
    assert torch.equal(bb.body.layer4[1].bn2.running_var, tv.layer4[1].bn2.running_var)


def test_imagenet_without_network_is_a_clear_model_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached download to fall back on
    with pytest.raises(ModelError, match=r"cannot get ImageNet weights for resnet18.*pretrained=<path>"):
        create_backbone("resnet18", pretrained="imagenet")


def test_pretrained_refuses_pickles_and_mismatches(tmp_path):
    bb, _ = create_backbone("tiny")
    for name in ("w.pt", "w.pth", "w.ckpt"):
        p = tmp_path / name
        torch.save(bb.state_dict(), p)
        with pytest.raises(ModelError, match=r"pickle-based.*arbitrary code.*safetensors"):
            create_backbone("tiny", pretrained=p)
    # A pickle renamed to .safetensors is caught by its content.
    disguised = tmp_path / "disguised.safetensors"
    disguised.write_bytes((tmp_path / "w.pt").read_bytes())
    with pytest.raises(ModelError, match="pickle-based"):
        create_backbone("tiny", pretrained=disguised)
    state = {k: v.contiguous() for k, v in bb.state_dict().items()}
    del state["stage4.0.weight"]
    state["extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    with pytest.raises(ModelError, match=r"missing keys \[stage4.0.weight\]; unexpected keys \[extra.weight\]"):
        create_backbone("tiny", pretrained=bad)
    with pytest.raises(ModelError, match="does not exist"):
        create_backbone("tiny", pretrained=tmp_path / "nope.safetensors")


# -- MultiTaskNet ------------------------------------------------------------------------------------
@pytest.mark.parametrize("heads", [["pattern"], ["necrosis"], ["mitosis"], ["mitosis", "pattern"],
                                   ["pattern", "necrosis", "mitosis"]])
def test_forward_shapes_per_head_subset(heads):
    net = MultiTaskNet("tiny", heads).eval()
    with torch.no_grad():
        out = net(torch.randn(3, 3, 64, 64))
    assert set(out) == set(heads)
    expected = {"pattern": (3, 3), "necrosis": (3,), "mitosis": (3, 1, 16, 16)}
    for h in heads:
        assert out[h].shape == expected[h]


def test_head_options_and_errors():
    net = MultiTaskNet("tiny", {"pattern": {"classes": ["a", "b", "c", "d"]}, "mitosis": {"stride_px": 8}}).eval()
    out = net(torch.randn(1, 3, 96, 80))  # not a multiple of 32: maps still line up
    assert out["pattern"].shape == (1, 4)
    assert out["mitosis"].shape == (1, 1, 12, 10)
    assert net.pattern_classes == ["a", "b", "c", "d"]
    assert MultiTaskNet("tiny", ["pattern"]).pattern_classes == list(DEFAULT_PATTERN_CLASSES)
    with pytest.raises(ModelError, match=r"unknown head 'grade'"):
        MultiTaskNet("tiny", ["grade"])
    with pytest.raises(ModelError, match=r"unknown option\(s\) \['clases'\] for head 'pattern'"):
        MultiTaskNet("tiny", {"pattern": {"clases": ["a", "b"]}})
    with pytest.raises(ModelError, match="stride_px must be one of"):
        MultiTaskNet("tiny", {"mitosis": {"stride_px": 2}})
    with pytest.raises(ModelError, match="at least one head"):
        MultiTaskNet("tiny", [])


def test_channels_last_and_autocast_match_plain():
    torch.manual_seed(0)
    net = MultiTaskNet("tiny").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)
        net_cl = net.to(memory_format=torch.channels_last)
        out_cl = net_cl(x.to(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_amp = net_cl(x.to(memory_format=torch.channels_last))
    for k in ref:
        assert torch.allclose(ref[k], out_cl[k], atol=1e-4)
        assert out_amp[k].dtype == torch.bfloat16
        assert torch.allclose(ref[k], out_amp[k].float(), atol=0.15, rtol=0.05)


# -- heatmap_to_points -------------------------------------------------------------------------------
def _gauss_map(h, w, centres, sigma=1.0):
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    m = torch.zeros(h, w)
    for cy, cx, amp in centres:
        m = torch.maximum(m, amp * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)))
    return m


def test_heatmap_to_points_finds_planted_peaks():
    stride = 4
    # (row, col, amplitude) in heatmap cells; one below threshold.
    planted = [(5, 7, 0.9), (20, 3, 0.8), (12, 25, 0.7), (28, 28, 0.3)]
    hm = _gauss_map(32, 32, planted)
    pts = heatmap_to_points(hm, threshold=0.5, min_distance_px=8, stride=stride)
    assert pts.shape == (3, 3)
    assert torch.allclose(pts[:, 2], torch.tensor([0.9, 0.8, 0.7]), atol=1e-6)  # best first
    for (cy, cx, _), (x, y, _) in zip(planted[:3], pts.tolist()):
        assert x == pytest.approx((cx + 0.5) * stride, abs=1e-4)
        assert y == pytest.approx((cy + 0.5) * stride, abs=1e-4)


def test_heatmap_to_points_subcell_refinement_and_logits():
    stride = 4
    hm = _gauss_map(16, 16, [(6.0, 9.4, 1.0)], sigma=0.8)
    (x, y, _), = heatmap_to_points(hm, 0.3, 8, stride).tolist()
    assert y == pytest.approx(6.5 * stride, abs=0.2)
    assert abs(x - 9.9 * stride) < abs(9.5 * stride - 9.9 * stride)  # closer than the cell centre
    (xc, _, _), = heatmap_to_points(hm, 0.3, 8, stride, refine=False).tolist()
    assert xc == 9.5 * stride
    logits = torch.logit(hm.clamp(1e-4, 1 - 1e-4))
    assert torch.allclose(heatmap_to_points(logits[None], 0.3, 8, stride, from_logits=True)[:, :2],
                          heatmap_to_points(hm, 0.3, 8, stride)[:, :2], atol=1e-3)


def test_heatmap_to_points_respects_min_distance():
    stride = 4
    # Two peaks 3 cells (12 px) apart, and an exact tie 2 cells apart elsewhere.
    hm = _gauss_map(32, 32, [(10, 10, 0.9), (10, 13, 0.8)], sigma=0.6)
    hm[25, 5] = hm[25, 7] = 0.95
    far = heatmap_to_points(hm, 0.5, min_distance_px=8, stride=stride, refine=False)
    assert far.shape[0] == 4  # 12 px and 8 px apart are not closer than 8 px: all kept
    near = heatmap_to_points(hm, 0.5, min_distance_px=16, stride=stride, refine=False)
    assert near.shape[0] == 2
    assert near[:, 2].tolist() == pytest.approx([0.95, 0.9])
    d = torch.cdist(near[:, :2], near[:, :2]) + torch.eye(len(near)) * 1e9
    assert d.min() >= 16
    tie = heatmap_to_points(hm, 0.5, min_distance_px=9, stride=stride, refine=False)
    assert tie.shape[0] == 3 and (tie[:, 2] == 0.95).sum() == 1  # the exact tie 8 px apart keeps one
    batch = heatmaps_to_points(torch.stack([hm, torch.zeros_like(hm)])[:, None], 0.5, 8, stride)
    assert len(batch) == 2 and batch[1].shape == (0, 3)
    with pytest.raises(ModelError, match="expects"):
        heatmap_to_points(torch.zeros(2, 4, 4))


# -- model card ---------------------------------------------------------------------------------------
def test_card_json_round_trip_and_properties(tmp_path):
    net = MultiTaskNet("tiny", {"pattern": None, "mitosis": {"stride_px": 4}})
    card = _card(net)
    again = ModelCard.from_json(card.to_json())
    assert again == card
    assert card.classes == list(DEFAULT_PATTERN_CLASSES)
    assert card.mitosis_stride_px == 4
    assert card.config_digest == config_digest("seed: 1\n") and len(card.config_digest) == 64
    assert card.histo_version and card.created.endswith("+00:00")


def _write_card(tmp_path, mutate):
    net = MultiTaskNet("tiny", ["necrosis"])
    d = _card(net).to_dict()
    mutate(d)
    p = tmp_path / "m.card.json"
    p.write_text(json.dumps(d))
    return p


def _main(d):
    return d["scales"]["main"]


@pytest.mark.parametrize("mutate, message", [
    (lambda d: _main(d).pop("mpp"), r"'scales\.main': missing key 'mpp'$"),
    (lambda d: d.pop("provenance"), r"'top level': missing key 'provenance'$"),
    (lambda d: d.update(colour="blue"), r"unknown key 'colour' \(allowed here: config_digest, created, domain, "),
    (lambda d: d.update(schema_version=3), r"'schema_version' is 3"),
    (lambda d: _main(d).update(mpp="0.5"), r"'scales\.main\.mpp' must be float, got '0\.5' \(the value must be a number\)"),
    (lambda d: _main(d).update(mean=[0.5, 0.5]), r"'scales\.main\.mean' must have 3 items, got 2"),
    (lambda d: _main(d).update(std=[0.2, 0.0, 0.2]), r"field 'scales.main.std' must be positive"),
    (lambda d: _main(d).update(tile_px=0), r"field 'scales.main.tile_px' must be a positive integer"),
    (lambda d: _main(d).update(heads={"necrosis": {}, "nuclei": {}}), r"unknown head 'nuclei'"),
    (lambda d: d.update(config_digest="abc"), r"field 'config_digest' must be a 64-character"),
    (lambda d: d.update(mitosis_threshold=1.5), r"field 'mitosis_threshold' must be a probability"),
    (lambda d: d["scales"].update(fine=dict(_main(d))), r"repeats head 'necrosis'"),
    (lambda d: _main(d).update(colour="blue"), r"unknown key 'scales\.main\.colour' \(allowed here: backbone, heads, "),
    (lambda d: _main(d).update(tile_px=64.0), r"'scales\.main\.tile_px' must be an integer, got 64\.0"),
    (lambda d: _main(d).update(heads={"necrosis": 5}), r"'scales\.main\.heads\.necrosis' must be a mapping, got int"),
    (lambda d: d["metrics"].update(bacc="high"), r"'metrics\.bacc' must be float, got 'high'"),
    (lambda d: d.update(mitosis_min_distance_um=float("nan")), r"field 'mitosis_min_distance_um' must be a finite"),
    (lambda d: d.update(domain=[1]), r"'domain' must be a mapping, got list"),
    (lambda d: d.update(preprocessing={"stain_normalisation": "macenko"}),
     r"field 'preprocessing\.stain_normalisation' must be an object with a method, got 'macenko'"),
    (lambda d: d.pop("schema_version"), r"missing key 'schema_version'$"),
])
def test_card_validation_names_file_and_field(tmp_path, mutate, message):
    path = _write_card(tmp_path, mutate)
    with pytest.raises(ModelError, match=message) as err:
        ModelCard.load(path)
    assert str(path) in str(err.value)


def test_card_keywords_take_the_file_path_checks():
    # ModelCard(...) from Python and a card file share one loader: same keys, types and messages
    net = MultiTaskNet("tiny", ["necrosis"])
    with pytest.raises(ModelError, match=r"^model card ModelCard: 'scales\.main\.mpp' must be float, got '0\.5'"):
        _card(net, mpp="0.5")
    with pytest.raises(ModelError, match=r"^model card ModelCard: 'metrics\.bacc' must be float, got None"):
        _card(net, metrics={"bacc": None})
    scale = {"backbone": "tiny", "heads": ["necrosis"], "tile_px": 64, "mpp": 0.5, "mean": [0.5] * 3, "std": [0.2] * 3}
    with pytest.raises(ModelError, match=r"^model card ModelCard: 'scales\.main': missing key 'std'$"):
        ModelCard("m", scales={"main": {k: v for k, v in scale.items() if k != "std"}})
    with pytest.raises(ModelError, match=r"^model card ModelCard: unknown key 'scales\.main\.colour'"):
        ModelCard("m", scales={"main": {**scale, "colour": 1}})
    with pytest.raises(ModelError, match=r"^model card ModelCard: field 'schema_version' is 1, expected 2$"):
        _card(net, schema_version=1)
    card = ModelCard("m", scales={"main": scale})
    assert card.scales["main"].mean == (0.5, 0.5, 0.5) and card.heads == {"necrosis": {"dropout": 0.0}}
    with pytest.raises(ModelError, match=r"^model card <dict>: 'mitosis_threshold' must be float, got 'high'"):
        card.replace(mitosis_threshold="high")


def test_card_not_json(tmp_path):
    p = tmp_path / "x.card.json"
    p.write_text("{not json")
    with pytest.raises(ModelError, match=rf"{p}.*not valid JSON"):
        ModelCard.load(p)


def test_check_slide_mpp():
    card = _card(MultiTaskNet("tiny", ["necrosis"]), mpp=0.5)
    card.check_slide_mpp(0.5)
    card.check_slide_mpp(0.54)   # within 10 %
    card.check_slide_mpp(0.25)   # finer: read_at(mpp) downsamples, fine
    with pytest.raises(ModelError, match=r"1 µm/px is coarser than model 'tiny-test' allows \(0.5 µm/px"):
        card.check_slide_mpp(1.0)
    with pytest.raises(ModelError, match="differs"):
        card.check_slide_mpp(0.25, allow_finer=False)
    card.check_slide_mpp(0.6, tolerance=0.25)
    for bad in (0, -1, float("nan"), None):
        with pytest.raises(ModelError, match="positive number"):
            card.check_slide_mpp(bad)


# -- model files -------------------------------------------------------------------------------------
def test_save_load_round_trip_identical_outputs(tmp_path):
    torch.manual_seed(3)
    net = MultiTaskNet("tiny", {"pattern": {"classes": ["a", "b"]}, "necrosis": None, "mitosis": None})
    # Train-mode steps change BN running stats: the round trip must carry buffers, not only weights.
    net.train()
    for _ in range(2):
        net(torch.randn(4, 3, 64, 64))
    net.eval()
    card = _card(net)
    wpath, cpath = save_model(net, card, tmp_path)
    assert wpath == tmp_path / "tiny-test.safetensors" and cpath == tmp_path / "tiny-test.card.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-test.card.json", "tiny-test.safetensors"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)
    for p in (wpath, cpath, tmp_path / "tiny-test"):
        loaded, lcard = load_model(p)
        assert not loaded.training
        assert lcard.classes == ["a", "b"] and lcard.weights_sha256 is not None
        assert lcard.metrics == {"pattern_bacc": 0.81}
        with torch.no_grad():
            out = loaded(x)
        for k in ref:
            assert torch.equal(ref[k], out[k])
    # A prefix path names the files directly.
    w2, c2 = save_model(net, card, tmp_path / "sub" / "other")
    assert w2.name == "other.safetensors" and c2.name == "other.card.json"


def test_save_refuses_card_that_does_not_describe_model(tmp_path):
    net = MultiTaskNet("tiny", ["pattern"])
    with pytest.raises(ModelError, match="card heads"):
        save_model(net, _card(net, heads={"necrosis": {}}), tmp_path)
    with pytest.raises(ModelError, match="card backbone 'resnet18'"):
        save_model(net, _card(net, backbone="resnet18"), tmp_path)


def _save_bound(tensors, card_dict, wpath):
    """Weights whose binding metadata matches ``card_dict``: reaches the key and shape checks past the binding."""
    from histo.models.io import BINDING_KEY

    bound = ModelCard.from_dict(card_dict).binding()
    save_file(tensors, str(wpath), metadata={"format": "pt", BINDING_KEY: json.dumps(bound, sort_keys=True)})


def test_load_refuses_tampering_wrong_keys_and_pickles(tmp_path):
    net = MultiTaskNet("tiny", ["pattern", "necrosis"])
    wpath, cpath = save_model(net, _card(net), tmp_path)
    # Weights swapped for another net's: the card's sha256 no longer matches.
    other = {k: v.contiguous() for k, v in MultiTaskNet("tiny", ["pattern", "necrosis"]).state_dict().items()}
    save_file(other, str(wpath))
    with pytest.raises(ModelError, match=r"does not match its card.*weights_sha256"):
        load_model(wpath)
    d = json.loads(cpath.read_text())
    d["weights_sha256"] = None
    cpath.write_text(json.dumps(d))
    with pytest.raises(ModelError, match=r"carry no card binding"):
        load_model(wpath)  # schema-2 weights without the binding metadata are not trusted
    # Card (and its binding) claim a head the weights lack: the key check fires.
    d["scales"]["main"]["heads"]["mitosis"] = {}
    cpath.write_text(json.dumps(d))
    _save_bound(other, d, wpath)
    with pytest.raises(ModelError, match=r"missing keys \[mitosis\.") as err:
        load_model(cpath)
    assert str(cpath) in str(err.value) and "unexpected keys none" in str(err.value)
    # Extra tensor in the file.
    d["scales"]["main"]["heads"].pop("mitosis")
    cpath.write_text(json.dumps(d))
    _save_bound({**other, "surprise": torch.zeros(2)}, d, wpath)
    with pytest.raises(ModelError, match=r"unexpected keys \[surprise\]"):
        load_model(wpath)
    # Card says 4 classes, the weights have 3: shape mismatch.
    d["scales"]["main"]["heads"]["pattern"]["classes"] = ["a", "b", "c", "d"]
    cpath.write_text(json.dumps(d))
    _save_bound(other, d, wpath)
    with pytest.raises(ModelError, match=r"pattern.fc.weight has shape \(3, 64\) in the file, \(4, 64\)"):
        load_model(wpath)
    # Pickle files are refused by name, without looking for a card.
    pkl = tmp_path / "model.pth"
    torch.save(net.state_dict(), pkl)
    with pytest.raises(ModelError, match="pickle-based"):
        load_model(pkl)
    with pytest.raises(ModelError, match="model card .*missing"):
        load_model(tmp_path / "absent.safetensors")


def test_mitosis_points_in_card_units_example():
    """Pixel points from a heatmap map to µm with the card's mpp (what predict will do)."""
    net = MultiTaskNet("tiny", ["mitosis"]).eval()
    card = _card(net, mpp=0.5, mitosis_min_distance_um=4.0)
    with torch.no_grad():
        hm = net(torch.randn(1, 3, 64, 64))["mitosis"][0, 0]
    pts = heatmap_to_points(hm, 0.0, card.mitosis_min_distance_um / card.mpp, card.mitosis_stride_px,
                            from_logits=True)
    assert pts.shape[1] == 3 and len(pts) >= 1
    assert float(pts[:, :2].min()) >= 0 and float(pts[:, :2].max()) <= 64
    if len(pts) > 1:
        d = torch.cdist(pts[:, :2], pts[:, :2]) + torch.eye(len(pts)) * 1e9
        assert d.min() >= 8 - 1e-4
    assert not math.isnan(float(pts[:, 2].sum()))


# -- schema 2: scales, legacy cards, binding to the weights, format detection ---------------------------
def _two_scale_card(**kw):
    scales = {"cells": {"backbone": "tiny", "tile_px": 64, "mpp": 0.25, "heads": {"mitosis": {"stride_px": 4}},
                        "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]},
              "tissue": {"backbone": "tiny", "tile_px": 32, "mpp": 1.0, "heads": {"pattern": None, "necrosis": None},
                         "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
    return ModelCard(name="two-scale", scales=scales, **kw)


def test_card_records_each_heads_input_spec():
    card = _two_scale_card()
    assert card.scale_of("mitosis") == "cells" and card.scale_of("necrosis") == "tissue"
    assert card.table_scale == "tissue" and card.mpp == 1.0 and card.tile_px == 32
    assert card.finest_mpp == 0.25 and card.multiscale
    assert list(card.heads) == ["pattern", "necrosis", "mitosis"]
    assert ModelCard.from_json(card.to_json()) == card
    with pytest.raises(ModelError, match=r"coarser than model 'two-scale' allows \(0.25 µm/px for its mitosis"):
        card.check_slide_mpp(0.5)
    card.check_slide_mpp(0.25)


def test_legacy_schema_1_card_loads_as_one_scale(tmp_path):
    v1 = {"name": "old", "backbone": "tiny", "heads": {"necrosis": {}}, "tile_px": 64, "mpp": 1.0,
          "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "mitosis_threshold": 0.5,
          "mitosis_min_distance_um": 4.0, "metrics": {}, "config_digest": None, "weights_sha256": None,
          "histo_version": "0.1.0", "created": "2026-11-21T09:33:40+00:00", "schema_version": 1}
    card = ModelCard.from_dict(v1, "old.card.json")
    assert card.schema_version == 2 and list(card.scales) == ["main"] and card.mpp == 1.0
    assert card.synthetic_only  # a card that does not say what it learned from claims no real data


def test_two_scale_model_round_trip(tmp_path):
    from histo.models import MultiScaleNet, build_model

    torch.manual_seed(0)
    card = _two_scale_card()
    net = build_model(card).eval()
    assert isinstance(net, MultiScaleNet) and net.scale_names == ["cells", "tissue"]
    save_model(net, card, tmp_path)
    model, again = load_model(tmp_path)
    x_fine, x_coarse = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x_fine, "cells")["mitosis"], net(x_fine, "cells")["mitosis"])
        assert torch.equal(model(x_coarse, "tissue")["necrosis"], net(x_coarse, "tissue")["necrosis"])
    assert again.scales == card.scales


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["scales"]["main"].update(mpp=0.25), "scales.main.mpp"),
    (lambda d: d["scales"]["main"].update(tile_px=32), "scales.main.tile_px"),
    (lambda d: d["scales"]["main"]["heads"]["pattern"].update(classes=["x", "y"]), "scales.main.heads.pattern.classes"),
    (lambda d: d["scales"]["main"].update(mean=[0.5, 0.5, 0.5]), "scales.main.mean"),
    (lambda d: d.update(mitosis_threshold=0.2), "mitosis_threshold"),
    (lambda d: d.update(preprocessing={"stain_normalisation": {"method": "macenko"}}), "preprocessing"),
])
def test_card_edited_after_export_is_refused_naming_the_field(tmp_path, edit, field):
    net = MultiTaskNet("tiny", {"pattern": {"classes": ["a", "b"]}, "mitosis": None})
    _, cpath = save_model(net, _card(net), tmp_path)
    load_model(tmp_path)  # untouched: loads
    d = json.loads(cpath.read_text())
    edit(d)
    cpath.write_text(json.dumps(d))
    with pytest.raises(ModelError, match=rf"field '{re.escape(field)}.*edited after export"):
        load_model(tmp_path)


def test_card_fields_outside_the_binding_may_change(tmp_path):
    net = MultiTaskNet("tiny", ["necrosis"])
    _, cpath = save_model(net, _card(net), tmp_path)
    d = json.loads(cpath.read_text())
    d["metrics"]["note_added_later"] = 1.0
    cpath.write_text(json.dumps(d))
    load_model(tmp_path)  # metrics and provenance do not change how the model is applied


def test_valid_safetensors_with_0x80_first_byte_is_not_called_a_pickle(tmp_path):
    from histo.models.registry import read_safetensors, refuse_pickle

    # A header of 0x80 + 256*k bytes starts with byte 0x80, like a ResNet-50 export: pad metadata to hit it.
    for pad in range(0, 400):
        p = tmp_path / "w.safetensors"
        save_file({"w": torch.zeros(3)}, str(p), metadata={"pad": "x" * pad})
        if p.read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("could not make a safetensors file whose first byte is 0x80")
    refuse_pickle(p)  # no error
    assert torch.equal(read_safetensors(p)["w"], torch.zeros(3))
    pickled = tmp_path / "w2.safetensors"
    pickled.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)  # a raw pickle renamed to .safetensors
    with pytest.raises(ModelError, match="pickle-based"):
        refuse_pickle(pickled)
