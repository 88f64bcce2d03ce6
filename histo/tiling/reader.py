"""Read the tiles of a grid fast: one region read per horizontal run of tiles, in a pool of workers.

Reading a run of neighbouring tiles in one call from the pyramid level that matches the target mpp
avoids per-tile call overhead and decodes each JPEG tile of the file once. The default pool is threads
sharing one slide handle: tile decoding (libjpeg-turbo via histo.slide's direct TIFF path, or OpenSlide
through ctypes) releases the GIL, so threads scale without process start-up or copying tiles between
processes. A process pool is available for per-tile work that holds the GIL; each process opens its own
handle. At most 2 x workers batches are in flight, so memory is bounded by `batch_tiles x workers`,
never by the slide size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from histo.slide import Slide, open_slide, renamed_mpp
from histo.tiling.grid import TileGrid
from histo.tiling.qc import tile_qc

# Longest run read in one call, in tiles: long enough to amortise the call, short enough to bound memory.
MAX_RUN_TILES = 16


@dataclass(frozen=True)
class ReadJob:
    """What a worker needs to read one batch of runs: all plain values, cheap to send."""

    slide_path: str
    mpp_override: float | None
    mpp: float
    tile_px: int
    stride_px: int
    runs: tuple[tuple[int, float, float, int], ...]  # (first tile index, x, y, n tiles)
    qc: bool


@dataclass
class TileBatch:
    """Tiles read for consecutive rows of the grid table."""

    index: np.ndarray  # positions in grid.table
    tiles: np.ndarray  # N x tile_px x tile_px x 3 uint8
    qc: dict[str, np.ndarray] | None = None


def plan_runs(grid: TileGrid, max_run: int = MAX_RUN_TILES) -> list[tuple[int, float, float, int]]:
    """Split the grid table into runs of tiles adjacent in the same row (table order preserved)."""
    t = grid.table
    if len(t) == 0:
        return []
    col = t["col"].to_numpy()
    row = t["row"].to_numpy()
    x = t["x"].to_numpy()
    y = t["y"].to_numpy()
    breaks = np.ones(len(t), bool)
    breaks[1:] = (row[1:] != row[:-1]) | (col[1:] != col[:-1] + 1)
    runs = []
    starts = np.flatnonzero(breaks).tolist() + [len(t)]
    for a, b in zip(starts[:-1], starts[1:]):
        for s in range(a, b, max_run):
            n = min(max_run, b - s)
            runs.append((s, float(x[s]), float(y[s]), n))
    return runs


def read_run(slide: Slide, x: float, y: float, n: int, tile_px: int, stride_px: int, mpp: float) -> np.ndarray:
    """n horizontally adjacent tiles read in one region call, as n x tile_px x tile_px x 3."""
    width = (n - 1) * stride_px + tile_px
    region = slide.read(x, y, width, tile_px, mpp)
    if stride_px == tile_px:
        return region.reshape(tile_px, n, tile_px, 3).transpose(1, 0, 2, 3)
    return np.stack([region[:, i * stride_px : i * stride_px + tile_px] for i in range(n)])


_WORKER_SLIDES: dict[tuple[str, float | None], Slide] = {}


def _worker_slide(path: str, mpp_override: float | None) -> Slide:
    """This process's own handle to a slide, opened once per process."""
    key = (path, mpp_override)
    slide = _WORKER_SLIDES.get(key)
    if slide is None:
        if len(_WORKER_SLIDES) > 4:  # a cohort run visits slides one after another: keep few handles
            for old in _WORKER_SLIDES.values():
                old.close()
            _WORKER_SLIDES.clear()
        slide = _WORKER_SLIDES[key] = open_slide(path, mpp=mpp_override)
    return slide


def run_job(job: ReadJob, slide: Slide | None = None) -> TileBatch:
    """Read one batch (in a worker, or in-process when `slide` is given)."""
    slide = slide or _worker_slide(job.slide_path, job.mpp_override)
    parts: list[np.ndarray] = []
    index: list[int] = []
    for first, x, y, n in job.runs:
        parts.append(read_run(slide, x, y, n, job.tile_px, job.stride_px, job.mpp))
        index.extend(range(first, first + n))
    tiles = np.concatenate(parts) if len(parts) > 1 else parts[0]
    qc = None
    if job.qc:
        rows = [tile_qc(t, job.mpp) for t in tiles]
        qc = {k: np.array([r[k] for r in rows], np.float32) for k in rows[0]}
    return TileBatch(index=np.asarray(index, np.int64), tiles=tiles, qc=qc)


def make_pool(workers: int, kind: str = "thread") -> Executor | None:
    """A reader pool of `workers` threads (default) or processes, None for workers == 0; reuse it across slides."""
    from histo.workers import make_pool as _make_pool

    return _make_pool(workers, kind, name="histo-read")


def iter_batches(
    slide_path: str,
    grid: TileGrid,
    *,
    mpp: float | None = None,
    batch_tiles: int = 64,
    pool: Executor | None = None,
    qc: bool = False,
    fn: Callable[..., Any] | None = None,
    mpp_override: float | None = None,
) -> Iterator[Any]:
    """Yield `fn(job)` for the grid's tile batches in table order (default: the tiles read), in `pool` or here.
    ``mpp`` overrides the slide's level-0 µm/px (``mpp_override``: its deprecated old name)."""
    mpp = renamed_mpp(mpp, mpp_override, "mpp_override", "iter_batches")
    fn = fn or run_job
    jobs = list(_make_jobs(slide_path, grid, mpp, batch_tiles, qc))
    if pool is None:
        slide = open_slide(slide_path, mpp=mpp)
        try:
            for job in jobs:
                yield fn(job, slide)
        finally:
            slide.close()
        return
    shared = open_slide(slide_path, mpp=mpp) if isinstance(pool, ThreadPoolExecutor) else None
    in_flight: deque[Future[Any]] = deque()
    limit = 2 * getattr(pool, "_max_workers", 2)
    try:
        for job in jobs:
            in_flight.append(pool.submit(fn, job, shared) if shared is not None else pool.submit(fn, job))
            if len(in_flight) >= limit:
                yield in_flight.popleft().result()
        while in_flight:
            yield in_flight.popleft().result()
    finally:
        for f in in_flight:
            f.cancel()
        for f in in_flight:
            if not f.cancelled():
                f.exception()  # wait: the shared handle must outlive every read that uses it
        if shared is not None:
            shared.close()


def _make_jobs(slide_path: str, grid: TileGrid, mpp_override: float | None, batch_tiles: int, qc: bool) -> Iterator[ReadJob]:
    g = grid.settings["grid"]
    tile_px = int(g["tile_px"])
    stride_px = tile_px - int(g["overlap_px"])
    mpp = float(g["mpp"])
    runs = plan_runs(grid)
    batch: list[tuple[int, float, float, int]] = []
    count = 0
    for run in runs:
        batch.append(run)
        count += run[3]
        if count >= batch_tiles:
            yield ReadJob(slide_path, mpp_override, mpp, tile_px, stride_px, tuple(batch), qc)
            batch, count = [], 0
    if batch:
        yield ReadJob(slide_path, mpp_override, mpp, tile_px, stride_px, tuple(batch), qc)
