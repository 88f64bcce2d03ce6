"""histo.train.fit and `histo train`: export round-trip, resume, config errors before training, DDP on 2 CPU processes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from test_train_support import FakeTileDataModule

from histo.cli import main
from histo.models import load_model
from histo.train import TrainConfig, fit, resolve_trainer_args

torch.set_num_threads(1)
TESTS = Path(__file__).resolve().parent


def _config(tmp_path, **trainer) -> TrainConfig:
    t = {"max_epochs": 1, "progress_bar": False, "log_every_n_steps": 1, **trainer}
    return TrainConfig.from_dict({
        "seed": 3,
        "model": {"backbone": "tiny", "tile_px": 64, "mpp": 0.5},
        "trainer": t,
        "early_stop": {"patience": 0},
        "output": {"dir": str(tmp_path / "runs"), "name": "tiny-fit"},
    }, "test")


def test_fit_exports_best_checkpoint_that_load_model_reproduces(tmp_path):
    cfg = _config(tmp_path, max_epochs=2)
    dm = FakeTileDataModule(n_train=16, n_val=8)
    res = fit(cfg, datamodule=dm)
    assert res.run_dir == tmp_path / "runs" / "tiny-fit" / "version_0"
    assert res.global_step == 4 and res.epochs == 2 and res.accelerator == "cpu" and res.precision == "32-true"
    assert res.best_checkpoint.is_file() and res.last_checkpoint.name == "last.ckpt"
    assert (res.run_dir / "metrics.csv").is_file() and any((res.run_dir / "tensorboard").glob("events.*"))
    # resolved config beside the outputs; its sha256 is the card's digest
    text = (res.run_dir / "config.yaml").read_text()
    assert TrainConfig.from_dict(yaml.safe_load(text), "saved").to_yaml() == text
    net, card = load_model(res.card_path)
    assert card.config_digest == hashlib.sha256(text.encode()).hexdigest() == res.config_digest
    assert card.name == "tiny-fit" and card.tile_px == 64 and card.mpp == 0.5 and card.backbone == "tiny"
    assert card.classes == ["none", "fascicular", "haphazard"] and card.mitosis_stride_px == 4
    assert {"loss", "pattern_bacc", "pattern_auroc", "necrosis_auroc", "mitosis_f1"} <= set(card.metrics)
    assert card.metrics == pytest.approx(res.metrics)
    # same outputs as the best checkpoint's weights (the .ckpt is our own file, loaded tensors-only)
    state = torch.load(res.best_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    from histo.train import build_module

    ref = build_module(cfg)
    ref.load_state_dict(state)
    ref.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = net(x), ref.net(x)
    for k in ("pattern", "necrosis", "mitosis"):
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    # a second run goes to the next version folder
    res2 = fit(cfg, datamodule=dm, export=False)
    assert res2.run_dir.name == "version_1" and res2.card_path is None


def test_resume_continues_the_step_count(tmp_path):
    dm = FakeTileDataModule(n_train=16, n_val=8)
    first = fit(_config(tmp_path, max_epochs=1), datamodule=dm, export=False)
    assert first.global_step == 2
    resumed = fit(_config(tmp_path, max_epochs=3), datamodule=dm, resume_from=first.last_checkpoint, export=False)
    assert resumed.global_step == 6 and resumed.epochs == 3
    # only the two new epochs ran: the new run's CSV log starts at epoch 1
    import pandas as pd

    log = pd.read_csv(resumed.run_dir / "metrics.csv")
    assert log["epoch"].dropna().min() == 1
    with pytest.raises(Exception, match="not found"):
        fit(_config(tmp_path), datamodule=dm, resume_from=tmp_path / "missing.ckpt")


def test_trainer_auto_resolves_to_cpu_fp32_without_gpu():
    from histo.train import TrainerSection

    args = resolve_trainer_args(TrainerSection())
    if torch.cuda.is_available():
        assert args["accelerator"] == "gpu" and args["precision"] in ("bf16-mixed", "16-mixed")
    else:
        assert args == {"accelerator": "cpu", "devices": 1, "strategy": "auto", "precision": "32-true"}


# -- CLI ----------------------------------------------------------------------------------------------
def _yaml(tmp_path, extra: str = "") -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text("seed: 1\nmodel:\n  backbone: tiny\n  tile_px: 64\noutput:\n  dir: runs\n  name: t\n" + extra)
    return p


def test_cli_print_config_with_set(tmp_path, capsys):
    p = _yaml(tmp_path)
    code = main(["train", "-c", str(p), "--set", "optim.lr=0.02", "--set", "model.heads=[pattern]",
                 "--out", str(tmp_path / "o"), "--print-config"])
    assert code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["optim"]["lr"] == 0.02 and cfg["model"]["heads"] == ["pattern"] and cfg["seed"] == 1
    assert cfg["output"]["dir"] == str(tmp_path / "o") and cfg["trainer"]["precision"] == "auto"
    assert not (tmp_path / "o").exists()  # printing trains nothing and writes nothing


@pytest.mark.parametrize("extra, sets, key", [
    ("optim:\n  lr: high\n", [], "optim.lr"),
    ("trainer:\n  max_epoch: 3\n", [], "trainer.max_epoch"),
    ("", ["model.pretrained=/no/such.safetensors"], "model.pretrained"),
])
def test_cli_bad_config_exit_2_before_training(tmp_path, capsys, extra, sets, key):
    p = _yaml(tmp_path, extra)
    args = ["train", "-c", str(p), "--out", str(tmp_path / "o")]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert key in err and str(p) in err
    assert not (tmp_path / "o").exists()


def test_cli_missing_config_file_exit_2(tmp_path, capsys):
    assert main(["train", "-c", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


# -- DDP ----------------------------------------------------------------------------------------------
DDP_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from test_train_support import FakeTileDataModule
from histo.train import TrainConfig, fit
cfg = TrainConfig.from_dict({{
    "model": {{"backbone": "tiny", "tile_px": 64}},
    "trainer": {{"max_epochs": 2, "accelerator": "cpu", "devices": 2, "strategy": "ddp", "progress_bar": False,
                 "log_every_n_steps": 1}},
    "early_stop": {{"patience": 0}},
    "checkpoint": {{"monitor": "val/pattern_bacc", "mode": "max"}},
    "output": {{"dir": {out!r}, "name": "ddp"}},
}}, "ddp-test")
res = fit(cfg, datamodule=FakeTileDataModule(n_train=32, n_val=16, batch_size=8))
import torch.distributed as dist
rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
print("RESULT", json.dumps({{"rank": rank, "step": res.global_step, "run_dir": str(res.run_dir),
      "card": str(res.card_path) if res.card_path else None, "metrics": res.metrics}}), flush=True)
"""


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    script = tmp_path / "ddp_fit.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(tests=str(TESTS), out=str(tmp_path / "runs"))))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("HISTO_TRAIN_RUN_VERSION", None)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line.split("RESULT ", 1)[1]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert sorted(r["rank"] for r in results) == [0, 1]
    # 32 tiles / 2 processes / batch 8 = 2 steps per epoch on each rank
    assert all(r["step"] == 4 for r in results)
    assert len({r["run_dir"] for r in results}) == 1  # both ranks wrote into one run folder
    r0 = next(r for r in results if r["rank"] == 0)
    assert r0["card"] and next(r for r in results if r["rank"] == 1)["card"] is None
    net, card = load_model(r0["card"])
    assert card.metrics["pattern_bacc"] == pytest.approx(r0["metrics"]["pattern_bacc"])
    # metrics were synced: both ranks report the same validation values
    assert results[0]["metrics"] == pytest.approx(results[1]["metrics"])
    assert "ddp" in proc.stderr.lower() or "distributed" in proc.stderr.lower()


class _Evil:
    """A pickle that would create a file if unpickled."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


@pytest.mark.parametrize("kind", ["code_pickle", "random_bytes", "plain_dict"])
def test_cli_resume_from_a_foreign_file_is_a_clear_error_and_leaves_no_run_folder(tmp_path, capsys, kind):
    import pickle

    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump({"model": {"backbone": "tiny", "tile_px": 64, "mpp": 0.5},
                                 "output": {"dir": str(tmp_path / "runs"), "name": "x"}}))
    bad = tmp_path / "foreign.ckpt"
    marker = tmp_path / "pwned"
    if kind == "code_pickle":
        bad.write_bytes(pickle.dumps({"state_dict": _Evil(marker)}))
    elif kind == "random_bytes":
        bad.write_bytes(os.urandom(256))
    else:
        torch.save({"weights": torch.zeros(2)}, bad)
    assert main(["train", "-c", str(p), "--resume", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "foreign.ckpt" in err and "checkpoint" in err and "Traceback" not in err
    assert not marker.exists()  # nothing in the pickle ran
    assert not (tmp_path / "runs").exists()  # no empty version_N/
