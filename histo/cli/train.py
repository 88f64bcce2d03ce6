"""`histo train -c CONFIG [--set k=v ...] [--print-config] [--resume CKPT] [--out DIR]`: train a tile model.

Validates the whole config before anything runs (bad config → exit 2 naming the key and the file), trains
with Lightning under ``output.dir/output.name/version_N/`` (resolved config.yaml, checkpoints, CSV and
TensorBoard logs) and exports the best checkpoint as ``model/<name>.safetensors`` + ``<name>.card.json``.
``--resume`` takes a checkpoint written by an earlier `histo train` run: .ckpt files are pickles, so
never pass one from somewhere you do not trust.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from histo.errors import ConfigError

# Lightning and torch load in run(): every `histo` command builds this parser, only training needs them.


def register(sub: Any) -> None:
    """Add the `train` subcommand."""
    p = sub.add_parser(
        "train",
        help="train a tile model (pattern / necrosis / mitosis heads) from a YAML config",
        description="Train a multi-task tile model with PyTorch Lightning from a YAML config and export the best "
                    "checkpoint as safetensors weights + a JSON model card. Uses a GPU with mixed precision "
                    "when present, CPU fp32 otherwise.",
    )
    p.add_argument("-c", "--config", required=True, help="train config YAML (see configs/train/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set optim.lr=0.0003 (repeatable)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--resume", metavar="CKPT", help="continue from a Lightning checkpoint of an earlier run "
                                                    "(a pickle: only your own)")
    p.add_argument("--out", metavar="DIR", help="output folder (overrides output.dir)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Validate the config, then train and export; prints where the model is."""
    from histo.train import fit, load_train_config
    from histo.train.fit import check_checkpoint, check_data_files

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"output.dir={args.out}")
    if args.quiet:
        overrides.append("trainer.progress_bar=false")
    config = load_train_config(args.config, overrides)
    if args.print_config:
        sys.stdout.write(config.to_yaml())
        return 0
    if args.resume:
        check_checkpoint(args.resume)  # a foreign or broken file fails here: nothing loaded, no run folder made
    try:
        check_data_files(config)  # a missing slide, annotation or spec fails here, before any training
    except ConfigError as exc:
        raise ConfigError(f"{args.config}: {exc}") from exc
    result = fit(config, resume_from=args.resume)
    if result.card_path is None:  # a non-zero DDP rank: rank 0 reports
        return 0
    print(f"histo train: {result.global_step} steps, {result.epochs} epochs in {result.seconds:.0f} s "
          f"on {result.accelerator} ({result.precision}); run folder {result.run_dir}", file=sys.stderr)
    print(f"histo train: best checkpoint {result.best_checkpoint}", file=sys.stderr)
    print(f"histo train: metrics {json.dumps({k: round(v, 4) for k, v in result.metrics.items()})}", file=sys.stderr)
    print(f"histo train: model exported to {result.card_path} (load with histo.models.load_model)", file=sys.stderr)
    print(result.card_path)
    return 0
