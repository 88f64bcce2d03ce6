#!/usr/bin/env python
"""Record the training domain of an exported model (models trained before histo did it at export).

    python scripts/calibrate_domain.py --model runs/x/version_0/model -c configs/train/x.yaml [--set k=v]

Rebuilds each scale's data module from the training config, fits the training domain (a nearest-neighbour
bank of texture, colour and sharpness statistics and a Gaussian of the last level's pooled features; see
histo.models.domain) on the training tiles, sets the thresholds at the 99.5th percentile of the
validation tiles (histo.train.domain), and exports the model again in place (or to --out). Prints one
JSON line with each scale's figures. `histo train` does the same at export for new models.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, type=Path, help="exported model folder or card")
    ap.add_argument("-c", "--config", required=True, type=Path, help="the training config of that model")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, help="write the calibrated model here (default: in place)")
    ap.add_argument("--max-tiles", type=int, default=20000, help="training and validation tiles used per scale")
    ap.add_argument("--percentile", type=float, default=None,
                    help="validation percentile of each threshold (default: histo.train.domain.PERCENTILE, 99.5)")
    args = ap.parse_args(argv)

    from histo.models import ModelCard
    from histo.train import load_train_config
    from histo.train.domain import PERCENTILE, calibrate_model

    if args.percentile is None:
        args.percentile = PERCENTILE

    config = load_train_config(args.config, tuple(args.overrides), check_init_weights=False)
    _, card_path = calibrate_model(args.model, config, args.out, percentile=args.percentile, max_tiles=args.max_tiles,
                                   overrides=tuple(args.overrides))
    card = ModelCard.load(card_path)
    print(json.dumps({"model": card.name, "card": str(card_path), "domain": card.domain}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
