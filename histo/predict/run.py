"""`predict_slide`: one slide → tile probabilities and mitosis points in OUT/<slide_stem>/ (contract C)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import histo
from histo.errors import ConfigError, ModelError
from histo.models import ModelCard
from histo.predict.dataset import TileBatchDataset
from histo.predict.engine import amp_dtype, prepare_model, resolve_device, run_inference
from histo.predict.outputs import (
    SCHEMA,
    base_tiles_meta,
    card_summary,
    mitoses_frame,
    read_done,
    tiles_frame,
    weights_sha256,
    write_prediction,
)
from histo.slide import open_slide
from histo.tiling import TilingConfig, plan_grid

STATUS_FIELDS = ("slide", "status", "reason", "n_tiles", "seconds", "verdict", "report")


@dataclass
class PredictResult:
    """Outcome of one slide; ``status_row()`` is its row of OUT/status.csv."""

    slide: str
    name: str
    status: str  # ok | no_tissue | skipped | failed
    reason: str = ""
    n_tiles: int = 0
    n_mitoses: int = 0
    seconds: float = 0.0
    out_dir: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    verdict: str = ""  # high grade yes / no / not_assessable, when a report was written
    report: str = ""  # the report.html path, when a report was written

    def status_row(self) -> dict[str, Any]:
        """slide, status, reason, n_tiles, seconds, verdict, report."""
        return {k: getattr(self, k) for k in STATUS_FIELDS}


def predict_tiling(card: ModelCard, tiling: TilingConfig | None = None, overlap_px: int | None = None) -> TilingConfig:
    """The tiling used for a model: ``tiling``'s tissue and grid options at the card's tile_px and mpp."""
    tiling = tiling or TilingConfig()
    g = tiling.grid
    try:
        grid = dataclasses.replace(g, tile_px=card.tile_px, mpp=card.mpp,
                                   overlap_px=g.overlap_px if overlap_px is None else overlap_px,
                                   mask_mpp=max(g.mask_mpp, card.mpp))
    except ValueError as exc:
        raise ConfigError(f"tiling for model {card.name!r} (tile_px {card.tile_px}, mpp {card.mpp:g}): {exc}") from exc
    return dataclasses.replace(tiling, grid=grid)


def predict_slide(
    slide_path: str | Path,
    model: nn.Module,
    card: ModelCard,
    out_dir: str | Path,
    *,
    batch_size: int = 64,
    workers: int = 2,
    device: str | torch.device = "auto",
    mpp: float | None = None,
    tiling: TilingConfig | None = None,
    overlap_px: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> PredictResult:
    """Predict one slide into ``out_dir/<slide_stem>/``; raises HistoError (nothing written) when it cannot.

    ``model`` maps normalised tiles to the heads of ``card`` (a MultiTaskNet from load_model); it is moved
    to ``device``. ``mpp`` overrides the slide's level-0 µm/px. ``tiling`` gives the tissue and grid options;
    its tile_px and mpp are always the card's; ``overlap_px`` overrides its overlap (default 0). A folder
    already finished with the same weights (sha256) is 'skipped' unless ``overwrite``.
    """
    t0 = time.perf_counter()
    slide_path = Path(slide_path)
    slide_dir = Path(out_dir) / slide_path.stem
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ConfigError(f"workers must be >= 0 (0 = read in this process), got {workers}")
    sha = weights_sha256(model, card)
    if not overwrite:
        done = read_done(slide_dir)
        if done is not None and done.get("model", {}).get("weights_sha256") == sha:
            return PredictResult(str(slide_path), slide_path.stem, "skipped",
                                 f"already done ({done.get('status', 'ok')}) with these weights",
                                 int(done.get("n_tiles", 0)), int(done.get("n_mitoses", 0)), 0.0, str(slide_dir))
    config = predict_tiling(card, tiling, overlap_px)
    dev = resolve_device(device)

    t_plan = time.perf_counter()
    with open_slide(slide_path, mpp=mpp) as slide:
        slide_mpp = slide.mpp  # MppError when unknown: before anything is written
        try:
            card.check_slide_mpp(slide_mpp)
        except ModelError as exc:
            raise ModelError(f"{slide_path}: {exc}") from exc
        grid, _ = plan_grid(slide, config)
        dims = slide.dimensions
    timings: dict[str, float] = {"plan_s": round(time.perf_counter() - t_plan, 4)}

    dataset = TileBatchDataset(str(slide_path), mpp, grid, batch_size)
    if len(grid):
        net = prepare_model(model, dev)
        try:
            inf = run_inference(dataset, net, card, dev, workers=workers, progress=progress, desc=slide_path.stem)
        finally:
            dataset.close()
        timings.update(inf.timings)
        pattern, necrosis, points = inf.pattern, inf.necrosis, inf.points
    else:
        pattern = np.zeros((0, len(card.classes)), np.float32) if "pattern" in card.heads else None
        necrosis = np.zeros(0, np.float32) if "necrosis" in card.heads else None
        points = np.zeros((0, 4))

    t_write = time.perf_counter()
    tiles = tiles_frame(grid.table, pattern, necrosis, card.classes)
    mitoses = mitoses_frame(points, grid.table, card.tile_px, slide_mpp, card.mitosis_min_distance_um)
    status = "ok" if len(grid) else "no_tissue"
    reason = "" if len(grid) else "no tissue detected: empty tables written"
    resolved = str(slide_path.resolve())
    seconds = round(time.perf_counter() - t0, 3)
    prediction = {
        "schema": SCHEMA,
        "slide": resolved,
        "slide_name": slide_path.stem,
        "slide_mpp": slide_mpp,
        "slide_dimensions": list(dims),
        "status": status,
        "model": card_summary(card, sha),
        "n_tiles": len(tiles),
        "n_mitoses": len(mitoses),
        "tiling": {k: grid.settings[k] for k in ("grid", "tissue", "stride_px", "tile_level0_px", "tissue_area_mm2")},
        "device": str(dev),
        "amp_dtype": str(amp_dtype(dev)).replace("torch.", "") if amp_dtype(dev) else "float32",
        "batch_size": batch_size,
        "seconds": seconds,
        "timings": timings,
        "histo_version": histo.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_prediction(slide_dir, tiles, mitoses, base_tiles_meta(resolved, slide_mpp, card, sha, dims), prediction)
    timings["write_s"] = round(time.perf_counter() - t_write, 4)
    return PredictResult(str(slide_path), slide_path.stem, status, reason, len(tiles), len(mitoses),
                         round(time.perf_counter() - t0, 3), str(slide_dir), timings)
