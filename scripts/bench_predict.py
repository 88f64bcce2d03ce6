#!/usr/bin/env python
"""Benchmark slide inference per input scale and end to end, against model-only, in one run.

Writes (once, cached) a histo.synth.simple slide at 0.25 µm/px, plans one tissue grid per scale of the
model (default: the default model's two scales, mitosis at 0.25 µm/px and tissue heads at 1 µm/px, with
random weights), then measures per scale, in one process, on the same device, model and batch size:
  model_only  the model's forward on tensors already on the device (normalised, channels_last on CUDA),
              in the slide's own batch sizes: the ceiling
  read_only   the histo.predict DataLoader alone (workers reading tiles, nothing computed)
  end_to_end  histo.predict.run_inference: reads + host→device copy + model + post-processing
and the whole pipeline of every scale (tissue once, reads, models, join: histo.predict.predict_scales).
It prints one JSON line: per scale tiles/s and mm²/s of each measurement, end_to_end / model_only and
which one bounds the run (on CUDA the GPU busy fraction), and for all scales together mm²/s end to end
against the model-only time of every scale summed.
The three are interleaved --repeats times and the best of each is kept (shared machines drift).
Weights are random: speed does not depend on them.

Usage: python scripts/bench_predict.py [--backbone small|tiny|resnet18] [--scales cells:128:0.25:mitosis,...]
       [--model DIR] [--batch-size 64] [--workers 2] [--device auto] [--size-px 8192] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from pathlib import Path

DEFAULT_SCALES = "cells:128:0.25:mitosis,tissue:64:1.0:pattern+necrosis"


def parse_scales(text: str, backbone: str) -> dict:
    """'name:tile_px:mpp:head+head,...' → card scales (random weights: speed does not depend on them)."""
    out = {}
    for part in text.split(","):
        name, tile, mpp, heads = part.split(":")
        out[name] = {"backbone": backbone, "tile_px": int(tile), "mpp": float(mpp), "heads": heads.split("+"),
                     "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="small", choices=["tiny", "small", "resnet18"])
    ap.add_argument("--scales", default=DEFAULT_SCALES,
                    help="name:tile_px:mpp:heads,... (default: the default model's two scales)")
    ap.add_argument("--model", help="benchmark this model's architecture and scales instead (folder or card)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--size-px", type=int, default=8192, help="side of the square benchmark slide (level-0 px)")
    ap.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "histo-bench"))
    ap.add_argument("--repeats", type=int, default=3, help="interleaved passes of each measurement (best kept)")
    args = ap.parse_args()

    import torch

    from histo.models import ModelCard, build_model, load_model, scale_nets
    from histo.predict import TileBatchDataset, make_loader, plan_scales, predict_scales, resolve_device, run_inference
    from histo.predict.engine import amp_dtype, normaliser, prepare_model
    from histo.slide import open_slide
    from histo.synth.simple import write_simple_slide

    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    slide_path = cache / f"bench_predict_simple_{args.size_px}.tiff"
    if not slide_path.is_file():
        write_simple_slide(slide_path, args.size_px, args.size_px, mpp=0.25, seed=7, tissue_fraction=0.35)

    dev = resolve_device(args.device)
    torch.manual_seed(0)
    if args.model:
        model, card = load_model(args.model)
    else:
        card = ModelCard(name=f"bench-{args.backbone}", scales=parse_scales(args.scales, args.backbone))
        model = build_model(card)
    model = prepare_model(model, dev)
    nets = scale_nets(model, card.scales)
    with open_slide(slide_path) as s:
        grids, mask = plan_scales(s, card)
        tissue_mm2 = float(mask.area_mm2)
    cuda = dev.type == "cuda"
    dtype = amp_dtype(dev)
    autocast = torch.autocast("cuda", dtype=dtype) if cuda else contextlib.nullcontext()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    per_scale = {}
    for name, grid in grids.items():
        spec, net, n_tiles = card.scales[name], nets[name], len(grid)
        if n_tiles == 0:
            raise SystemExit("benchmark slide has no tissue tiles")
        offset, div = normaliser(spec, dev)
        x = torch.randint(0, 256, (args.batch_size, spec.tile_px, spec.tile_px, 3), dtype=torch.uint8, device=dev)
        x = x.permute(0, 3, 1, 2).float()
        x = ((x if cuda else x.contiguous()) - offset) / div
        sizes = [sum(r[3] for r in b) for b in TileBatchDataset(str(slide_path), None, grid, args.batch_size).batches]
        with torch.inference_mode():
            for n in sorted(set(sizes)) * 2:  # warm-up every shape: cudnn autotuning, oneDNN primitives, allocator
                with autocast:
                    net(x[:n])
            sync()

        def model_only() -> float:
            with torch.inference_mode():
                t0 = time.perf_counter()
                for n in sizes:
                    with autocast:
                        net(x[:n])
                sync()
                return n_tiles / (time.perf_counter() - t0)

        def read_only() -> float:
            ds = TileBatchDataset(str(slide_path), None, grid, args.batch_size)
            t0 = time.perf_counter()
            for _ in make_loader(ds, args.workers, pin_memory=cuda):
                pass
            ds.close()
            return n_tiles / (time.perf_counter() - t0)

        def end_to_end():
            ds = TileBatchDataset(str(slide_path), None, grid, args.batch_size)
            out = run_inference(ds, net, card, dev, workers=args.workers, progress=False, scale=name)
            ds.close()
            return out

        model_tps = read_tps = 0.0
        best = None
        for _ in range(max(1, args.repeats)):
            model_tps = max(model_tps, model_only())
            read_tps = max(read_tps, read_only())
            out = end_to_end()
            if best is None or out.timings["infer_s"] < best.timings["infer_s"]:
                best = out
        e2e_tps = n_tiles / best.timings["infer_s"]
        mm2_per_tile = (spec.tile_px * spec.mpp / 1000.0) ** 2  # non-overlapping grid: each tile covers this
        per_scale[name] = {
            "heads": list(spec.heads), "tile_px": spec.tile_px, "mpp": spec.mpp, "n_tiles": n_tiles,
            "end_to_end_tiles_per_s": round(e2e_tps, 1), "model_only_tiles_per_s": round(model_tps, 1),
            "read_only_tiles_per_s": round(read_tps, 1),
            "end_to_end_mm2_per_s": round(e2e_tps * mm2_per_tile, 4),
            "model_only_mm2_per_s": round(model_tps * mm2_per_tile, 4),
            "end_to_end_over_model_only": round(e2e_tps / model_tps, 3),
            "bound_by": "model" if model_tps <= read_tps else "reading",
            "gpu_busy_fraction": best.timings.get("gpu_busy_fraction"),
            "end_to_end_s": round(best.timings["infer_s"], 3),
        }

    # the whole pipeline, every scale: plan (tissue once) + read + model + join, as histo predict runs it
    total_s = float("inf")
    for _ in range(max(1, args.repeats)):
        with open_slide(slide_path) as s:
            t0 = time.perf_counter()
            predict_scales(s, slide_path, None, model, card, dev, batch_size=args.batch_size, workers=args.workers)
            total_s = min(total_s, time.perf_counter() - t0)
    model_only_s = sum(v["n_tiles"] / v["model_only_tiles_per_s"] for v in per_scale.values())
    result = {
        "bench": "predict",
        "device": torch.cuda.get_device_name(dev) if cuda else f"cpu ({platform.processor() or platform.machine()}, "
                                                                 f"{torch.get_num_threads()} torch threads)",
        "amp_dtype": str(dtype).replace("torch.", "") if dtype else "float32",
        "model": card.name,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "slide_px": args.size_px,
        "tissue_mm2": round(tissue_mm2, 3),
        "scales": per_scale,
        "all_scales": {
            "end_to_end_s": round(total_s, 3),
            "end_to_end_mm2_per_s": round(tissue_mm2 / total_s, 4),
            "model_only_s": round(model_only_s, 3),
            "model_only_mm2_per_s": round(tissue_mm2 / model_only_s, 4),
            "end_to_end_over_model_only": round(model_only_s / total_s, 3),
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
