"""Score a histo model on the real labelled data it did not train on; print one JSON line.

    python scripts/eval_real.py                                    # the shipped default model
    python scripts/eval_real.py --model runs/histo-default/version_0/model --skip-phantoms

The real sources are the ``frames`` and ``images`` sections of the training config (default
configs/train/default_multitask.yaml; run from the repository root with ../shared/data/real beside it).
Which groups (slides, regions, images) count as held out is read from the model card's provenance: a
group is held out for a head when no training source of that head listed it. Held-out groups that the
card lists under validation were used to choose the checkpoint and the mitosis threshold ("validation");
the others were never used at all ("test"). Every image goes through ``histo.predict.predict_image``,
the same code path as ``histo predict`` (every tile scored: min_tissue_fraction 0).

- mitosis: precision, recall and F1 at 7.5 µm with one-to-one (Hungarian) matching, MIDOG style, at the
  card's threshold; pooled and per group.
- necrosis: tile-level AUROC and balanced accuracy at p >= 0.5 per source and pooled, and image-level
  (mean p over the image's tiles) AUROC; per group the mean p and accuracy (a group holds one class).
- phantoms: runs scripts/eval_phantoms.py on unseen phantom seeds and says whether its targets hold
  (pattern balanced accuracy >= 0.9, necrosis AUROC >= 0.95, mitosis F1 >= 0.8).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from histo.data.frames import read_frame_source, read_image_source
from histo.data.image_tiles import read_rgb
from histo.models import load_model
from histo.predict import predict_image
from histo.tiling import GridConfig, TilingConfig
from histo.train import load_train_config
from histo.train.metrics import MIDOG_RADIUS_UM, match_points

TARGETS = {"mitosis_f1": 0.6, "necrosis_auroc": 0.9}
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "histo" / "resources" / "models" / "default"
ALL_TILES = TilingConfig(grid=GridConfig(min_tissue_fraction=0.0))


def auroc(y: np.ndarray, p: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties count half); None without both classes."""
    y, p = np.asarray(y, bool), np.asarray(p, np.float64)
    pos, neg = p[y], p[~y]
    if not len(pos) or not len(neg):
        return None
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order), np.float64)
    allp = np.concatenate([pos, neg])[order]
    i = 0
    while i < len(allp):  # average ranks over ties
        j = i
        while j + 1 < len(allp) and allp[j + 1] == allp[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def balanced_accuracy(y: np.ndarray, p: np.ndarray, thr: float = 0.5) -> float | None:
    """Mean of sensitivity and specificity at ``thr`` (None without both classes)."""
    y, hit = np.asarray(y, bool), np.asarray(p) >= thr
    if not y.any() or y.all():
        return None
    return float((hit[y].mean() + (~hit[~y]).mean()) / 2)


def held_out(card: Any, head: str) -> tuple[set[str], set[str]]:
    """(train groups, validation groups) of a head per source, as 'source/group' strings, from the card."""
    prov = card.provenance.get(head, {})
    train = {f"{r['source']}/{g}" for r in prov.get("train", []) for g in r.get("groups", [])}
    val = {f"{r['source']}/{g}" for r in prov.get("validation", {}).get("sources", []) for g in r.get("groups", [])}
    return train, val


def prf(tp: int, fp: int, fn: int) -> dict[str, Any]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": round(p, 4), "recall": round(r, 4),
            "f1": round(2 * tp / (2 * tp + fp + fn), 4) if 2 * tp + fp + fn else None}


def eval_mitosis(config: Any, model: Any, card: Any, limit: int | None) -> dict[str, Any]:
    """Detection figures on every held-out frame of every frames source."""
    if "mitosis" not in card.heads:
        return {"skipped": "the model has no mitosis head"}
    train, val = held_out(card, "mitosis")
    data = config.model.scale_sections()[card.scale_of("mitosis")].data or config.data
    out: dict[str, Any] = {"threshold": card.mitosis_threshold, "match_radius_um": MIDOG_RADIUS_UM, "groups": {}}
    totals = {"validation": [0, 0, 0], "test": [0, 0, 0]}
    for i, src in enumerate(data.frames):
        recs, _ = read_frame_source(data, i)
        recs = [r for r in recs if f"{src.name}/{r.group}" not in train][:limit]
        for rec in recs:
            rgb = read_rgb(str(rec.path))
            pred = predict_image(rgb, rec.mpp, model, card, tiling=ALL_TILES, device="cpu")
            pts = pred.counted_mitoses[["x", "y"]].to_numpy()
            tp, fp, fn = match_points(pts, rec.points, MIDOG_RADIUS_UM / rec.mpp)
            role = "validation" if f"{src.name}/{rec.group}" in val else "test"
            g = out["groups"].setdefault(f"{src.name}/{rec.group}", {"role": role, "frames": 0, "counts": [0, 0, 0]})
            g["frames"] += 1
            g["counts"] = [a + b for a, b in zip(g["counts"], (tp, fp, fn))]
            totals[role] = [a + b for a, b in zip(totals[role], (tp, fp, fn))]
    for g in out["groups"].values():
        g.update(prf(*g.pop("counts")))
    for role, (tp, fp, fn) in totals.items():
        out[role] = prf(tp, fp, fn)
    out["held_out"] = prf(*[a + b for a, b in zip(totals["validation"], totals["test"])])
    return out


def eval_necrosis(config: Any, model: Any, card: Any, limit: int | None) -> dict[str, Any]:
    """Tile- and image-level figures on every held-out image carrying a necrosis label."""
    if "necrosis" not in card.heads:
        return {"skipped": "the model has no necrosis head"}
    train, val = held_out(card, "necrosis")
    data = config.model.scale_sections()[card.scale_of("necrosis")].data or config.data
    tiles_y, tiles_p, img_y, img_p = [], [], [], []
    per_source: dict[str, dict[str, list]] = {}
    groups: dict[str, dict[str, Any]] = {}
    for i, src in enumerate(data.images):
        recs, _ = read_image_source(data, i)
        recs = [r for r in recs if "necrosis" in r.labels and f"{src.name}/{r.group}" not in train][:limit]
        for rec in recs:
            pred = predict_image(read_rgb(str(rec.path)), rec.mpp, model, card, tiling=ALL_TILES, device="cpu")
            p = pred.tiles["p_necrosis"].to_numpy(np.float64)
            y = np.full(len(p), bool(rec.labels["necrosis"]))
            tiles_y.append(y)
            tiles_p.append(p)
            img_y.append(bool(rec.labels["necrosis"]))
            img_p.append(float(p.mean()) if len(p) else float("nan"))
            s = per_source.setdefault(src.name, {"y": [], "p": []})
            s["y"].append(y)
            s["p"].append(p)
            key = f"{src.name}/{rec.group}"
            g = groups.setdefault(key, {"role": "validation" if key in val else "test", "images": 0, "y": [], "p": []})
            g["images"] += 1
            g["y"].append(y)
            g["p"].append(p)
    if not tiles_y:
        return {"skipped": "no held-out image with a necrosis label"}
    ty, tp = np.concatenate(tiles_y), np.concatenate(tiles_p)
    out: dict[str, Any] = {
        "tiles": int(len(ty)), "images": len(img_y),
        "tile_auroc": _r(auroc(ty, tp)), "tile_balanced_accuracy": _r(balanced_accuracy(ty, tp)),
        "image_auroc": _r(auroc(np.array(img_y), np.array(img_p))),
        "per_source": {}, "groups": {},
    }
    for name, s in per_source.items():
        y, p = np.concatenate(s["y"]), np.concatenate(s["p"])
        out["per_source"][name] = {"tiles": int(len(y)), "positive_tiles": int(y.sum()), "auroc": _r(auroc(y, p)),
                                   "balanced_accuracy": _r(balanced_accuracy(y, p)),
                                   "accuracy": _r(float(((p >= 0.5) == y).mean()))}
    for key, g in groups.items():
        y, p = np.concatenate(g["y"]), np.concatenate(g["p"])
        out["groups"][key] = {"role": g["role"], "images": g["images"], "label": int(y[0]) if len(y) else None,
                              "mean_p": _r(float(p.mean())), "accuracy": _r(float(((p >= 0.5) == y).mean()))}
    return out


def _r(v: float | None) -> float | None:
    return None if v is None or not np.isfinite(v) else round(float(v), 4)


def eval_phantom_targets(model_path: Path, config_path: Path, seeds: list[int]) -> dict[str, Any]:
    """Run scripts/eval_phantoms.py (tile level, unseen seeds) and read its JSON line."""
    script = Path(__file__).with_name("eval_phantoms.py")
    cmd = [sys.executable, str(script), "--model", str(model_path), "-c", str(config_path),
           "--seeds", *map(str, seeds)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        return {"error": f"eval_phantoms exited {res.returncode}: {res.stderr.strip().splitlines()[-1:] or ''}"}
    data = json.loads(lines[-1])
    data["command"] = " ".join(cmd[1:])
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model folder or card (default: the shipped default)")
    ap.add_argument("-c", "--config", type=Path, default=Path("configs/train/default_multitask.yaml"),
                    help="training config whose frames/images sources are evaluated")
    ap.add_argument("--limit", type=int, help="at most this many held-out images per source (quick runs)")
    ap.add_argument("--skip-phantoms", action="store_true", help="skip the phantom targets (eval_phantoms.py)")
    ap.add_argument("--phantom-seeds", type=int, nargs="+", default=[100, 101],
                    help="unseen phantom seeds for the phantom targets")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, card = load_model(args.model)
    config = load_train_config(args.config, check_init_weights=False)
    result: dict[str, Any] = {"model": card.name, "weights_sha256": card.weights_sha256,
                              "config": str(args.config), "targets": TARGETS}
    result["mitosis"] = eval_mitosis(config, model, card, args.limit)
    result["necrosis"] = eval_necrosis(config, model, card, args.limit)
    if not args.skip_phantoms:
        result["phantoms"] = eval_phantom_targets(args.model, args.config, args.phantom_seeds)
    mit = result["mitosis"].get("test", {}).get("f1") if isinstance(result["mitosis"], dict) else None
    nec = result["necrosis"].get("tile_auroc") if isinstance(result["necrosis"], dict) else None
    result["targets_met"] = {"mitosis_f1_test": None if mit is None else mit >= TARGETS["mitosis_f1"],
                             "necrosis_auroc": None if nec is None else nec >= TARGETS["necrosis_auroc"]}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
