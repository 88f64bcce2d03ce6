"""The inference loop: batches from the DataLoader → model → per-tile probabilities and mitosis points.

On CUDA: mixed precision (bf16 where supported, else fp16), channels_last, pinned host memory and
non-blocking copies, and CUDA events around the model to measure how busy the GPU was. On CPU: fp32.
Tiles travel as uint8 (4x fewer bytes than float) and are normalised on the device.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from histo.errors import ConfigError, ModelError
from histo.models import ModelCard, ScaleSpec, heatmaps_to_points
from histo.predict.dataset import TileBatchDataset, make_loader


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' → the first CUDA GPU when present, else CPU; an unavailable CUDA device is a ConfigError."""
    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA GPU (use --device cpu or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r} asked for, but only {torch.cuda.device_count()} GPU(s) are visible")
    elif dev.type != "cpu":
        raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return dev


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype used on ``device``: bf16 on GPUs that support it, fp16 on older ones, None on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move the model to ``device`` in eval mode (channels_last on CUDA, where convolutions prefer it)."""
    model = model.to(device).eval()
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


# Heatmap peaks down to this probability are kept as mitosis candidates (mitoses.parquet keeps their
# scores); grading counts those at or above mitoses.min_score, which defaults to the card's threshold.
# So lowering min_score below the card's threshold finds the weaker candidates instead of changing nothing.
CANDIDATE_FLOOR = 0.1


def candidate_threshold(card: ModelCard) -> float:
    """The heatmap probability down to which mitosis candidates are kept: the card's threshold or the floor."""
    return min(card.mitosis_threshold, CANDIDATE_FLOOR)


def normaliser(spec: ModelCard | ScaleSpec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(offset, scale) such that (uint8 - offset) / scale == (x / 255 - mean) / std."""
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return mean * 255.0, std * 255.0


def to_input(tiles: torch.Tensor, offset: torch.Tensor, scale: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W, 3) host tiles → normalised float (N, 3, H, W) on ``device``."""
    x = tiles.to(device, non_blocking=device.type == "cuda").permute(0, 3, 1, 2)
    # NHWC permuted to NCHW is already channels_last in memory: keep it so on CUDA, make it plain on CPU.
    x = x.float() if device.type == "cuda" else x.float().contiguous()
    return (x - offset) / scale


@dataclass
class InferenceOutput:
    """Per-tile outputs in grid-table order, plus the mitosis points in tile pixels."""

    n_tiles: int
    pattern: np.ndarray | None  # (N, C) float32 softmax probabilities
    necrosis: np.ndarray | None  # (N,) float32 sigmoid probabilities
    ood: np.ndarray | None  # (N,) float32 ood_score (<= 1: like the training tiles) when the net has a domain head
    points: np.ndarray  # (K, 4) float64: tile index, x, y (input-tile px at the scale's mpp), score
    timings: dict[str, float] = field(default_factory=dict)


def run_inference(dataset: TileBatchDataset, model: nn.Module, card: ModelCard, device: torch.device, *,
                  workers: int = 0, progress: bool = True, desc: str = "", scale: str | None = None) -> InferenceOutput:
    """Run ``model`` (already prepared for ``device``; the net of ``scale``) over every tile of ``dataset``.

    ``scale`` names the card's input scale the tiles were read at (default: the card's only or table scale).
    Mitosis peaks are kept down to :func:`candidate_threshold`.
    """
    spec = card.scales[scale or card.table_scale]
    n = sum(r[3] for b in dataset.batches for r in b)
    heads = spec.heads
    classes = list(heads.get("pattern", {}).get("classes", []))
    pattern = np.full((n, len(classes)), np.nan, np.float32) if "pattern" in heads else None
    necrosis = np.full(n, np.nan, np.float32) if "necrosis" in heads else None
    ood = np.full(n, np.nan, np.float32)
    has_ood = False
    points: list[np.ndarray] = []
    on_device: list[tuple[str, np.ndarray, torch.Tensor]] = []
    offset, div = normaliser(spec, device)
    cuda = device.type == "cuda"
    dtype = amp_dtype(device)
    autocast = torch.autocast("cuda", dtype=dtype) if cuda and dtype is not None else contextlib.nullcontext()
    min_distance_px = card.mitosis_min_distance_um / spec.mpp
    floor = candidate_threshold(card)
    threshold_logit = math.log(floor / (1.0 - floor))
    events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
    loader = make_loader(dataset, workers, pin_memory=cuda)
    t0 = time.perf_counter()
    with torch.inference_mode(), tqdm(total=n, desc=desc, unit="tile", leave=False, disable=not progress) as bar:
        for index, tiles in loader:
            x = to_input(tiles, offset, div, device)
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
            with autocast:
                out = model(x)
            if cuda:
                end.record()  # model time only: post-processing below syncs with the host
                events.append((start, end))
            missing = [h for h in heads if h not in out]
            if missing:
                raise ModelError(f"model {card.name!r} returned no {missing} output although its card declares "
                                 f"head(s) {list(heads)} at this scale")
            idx = index.numpy()
            # Tile probabilities stay on the device until the end: no host sync per batch for them.
            if pattern is not None:
                on_device.append(("pattern", idx, out["pattern"].float().softmax(1)))
            if necrosis is not None:
                on_device.append(("necrosis", idx, out["necrosis"].float().sigmoid()))
            if "ood" in out:
                has_ood = True
                on_device.append(("ood", idx, out["ood"].float()))
            if "mitosis" in heads:
                # Mitoses are rare: find peaks only in tiles whose best logit can pass the threshold (one
                # host sync per batch instead of one per tile); the margin keeps it a superset under rounding.
                hm = out["mitosis"].float()
                hot = (hm.flatten(1).amax(1) >= threshold_logit - 1e-3).cpu().numpy()
                per_tile = heatmaps_to_points(hm[torch.from_numpy(hot).to(hm.device)], floor,
                                              min_distance_px, heads["mitosis"]["stride_px"],
                                              from_logits=True) if hot.any() else []
                for i, pts in zip(idx[hot], per_tile):
                    if len(pts):
                        p = pts.cpu().numpy().astype(np.float64)
                        points.append(np.column_stack([np.full(len(p), i, np.float64), p]))
            bar.update(len(idx))
        for name, target in (("pattern", pattern), ("necrosis", necrosis), ("ood", ood)):
            parts = [(i, p) for nm, i, p in on_device if nm == name]
            if target is not None and parts:
                target[np.concatenate([i for i, _ in parts])] = torch.cat([p for _, p in parts]).cpu().numpy()
    seconds = time.perf_counter() - t0
    timings = {"infer_s": round(seconds, 4)}
    if cuda:
        torch.cuda.synchronize(device)
        busy_ms = sum(s.elapsed_time(e) for s, e in events)
        timings["gpu_busy_fraction"] = round(busy_ms / 1000.0 / seconds, 4) if seconds > 0 else 0.0
    pts = np.concatenate(points) if points else np.zeros((0, 4), np.float64)
    return InferenceOutput(n_tiles=n, pattern=pattern, necrosis=necrosis, ood=ood if has_ood else None, points=pts,
                           timings=timings)
