"""Train the phantom multi-task model (or load one) and score it on phantom slides never seen in training.

    nice -n 5 python scripts/eval_phantoms.py                       # train with the config, then evaluate
    python scripts/eval_phantoms.py --model runs/phantom-multitask/version_0/model

Prints one JSON line: tile-level pattern balanced accuracy (target >= 0.90), pattern AUROC, necrosis AUROC
(>= 0.95), mitosis F1 at 7.5 µm (>= 0.80) with precision/recall, the number of evaluation tiles, and the
training minutes (CPU here). The evaluation phantoms use the training config's phantom spec and overrides
with other seeds (default 100, 101), read as non-overlapping tiles without augmentation; the metrics are
the ones histo.train logs in validation (same code path: MultiTaskModule.update_metrics).

Slide level (issue 5), with ``--slides``: every grading preset (low_grade_alk_positive,
high_grade_alk_positive, alk_negative, artefacts) is written as an H&E phantom at unseen seeds, run
through ``histo.predict.predict_slide`` and ``histo.aggregate.assess_slide`` with the default grading
config, and compared with the phantom's truth (summary.json): mitoses per 10 HPF over the whole viable
tumour (target within ±20 % of truth), necrosis % of tumour (within ±5 points), the high-grade
verdict and both FNCLCC component scores, mitotic and necrosis (right on every slide; ``--table``
prints them as a Markdown table). ``--slides-only --model DIR`` skips the tile-level part. Several
``--slide-seed`` values give several rounds of slides; mitoses are then also pooled per preset (see
``pooled_slide_metrics``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from histo.data import InputSpec, TileDataModule, data_config_from_dict
from histo.models import ModelCard, MultiTaskNet, find_card, load_model
from histo.train import MultiTaskModule, TrainConfig, fit, load_train_config

TARGETS = {"pattern_bacc": 0.90, "necrosis_auroc": 0.95, "mitosis_f1": 0.80}


def _scale_data(config: TrainConfig, scale: str | None) -> tuple[dict[str, Any] | None, Any]:
    """(raw data section, DataConfig) of one scale (its own data, else the top-level one)."""
    d = config.to_dict()
    if scale is not None and config.model.scales and (config.model.scales[scale].data is not None):
        return d["model"]["scales"][scale]["data"], config.model.scales[scale].data
    return d["data"], config.data


def eval_data_config(config: TrainConfig, seeds: list[int], cache_dir: Path | None, scale: str | None = None) -> Any:
    """The (scale's) training data section with other phantom seeds, phantoms only, one split, no augmentation."""
    raw, data = _scale_data(config, scale)
    if not raw or not raw.get("phantoms"):
        raise SystemExit("eval_phantoms: the config has no data.phantoms section to draw evaluation phantoms from")
    raw = {k: v for k, v in raw.items() if k not in ("frames", "images", "slides", "tiles_csv")}  # phantoms only
    train_seeds = set(data.phantoms.seed_list())
    if train_seeds & set(seeds):
        raise SystemExit(f"eval_phantoms: evaluation seeds {sorted(train_seeds & set(seeds))} were used in training")
    raw["phantoms"]["seeds"], raw["phantoms"]["n_per_spec"] = list(seeds), None
    if cache_dir is not None:
        raw["phantoms"]["cache_dir"] = str(cache_dir)
    raw.update(augment=[], stride_px=None, balance="none", mitosis_oversample=1.0, samples_per_epoch=None,
               split={"val_fraction": 0.0, "test_fraction": 0.0, "seed": 0})
    return data_config_from_dict(raw, "<eval_phantoms>")


def scale_spec(card: ModelCard, scale: str) -> InputSpec:
    """The InputSpec of one scale of a card."""
    s = card.scales[scale]
    heads = s.heads
    return InputSpec(tile_px=s.tile_px, mpp=s.mpp, mean=tuple(s.mean), std=tuple(s.std),
                     mitosis_stride_px=heads["mitosis"]["stride_px"] if "mitosis" in heads else None,
                     pattern_classes=list(heads.get("pattern", {}).get("classes", [])))


def eval_tiles(config: TrainConfig, card: ModelCard, seeds: list[int], cache_dir: Path | None,
               scale: str | None = None) -> tuple[Any, float]:
    """The evaluation tiles of one scale (a Dataset over the unseen phantoms) and the minutes spent writing phantoms."""
    t0 = time.perf_counter()
    name = scale or next(iter(card.scales))
    dm = TileDataModule(eval_data_config(config, seeds, cache_dir, scale if config.model.scales else None),
                        scale_spec(card, name))
    dm.prepare_data()
    dm.setup("fit")
    # With both split fractions 0 every evaluation slide lands in the 'train' split (augment is off above).
    return dm.datasets["train"], (time.perf_counter() - t0) / 60


def tile_level_metrics(net: MultiTaskNet, card: ModelCard, dataset: Any, device: str = "cpu",
                       batch_size: int = 64, scale: str | None = None) -> dict[str, float]:
    """Pattern balanced accuracy and AUROC, necrosis AUROC, mitosis F1/precision/recall at 7.5 µm over all tiles."""
    mpp = card.scales[scale].mpp if scale else card.mpp
    module = MultiTaskModule(net, mpp=mpp, mitosis_threshold=card.mitosis_threshold,
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


SLIDE_PRESETS = ("low_grade_alk_positive", "high_grade_alk_positive", "alk_negative", "artefacts")
SLIDE_TARGETS = {"mitoses_rel_err_max": 0.20, "necrosis_abs_err_max_pts": 5.0}


def slide_level_metrics(net: MultiTaskNet, card: ModelCard, presets: list[str], seed: int, size_px: int,
                        cache_dir: Path, device: str, workers: int = 1) -> dict[str, Any]:
    """Per preset: predicted vs true mitoses per 10 HPF, necrosis %, and verdict; plus whether all targets hold."""
    import dataclasses
    import tempfile

    from histo.aggregate import assess_slide
    from histo.predict import load_prediction, predict_slide
    from histo.synth.phantom import build_phantom, load_spec, make_phantom, render_key, replace_size, summary

    rows: dict[str, Any] = {}
    cache_dir.mkdir(parents=True, exist_ok=True)
    pred_root = Path(tempfile.mkdtemp(prefix="eval_slides_"))
    for i, preset in enumerate(presets):
        spec = replace_size(dataclasses.replace(load_spec(Path("configs/synth") / f"{preset}.yaml"), seed=seed + i),
                            size_px, size_px)
        # Cached slides are keyed on the full spec and the phantom code, so an edited preset or renderer
        # is rendered again; the truth is recomputed every time (cheap, no pixels).
        out = cache_dir / f"s{seed + i}_{size_px}_{render_key(spec)}"
        he = out / preset / f"{spec.name}_HE.tiff"
        t0 = time.perf_counter()
        if he.is_file():
            truth = summary(build_phantom(spec))
        else:
            ph = make_phantom(spec, out, ihc=False, workers=2)
            truth, he = ph.summary, ph.he_path
        t_write = time.perf_counter() - t0
        res = predict_slide(he, net, card, pred_root, workers=workers, device=device, progress=False)
        tiles, mitoses, info = load_prediction(res.out_dir)
        a = assess_slide(tiles, mitoses, info["slide_mpp"], slide_size_px=info.get("slide_dimensions"),
                         mitosis_threshold=card.mitosis_threshold, not_measured=info.get("heads_not_run") or {}).to_dict()
        m = a["measurements"]
        t_mit = truth["mitoses"]["per_10hpf"]
        p_mit = m["mitoses"]["per_10hpf"]
        t_nec = truth["necrosis_pct_of_tumour"]
        p_nec = m["necrosis_pct_of_tumour"]
        t_hg = bool(truth["grading"]["high_grade"])
        p_hg = a["grading"]["high_grade"]["high_grade"]
        rel = None if p_mit is None or not t_mit else (p_mit - t_mit) / t_mit
        g = a["grading"]
        hs = m["mitoses"]["hotspot"] or {}
        scores = {"mitotic_score": (truth["grading"]["mitotic_score"], g["mitotic_score"]["score"]),
                  "necrosis_score": (truth["grading"]["necrosis_score"], g["necrosis_score"]["score"])}
        rows[preset] = {
            "truth": {"mitoses_per_10hpf": round(t_mit, 2), "mitoses_count": truth["mitoses"]["count"],
                      "viable_tumour_mm2": round(truth["areas_mm2"]["tumour_viable"], 4),
                      "mitoses_hotspot_per_10hpf": truth["mitoses"]["hotspot_per_10hpf"],
                      "necrosis_pct": round(t_nec, 2), "high_grade": t_hg,
                      "mitoses_per_10hpf_graded": round(truth["grading"]["mitoses_per_10hpf_graded"], 2),
                      "mitotic_score": scores["mitotic_score"][0], "necrosis_score": scores["necrosis_score"][0],
                      "verdict_basis": truth["grading"]["rules"]["mitotic_count_basis"]},
            "histo": {"mitoses_per_10hpf": None if p_mit is None else round(p_mit, 2),
                      "mitoses_count": m["mitoses"]["count"],
                      "mitoses_hotspot_per_10hpf": (m["mitoses"]["hotspot"] or {}).get("per_10hpf"),
                      "necrosis_pct": None if p_nec is None else round(p_nec, 2), "high_grade": p_hg,
                      "mitoses_per_10hpf_graded": _round(g["mitotic_score"]["evidence"]["value"]),
                      "mitoses_graded_count": g["mitotic_score"]["evidence"]["count"],
                      "mitoses_graded_area_mm2": _round(g["mitotic_score"]["evidence"]["counted_area_mm2"], 4),
                      "hotspot_counted_in": hs.get("counted_in"),
                      "mitotic_score": scores["mitotic_score"][1], "necrosis_score": scores["necrosis_score"][1],
                      "tumour_area_mm2": round(m["tumour_area_mm2"], 3),
                      "viable_tumour_mm2": round(m["viable_tumour_area_mm2"], 4), "hpf_mm2": m["mitoses"]["hpf_area_mm2"]},
            "mitoses_rel_err": None if rel is None else round(rel, 3),
            "necrosis_abs_err_pts": None if p_nec is None else round(abs(p_nec - t_nec), 2),
            "verdict_right": p_hg == t_hg,
            "mitotic_score_right": scores["mitotic_score"][0] == scores["mitotic_score"][1],
            "necrosis_score_right": scores["necrosis_score"][0] == scores["necrosis_score"][1],
            "seconds": {"phantom": round(t_write, 1), "predict": res.seconds},
        }
    ok_mit = all(r["mitoses_rel_err"] is not None and abs(r["mitoses_rel_err"]) <= SLIDE_TARGETS["mitoses_rel_err_max"]
                 for r in rows.values())
    ok_nec = all(r["necrosis_abs_err_pts"] is not None
                 and r["necrosis_abs_err_pts"] <= SLIDE_TARGETS["necrosis_abs_err_max_pts"] for r in rows.values())
    return {"slides": rows, "slide_size_px": size_px, "slide_seed": seed,
            "slide_targets": SLIDE_TARGETS,
            "slide_targets_met": {"mitoses_within_20pct": ok_mit, "necrosis_within_5pts": ok_nec,
                                  "verdict_right_every_preset": all(r["verdict_right"] for r in rows.values()),
                                  "fnclcc_scores_right_every_preset": all(_scores_right(r) for r in rows.values())}}


def _round(v: float | None, nd: int = 2) -> float | None:
    return None if v is None else round(v, nd)


def _scores_right(row: dict[str, Any]) -> bool:
    """Both FNCLCC component scores equal the truth's."""
    return row["mitotic_score_right"] and row["necrosis_score_right"]


def slide_table(rounds: list[dict[str, Any]]) -> str:
    """Markdown table, one row per slide: verdict and both FNCLCC scores, histo against the truth."""
    head = ("| seed | preset | high grade truth / histo | mitotic score truth / histo (graded per 10 HPF) "
            "| necrosis score truth / histo (necrosis %) | agree |")
    lines = [head, "|---|---|---|---|---|---|"]
    for rnd in rounds:
        for i, (preset, r) in enumerate(rnd["slides"].items()):
            t, h = r["truth"], r["histo"]
            hg = f"{'yes' if t['high_grade'] else 'no'} / {'n/a' if h['high_grade'] is None else ('yes' if h['high_grade'] else 'no')}"
            mit = (f"{t['mitotic_score']} / {h['mitotic_score']} ({t['mitoses_per_10hpf_graded']} / "
                   f"{h['mitoses_per_10hpf_graded']}: {h['mitoses_graded_count']} in {h['mitoses_graded_area_mm2']} mm², "
                   f"{h['hotspot_counted_in']})")
            nec = f"{t['necrosis_score']} / {h['necrosis_score']} ({t['necrosis_pct']} / {h['necrosis_pct']})"
            ok = r["verdict_right"] and _scores_right(r)
            lines.append(f"| {rnd['slide_seed'] + i} | {preset} | {hg} | {mit} | {nec} | {'yes' if ok else 'NO'} |")
    return "\n".join(lines)


def pooled_slide_metrics(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per preset over several rounds of slides: mitoses per 10 HPF as all counts over all viable tumour.

    A 6 mm low-grade phantom holds 4-11 mitoses, so one missed figure moves its own rate by 9-25 %: a
    single slide cannot resolve a ±20 % target there. Pooling slides of one preset (as a study pools
    cases) measures the count's bias; the per-slide errors stay in ``slide_rounds``. Necrosis and the
    verdict are still judged on every slide.
    """
    pooled: dict[str, Any] = {}
    for preset in rounds[0]["slides"]:
        rows = [r["slides"][preset] for r in rounds]
        t_n = sum(r["truth"]["mitoses_count"] for r in rows)
        h_n = sum(r["histo"]["mitoses_count"] for r in rows)
        t_a = sum(r["truth"]["viable_tumour_mm2"] for r in rows)
        h_a = sum(r["histo"]["viable_tumour_mm2"] for r in rows)
        hpf = rows[0]["histo"]["hpf_mm2"]
        t_rate = 10 * hpf * t_n / t_a if t_a else None
        h_rate = 10 * hpf * h_n / h_a if h_a else None
        pooled[preset] = {
            "slides": len(rows), "truth_mitoses": t_n, "histo_mitoses": h_n,
            "truth_per_10hpf": None if t_rate is None else round(t_rate, 3),
            "histo_per_10hpf": None if h_rate is None else round(h_rate, 3),
            "mitoses_rel_err": None if not t_rate or h_rate is None else round((h_rate - t_rate) / t_rate, 3),
            "per_slide_rel_err": [r["mitoses_rel_err"] for r in rows],
        }
    lim = SLIDE_TARGETS["mitoses_rel_err_max"]
    every = [r for rnd in rounds for r in rnd["slides"].values()]
    return {
        "slide_rounds": rounds, "pooled": pooled, "slide_targets": SLIDE_TARGETS,
        "slide_targets_met": {
            "mitoses_within_20pct_pooled": all(p["mitoses_rel_err"] is not None and abs(p["mitoses_rel_err"]) <= lim
                                               for p in pooled.values()),
            "mitoses_within_20pct_every_slide": all(r["mitoses_rel_err"] is not None and abs(r["mitoses_rel_err"]) <= lim
                                                    for r in every),
            "necrosis_within_5pts_every_slide": all(r["necrosis_abs_err_pts"] is not None and r["necrosis_abs_err_pts"]
                                                    <= SLIDE_TARGETS["necrosis_abs_err_max_pts"] for r in every),
            "verdict_right_every_slide": all(r["verdict_right"] for r in every),
            "fnclcc_scores_right_every_slide": all(_scores_right(r) for r in every),
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Train (or load) and evaluate; print one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", default="configs/train/phantom_multitask.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--model", help="evaluate this exported model (folder or card) instead of training")
    ap.add_argument("--seeds", type=int, nargs="+", default=[100, 101], help="evaluation phantom seeds")
    ap.add_argument("--cache-dir", type=Path, help="where evaluation phantoms are written (default: the config's)")
    ap.add_argument("--out", help="training output folder (overrides output.dir)")
    ap.add_argument("--slides", action="store_true", help="also evaluate whole phantom slides per grading preset")
    ap.add_argument("--slides-only", action="store_true", help="only the slide-level part (needs --model)")
    ap.add_argument("--slide-seed", type=int, nargs="+", default=[500],
                    help="first seed of each round of slide-level phantoms (preset i gets seed + i); with several "
                         "rounds, mitoses are also pooled per preset")
    ap.add_argument("--slide-size-px", type=int, default=24000, help="slide-level phantom edge (px at 0.25 µm/px; 24000 = 6 mm: enough mitoses in the low-grade presets for a ±20 %% check)")
    ap.add_argument("--slide-cache", type=Path, default=Path("data/eval_slides"), help="where slide phantoms are kept")
    ap.add_argument("--presets", nargs="+", default=list(SLIDE_PRESETS), choices=SLIDE_PRESETS,
                    help="slide-level presets to evaluate (default: all)")
    ap.add_argument("--table", action="store_true",
                    help="also print a Markdown table of the slide-level verdicts and FNCLCC scores to stderr")
    args = ap.parse_args(argv)
    if args.slides_only and not args.model:
        raise SystemExit("eval_phantoms: --slides-only needs --model")
    overrides = list(args.overrides) + ([f"output.dir={args.out}"] if args.out else [])
    # with --model the config gives data and inputs only: its initial weights (pretrained) need not exist
    config = load_train_config(args.config, overrides, check_init_weights=not args.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    train_minutes = None
    fit_info: dict[str, Any] = {}
    if args.model:
        path = find_card(args.model)
        net, card = load_model(path, device)
    else:
        res = fit(config)
        train_minutes = round(res.seconds / 60, 2)
        fit_info = {"steps": res.global_step, "epochs": res.epochs, "val": {k: round(v, 4) for k, v in res.metrics.items()}}
        net, card = load_model(res.card_path, device)
        path = res.card_path
    metrics: dict[str, Any] = {}
    phantom_minutes = 0.0
    t0 = time.perf_counter()
    if not args.slides_only:
        from histo.models import scale_nets

        nets = scale_nets(net, card.scales)
        for name in card.scales:  # each scale on its own phantom tiles, at its own resolution
            dataset, minutes = eval_tiles(config, card, args.seeds, args.cache_dir, name)
            phantom_minutes += minutes
            metrics.update(tile_level_metrics(nets[name], card, dataset, device, scale=name)
                           | ({"n_tiles_" + name: len(dataset)} if card.multiscale else {}))
        t0 = time.perf_counter()
        metrics["targets"] = TARGETS
        metrics["targets_met"] = {k: metrics.get(k, 0.0) >= v for k, v in TARGETS.items()}
    if args.slides or args.slides_only:
        rounds = [slide_level_metrics(net, card, list(args.presets), seed, args.slide_size_px, args.slide_cache, device)
                  for seed in args.slide_seed]
        metrics.update(rounds[0] if len(rounds) == 1 else pooled_slide_metrics(rounds))
        if args.table:
            print(slide_table(rounds), file=sys.stderr)
    line = {
        "script": "eval_phantoms", **metrics,
        "train_minutes": train_minutes, "eval_minutes": round((time.perf_counter() - t0) / 60, 2),
        "eval_phantom_minutes": round(phantom_minutes, 2), "eval_seeds": args.seeds,
        "device": device if device == "cpu" else torch.cuda.get_device_name(), "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(), "model": str(path), **({"fit": fit_info} if fit_info else {}),
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
