"""Prediction at every input scale of a model, joined on level-0 coordinates.

A model card lists its scales (histo.models.ScaleSpec): for example the mitosis head at 0.25 µm/px and
the pattern and necrosis heads at 1 µm/px. Each scale gets its own tile grid over one shared tissue mask,
read once from the pyramid level nearest its mpp (histo.tiling.read_run through histo.slide), and its
own forward pass. The tile table is the grid of the card's table scale (that of the area heads); per-tile
outputs of heads read at another scale are joined onto it by level-0 tile centre, and mitosis points of
any scale are mapped to level-0 pixels and µm.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from histo.errors import ConfigError
from histo.models import ModelCard, scale_nets
from histo.predict.dataset import TileBatchDataset
from histo.predict.engine import InferenceOutput, prepare_model, run_inference
from histo.predict.outputs import PATTERN_PREFIX, mitoses_frame, tiles_frame
from histo.slide import Slide
from histo.tiling import TileGrid, TilingConfig, plan_grid
from histo.tissue import TissueMask


def scale_tiling(card: ModelCard, scale: str, tiling: TilingConfig | None = None,
                 overlap_px: int | None = None) -> TilingConfig:
    """The tiling of one scale: ``tiling``'s tissue and grid options at that scale's tile_px and mpp."""
    tiling = tiling or TilingConfig()
    spec = card.scales[scale]
    g = tiling.grid
    try:
        grid = dataclasses.replace(g, tile_px=spec.tile_px, mpp=spec.mpp,
                                   overlap_px=g.overlap_px if overlap_px is None else overlap_px,
                                   mask_mpp=max(g.mask_mpp, card.mpp))
    except ValueError as exc:
        raise ConfigError(f"tiling for model {card.name!r} scale {scale!r} (tile_px {spec.tile_px}, "
                          f"mpp {spec.mpp:g}): {exc}") from exc
    return dataclasses.replace(tiling, grid=grid)


def plan_scales(slide: Slide, card: ModelCard, tiling: TilingConfig | None = None,
                overlap_px: int | None = None, scales: list[str] | None = None) -> tuple[dict[str, TileGrid], TissueMask]:
    """One tile grid per scale (``scales``, default all) over one tissue mask, detected once at the table scale's
    mask resolution. The table scale is always planned: its grid is the tile table, even when its heads are skipped."""
    wanted = set(scales if scales is not None else card.scales) | {card.table_scale}
    order = [card.table_scale] + [s for s in card.scales if s != card.table_scale and s in wanted]
    grids: dict[str, TileGrid] = {}
    mask: TissueMask | None = None
    for name in order:
        grids[name], mask = plan_grid(slide, scale_tiling(card, name, tiling, overlap_px), mask=mask)
    if mask is None:
        raise ConfigError(f"model {card.name!r} has no scale to plan")
    return {n: grids[n] for n in card.scales if n in grids}, mask


@dataclass
class ScalePrediction:
    """Joined outputs of every scale: the tile table (table scale), mitosis candidates, and per-scale figures."""

    tiles: pd.DataFrame
    mitoses: pd.DataFrame
    grids: dict[str, TileGrid]
    n_tiles: dict[str, int]
    timings: dict[str, float] = field(default_factory=dict)
    heads_not_run: dict[str, str] = field(default_factory=dict)  # head -> why (slide too coarse for its scale)
    tta: TtaTables | None = None  # each TTA variant's own tables (None without --tta)


@dataclass
class TtaTables:
    """What each test-time flip/turn alone gives, in long form (``variant`` names the transform).

    ``tiles``: ``tile`` (row of the tile table), ``variant`` and that variant's probability columns.
    ``mitoses``: ``variant`` plus the columns of the mitosis table, from that variant's own heatmap.
    The main tables hold the mean over the variants; these give the spread of the measurements.
    """

    names: tuple[str, ...]
    tiles: pd.DataFrame
    mitoses: pd.DataFrame


def infer_scales(slide_path: str | Path, mpp: float | None, grids: dict[str, TileGrid],
                 model: nn.Module, card: ModelCard, device: torch.device, *, batch_size: int, workers: int,
                 progress: bool, desc: str, slide: Slide | None = None,
                 skip: frozenset[str] = frozenset(), tta: bool = False) -> dict[str, InferenceOutput | None]:
    """Run each scale's net over its grid (None for an empty grid or a scale in ``skip``); ``slide`` reads in-process."""
    from histo.data.stain import normaliser_from_spec

    nets = scale_nets(model, card.scales)
    norm = normaliser_from_spec(card.preprocessing.get("stain_normalisation"))
    out: dict[str, InferenceOutput | None] = {}
    for name, grid in grids.items():
        if not len(grid) or name in skip:
            out[name] = None
            continue
        dataset = TileBatchDataset(str(slide_path), mpp, grid, batch_size, slide=slide, normaliser=norm)
        net = prepare_model(nets[name], device)
        label = f"{desc} {name}" if card.multiscale else desc
        try:
            out[name] = run_inference(dataset, net, card, device, workers=workers, progress=progress,
                                      desc=label, scale=name, tta=tta)
        finally:
            dataset.close()
    return out


def join_scales(card: ModelCard, grids: dict[str, TileGrid], outputs: dict[str, InferenceOutput | None],
                slide_mpp: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(tiles, mitoses): the table scale's tiles with every per-tile head, and all mitosis candidates."""
    table = card.table_scale
    grid = grids[table]
    probs: dict[str, np.ndarray | None] = {"pattern": None, "necrosis": None}
    n = len(grid)
    for head in ("pattern", "necrosis"):
        if head not in card.heads:
            continue
        src = card.scale_of(head)
        if src not in grids:
            continue
        res = outputs.get(src)
        values = getattr(res, head) if res is not None else None
        if src == table:
            probs[head] = values if values is not None else _empty(head, card, n)
        else:
            probs[head] = _join_by_centre(grid.table, grids[src].table, values, _empty(head, card, n))
    tiles = tiles_frame(grid.table, probs["pattern"], probs["necrosis"], card.classes)
    if card.domain is not None:
        tiles["ood_score"], tiles["in_domain"] = _join_ood(card, grids, outputs, n)
    if "mitosis" in card.heads:
        src = card.scale_of("mitosis")
        res = outputs.get(src)
        points = res.points if res is not None else np.zeros((0, 4))
        table_of = grids[src].table if src in grids else grid.table
        mitoses = mitoses_frame(points, table_of, card.scales[src].tile_px, slide_mpp, card.mitosis_min_distance_um)
    else:
        mitoses = mitoses_frame(np.zeros((0, 4)), grid.table, card.tile_px, slide_mpp, card.mitosis_min_distance_um)
    return tiles, mitoses


def join_tta(card: ModelCard, grids: dict[str, TileGrid], outputs: dict[str, InferenceOutput | None],
             slide_mpp: float) -> TtaTables | None:
    """Each TTA variant's tiles and mitoses joined like the mean's (None when the run had no TTA)."""
    runs = {k: o for k, o in outputs.items() if o is not None}
    if not runs or any(o.tta is None for o in runs.values()):
        return None
    names = next(iter(runs.values())).tta.names  # type: ignore[union-attr]
    tiles_parts, mit_parts = [], []
    for v, name in enumerate(names):
        variant: dict[str, InferenceOutput | None] = {}
        for k, o in outputs.items():
            if o is None or o.tta is None:
                variant[k] = None
                continue
            t = o.tta
            variant[k] = InferenceOutput(n_tiles=o.n_tiles,
                                         pattern=None if t.pattern is None else t.pattern[v],
                                         necrosis=None if t.necrosis is None else t.necrosis[v],
                                         ood=None, points=t.variant_points(v))
        tiles, mitoses = join_scales(card, grids, variant, slide_mpp)
        probs = tiles[[c for c in tiles.columns if c == "p_necrosis" or c.startswith(PATTERN_PREFIX)]].copy()
        probs.insert(0, "variant", name)
        probs.insert(0, "tile", np.arange(len(tiles), dtype=np.int64))
        tiles_parts.append(probs)
        mitoses = mitoses.copy()
        mitoses.insert(0, "variant", name)
        mit_parts.append(mitoses)
    return TtaTables(names=tuple(names), tiles=pd.concat(tiles_parts, ignore_index=True),
                     mitoses=pd.concat(mit_parts, ignore_index=True))


def _join_ood(card: ModelCard, grids: dict[str, TileGrid], outputs: dict[str, InferenceOutput | None],
              n: int) -> tuple[np.ndarray, np.ndarray]:
    """(ood_score, in_domain) per table tile: the worst scale's score (fine tiles joined by centre, their max)."""
    table = card.table_scale
    score = np.full(n, np.nan, np.float64)
    for name, grid in grids.items():
        res = outputs.get(name)
        if res is None or res.ood is None:
            continue
        if name == table:
            s = res.ood.astype(np.float64)
        else:
            s = _join_by_centre(grids[table].table, grid.table, res.ood, np.full(n, np.nan, np.float32), how="max")
        score = np.fmax(score, s)  # NaN where no scale scored the tile
    in_domain = np.where(np.isfinite(score), score <= 1.0, False)
    return score.astype(np.float32), in_domain.astype(bool)


def _empty(head: str, card: ModelCard, n: int) -> np.ndarray:
    """NaN probabilities for ``n`` tiles (a head whose scale had no tile there)."""
    return np.full((n, len(card.classes)), np.nan, np.float32) if head == "pattern" else np.full(n, np.nan, np.float32)


def _join_by_centre(coarse: pd.DataFrame, fine: pd.DataFrame, values: np.ndarray | None,
                    empty: np.ndarray, how: str = "mean") -> np.ndarray:
    """Mean (or max) of the fine tiles' values whose level-0 centre lies in each coarse tile (NaN where none)."""
    out = empty.copy()
    if values is None or not len(fine) or not len(coarse):
        return out
    fx = fine["x"].to_numpy() + fine["w"].to_numpy() / 2
    fy = fine["y"].to_numpy() + fine["h"].to_numpy() / 2
    cx, cy = coarse["x"].to_numpy(), coarse["y"].to_numpy()
    cw, ch = coarse["w"].to_numpy(), coarse["h"].to_numpy()
    v = values.reshape(len(fine), -1).astype(np.float64)
    for i in range(len(coarse)):
        inside = (fx >= cx[i]) & (fx < cx[i] + cw[i]) & (fy >= cy[i]) & (fy < cy[i] + ch[i])
        if inside.any():
            agg = v[inside].max(0) if how == "max" else v[inside].mean(0)
            out[i] = agg.reshape(out[i].shape)
    return out


def predict_scales(slide: Slide, slide_path: str | Path, mpp: float | None, model: nn.Module,
                   card: ModelCard, device: torch.device, *, tiling: TilingConfig | None = None,
                   overlap_px: int | None = None, batch_size: int = 64, workers: int = 0,
                   progress: bool = False, desc: str = "", in_process: bool = False,
                   tta: bool = False) -> ScalePrediction:
    """Plan, infer and join every scale of ``card`` on an open ``slide`` (one code path for slides and arrays).

    ``tta``: average each tile over the 8 flips and turns, and keep each variant's tables in ``.tta``.
    """
    t0 = time.perf_counter()
    runnable, skipped = card.runnable_scales(slide.mpp)
    if not runnable:
        card.check_slide_mpp(slide.mpp)  # raises, naming the finest scale the slide cannot feed
    grids, _ = plan_scales(slide, card, tiling, overlap_px, scales=runnable)
    timings = {"plan_s": round(time.perf_counter() - t0, 4)}
    outputs = infer_scales(slide_path, mpp, grids, model, card, device, batch_size=batch_size,
                           workers=0 if in_process else workers, progress=progress, desc=desc,
                           slide=slide if in_process else None, skip=frozenset(skipped), tta=tta)
    infer = [o.timings.get("infer_s", 0.0) for o in outputs.values() if o is not None]
    timings["infer_s"] = round(float(sum(infer)), 4)
    for name, o in outputs.items():
        if o is not None and card.multiscale:
            timings[f"infer_{name}_s"] = o.timings.get("infer_s", 0.0)
        if o is not None and "gpu_busy_fraction" in o.timings:
            timings[f"gpu_busy_fraction{'_' + name if card.multiscale else ''}"] = o.timings["gpu_busy_fraction"]
    tiles, mitoses = join_scales(card, grids, outputs, slide.mpp)
    variants = join_tta(card, grids, outputs, slide.mpp) if tta else None
    not_run = {h: why for sc, why in skipped.items() for h in card.scales[sc].heads}
    for head in not_run:  # a head that did not run leaves no column: absent, never a zero or a guess
        if head == "necrosis":
            tiles = tiles.drop(columns=["p_necrosis"], errors="ignore")
        elif head == "pattern":
            tiles = tiles.drop(columns=[c for c in tiles.columns if c.startswith(PATTERN_PREFIX)])
    return ScalePrediction(tiles=tiles, mitoses=mitoses, grids=grids, n_tiles={k: len(g) for k, g in grids.items()
                                                                               if k not in skipped},
                           timings=timings, heads_not_run=not_run, tta=variants)


__all__ = ["PATTERN_PREFIX", "ScalePrediction", "TtaTables", "infer_scales", "join_scales", "join_tta", "plan_scales",
           "predict_scales", "scale_tiling"]
