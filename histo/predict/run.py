"""`predict_slide`: one slide → tile probabilities and mitosis points in OUT/<slide_stem>/ (docs/formats.md)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

import histo
from histo.config import to_dict
from histo.errors import ConfigError, ModelError
from histo.models import ModelCard
from histo.predict.engine import TTA_TRANSFORMS, amp_dtype, candidate_threshold, resolve_device
from histo.predict.outputs import (
    SCHEMA,
    base_tiles_meta,
    card_summary,
    read_done,
    weights_sha256,
    write_prediction,
)
from histo.predict.scales import predict_scales, scale_tiling
from histo.prediction import TTA_MITOSES_FILE, TTA_TILES_FILE
from histo.rerun import (
    RUN_SETTINGS_KEY,
    describe_changes,
    file_fingerprint,
    redo_reason,
    stored_settings,
)
from histo.slide import open_slide
from histo.tiling import TilingConfig

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
    """The tiling of the model's tile table: ``tiling``'s tissue and grid options at the table scale's tile_px and mpp."""
    return scale_tiling(card, card.table_scale, tiling, overlap_px)


# The card fields in the run key are those bound to the weights (ModelCard.binding: scales with their
# backbones, heads, classes, tile_px, mpp and normalisation, thresholds, preprocessing); names, metrics and
# provenance describe a model without changing what it predicts.


def model_key(card: ModelCard, sha256: str) -> dict[str, Any]:
    """The model's part of the run key: its weights digest and every card field that changes how it is applied."""
    key = card.binding()
    key["weights_sha256"] = sha256
    return key


def predict_run_settings(slide_path: str | Path, slide_mpp: float, config: TilingConfig, card: ModelCard,
                         sha256: str, tta: bool = False) -> dict[str, Any]:
    """What determines a slide's predictions: the slide file, its µm/px, the tiling and tissue settings, the model
    (and test-time augmentation, when on: a run without it keeps its old key)."""
    settings = {
        "slide": file_fingerprint(slide_path),
        "mpp": float(slide_mpp),
        "tiling": {"grid": to_dict(config.grid), "tissue": to_dict(config.tissue)},
        "model": model_key(card, sha256),
    }
    if tta:
        settings["tta"] = list(TTA_TRANSFORMS)
    return settings


def domain_status(tiles: Any, card: ModelCard) -> dict[str, Any]:
    """prediction.json's ``domain``: the slide's status under the default rules (reports apply the grading config's)."""
    from histo.aggregate.domain import summarise_domain

    d = summarise_domain(tiles, method=(card.domain or {}).get("method")).to_dict()
    if card.domain:
        d["thresholds"].update({f"{k}.{m}": t for k, v in card.domain.get("scales", {}).items()
                                for m, t in (v.get("thresholds") or {}).items()})
    return d


def predict_slide(
    slide_path: str | Path,
    model: nn.Module,
    card: ModelCard,
    out_dir: str | os.PathLike[str],
    *,
    batch_size: int = 64,
    workers: int = 2,
    device: str | torch.device = "auto",
    mpp: float | None = None,
    tiling: TilingConfig | None = None,
    overlap_px: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    tta: bool = False,
) -> PredictResult:
    """Predict one slide into ``out_dir/<slide_stem>/``; raises HistoError (nothing written) when it cannot.

    ``model`` maps normalised tiles to the heads of ``card`` (a MultiTaskNet from load_model); it is moved
    to ``device``. ``mpp`` overrides the slide's level-0 µm/px. ``tiling`` gives the tissue and grid options;
    its tile_px and mpp are always the card's; ``overlap_px`` overrides its overlap (default 0). A folder
    already finished with the same run key (``predict_run_settings``: slide file, its mpp, tiling, tissue and
    model) is 'skipped' unless ``overwrite``; one finished with another is redone, the reason naming what changed.
    ``tta`` averages each tile over the 8 flips and turns and also writes each variant's tables
    (tta_tiles.parquet, tta_mitoses.parquet), from which reports give the spread of the measurements.
    """
    t0 = time.perf_counter()
    slide_path = Path(slide_path)
    slide_dir = Path(out_dir) / slide_path.stem
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 0:
        raise ConfigError(f"workers must be >= 0 (0 = read in this process), got {workers}")
    sha = weights_sha256(model, card)
    config = predict_tiling(card, tiling, overlap_px)
    reason = ""
    with open_slide(slide_path, mpp=mpp) as slide:
        slide_mpp = slide.mpp  # MppError when unknown: before anything is written
        settings = predict_run_settings(slide_path, slide_mpp, config, card, sha, tta=tta)
        done = None if overwrite else read_done(slide_dir)
        if done is not None:
            changes = describe_changes(stored_settings(done), settings)
            if not changes:
                return PredictResult(str(slide_path), slide_path.stem, "skipped",
                                     f"already done ({done.get('status', 'ok')}) with the same slide, mpp, tiling "
                                     "and model", int(done.get("n_tiles", 0)), int(done.get("n_mitoses", 0)), 0.0,
                                     str(slide_dir))
            reason = redo_reason(changes)
        runnable, _ = card.runnable_scales(slide_mpp)
        if not runnable:
            try:
                card.check_slide_mpp(slide_mpp)
            except ModelError as exc:
                raise ModelError(f"{slide_path}: {exc}") from exc
        dev = resolve_device(device)
        dims = slide.dimensions
        res = predict_scales(slide, slide_path, mpp, model, card, dev, tiling=tiling, overlap_px=overlap_px,
                             batch_size=batch_size, workers=workers, progress=progress, desc=slide_path.stem,
                             tta=tta)
    timings: dict[str, float] = dict(res.timings)
    grid = res.grids[card.table_scale]
    t_write = time.perf_counter()
    tiles, mitoses = res.tiles, res.mitoses
    n_counted = int((mitoses["score"].to_numpy() >= card.mitosis_threshold).sum())
    if res.heads_not_run:
        reason = "; ".join(r for r in (reason, *(f"{h} not measured: {w}" for h, w in res.heads_not_run.items())) if r)
    status = "ok" if len(grid) else "no_tissue"
    if not len(grid):
        reason = "; ".join(r for r in (reason, "no tissue detected: empty tables written") if r)
    resolved = str(slide_path.resolve())
    seconds = round(time.perf_counter() - t0, 3)
    prediction = {
        "schema": SCHEMA,
        "slide": resolved,
        "slide_name": slide_path.stem,
        "slide_mpp": slide_mpp,
        "slide_dimensions": list(dims),
        "status": status,
        RUN_SETTINGS_KEY: settings,
        "model": card_summary(card, sha),
        "n_tiles": len(tiles),
        "n_tiles_per_scale": res.n_tiles,
        "n_mitoses": n_counted,  # at or above the card's threshold
        "n_mitosis_candidates": len(mitoses),  # every peak kept, down to candidate_threshold
        "heads_not_run": res.heads_not_run,  # head -> why; such a head measured nothing (not zero)
        "domain": domain_status(tiles, card),
        "tta": {"enabled": bool(tta), "transforms": list(TTA_TRANSFORMS) if tta else [],
                "files": [TTA_TILES_FILE, TTA_MITOSES_FILE] if tta else []},
        "mitosis_candidate_threshold": candidate_threshold(card),
        "tiling": {k: grid.settings[k] for k in ("grid", "tissue", "stride_px", "tile_level0_px", "tissue_area_mm2")},
        "device": str(dev),
        "amp_dtype": str(amp_dtype(dev)).replace("torch.", "") if amp_dtype(dev) else "float32",
        "batch_size": batch_size,
        "seconds": seconds,
        "timings": timings,
        "histo_version": histo.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    variants = (res.tta.tiles, res.tta.mitoses) if res.tta is not None else None
    write_prediction(slide_dir, tiles, mitoses, base_tiles_meta(resolved, slide_mpp, card, sha, dims), prediction,
                     tta=variants)
    timings["write_s"] = round(time.perf_counter() - t_write, 4)
    return PredictResult(str(slide_path), slide_path.stem, status, reason, len(tiles), n_counted,
                         round(time.perf_counter() - t0, 3), str(slide_dir), timings)
