"""histo.train core: masked losses, the mitosis F1 metric, the LightningModule's learning, config validation."""

from __future__ import annotations

import math

import pytest
import torch
from test_train_support import FakeTiles

from histo.errors import ConfigError
from histo.models import MultiTaskNet
from histo.train import (
    MitosisF1,
    MitosisLoss,
    MultiTaskModule,
    TrainConfig,
    load_train_config,
    match_points,
    mitosis_loss,
    necrosis_loss,
    pattern_loss,
)

torch.set_num_threads(1)


def _batch(n: int = 8, seed: int = 0) -> dict:
    ds = FakeTiles(n, seed=seed, unlabelled_fraction=0.0)
    return {k: (torch.stack([it[k] for it in ds.items]) if k != "slide" else [it[k] for it in ds.items])
            for k in ds.items[0]}


# -- losses -------------------------------------------------------------------------------------------
def test_tiny_model_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    module = MultiTaskModule(MultiTaskNet("tiny"), mpp=0.5)
    batch = _batch()
    opt = torch.optim.Adam(module.parameters(), lr=3e-3)
    first = None
    for _ in range(25):
        losses = module.compute_losses(module(batch["image"]), batch)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        first = first if first is not None else {k: float(v.detach()) for k, v in losses.items()}
    last = {k: float(v) for k, v in module.compute_losses(module(batch["image"]), batch).items()}
    assert set(last) == {"loss", "pattern", "necrosis", "mitosis"}
    assert last["loss"] < 0.5 * first["loss"]
    for task in ("pattern", "necrosis", "mitosis"):
        assert last[task] < first[task], task


def test_task_without_labels_in_the_batch_gives_zero_and_finite_total():
    torch.manual_seed(0)
    module = MultiTaskModule(MultiTaskNet("tiny"), mpp=0.5)
    batch = _batch(4)
    batch["pattern"][:] = -1
    batch["necrosis"][:] = -1.0
    batch["mitosis_labelled"][:] = False
    losses = module.compute_losses(module(batch["image"]), batch)
    assert float(losses["pattern"]) == 0.0 and float(losses["necrosis"]) == 0.0 and float(losses["mitosis"]) == 0.0
    assert math.isfinite(float(losses["loss"]))
    losses["loss"].backward()  # still attached to the graph: every parameter gets a (zero) gradient
    grads = [p.grad for p in module.parameters()]
    assert all(g is not None and torch.all(g == 0) for g in grads)


def test_unlabelled_tiles_do_not_change_loss_or_gradient():
    torch.manual_seed(1)
    n, c = 6, 3
    lab = torch.tensor([True, False, True, False, True, True])
    target_p = torch.tensor([0, -1, 2, -1, 1, 2])
    target_n = torch.tensor([1.0, -1.0, 0.0, -1.0, 1.0, 0.0])
    hm_t = torch.rand(n, 1, 8, 8)
    cfgs = (MitosisLoss(kind="focal"), MitosisLoss(kind="bce", pos_weight=5.0))

    def all_losses(lp, ln, lm):
        return (pattern_loss(lp, target_p, [1.0, 2.0, 0.5]) + necrosis_loss(ln, target_n)
                + sum(mitosis_loss(lm, hm_t, lab, cfg) for cfg in cfgs))

    lp = torch.randn(n, c, requires_grad=True)
    ln = torch.randn(n, requires_grad=True)
    lm = torch.randn(n, 1, 8, 8, requires_grad=True)
    loss = all_losses(lp, ln, lm)
    loss.backward()
    for g in (lp.grad, ln.grad, lm.grad):
        assert torch.all(g[~lab] == 0)  # unlabelled rows get no gradient
        assert torch.any(g[lab] != 0)
    # changing the unlabelled tiles' outputs leaves the loss unchanged
    with torch.no_grad():
        lp2, ln2, lm2 = lp.clone(), ln.clone(), lm.clone()
        lp2[~lab] += 5.0
        ln2[~lab] -= 3.0
        lm2[~lab] *= -4.0
        assert torch.allclose(all_losses(lp2, ln2, lm2), loss)
    # the pattern loss is the class-weighted mean over labelled tiles only
    w = torch.tensor([1.0, 2.0, 0.5])
    ce = torch.nn.functional.cross_entropy(lp[lab].detach(), target_p[lab], reduction="none")
    expect = (ce * w[target_p[lab]]).sum() / w[target_p[lab]].sum()
    assert torch.allclose(pattern_loss(lp.detach(), target_p, w), expect)


def test_mitosis_loss_rejects_a_mis_strided_target():
    with pytest.raises(ValueError, match="stride"):
        mitosis_loss(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 16, 16), torch.ones(2, dtype=torch.bool))


# -- mitosis F1 ---------------------------------------------------------------------------------------
def test_match_points_radius_is_inclusive_and_one_to_one():
    r = 7.5 / 0.25  # 30 px at 0.25 µm/px
    assert match_points(torch.tensor([[0.0, 0.0]]), torch.tensor([[30.0, 0.0]]), r) == (1, 0, 0)
    assert match_points(torch.tensor([[0.0, 0.0]]), torch.tensor([[30.01, 0.0]]), r) == (0, 1, 1)
    assert match_points(torch.tensor([[0.0, 0.0]]), torch.tensor([[18.0, 24.0]]), r) == (1, 0, 0)  # 3-4-5: exactly 30
    # two predictions on one mitosis: one TP, one FP
    assert match_points(torch.tensor([[0.0, 0.0], [5.0, 0.0]]), torch.tensor([[2.0, 0.0]]), r) == (1, 1, 0)
    # greedy nearest-first would pair A with T1 and leave T2 unmatched; the maximum matching finds 2 pairs
    a, b = [20.0, 0.0], [-15.0, 0.0]
    t1, t2 = [0.0, 0.0], [45.0, 0.0]
    assert match_points(torch.tensor([a, b]), torch.tensor([t1, t2]), r) == (2, 0, 0)
    # scores column and NaN padding are ignored; empty sides
    assert match_points(torch.tensor([[1.0, 1.0, 0.9]]), torch.tensor([[1.0, 1.0], [math.nan, math.nan]]), r) == (1, 0, 0)
    assert match_points(torch.zeros(0, 3), torch.tensor([[1.0, 1.0]]), r) == (0, 0, 1)
    assert match_points(torch.tensor([[1.0, 1.0, 0.7]]), torch.full((4, 2), math.nan), r) == (0, 1, 0)


def test_mitosis_f1_metric_accumulates_over_updates():
    m = MitosisF1(radius_px=30.0)
    nan = math.nan
    truth = torch.tensor([[[10.0, 10.0], [100.0, 100.0], [nan, nan]],
                          [[50.0, 50.0], [nan, nan], [nan, nan]]])
    preds = [torch.tensor([[12.0, 10.0, 0.9], [200.0, 200.0, 0.8]]), torch.zeros(0, 3)]
    m.update(preds, truth)  # tile 0: 1 TP, 1 FP, 1 FN; tile 1: 1 FN
    m.update([torch.tensor([[0.0, 0.0, 0.6]])], torch.tensor([[[29.0, 0.0]]]))  # 1 TP
    res = m.compute()
    assert (int(m.tp), int(m.fp), int(m.fn)) == (2, 1, 2)
    assert res["f1"].item() == pytest.approx(2 * 2 / (2 * 2 + 1 + 2))
    assert res["precision"].item() == pytest.approx(2 / 3) and res["recall"].item() == pytest.approx(0.5)
    m.reset()
    m.update([torch.zeros(0, 3)], torch.full((1, 3, 2), nan))
    assert m.compute()["f1"].item() == 1.0  # nothing to find, nothing found
    with pytest.raises(ValueError, match="tiles"):
        m.update([torch.zeros(0, 3)], truth)


def test_validation_metrics_ignore_unlabelled_tiles():
    torch.manual_seed(0)
    module = MultiTaskModule(MultiTaskNet("tiny"), mpp=0.5).eval()
    batch = _batch(8)
    out = module(batch["image"])
    # make the net's pattern and necrosis outputs exactly right on labelled tiles, wrong on unlabelled ones
    out["pattern"] = torch.nn.functional.one_hot(batch["pattern"].clamp_min(0), 3).float() * 10
    out["necrosis"] = (batch["necrosis"] * 2 - 1) * 10
    batch["pattern"][:2] = -1
    out["pattern"][:2] = out["pattern"][:2].roll(1, dims=1)
    batch["necrosis"][:2] = -1.0
    module.update_metrics(out, batch)
    vals = module.compute_metrics()
    assert vals["val/pattern_bacc"] == pytest.approx(1.0)
    if 0 < float((batch["necrosis"][2:] == 1).float().mean()) < 1:
        assert vals["val/necrosis_auroc"] == pytest.approx(1.0)
    assert {"val/mitosis_f1", "val/mitosis_precision", "val/mitosis_recall"} <= set(vals)


# -- config -------------------------------------------------------------------------------------------
def _write(tmp_path, text: str):
    p = tmp_path / "train.yaml"
    p.write_text(text)
    return p


def test_config_defaults_and_sections_round_trip(tmp_path):
    cfg = load_train_config(_write(tmp_path, "model:\n  backbone: tiny\n  tile_px: 64\n"), ["optim.lr=0.01"])
    assert cfg.optim.lr == 0.01 and cfg.model.tile_px == 64 and cfg.trainer.precision == "auto"
    assert set(cfg.heads) == {"pattern", "necrosis", "mitosis"}
    again = TrainConfig.from_dict(cfg.to_dict(), "again")
    assert again.to_yaml() == cfg.to_yaml() and again.digest == cfg.digest
    assert len(cfg.digest) == 64


@pytest.mark.parametrize("text, key", [
    ("model:\n  bakbone: tiny\n", "model.bakbone"),
    ("optim:\n  lr: fast\n", "optim.lr"),
    ("trainer:\n  max_epochs: 2.5\n", "trainer.max_epochs"),
    ("loss:\n  mitosis:\n    kind: dice\n", "loss.mitosis.kind"),
    ("checkpoint:\n  monitor: val/acc\n", "checkpoint.monitor"),
    ("model:\n  backbone: resnet9\n", "model.backbone"),
    ("model:\n  heads: {pattern: {clases: [a, b]}}\n", "clases"),
    ("model:\n  heads: [necrosis]\ncheckpoint:\n  monitor: val/mitosis_f1\n", "checkpoint.monitor"),
    ("model:\n  pretrained: /nowhere/weights.safetensors\n", "model.pretrained"),
])
def test_config_errors_name_key_and_file(tmp_path, text, key):
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_train_config(p)
    msg = str(exc.value)
    assert key in msg and str(p) in msg


def test_a_trained_models_config_loads_for_evaluation_without_its_initial_weights(tmp_path, monkeypatch):
    """eval_real/eval_domain/calibrate_domain read the stage-2 config on a machine that never ran stage 1."""
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)  # data/init/*.safetensors (stage 1's backbones) are not here
    stage2 = repo / "configs" / "train" / "default_multitask_stage2.yaml"
    with pytest.raises(ConfigError, match="pretrained"):
        load_train_config(stage2)
    cfg = load_train_config(stage2, check_init_weights=False)
    assert set(cfg.model.scale_sections()) == {"cells", "tissue"}
    assert cfg.model.scale_sections()["cells"].mpp == 0.5


def test_config_refuses_pickled_pretrained_weights(tmp_path):
    w = tmp_path / "w.pth"
    w.write_bytes(b"PK\x03\x04")
    with pytest.raises(ConfigError, match="never unpickles"):
        load_train_config(_write(tmp_path, f"model:\n  pretrained: {w}\n"))
