"""The inference loop: batches from the DataLoader → model → per-tile probabilities and mitosis points.

On CUDA: mixed precision (bf16 where supported, else fp16), channels_last, pinned host memory and
non-blocking copies, and CUDA events around the model to measure how busy the GPU was. On CPU: fp32.
Tiles travel as uint8 (4x fewer bytes than float) and are normalised on the device.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

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


# Test-time augmentation: the 8 symmetries of the square (4 turns, each with and without a mirror). A tile's
# class and its mitoses do not depend on how the glass lay on the scanner, so every variant is as valid.
TTA_TRANSFORMS = ("identity", "rot90", "rot180", "rot270", "flip", "flip_rot90", "flip_rot180", "flip_rot270")


def _tta_params(name: str) -> tuple[bool, int]:
    """(mirror first, quarter turns) of a TTA transform name."""
    if name not in TTA_TRANSFORMS:
        raise ConfigError(f"unknown TTA transform {name!r}; known: {', '.join(TTA_TRANSFORMS)}")
    return name.startswith("flip"), TTA_TRANSFORMS.index(name) % 4


def tta_forward_transform(x: torch.Tensor, name: str) -> torch.Tensor:
    """Apply TTA transform ``name`` to (N, C, H, W): mirror left-right (if flip), then turn by k quarters."""
    flip, k = _tta_params(name)
    if flip:
        x = torch.flip(x, dims=(3,))
    return torch.rot90(x, k, dims=(2, 3)) if k else x


def tta_inverse_transform(x: torch.Tensor, name: str) -> torch.Tensor:
    """Undo :func:`tta_forward_transform` on a (N, C, h, w) map (a heatmap back into the tile's own frame)."""
    flip, k = _tta_params(name)
    if k:
        x = torch.rot90(x, -k, dims=(2, 3))
    return torch.flip(x, dims=(3,)) if flip else x


@dataclass
class TtaOutputs:
    """Per-variant outputs of a TTA run: what each flip/turn alone would have given (for the spread)."""

    names: tuple[str, ...]
    pattern: np.ndarray | None  # (V, N, C) float32
    necrosis: np.ndarray | None  # (V, N) float32
    points: np.ndarray  # (K, 5) float64: variant index, tile index, x, y, score (each variant's own heatmap peaks)

    def variant_points(self, v: int) -> np.ndarray:
        """(K, 4) tile index, x, y, score of variant ``v``."""
        return self.points[self.points[:, 0] == v, 1:]


@dataclass
class InferenceOutput:
    """Per-tile outputs in grid-table order, plus the mitosis points in tile pixels.

    With TTA, ``pattern``, ``necrosis`` and ``points`` are of the mean over the variants (probabilities and
    heatmap averaged after undoing each flip/turn) and ``tta`` holds each variant's own outputs.
    """

    n_tiles: int
    pattern: np.ndarray | None  # (N, C) float32 softmax probabilities
    necrosis: np.ndarray | None  # (N,) float32 sigmoid probabilities
    ood: np.ndarray | None  # (N,) float32 ood_score (<= 1: like the training tiles) when the net has a domain head
    points: np.ndarray  # (K, 4) float64: tile index, x, y (input-tile px at the scale's mpp), score
    timings: dict[str, float] = field(default_factory=dict)
    tta: TtaOutputs | None = None


def _peaks(prob: torch.Tensor, floor: float, min_distance_px: float, stride: int,
           idx: np.ndarray) -> list[np.ndarray]:
    """Mitosis candidates (tile index, x, y, score) of a probability heatmap batch (N, 1, h, w).

    Mitoses are rare: peaks are looked for only in tiles whose best cell can pass ``floor`` (one host sync
    per batch instead of one per tile; the margin keeps that a superset under rounding)."""
    hot = (prob.flatten(1).amax(1) >= floor - 1e-6).cpu().numpy()
    if not hot.any():
        return []
    per_tile = heatmaps_to_points(prob[torch.from_numpy(hot).to(prob.device)], floor, min_distance_px, stride)
    out = []
    for i, pts in zip(idx[hot], per_tile):
        if len(pts):
            p = pts.cpu().numpy().astype(np.float64)
            out.append(np.column_stack([np.full(len(p), i, np.float64), p]))
    return out


@dataclass
class _Run:
    """What one inference pass over a scale needs, worked out once (shared by the plain and the TTA loop)."""

    n: int
    heads: dict
    classes: list[str]
    offset: torch.Tensor
    div: torch.Tensor
    cuda: bool
    autocast: Any
    min_distance_px: float
    floor: float
    stride: int


def _prepare_run(dataset: TileBatchDataset, card: ModelCard, device: torch.device, scale: str | None) -> _Run:
    spec = card.scales[scale or card.table_scale]
    heads = spec.heads
    offset, div = normaliser(spec, device)
    cuda = device.type == "cuda"
    dtype = amp_dtype(device)
    return _Run(n=sum(r[3] for b in dataset.batches for r in b), heads=heads,
                classes=list(heads.get("pattern", {}).get("classes", [])), offset=offset, div=div, cuda=cuda,
                autocast=torch.autocast("cuda", dtype=dtype) if cuda and dtype is not None else contextlib.nullcontext(),
                min_distance_px=card.mitosis_min_distance_um / spec.mpp, floor=candidate_threshold(card),
                stride=int(heads["mitosis"]["stride_px"]) if "mitosis" in heads else 0)


def _check_heads(out: dict[str, torch.Tensor], heads: dict, card: ModelCard) -> None:
    missing = [h for h in heads if h not in out]
    if missing:
        raise ModelError(f"model {card.name!r} returned no {missing} output although its card declares "
                         f"head(s) {list(heads)} at this scale")


def run_inference(dataset: TileBatchDataset, model: nn.Module, card: ModelCard, device: torch.device, *,
                  workers: int = 0, progress: bool = True, desc: str = "", scale: str | None = None,
                  tta: bool = False) -> InferenceOutput:
    """Run ``model`` (already prepared for ``device``; the net of ``scale``) over every tile of ``dataset``.

    ``scale`` names the card's input scale the tiles were read at (default: the card's only or table scale).
    Mitosis peaks are kept down to :func:`candidate_threshold`. ``tta`` runs each tile under the 8 flips and
    turns of :data:`TTA_TRANSFORMS` (8x the model time) and averages them; the domain score stays that of
    the tile as read (the training domain was described on tiles as read).
    """
    run = _prepare_run(dataset, card, device, scale)
    if tta:
        return _run_tta(dataset, model, card, device, run, workers=workers, progress=progress, desc=desc)
    n, heads = run.n, run.heads
    pattern = np.full((n, len(run.classes)), np.nan, np.float32) if "pattern" in heads else None
    necrosis = np.full(n, np.nan, np.float32) if "necrosis" in heads else None
    ood = np.full(n, np.nan, np.float32)
    has_ood = False
    points: list[np.ndarray] = []
    on_device: list[tuple[str, np.ndarray, torch.Tensor]] = []
    events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
    loader = make_loader(dataset, workers, pin_memory=run.cuda)
    t0 = time.perf_counter()
    with torch.inference_mode(), tqdm(total=n, desc=desc, unit="tile", leave=False, disable=not progress) as bar:
        for index, tiles in loader:
            x = to_input(tiles, run.offset, run.div, device)
            if run.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
            with run.autocast:
                out = model(x)
            if run.cuda:
                end.record()  # model time only: post-processing below syncs with the host
                events.append((start, end))
            _check_heads(out, heads, card)
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
                points.extend(_peaks(out["mitosis"].float().sigmoid(), run.floor, run.min_distance_px, run.stride, idx))
            bar.update(len(idx))
        for name, target in (("pattern", pattern), ("necrosis", necrosis), ("ood", ood)):
            parts = [(i, p) for nm, i, p in on_device if nm == name]
            if target is not None and parts:
                target[np.concatenate([i for i, _ in parts])] = torch.cat([p for _, p in parts]).cpu().numpy()
    seconds = time.perf_counter() - t0
    timings = {"infer_s": round(seconds, 4)}
    if run.cuda:
        torch.cuda.synchronize(device)
        busy_ms = sum(s.elapsed_time(e) for s, e in events)
        timings["gpu_busy_fraction"] = round(busy_ms / 1000.0 / seconds, 4) if seconds > 0 else 0.0
    all_points = np.concatenate(points) if points else np.zeros((0, 4), np.float64)
    return InferenceOutput(n_tiles=n, pattern=pattern, necrosis=necrosis, ood=ood if has_ood else None, points=all_points,
                           timings=timings)


def _run_tta(dataset: TileBatchDataset, model: nn.Module, card: ModelCard, device: torch.device, run: _Run, *,
             workers: int, progress: bool, desc: str) -> InferenceOutput:
    """:func:`run_inference` under the 8 TTA transforms: mean outputs plus every variant's own."""
    n, heads, names = run.n, run.heads, TTA_TRANSFORMS
    nv = len(names)
    pattern = np.full((nv, n, len(run.classes)), np.nan, np.float32) if "pattern" in heads else None
    necrosis = np.full((nv, n), np.nan, np.float32) if "necrosis" in heads else None
    ood = np.full(n, np.nan, np.float32)
    has_ood = False
    mean_points: list[np.ndarray] = []
    var_points: list[np.ndarray] = []
    loader = make_loader(dataset, workers, pin_memory=run.cuda)
    t0 = time.perf_counter()
    with torch.inference_mode(), tqdm(total=n, desc=f"{desc} (TTA x{nv})".strip(), unit="tile", leave=False,
                                      disable=not progress) as bar:
        for index, tiles in loader:
            x = to_input(tiles, run.offset, run.div, device)
            idx = index.numpy()
            heat_sum: torch.Tensor | None = None
            for v, name in enumerate(names):
                with run.autocast:
                    out = model(tta_forward_transform(x, name))
                _check_heads(out, heads, card)
                if v == 0 and "ood" in out:
                    has_ood = True
                    ood[idx] = out["ood"].float().cpu().numpy()
                if pattern is not None:
                    pattern[v, idx] = out["pattern"].float().softmax(1).cpu().numpy()
                if necrosis is not None:
                    necrosis[v, idx] = out["necrosis"].float().sigmoid().cpu().numpy()
                if "mitosis" in heads:
                    prob = tta_inverse_transform(out["mitosis"].float().sigmoid(), name)
                    heat_sum = prob if heat_sum is None else heat_sum + prob
                    for p in _peaks(prob, run.floor, run.min_distance_px, run.stride, idx):
                        var_points.append(np.column_stack([np.full(len(p), v, np.float64), p]))
            if heat_sum is not None:
                mean_points.extend(_peaks(heat_sum / nv, run.floor, run.min_distance_px, run.stride, idx))
            bar.update(len(idx))
    seconds = time.perf_counter() - t0
    pts = np.concatenate(mean_points) if mean_points else np.zeros((0, 4), np.float64)
    vpts = np.concatenate(var_points) if var_points else np.zeros((0, 5), np.float64)
    variants = TtaOutputs(names=names, pattern=pattern, necrosis=necrosis, points=vpts)
    return InferenceOutput(n_tiles=n, pattern=None if pattern is None else pattern.mean(0),
                           necrosis=None if necrosis is None else necrosis.mean(0), ood=ood if has_ood else None,
                           points=pts, timings={"infer_s": round(seconds, 4), "tta_variants": float(nv)},
                           tta=variants)
