"""Tiles read on the fly for inference: a map-style Dataset whose items are whole batches of a tile grid.

An item is one batch (a fixed slice of the grid table), read as horizontal runs of neighbouring tiles
in one region call each (`histo.tiling.reader.read_run`), so the per-call overhead of the slide reader
is paid per run, not per tile. The DataLoader runs with ``batch_size=None``: batching is planned here,
identically whatever the number of workers, which keeps results independent of ``workers``.

Each DataLoader worker opens its own slide handle on first use: the Dataset pickles without its
handle, so it works with fork, forkserver and spawn alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from histo.slide import Slide, open_slide
from histo.tiling import TileGrid, read_run
from histo.tiling.reader import MAX_RUN_TILES

# (first tile index, level-0 x, level-0 y, n tiles)
Run = tuple[int, float, float, int]


def plan_batches(grid: TileGrid, batch_size: int, max_run: int = MAX_RUN_TILES) -> list[tuple[Run, ...]]:
    """Split the grid table into batches of ``batch_size`` consecutive tiles (the last may be shorter), as runs."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    t = grid.table
    n = len(t)
    if n == 0:
        return []
    col, row = t["col"].to_numpy(), t["row"].to_numpy()
    x, y = t["x"].to_numpy(), t["y"].to_numpy()
    starts_run = np.ones(n, bool)
    starts_run[1:] = (row[1:] != row[:-1]) | (col[1:] != col[:-1] + 1)
    batches = []
    for b0 in range(0, n, batch_size):
        b1 = min(n, b0 + batch_size)
        runs: list[Run] = []
        s = b0
        while s < b1:
            e = s + 1
            while e < b1 and not starts_run[e] and e - s < max_run:
                e += 1
            runs.append((s, float(x[s]), float(y[s]), e - s))
            s = e
        batches.append(tuple(runs))
    return batches


class TileBatchDataset(Dataset):
    """Item ``i`` = batch ``i`` of the grid: ``(index int64 (N,), tiles uint8 (N, tile_px, tile_px, 3))``."""

    def __init__(self, slide_path: str, mpp_override: float | None, grid: TileGrid, batch_size: int,
                 slide: Slide | None = None, normaliser: Any = None):
        """``slide``: an open handle to read from in this process (required for in-memory slides);
        ``normaliser``: the stain normalisation the model was trained with (``transform(tile)``), applied per tile."""
        self.normaliser = normaliser
        self.slide_path = str(slide_path)
        self.mpp_override = mpp_override
        self.tile_px = grid.tile_px
        self.mpp = grid.mpp
        self.stride_px = int(grid.settings["stride_px"])
        self.batches = plan_batches(grid, batch_size)
        self._slide: Slide | None = slide
        self._owns_slide = slide is None

    def __len__(self) -> int:
        return len(self.batches)

    def __getstate__(self) -> dict[str, Any]:
        # A worker must never share the parent's handle: drop it, the worker opens its own on first read.
        state = self.__dict__.copy()
        state["_slide"] = None
        return state

    def _slide_handle(self) -> Slide:
        if self._slide is None:
            self._slide = open_slide(self.slide_path, mpp=self.mpp_override)
        return self._slide

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        slide = self._slide_handle()
        parts: list[np.ndarray] = []
        index: list[int] = []
        for first, x, y, n in self.batches[i]:
            parts.append(read_run(slide, x, y, n, self.tile_px, self.stride_px, self.mpp))
            index.extend(range(first, first + n))
        tiles = np.concatenate(parts) if len(parts) > 1 else parts[0]
        if self.normaliser is not None:  # as in training (histo.data.SampleMaker): each tile on its own
            tiles = np.stack([self.normaliser.transform(t) for t in tiles])
        return torch.as_tensor(np.asarray(index, np.int64)), torch.from_numpy(np.require(tiles, requirements=["C", "W"]))

    def close(self) -> None:
        """Release this process's handle (workers' handles go with the worker processes)."""
        if self._slide is not None:
            if self._owns_slide:
                self._slide.close()
            self._slide = None


def make_loader(dataset: TileBatchDataset, workers: int, pin_memory: bool) -> DataLoader:
    """A DataLoader over pre-planned batches: ``workers`` reader processes (0 = read in this process)."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    kw: dict[str, Any] = {}
    if workers > 0:
        kw["prefetch_factor"] = 2  # bounded memory: at most 2 batches per worker in flight
    return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin_memory, **kw)
