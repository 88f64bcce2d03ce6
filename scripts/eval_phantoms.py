"""Train the phantom multi-task model (or load one) and score it on phantom slides never seen in training.

    nice -n 5 python scripts/eval_phantoms.py                       # train with the config, then evaluate
    python scripts/eval_phantoms.py --model runs/phantom-multitask/version_0/model

Prints one JSON line: tile-level pattern balanced accuracy (target >= 0.90), pattern AUROC, necrosis AUROC
(>= 0.95), mitosis F1 at 7.5 µm (>= 0.80) with precision/recall, the number of evaluation tiles, and the
training minutes (CPU here). The evaluation phantoms use the training config's phantom spec and overrides
with other seeds (default 100, 101), read as non-overlapping tiles without augmentation; the metrics are
the ones histo.train logs in validation (same code path: MultiTaskModule.update_metrics).

Slide-level accuracy (mitoses per 10 HPF, necrosis %, verdict per preset) belongs in its own function
beside :func:`tile_level_metrics`, added to the ``sections`` of :func:`evaluate`.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from histo.data import InputSpec, TileDataModule, data_config_from_dict
from histo.models import ModelCard, MultiTaskNet, load_model
from histo.train import MultiTaskModule, TrainConfig, fit, load_train_config

TARGETS = {"pattern_bacc": 0.90, "necrosis_auroc": 0.95, "mitosis_f1": 0.80}


def eval_data_config(config: TrainConfig, seeds: list[int], cache_dir: Path | None) -> Any:
    """The training data section with other phantom seeds, all tiles in one split, no augmentation, no overlap."""
    raw = config.to_dict()["data"]
    if not raw or not raw.get("phantoms"):
        raise SystemExit("eval_phantoms: the config has no data.phantoms section to draw evaluation phantoms from")
    train_seeds = set(config.data.phantoms.seed_list())
    if train_seeds & set(seeds):
        raise SystemExit(f"eval_phantoms: evaluation seeds {sorted(train_seeds & set(seeds))} were used in training")
    raw["phantoms"]["seeds"], raw["phantoms"]["n_per_spec"] = list(seeds), None
    if cache_dir is not None:
        raw["phantoms"]["cache_dir"] = str(cache_dir)
    raw.update(augment=[], stride_px=None, balance="none", mitosis_oversample=1.0, samples_per_epoch=None,
               split={"val_fraction": 0.0, "test_fraction": 0.0, "seed": 0})
    return data_config_from_dict(raw, "<eval_phantoms>")


def eval_tiles(config: TrainConfig, card: ModelCard, seeds: list[int], cache_dir: Path | None) -> tuple[Any, float]:
    """The evaluation tiles (a Dataset over the unseen phantoms) and the minutes spent writing phantoms."""
    t0 = time.perf_counter()
    dm = TileDataModule(eval_data_config(config, seeds, cache_dir), InputSpec.from_card(card))
    dm.prepare_data()
    dm.setup("fit")
    # With both split fractions 0 every evaluation slide lands in the 'train' split (augment is off above).
    return dm.datasets["train"], (time.perf_counter() - t0) / 60


def tile_level_metrics(net: MultiTaskNet, card: ModelCard, dataset: Any, device: str = "cpu",
                       batch_size: int = 64) -> dict[str, float]:
    """Pattern balanced accuracy and AUROC, necrosis AUROC, mitosis F1/precision/recall at 7.5 µm over all tiles."""
    module = MultiTaskModule(net, mpp=card.mpp, mitosis_threshold=card.mitosis_threshold,
                             mitosis_min_distance_um=card.mitosis_min_distance_um).to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    n = 0
    with torch.inference_mode():
        for batch in loader:
            batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            module.update_metrics(module(batch["image"]), batch)
            n += batch["image"].shape[0]
    out = {k.removeprefix("val/"): round(v, 4) for k, v in module.compute_metrics().items()}
    out["n_tiles"] = n
    return out


def evaluate(net: MultiTaskNet, card: ModelCard, dataset: Any, device: str) -> dict[str, Any]:
    """Every evaluation section merged into one dict (slide-level sections go into ``sections``)."""
    sections: list[Callable[[], dict[str, Any]]] = [lambda: tile_level_metrics(net, card, dataset, device)]
    result: dict[str, Any] = {}
    for section in sections:
        result.update(section())
    return result


def main(argv: list[str] | None = None) -> int:
    """Train (or load) and evaluate; print one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", default="configs/train/phantom_multitask.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--model", help="evaluate this exported model (folder or card) instead of training")
    ap.add_argument("--seeds", type=int, nargs="+", default=[100, 101], help="evaluation phantom seeds")
    ap.add_argument("--cache-dir", type=Path, help="where evaluation phantoms are written (default: the config's)")
    ap.add_argument("--out", help="training output folder (overrides output.dir)")
    args = ap.parse_args(argv)
    overrides = list(args.overrides) + ([f"output.dir={args.out}"] if args.out else [])
    config = load_train_config(args.config, overrides)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    train_minutes = None
    fit_info: dict[str, Any] = {}
    if args.model:
        path = Path(args.model)
        if path.is_dir():
            cards = sorted(path.glob("*.card.json"))
            if len(cards) != 1:
                raise SystemExit(f"eval_phantoms: expected one *.card.json in {path}, found {len(cards)}")
            path = cards[0]
        net, card = load_model(path, device)
    else:
        res = fit(config)
        train_minutes = round(res.seconds / 60, 2)
        fit_info = {"steps": res.global_step, "epochs": res.epochs, "val": {k: round(v, 4) for k, v in res.metrics.items()}}
        net, card = load_model(res.card_path, device)
        path = res.card_path
    dataset, phantom_minutes = eval_tiles(config, card, args.seeds, args.cache_dir)
    t0 = time.perf_counter()
    metrics = evaluate(net, card, dataset, device)
    line = {
        "script": "eval_phantoms", **metrics,
        "targets": TARGETS, "targets_met": {k: metrics.get(k, 0.0) >= v for k, v in TARGETS.items()},
        "train_minutes": train_minutes, "eval_minutes": round((time.perf_counter() - t0) / 60, 2),
        "eval_phantom_minutes": round(phantom_minutes, 2), "eval_seeds": args.seeds,
        "device": device if device == "cpu" else torch.cuda.get_device_name(), "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(), "model": str(path), **({"fit": fit_info} if fit_info else {}),
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
