"""Training throughput: tiles/s and the share of step time spent waiting for data, on CPU or GPU.

    nice -n 5 python scripts/bench_train.py                                   # phantom config, 40 steps
    python scripts/bench_train.py -c configs/train/lab_template.yaml --steps 200

Runs the config's model and data module in a Lightning loop for ``--steps`` optimisation steps (after
``--warmup`` untimed ones; no validation, no checkpoints), timing each step with a callback: data wait =
end of one batch to start of the next (loading, collation, transfer), compute = start to end of a batch
(forward, backward, optimiser). Baseline in the same run: the same loop over one batch held in memory
(compute only). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch.utils.data import DataLoader, Dataset

from histo.train import build_datamodule, build_module, load_train_config, resolve_trainer_args


class StepTimer(Callback):
    """Per-step data-wait and compute times after ``skip`` warm-up steps."""

    def __init__(self, skip: int = 0):
        self.skip = skip
        self.wait: list[float] = []
        self.compute: list[float] = []
        self.tiles = 0
        self._end: float | None = None
        self._start = 0.0
        self._step = 0

    def _sync(self, trainer: pl.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()  # GPU work is asynchronous: time it when it is done

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._sync(trainer)
        self._start = time.perf_counter()
        if self._end is not None and self._step >= self.skip:
            self.wait.append(self._start - self._end)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._sync(trainer)
        self._end = time.perf_counter()
        if self._step >= self.skip:
            self.compute.append(self._end - self._start)
            self.tiles += int(batch["image"].shape[0])
        self._step += 1


class OneBatch(Dataset):
    """The same collated batch, ``n`` times (the compute-only baseline)."""

    def __init__(self, batch: dict[str, Any], n: int):
        self.batch, self.n = batch, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.batch


class OneBatchModule(pl.LightningDataModule):
    def __init__(self, batch: dict[str, Any], n: int):
        super().__init__()
        self.ds = OneBatch(batch, n)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.ds, batch_size=None, num_workers=0)


def run_loop(config: Any, dm: pl.LightningDataModule, steps: int, warmup: int) -> StepTimer:
    """Train ``warmup + steps`` steps without validation or checkpoints; returns the timer."""
    timer = StepTimer(skip=warmup)
    args = resolve_trainer_args(config.trainer)
    trainer = pl.Trainer(**args, max_steps=steps + warmup, max_epochs=10_000, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[timer], num_sanity_val_steps=0)
    trainer.fit(build_module(config), datamodule=dm)
    return timer


def summarise(timer: StepTimer) -> dict[str, float]:
    """tiles/s, mean step times and the data-wait share."""
    wait, comp = sum(timer.wait), sum(timer.compute)
    total = wait + comp
    return {"tiles_per_s": round(timer.tiles / total, 2) if total else 0.0,
            "step_ms": round(1000 * total / max(1, len(timer.compute)), 1),
            "compute_ms": round(1000 * comp / max(1, len(timer.compute)), 1),
            "data_wait_ms": round(1000 * wait / max(1, len(timer.wait)), 1),
            "data_wait_fraction": round(wait / total, 3) if total else 0.0}


def main(argv: list[str] | None = None) -> int:
    """Benchmark the data loop and the compute-only baseline; print one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", default="configs/train/phantom_multitask.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args(argv)
    config = load_train_config(args.config, args.overrides)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    t0 = time.perf_counter()
    dm = build_datamodule(config)
    dm.prepare_data()
    dm.setup("fit")
    prep_s = time.perf_counter() - t0
    timer = run_loop(config, dm, args.steps, args.warmup)
    batch = next(iter(dm.train_dataloader()))
    base = run_loop(config, OneBatchModule(batch, args.steps + args.warmup + 1), args.steps, args.warmup)
    real, ideal = summarise(timer), summarise(base)
    acc = resolve_trainer_args(config.trainer)
    device = torch.cuda.get_device_name() if acc["accelerator"] == "gpu" else "cpu"
    print(json.dumps({
        "script": "bench_train", "config": args.config, "overrides": args.overrides, "device": device,
        "precision": acc["precision"], "backbone": config.model.backbone, "tile_px": config.model.tile_px,
        "batch_size": config.data.batch_size, "num_workers": config.data.num_workers,
        "torch_threads": torch.get_num_threads(), "steps": len(timer.compute), **real,
        "baseline": {"name": "same model on one in-memory batch (compute only)", **ideal},
        "ratio_vs_baseline": round(real["tiles_per_s"] / ideal["tiles_per_s"], 3) if ideal["tiles_per_s"] else None,
        "data_setup_s": round(prep_s, 1),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
