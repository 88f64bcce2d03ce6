"""Tile one slide end to end: plan the grid, optionally read every tile (QC, extraction), save atomically.

Per-slide output folder `<out>/<slide name>/`:
  grid.parquet   the tile table with slide metadata and settings (written last: its presence = done);
                 settings["run_settings"] is its run key (slide file, mpp, grid, tissue, qc, extract):
                 a rerun skips the slide only when that key is unchanged, else redoes it saying why
  tissue.png     the tissue mask at the mask resolution, to check against the thumbnail
  tiles/         extracted tiles as image files (format png|jpeg, store files), or
  tiles.zip      the same in one store file (store zip)
"""

from __future__ import annotations

import contextlib
import functools
import io
import time
import zipfile
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from histo.atomic import atomic_path
from histo.config import to_dict
from histo.leftovers import clean_stale_temps
from histo.rerun import (
    RUN_SETTINGS_KEY,
    describe_changes,
    file_fingerprint,
    redo_reason,
    stored_settings,
)
from histo.slide import Slide, open_slide, renamed_mpp
from histo.tiling.grid import TileGrid, TilingConfig, plan_grid
from histo.tiling.reader import ReadJob, iter_batches, run_job


@dataclass
class SlideResult:
    """Outcome of tiling one slide, one row of the status table."""

    slide: str
    name: str
    status: str  # ok | no_tissue | skipped | failed
    n_tiles: int = 0
    tissue_area_mm2: float | None = None
    seconds: float = 0.0
    reason: str = ""
    grid_path: str = ""


def tile_name(x: float, y: float, fmt: str) -> str:
    """File name of a tile inside the tiles folder or zip: its level-0 origin."""
    return f"x{int(round(x))}_y{int(round(y))}.{'jpg' if fmt == 'jpeg' else 'png'}"


def encode_job(job: ReadJob, slide: Slide | None = None, *, fmt: str, quality: int) -> tuple[np.ndarray, list[bytes], dict | None]:
    """Read a batch and encode each tile (runs in a worker: only bytes travel back)."""
    batch = run_job(job, slide)
    blobs = []
    for tile in batch.tiles:
        buf = io.BytesIO()
        if fmt == "jpeg":
            Image.fromarray(tile).save(buf, format="JPEG", quality=quality)
        else:
            Image.fromarray(tile).save(buf, format="PNG", compress_level=1)
        blobs.append(buf.getvalue())
    return batch.index, blobs, batch.qc


def tile_run_settings(slide_path: str | Path, slide_mpp: float, config: TilingConfig) -> dict[str, Any]:
    """What determines a slide's grid and tiles: the slide file, its µm/px and the grid/tissue/qc/extract settings."""
    return {
        "slide": file_fingerprint(slide_path),
        "mpp": float(slide_mpp),
        "grid": to_dict(config.grid),
        "tissue": to_dict(config.tissue),
        "qc": to_dict(config.qc),
        "extract": to_dict(config.extract),
    }


def rerun_changes(grid: TileGrid, settings: dict[str, Any]) -> list[str]:
    """What differs between a saved grid's run key and ``settings`` ([] when it can be kept)."""
    return describe_changes(stored_settings(grid.settings), settings)


def tile_slide(
    slide_path: str | Path,
    out_dir: str | Path,
    config: TilingConfig,
    *,
    mpp: float | None = None,
    pool: Executor | None = None,
    overwrite: bool = False,
    progress: bool = True,
    mpp_override: float | None = None,
) -> SlideResult:
    """Plan (and on request read/extract) one slide's tiles into `out_dir/<name>/`; raises HistoError on failure.

    ``mpp`` overrides the level-0 µm/px (``mpp_override`` is its deprecated old name)."""
    mpp = renamed_mpp(mpp, mpp_override, "mpp_override", "tile_slide")
    t0 = time.perf_counter()
    slide_path = Path(slide_path)
    slide_dir = Path(out_dir) / slide_path.stem
    grid_path = slide_dir / "grid.parquet"
    reason = ""
    with open_slide(slide_path, mpp=mpp) as slide:
        settings = tile_run_settings(slide_path, slide.mpp, config)  # MppError when unknown: nothing written
        if grid_path.is_file() and not overwrite:
            try:
                old = TileGrid.load(grid_path)
            except (OSError, ValueError):
                old = None  # unreadable leftovers are redone below
            changes = rerun_changes(old, settings) if old is not None else []
            if old is not None and not changes:
                status = "ok" if len(old) else "no_tissue"
                return SlideResult(str(slide_path), slide_path.stem, "skipped", len(old),
                                   old.settings.get("tissue_area_mm2"), 0.0,
                                   f"already done ({status}) with the same slide, mpp and settings", str(grid_path))
            reason = redo_reason(changes) if changes else ""
        grid, mask = plan_grid(slide, config)
    slide_dir.mkdir(parents=True, exist_ok=True)
    # A run killed with -9 leaves its temp outputs (137 PNGs in one case): this run replaces them.
    clean_stale_temps(slide_dir, ["tiles", "tiles.zip", "tissue.png", "grid.parquet"])
    # An old grid must not vouch for the tiles and mask while they are being replaced.
    grid_path.unlink(missing_ok=True)
    _save_mask_png(mask.mask, slide_dir / "tissue.png")
    grid.settings["qc"] = to_dict(config.qc)
    grid.settings["extract"] = to_dict(config.extract)
    grid.settings[RUN_SETTINGS_KEY] = settings

    need_read = len(grid) > 0 and (config.qc.enabled or config.extract.format != "none")
    if need_read:
        _read_pass(str(slide_path), grid, slide_dir, config, mpp, pool, progress)
    grid.save(grid_path)
    status = "ok" if len(grid) else "no_tissue"
    if not len(grid):
        reason = "; ".join(r for r in (reason, "no tissue detected: empty grid written") if r)
    if grid.settings.get("tissue_warning"):
        reason = "; ".join(r for r in (reason, f"QC: {grid.settings['tissue_warning']}") if r)
    return SlideResult(str(slide_path), slide_path.stem, status, len(grid), grid.settings["tissue_area_mm2"],
                       round(time.perf_counter() - t0, 3), reason, str(grid_path))


def _tile_in_child(slide_path: str, out_dir: str, config: TilingConfig, mpp: float | None,
                   overwrite: bool, progress: bool) -> SlideResult:
    from histo.tiling.reader import make_pool

    pool = make_pool(config.workers, config.pool)
    try:
        return tile_slide(slide_path, out_dir, config, mpp=mpp, pool=pool,
                          overwrite=overwrite, progress=progress)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def tile_slide_isolated(
    slide_path: str | Path,
    out_dir: str | Path,
    config: TilingConfig,
    *,
    mpp: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
    timeout_s: float | None = None,
    mpp_override: float | None = None,
) -> SlideResult:
    """`tile_slide` in a child process with its own reader pool: a native crash raises SlideCrashError
    ("crashed (signal 6) ...") for this slide instead of killing the batch. ``mpp_override``: deprecated, use ``mpp``."""
    from histo.isolate import run_isolated

    mpp = renamed_mpp(mpp, mpp_override, "mpp_override", "tile_slide_isolated")
    return run_isolated(_tile_in_child, str(slide_path), str(out_dir), config, mpp, overwrite, progress,
                        label=str(slide_path), timeout_s=timeout_s)


def _read_pass(slide_path: str, grid: TileGrid, slide_dir: Path, config: TilingConfig,
               mpp: float | None, pool: Executor | None, progress: bool) -> None:
    """Read every tile once: QC measurements into the table, and extraction into a temp target renamed at the end."""
    ex = config.extract
    fmt = ex.format
    n = len(grid)
    qc_cols: dict[str, np.ndarray] = {}
    names = [tile_name(x, y, fmt) for x, y in zip(grid.table["x"], grid.table["y"])] if fmt != "none" else []
    target = slide_dir / ("tiles.zip" if ex.store == "zip" else "tiles")
    fn: Any = functools.partial(encode_job, fmt=fmt, quality=ex.jpeg_quality) if fmt != "none" else None
    with contextlib.ExitStack() as stack:
        tmp_target = stack.enter_context(atomic_path(target, directory=ex.store == "files")) if fmt != "none" else None
        zf = stack.enter_context(zipfile.ZipFile(tmp_target, "w", zipfile.ZIP_STORED)) \
            if tmp_target is not None and ex.store == "zip" else None
        bar = stack.enter_context(tqdm(total=n, desc=Path(slide_path).stem, unit="tile", leave=False,
                                       disable=not progress))
        for out in iter_batches(slide_path, grid, mpp=mpp, batch_tiles=config.batch_tiles,
                                pool=pool, qc=config.qc.enabled, fn=fn):
            if fmt != "none":
                index, blobs, qc = out
                for i, blob in zip(index, blobs):
                    if zf is not None:
                        zf.writestr(names[i], blob)
                    else:
                        (tmp_target / names[i]).write_bytes(blob)
            else:
                index, qc = out.index, out.qc
            if qc:
                for k, v in qc.items():
                    qc_cols.setdefault(k, np.full(n, np.nan, np.float32))[index] = v
            bar.update(len(index))
    if fmt != "none":
        grid.table["file"] = [f"{target.name}/{nm}" for nm in names]
    if qc_cols:
        for k, v in qc_cols.items():
            grid.table[k] = v
        q = config.qc
        grid.table["qc_pass"] = (
            (grid.table["qc_blur"] >= q.min_blur_score)
            & (grid.table["qc_pen_fraction"] <= q.max_pen_fraction)
            & (grid.table["qc_background_fraction"] <= q.max_background_fraction)
        )


def _save_mask_png(mask: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp, format="PNG")
