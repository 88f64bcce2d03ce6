"""How well a model's training-domain check separates its own validation tiles from unrelated tissue.

    python scripts/eval_domain.py --model histo/resources/models/demo -c histo/resources/models/demo/training_config.yaml
    python scripts/eval_domain.py                          # the default model against real tissue it never saw

Prints one JSON line: per scale the AUROC of ood_score for separating the in-domain validation tiles
(the training config's validation split, as histo train saw it) from tiles of the "unrelated" real
images (target >= 0.95), the share of each set called in domain, and per image the share of its tiles
in domain, with a bootstrap 95 % interval of the AUROC that resamples the unrelated images (their tiles
are not independent) and the validation tiles. Every image goes through histo.predict.predict_image (the
histo predict code path). The unrelated set defaults to every real H&E image in ../shared/data/real with a
stated resolution; images a source of the model's own training config lists (by path) are left out of it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histo.models import load_model, scale_nets
from histo.predict import predict_image
from histo.slide import open_slide
from histo.tiling import GridConfig, TilingConfig
from histo.train import load_train_config

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "histo" / "resources" / "models" / "default"
TARGET_AUROC = 0.95
# Real H&E in shared/data/real with a stated µm/px: (relative path or glob, mpp, what it is).
REAL_HE = (
    ("slides/CMU-1-Small-Region.svs", None, "Aperio skin (mpp in the file)"),
    ("tissue_classes/*.tif", 0.5, "NCT-CRC-HE colorectal classes"),
    ("tissue_classes/crc_val_he_7k/*.jpg", 0.5, "CRC-VAL-HE-7K colorectal"),
    ("necrosis/osteosarcoma_tcia/*.jpg", 1.0, "TCIA osteosarcoma"),
    ("mitosis/mitos_atypia14_hamamatsu/images/*.jpg", 0.227, "MITOS-ATYPIA-14 breast"),
    ("ihc/bcdata_ki67/1.images/test/*.png", 0.5, "BCData Ki67 IHC (another stain; mpp assumed 0.5)"),
)
ALL_TILES = TilingConfig(grid=GridConfig(min_tissue_fraction=0.5))


def auroc(neg: np.ndarray, pos: np.ndarray) -> float | None:
    """P(score of an unrelated tile > score of an in-domain tile), ties half (Mann-Whitney)."""
    if not len(neg) or not len(pos):
        return None
    allv = np.concatenate([neg, pos])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    ranks[order] = np.arange(1, len(allv) + 1)
    _, inv, counts = np.unique(allv, return_inverse=True, return_counts=True)  # average ranks over ties
    sums = np.bincount(inv, ranks)
    ranks = (sums / counts)[inv]
    return float((ranks[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2) / (len(neg) * len(pos)))


def bootstrap_auroc(neg: np.ndarray, pos_groups: list[np.ndarray], n: int = 1000, seed: int = 0
                    ) -> tuple[float, float] | None:
    """2.5th and 97.5th percentiles of the AUROC over ``n`` resamples: ``neg`` by tile, ``pos`` by group (image)."""
    if not len(neg) or not pos_groups:
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        pos = np.concatenate([pos_groups[i] for i in rng.integers(0, len(pos_groups), len(pos_groups))])
        a = auroc(neg[rng.integers(0, len(neg), len(neg))], pos)
        if a is not None:
            values.append(a)
    lo, hi = np.percentile(values, [2.5, 97.5])
    return round(float(lo), 4), round(float(hi), 4)


def in_domain_scores(model: Any, card: Any, config: Any, max_tiles: int) -> dict[str, np.ndarray]:
    """ood_score of the validation tiles of each scale (the training config's data, no augmentation)."""
    from histo.train.fit import build_datamodule

    nets = scale_nets(model, card.scales)
    out = {}
    for name in card.scales:
        dm = build_datamodule(config, name if config.model.scales else None)
        dm.prepare_data()
        dm.setup("validate")
        scores, n = [], 0
        with torch.inference_mode():
            for batch in dm.val_dataloader():
                o = nets[name](batch["image"])
                if "ood" not in o:
                    raise SystemExit(f"eval_domain: model {card.name!r} has no training domain (scale {name!r}); "
                                     "run scripts/calibrate_domain.py first")
                scores.append(o["ood"].float().numpy())
                n += len(batch["image"])
                if n >= max_tiles:
                    break
        out[name] = np.concatenate(scores)[:max_tiles]
    return out


def _training_paths(config: Any) -> set[str]:
    paths: set[str] = set()
    for sc in config.model.scale_sections().values():
        data = sc.data or config.data
        if data is None:
            continue
        for src in list(getattr(data, "images", [])) + list(getattr(data, "frames", [])):
            root = Path(getattr(src, "root", None) or src.images)
            paths |= {str(p.resolve()) for p in data.resolve(root).rglob("*") if p.is_file()}
    return paths


def unrelated_scores(model: Any, card: Any, real: Path, exclude: set[str], per_source: int) -> tuple[dict, list]:
    """ood_score of the table tiles of every unrelated real image, and a per-image summary."""
    scores: list[np.ndarray] = []
    images = []
    for pattern, mpp, what in REAL_HE:
        files = sorted(real.glob(pattern))
        files = [f for f in files if str(f.resolve()) not in exclude][:per_source]
        for f in files:
            try:
                if mpp is None:
                    with open_slide(f) as s:
                        m = s.mpp
                        w, h = s.dimensions
                        rgb = s.read(0, 0, w, h, mpp=m)
                else:
                    from histo.data.image_tiles import read_rgb
                    rgb, m = read_rgb(str(f)), mpp
                pred = predict_image(rgb, m, model, card, tiling=ALL_TILES, device="cpu")
            except Exception as exc:  # noqa: BLE001 - an image the model cannot read is reported, not fatal
                images.append({"image": f.name, "source": what, "error": str(exc)[:200]})
                continue
            if "ood_score" not in pred.tiles or not len(pred.tiles):
                continue
            s = pred.tiles["ood_score"].to_numpy(np.float64)
            s = s[np.isfinite(s)]
            scores.append(s)
            images.append({"image": f.name, "source": what, "tiles": int(len(s)),
                           "in_domain_fraction": round(float((s <= 1).mean()), 3) if len(s) else None})
    return {"table": np.concatenate(scores) if scores else np.zeros(0), "per_image": scores}, images


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("-c", "--config", type=Path, default=Path("configs/train/default_multitask.yaml"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--real-data", type=Path, default=Path(os.environ.get("HISTO_REAL_DATA", "../shared/data/real")))
    ap.add_argument("--max-tiles", type=int, default=5000, help="in-domain validation tiles per scale")
    ap.add_argument("--per-source", type=int, default=12, help="unrelated images per source")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    model, card = load_model(args.model)
    config = load_train_config(args.config, tuple(args.overrides), check_init_weights=False)
    ind = in_domain_scores(model, card, config, args.max_tiles)
    table_in = ind[card.table_scale]
    unrel, images = unrelated_scores(model, card, args.real_data, _training_paths(config), args.per_source)
    u = unrel["table"]
    result = {
        "model": card.name, "method": (card.domain or {}).get("method"), "target_auroc": TARGET_AUROC,
        "calibration_data": (card.domain or {}).get("calibration_data", "not recorded in the card"),
        "in_domain_val_tiles": {k: int(len(v)) for k, v in ind.items()},
        "in_domain_val_called_in_domain": {k: round(float((v <= 1).mean()), 4) for k, v in ind.items()},
        "unrelated_tiles": int(len(u)),
        "unrelated_called_in_domain": round(float((u <= 1).mean()), 4) if len(u) else None,
        "auroc": None if not len(u) else round(auroc(table_in, u) or 0.0, 4),
        "auroc_bootstrap_95": bootstrap_auroc(table_in, [g for g in unrel["per_image"] if len(g)]),
        "images": images,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    result["target_met"] = None if result["auroc"] is None else result["auroc"] >= TARGET_AUROC
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
