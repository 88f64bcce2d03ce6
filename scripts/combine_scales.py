"""Build one model from the input scales of two exported models with the same scale specs.

    python scripts/combine_scales.py BASE --take tissue=OTHER --name histo-default --out DIR

The result is BASE with the net of each taken scale (backbone, heads and calibrated training domain)
replaced by OTHER's. Both cards must declare that scale identically (backbone, tile_px, mpp, heads,
mean/std) and use the same preprocessing. The card takes, for the taken scale, OTHER's domain section,
the provenance of its heads (with a note saying where they came from) and its metrics. Use it when
one scale of a retrained model is better on validation and another is not. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

from histo.errors import HistoError, ModelError
from histo.models import ModelCard, MultiScaleNet, load_model, save_model

# metric keys that belong to a head (MultiTaskModule logs them without a scale prefix)
_HEAD_METRICS = {"mitosis": ("mitosis_",), "pattern": ("pattern_",), "necrosis": ("necrosis_",)}


def combine(base: tuple[Any, ModelCard], takes: dict[str, tuple[Any, ModelCard, str]], name: str) -> tuple[Any, ModelCard]:
    """(model, card) of ``base`` with the nets of ``takes`` (scale -> (model, card, source label)) swapped in."""
    model, card = base
    if not isinstance(model, MultiScaleNet):
        raise ModelError(f"{card.name!r} has one scale: nothing to combine")
    d = card.to_dict()
    for scale, (other, ocard, label) in takes.items():
        if scale not in card.scales or scale not in ocard.scales:
            raise ModelError(f"scale {scale!r} is not in both models ({card.name!r}: {list(card.scales)}, "
                             f"{ocard.name!r}: {list(ocard.scales)})")
        if card.scales[scale] != ocard.scales[scale]:
            raise ModelError(f"scale {scale!r} differs between {card.name!r} and {ocard.name!r}: "
                             f"{card.scales[scale]} vs {ocard.scales[scale]}")
        if card.preprocessing != ocard.preprocessing:
            raise ModelError(f"{card.name!r} and {ocard.name!r} were trained with different preprocessing")
        if not isinstance(other, MultiScaleNet):
            raise ModelError(f"{ocard.name!r} has one scale: pass a multi-scale model")
        model.nets[scale] = copy.deepcopy(other.nets[scale])
        od = ocard.to_dict()
        if (card.domain is None) != (ocard.domain is None):
            raise ModelError("both models or neither must carry a training domain")
        if d.get("domain") and od.get("domain"):
            if d["domain"].get("method") != od["domain"].get("method"):
                raise ModelError("the two models' training domains use different methods")
            d["domain"]["scales"][scale] = od["domain"]["scales"][scale]
        heads = list(ocard.scales[scale].heads)
        for h in heads:
            if h in (od.get("provenance") or {}):
                prov = copy.deepcopy(od["provenance"][h])
                prov["summary"] = f"{prov.get('summary', h)} [scale {scale!r} taken from {label}]"
                d["provenance"][h] = prov
        prefixes = tuple(p for h in heads for p in _HEAD_METRICS.get(h, ())) + (f"{scale}_",)
        d["metrics"] = {k: v for k, v in (d.get("metrics") or {}).items() if not k.startswith(prefixes)}
        d["metrics"].update({k: v for k, v in (od.get("metrics") or {}).items() if k.startswith(prefixes)})
        if "mitosis" in heads:
            d["mitosis_threshold"] = od["mitosis_threshold"]
            d["threshold_selection"] = od.get("threshold_selection")
    d["name"] = name
    d["weights_sha256"] = None
    return model, ModelCard.from_dict(d)


def main(argv: list[str] | None = None) -> int:
    """Combine and export; exit 2 when the models cannot be combined."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base", help="exported model whose card and other scales are kept")
    ap.add_argument("--take", action="append", required=True, metavar="SCALE=MODEL",
                    help="use this scale's net from MODEL (repeatable)")
    ap.add_argument("--name", required=True, help="name of the combined model")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--label", action="append", default=[], metavar="SCALE=TEXT",
                    help="how the provenance names where a taken scale came from (default: the model's name)")
    args = ap.parse_args(argv)
    labels = dict(x.split("=", 1) for x in args.label)
    try:
        base = load_model(args.base)
        takes = {}
        for item in args.take:
            scale, _, path = item.partition("=")
            other, ocard = load_model(path)
            takes[scale] = (other, ocard, labels.get(scale, f"model {ocard.name!r}"))
        model, card = combine(base, takes, args.name)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        weights, card_path = save_model(model.cpu(), card, out)
    except HistoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"model": card.name, "weights": str(weights), "card": str(card_path),
                      "taken": {s: t[1].name for s, t in takes.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
