"""Frames and labelled images cut into model tiles: resampled to the input mpp once, cached per process, points mapped.

Any InputSpec works: an image at its native µm/px is resampled to ``spec.mpp`` and cut into
``spec.tile_px`` tiles (training stride configurable, validation without overlap; the last row and
column are aligned to the image edge; an image smaller than a tile is padded with white glass).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from histo.annotations.labels import points_in_boxes
from histo.data.datasets import _PerProcess
from histo.data.frames import FrameRecord, LabelProblem
from histo.data.sample import InputSpec, SampleMaker, pattern_index
from histo.errors import HistoError
from histo.tiling.grid import tissue_fractions
from histo.tissue import TissueMask, tissue_mask

MASK_MPP = 2.0  # µm/px of the tissue masks of frames (coarse enough to be fast, fine enough for 60 µm tiles)
GLASS_RADIUS_UM = 6.0  # an annotation with no tissue within this distance lies on glass
CACHE_MB = 4096  # resampled images kept per process


def resampled_size(rec: FrameRecord, spec: InputSpec) -> tuple[int, int]:
    """(width, height) of a record's image at the spec's mpp."""
    s = rec.mpp / spec.mpp
    return max(1, round(rec.width * s)), max(1, round(rec.height * s))


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile origins along one axis: every `stride` px, the last aligned to the end; one at 0 when it is short."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def read_rgb(path: str, reduce_to: tuple[int, int] | None = None) -> np.ndarray:
    """An image file as H×W×3 uint8 RGB; with `reduce_to`, decoded at about that size (JPEG DCT scaling)."""
    try:
        with Image.open(path) as im:
            if reduce_to is not None:
                im.draft("RGB", reduce_to)
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as exc:
        raise HistoError(f"{path}: cannot read image ({exc})") from exc


def frame_mask(rec: FrameRecord) -> TissueMask:
    """Tissue mask of a frame at about MASK_MPP, as a TissueMask in the frame's native px."""
    target = (max(1, round(rec.width * rec.mpp / MASK_MPP)), max(1, round(rec.height * rec.mpp / MASK_MPP)))
    rgb = read_rgb(str(rec.path), target if target[0] < rec.width else None)
    if rgb.shape[1] > target[0]:
        rgb = cv2.resize(rgb, target, interpolation=cv2.INTER_AREA)
    mpp = rec.mpp * rec.width / rgb.shape[1]
    return TissueMask(mask=tissue_mask(rgb, mpp), mpp=mpp, downsample=rec.width / rgb.shape[1],
                      slide_dimensions=(rec.width, rec.height))


def on_glass(mask: TissueMask, points: np.ndarray) -> np.ndarray:
    """True for each point (native px) with no tissue within GLASS_RADIUS_UM."""
    m = mask.mask
    r = max(1, math.ceil(GLASS_RADIUS_UM / mask.mpp))
    out = np.zeros(len(points), bool)
    for i, (x, y) in enumerate(np.asarray(points, np.float64).reshape(-1, 2)):
        cx, cy = int(x / mask.downsample), int(y / mask.downsample)
        out[i] = not m[max(0, cy - r):cy + r + 1, max(0, cx - r):cx + r + 1].any()
    return out


@dataclass
class PlannedTiles:
    """Tiles of a list of records: per tile its record, origin (model px), labels and points (tile px)."""

    records: list[FrameRecord]
    index: np.ndarray
    xy: np.ndarray
    pattern: np.ndarray
    necrosis: np.ndarray
    mitosis_labelled: np.ndarray
    points: list[np.ndarray]
    problems: list[LabelProblem]


def plan_tiles(records: Sequence[FrameRecord], spec: InputSpec, stride_px: int, min_tissue_fraction: float,
               drop_problems: bool = True) -> PlannedTiles:
    """Cut each record's resampled image into tiles, map its points in, drop tiles below the tissue share.

    Figures with no tissue under them are listed as ``on_glass`` problems (and left out when `drop_problems`).
    """
    t = spec.tile_px
    has_mitosis = spec.mitosis_stride_px is not None
    index, xy, pattern, necrosis, labelled, points, problems = [], [], [], [], [], [], []
    kept: list[FrameRecord] = []
    for rec in records:
        mask = frame_mask(rec) if (len(rec.points) or min_tissue_fraction > 0) else None
        pts = rec.points
        if mask is not None and len(pts):
            glass = on_glass(mask, pts)
            for x, y in pts[glass]:
                problems.append(LabelProblem(rec.source, rec.path.name, "on_glass",
                                             f"figure at ({x:.0f}, {y:.0f}) has no tissue within {GLASS_RADIUS_UM:g} µm"))
            if drop_problems:
                pts = pts[~glass]
        W, H = resampled_size(rec, spec)
        sx, sy = W / rec.width, H / rec.height
        xs, ys = np.meshgrid(tile_starts(W, t, stride_px), tile_starts(H, t, stride_px))
        x0, y0 = xs.ravel().astype(np.float64), ys.ravel().astype(np.float64)
        if mask is not None and min_tissue_fraction > 0:
            scaled = TissueMask(mask.mask, mask.mpp, mask.downsample * sx, (W, H))
            ok = tissue_fractions(scaled, x0, y0, t, t) >= min_tissue_fraction
            x0, y0 = x0[ok], y0[ok]
        lab = rec.labels
        pat = pattern_index(lab.get("pattern"), spec.pattern_classes, f"{rec.source} ({rec.path.name})") \
            if spec.pattern_classes else -1
        nec = float(lab.get("necrosis", -1))
        mit = rec.mitoses_labelled and has_mitosis
        if pat < 0 and nec < 0 and not mit:
            continue  # nothing this model's input can learn from the image
        if not len(x0):
            continue
        kept.append(rec)
        k = len(kept) - 1
        in_tiles = points_in_boxes(pts * (sx, sy), x0, y0, np.full(len(x0), t), np.full(len(x0), t))
        for i in range(len(x0)):
            points.append(in_tiles[i] - (x0[i], y0[i]))
        index.append(np.full(len(x0), k))
        xy.append(np.stack([x0, y0], 1))
        pattern.append(np.full(len(x0), pat))
        necrosis.append(np.full(len(x0), nec))
        labelled.append(np.full(len(x0), mit))
    def cat(xs: list[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
        return np.concatenate(xs) if xs else np.zeros(shape)

    return PlannedTiles(kept, cat(index, (0,)).astype(np.int32), cat(xy, (0, 2)), cat(pattern, (0,)).astype(np.int64),
                        cat(necrosis, (0,)).astype(np.float32), cat(labelled, (0,)).astype(bool), points, problems)


class FrameTileDataset(_PerProcess, Dataset):
    """Model tiles of frames and labelled images: each image decoded and resampled once per process, then cached."""

    def __init__(self, planned: PlannedTiles, maker: SampleMaker, source: str, cache_mb: int = CACHE_MB):
        self.records = planned.records
        self.image_index = planned.index
        self.xy = planned.xy.astype(np.int64)
        self.pattern = planned.pattern
        self.necrosis = planned.necrosis
        self.mitosis_labelled = planned.mitosis_labelled
        self.maker = maker
        self.source = source
        self.cache_mb = cache_mb
        self.n_mitoses = np.array([len(p) for p in planned.points], np.int32)
        self.offsets = np.r_[0, np.cumsum(self.n_mitoses)].astype(np.int64)
        self.points_px = np.concatenate(planned.points, 0) if planned.points else np.zeros((0, 2))
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self.image_index)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_cache"] = OrderedDict()  # workers fill their own cache; pickling images would cost more than decoding
        return state

    def image(self, k: int) -> np.ndarray:
        """Record k's image at the input mpp (decoded once per process while the cache has room)."""
        self._check_process()
        if getattr(self, "_cache_pid", None) != self._pid:
            self._cache, self._cache_pid = OrderedDict(), self._pid
        hit = self._cache.get(k)
        if hit is not None:
            self._cache.move_to_end(k)
            return hit
        rec = self.records[k]
        rgb = read_rgb(str(rec.path))
        size = resampled_size(rec, self.maker.spec)
        if (rgb.shape[1], rgb.shape[0]) != size:
            up = size[0] > rgb.shape[1]
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR if up else cv2.INTER_AREA)
        self._cache[k] = rgb
        while sum(v.nbytes for v in self._cache.values()) > self.cache_mb * 2**20 and len(self._cache) > 1:
            self._cache.popitem(last=False)
        return rgb

    def read(self, i: int) -> np.ndarray:
        """The RGB tile i (tile_px square, white beyond the image edge), before normalisation and augmentation."""
        t = self.maker.spec.tile_px
        img = self.image(int(self.image_index[i]))
        x, y = self.xy[i]
        tile = img[y:y + t, x:x + t]
        if tile.shape[:2] != (t, t):
            pad = np.full((t, t, 3), 255, np.uint8)
            pad[:tile.shape[0], :tile.shape[1]] = tile
            tile = pad
        return tile

    def points(self, i: int) -> np.ndarray:
        """Mitosis points of tile i in tile px, (K, 2)."""
        return self.points_px[self.offsets[i]:self.offsets[i + 1]]

    def figure_positions(self) -> np.ndarray:
        """(M, 3) image index, x, y (model px) of every figure in a tile, for counting distinct figures."""
        idx = np.repeat(self.image_index, self.n_mitoses)
        xy = self.points_px + np.repeat(self.xy, self.n_mitoses, 0)
        return np.column_stack([idx, np.round(xy, 2)]) if len(idx) else np.zeros((0, 3))

    def group_names(self) -> list[str]:
        """The group (slide / case / patient) of every tile."""
        return [self.records[k].group for k in self.image_index]

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.records[int(self.image_index[i])]
        return self.maker(self.read(i), self.points(i), int(self.pattern[i]), float(self.necrosis[i]),
                          bool(self.mitosis_labelled[i]), rec.group)
