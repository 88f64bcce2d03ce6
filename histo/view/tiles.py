"""Deep Zoom tiles of one slide, read through histo.slide at each Deep Zoom level's exact µm/px, JPEG-encoded and cached."""

from __future__ import annotations

import io
import math
import queue
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
from PIL import Image

from histo.errors import HistoError
from histo.slide import Slide, open_slide

TILE_PX = 256
JPEG_QUALITY = 80
CACHE_TILES = 4096
POOL_HANDLES = 4


class DeepZoom:
    """The Deep Zoom pyramid of a slide: level L is level 0 shrunk by 2**(max_level - L)."""

    def __init__(self, path: str | Path, mpp: float | None = None, tile_px: int = TILE_PX,
                 cache_tiles: int = CACHE_TILES) -> None:
        self.path, self._mpp_arg = Path(path), mpp
        self.slide: Slide = open_slide(path, mpp=mpp)
        self.mpp = self.slide.mpp  # raises MppError naming the override when the file lacks it
        self.width_px, self.height_px = self.slide.dimensions
        self.tile_px = int(tile_px)
        self.max_level = max(0, math.ceil(math.log2(max(self.width_px, self.height_px, 1))))
        # a small pool of slide handles, each used by one request at a time (not every backend promises
        # thread safety); the lock guards the cache and the pool's size
        self._lock = threading.Lock()
        self._free: queue.LifoQueue[Slide] = queue.LifoQueue()
        self._free.put(self.slide)
        self._handles: list[Slide] = [self.slide]
        self._cache: OrderedDict[tuple[int, int, int], bytes] = OrderedDict()
        self._cache_tiles = int(cache_tiles)
        self._closing = threading.Event()
        self._warmer: threading.Thread | None = None

    def warm_in_background(self) -> None:
        """Open the pool's handles and read every pyramid level once with each, off the request path."""
        self._warmer = threading.Thread(target=self.warm, name="histo-view-warm", daemon=True)
        self._warmer.start()

    def warm(self) -> None:
        """Read each pyramid level once with every pool handle, coarsest first (what a first view reads).

        A back end checks a level on its first read (histo.slide's direct tile path decodes a tile both
        ways) and a new handle costs an open: done here, neither lands on a tile request.
        """
        levels = list(range(self.slide.level_count))[::-1]
        for level in levels:  # the first handle a level at a time, so that requests can use it in between
            handle = self._free.get()
            try:
                self._warm_handle(handle, [level])
            finally:
                self._free.put(handle)
        while not self._closing.is_set():
            with self._lock:
                if len(self._handles) >= POOL_HANDLES:
                    return
                try:
                    handle = open_slide(self.path, mpp=self._mpp_arg)
                except HistoError:
                    return
                self._handles.append(handle)
            self._warm_handle(handle, levels)
            self._free.put(handle)

    def _warm_handle(self, handle: Slide, levels: list[int]) -> None:
        for level in levels:
            if self._closing.is_set():
                return
            try:
                handle.read_level(level, 0, 0, 1, 1)
            except HistoError:
                return  # a read that fails here fails (and is reported) on request too

    def close(self) -> None:
        """Release the slide handles."""
        self._closing.set()
        if self._warmer is not None:
            self._warmer.join(timeout=30)
        for h in self._handles:
            h.close()

    def _read(self, x: float, y: float, w: int, h: int, mpp: float) -> np.ndarray:
        try:
            handle = self._free.get_nowait()
        except queue.Empty:
            with self._lock:
                grow = len(self._handles) < POOL_HANDLES
                if grow:
                    self._handles.append(handle := open_slide(self.path, mpp=self._mpp_arg))
            if not grow:
                handle = self._free.get()
        try:
            return handle.read(x, y, w, h, mpp=mpp)
        finally:
            self._free.put(handle)

    def dzi_xml(self) -> str:
        """The .dzi descriptor OpenSeadragon reads."""
        return ('<?xml version="1.0" encoding="UTF-8"?>'
                '<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="jpeg" '
                f'Overlap="0" TileSize="{self.tile_px}"><Size Width="{self.width_px}" Height="{self.height_px}"/></Image>')

    def level_size(self, level: int) -> tuple[int, int]:
        """(width, height) in px of a Deep Zoom level."""
        ds = 2 ** (self.max_level - level)
        return max(1, math.ceil(self.width_px / ds)), max(1, math.ceil(self.height_px / ds))

    def tile(self, level: int, col: int, row: int) -> bytes:
        """JPEG bytes of one tile; HistoError for a tile outside the pyramid."""
        key = (level, col, row)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        if not 0 <= level <= self.max_level:
            raise HistoError(f"level {level} outside 0..{self.max_level}")
        lw, lh = self.level_size(level)
        x_px, y_px = col * self.tile_px, row * self.tile_px
        if col < 0 or row < 0 or x_px >= lw or y_px >= lh:
            raise HistoError(f"tile {col},{row} outside level {level} ({lw}x{lh} px)")
        w, h = min(self.tile_px, lw - x_px), min(self.tile_px, lh - y_px)
        ds = 2 ** (self.max_level - level)
        rgb = self._read(x_px * ds, y_px * ds, w, h, mpp=self.mpp * ds)
        data = encode_jpeg(rgb)
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > self._cache_tiles:
                self._cache.popitem(last=False)
        return data


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """H×W×3 uint8 → JPEG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb[..., :3])).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
