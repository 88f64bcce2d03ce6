"""torch Datasets of tiles: read on the fly from slides (one handle per worker process), or from image files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from histo.data.sample import SampleMaker
from histo.errors import HistoError
from histo.slide import Slide, open_slide


@dataclass(frozen=True)
class SlideRef:
    """A slide a dataset reads from: file, optional mpp override, display name."""

    path: str
    mpp: float | None
    name: str


class _PerProcess:
    """Per-process state (slide handles, augmentation seed): dropped when pickled, reset after a fork."""

    maker: SampleMaker

    def _fresh_process(self) -> None:
        self._pid = os.getpid()
        self._handles: dict[int, Slide] = {}
        if self.maker.augment is not None:
            # Every worker (and every epoch of non-persistent workers) gets its own torch seed; without
            # this, forked workers would replay the same augmentations.
            self.maker.augment.set_random_seed(torch.initial_seed() % 2**32)

    def _check_process(self) -> None:
        if getattr(self, "_pid", None) != os.getpid():
            self._fresh_process()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_handles", None)
        state.pop("_pid", None)
        return state

    def open_handles(self) -> int:
        """Number of slide handles this process holds (for checks)."""
        return len(getattr(self, "_handles", {})) if getattr(self, "_pid", None) == os.getpid() else 0

    def close(self) -> None:
        """Close this process's slide handles."""
        for h in getattr(self, "_handles", {}).values():
            h.close()
        self._handles = {}


class SlideTileDataset(_PerProcess, Dataset):
    """Tiles read at the input mpp from slides; labels and mitosis points per tile (points in level-0 px in, tile px out)."""

    def __init__(self, slides: Sequence[SlideRef], slide_index: np.ndarray, boxes: np.ndarray, pattern: np.ndarray,
                 necrosis: np.ndarray, mitosis_labelled: np.ndarray, points: Sequence[np.ndarray], maker: SampleMaker):
        n = len(slide_index)
        if not (len(boxes) == len(pattern) == len(necrosis) == len(mitosis_labelled) == len(points) == n):
            raise ValueError("SlideTileDataset: per-tile arrays differ in length")
        self.slides = list(slides)
        self.slide_index = np.asarray(slide_index, np.int32)
        self.boxes = np.asarray(boxes, np.float64).reshape(n, 4)  # level-0 x, y, w, h
        self.pattern = np.asarray(pattern, np.int64)
        self.necrosis = np.asarray(necrosis, np.float32)
        self.mitosis_labelled = np.asarray(mitosis_labelled, bool)
        self.maker = maker
        t = maker.spec.tile_px
        # Points go to tile px once here; stored flat with offsets so the dataset pickles fast to workers.
        local = [(np.asarray(p, np.float64).reshape(-1, 2) - self.boxes[i, :2]) * (t / self.boxes[i, 2]) for i, p in enumerate(points)]
        self.n_mitoses = np.array([len(p) for p in local], np.int32)
        self.offsets = np.r_[0, np.cumsum(self.n_mitoses)].astype(np.int64)
        self.points_px = np.concatenate(local, 0) if local else np.zeros((0, 2))

    def __len__(self) -> int:
        return len(self.slide_index)

    def _slide(self, k: int) -> Slide:
        self._check_process()
        h = self._handles.get(k)
        if h is None:
            ref = self.slides[k]
            h = self._handles[k] = open_slide(ref.path, mpp=ref.mpp)
        return h

    def read(self, i: int) -> np.ndarray:
        """The RGB tile i at the input mpp, before normalisation and augmentation."""
        x, y = self.boxes[i, :2]
        t = self.maker.spec.tile_px
        return self._slide(int(self.slide_index[i])).read(x, y, t, t, self.maker.spec.mpp)

    def points(self, i: int) -> np.ndarray:
        """Mitosis points of tile i in tile px, (K, 2)."""
        return self.points_px[self.offsets[i]:self.offsets[i + 1]]

    def figure_positions(self) -> np.ndarray:
        """(M, 3) slide index, x, y (level-0 px) of every figure in a tile, for counting distinct figures."""
        idx = np.repeat(self.slide_index, self.n_mitoses)
        scale = np.repeat(self.boxes[:, 2] / self.maker.spec.tile_px, self.n_mitoses)[:, None]
        xy = self.points_px * scale + np.repeat(self.boxes[:, :2], self.n_mitoses, 0)
        return np.column_stack([idx, np.round(xy, 1)]) if len(idx) else np.zeros((0, 3))

    def __getitem__(self, i: int) -> dict[str, Any]:
        rgb = self.read(i)
        return self.maker(rgb, self.points(i), int(self.pattern[i]), float(self.necrosis[i]),
                          bool(self.mitosis_labelled[i]), self.slides[int(self.slide_index[i])].name)


class ImageTileDataset(_PerProcess, Dataset):
    """Tiles from image files (already cut at the input mpp), with pattern/necrosis labels and no mitosis labels."""

    def __init__(self, paths: Sequence[str], pattern: np.ndarray, necrosis: np.ndarray, slide_names: Sequence[str],
                 maker: SampleMaker, resize: bool = False):
        self.paths = [str(p) for p in paths]
        self.pattern = np.asarray(pattern, np.int64)
        self.necrosis = np.asarray(necrosis, np.float32)
        self.slide_names = list(slide_names)
        self.maker = maker
        self.resize = resize
        self.n_mitoses = np.zeros(len(self.paths), np.int32)
        self.mitosis_labelled = np.zeros(len(self.paths), bool)

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int) -> np.ndarray:
        """The RGB tile i as an H×W×3 uint8 array at tile_px."""
        self._check_process()
        p = self.paths[i]
        try:
            with Image.open(p) as im:
                rgb = np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as exc:
            raise HistoError(f"{p}: cannot read tile image ({exc})") from exc
        t = self.maker.spec.tile_px
        if rgb.shape[:2] != (t, t):
            if not self.resize:
                raise HistoError(f"{p}: tile is {rgb.shape[1]}x{rgb.shape[0]} px but the model takes {t}x{t} "
                                 "(cut tiles at the model's size, or set data.tiles_resize: true)")
            rgb = cv2.resize(rgb, (t, t), interpolation=cv2.INTER_AREA)
        return rgb

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.maker(self.read(i), np.zeros((0, 2)), int(self.pattern[i]), float(self.necrosis[i]), False,
                          self.slide_names[i])

