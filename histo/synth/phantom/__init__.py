"""Histology phantoms: paired H&E and IHC whole-slide images with exact ground truth, from a seed and a spec.

    from histo.synth.phantom import load_spec, make_phantom
    out = make_phantom(load_spec("configs/synth/demo_small.yaml"), "phantoms", workers=2)

Submodules: ``spec`` (YAML spec), ``stain`` (Beer–Lambert model), ``layout`` (regions and orientation
fields), ``cells`` (placement and sprites), ``render`` (tiles), ``truth`` (GeoJSON, summary, cell table),
``case`` (the assembled phantom).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import time
from collections import deque
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from histo.atomic import write_text
from histo.errors import ConfigError

from .case import Phantom, build_phantom
from .render import Renderer
from .spec import PhantomSpec, load_spec, replace_size, spec_from_dict
from .truth import cell_table, geojson, read_summary, summary, upgrade_summary, write_json_atomic, write_parquet_atomic

__all__ = [
    "Phantom", "PhantomSpec", "PhantomOutput", "build_phantom", "load_spec", "spec_from_dict", "replace_size",
    "make_phantom", "geojson", "summary", "read_summary", "upgrade_summary", "cell_table", "ChunkFeeder", "code_digest", "render_key",
]

CHUNK_PX = 1024

_WORKER: Renderer | None = None


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """A digest of this package's source: rendered phantoms are only reused while it is unchanged.

    The same spec and seed give the same pixels only under the same rendering code, so caches of
    written phantoms (training data, evaluation slides) key on the spec *and* this. It changes on any
    edit here, comments included: re-rendering is cheaper than scoring against a stale slide.
    """
    h = hashlib.sha256()
    for src in sorted(Path(__file__).parent.glob("*.py")):
        h.update(src.name.encode() + b"\0" + src.read_bytes())
    return h.hexdigest()[:12]


def render_key(spec: PhantomSpec) -> str:
    """A short key that changes whenever a phantom's pixels could: its full spec and the phantom code."""
    h = hashlib.sha256(yaml.safe_dump(spec.to_dict(), sort_keys=True).encode() + code_digest().encode())
    return h.hexdigest()[:10]


def _init_worker(renderer: Renderer) -> None:
    global _WORKER
    _WORKER = renderer


def _render_in_worker(x: int, y: int, w: int, h: int, modality: str) -> np.ndarray:
    assert _WORKER is not None  # set by the pool initializer
    return _WORKER.render(x, y, w, h, modality)


class ChunkFeeder:
    """A render_tile callback for the TIFF writer that renders upcoming chunks ahead in worker processes.

    The writer asks for chunks in row-major order; the feeder keeps a bounded queue of those in flight
    (so memory stays bounded) and falls back to rendering in-process for any other request.
    """

    def __init__(self, ph: Phantom, modality: str, workers: int, chunk_px: int = CHUNK_PX):
        self.ph, self.modality, self.chunk_px = ph, modality, chunk_px
        W, H = ph.width_px, ph.height_px
        self.boxes = deque(
            (x, y, min(chunk_px, W - x), min(chunk_px, H - y)) for y in range(0, H, chunk_px) for x in range(0, W, chunk_px)
        )
        self.pending: deque[tuple[tuple[int, int, int, int], Future]] = deque()
        self.pool: Executor | None = None
        if workers > 1:
            from histo.workers import make_pool

            # fork: the workers get the renderer (large, read-only) without pickling it
            self.pool = make_pool(workers, "process", start_method="fork", initializer=_init_worker,
                                  initargs=(ph.renderer,))
            self.ahead = 2 * workers
            self._fill()

    def _fill(self) -> None:
        while self.pool is not None and self.boxes and len(self.pending) < self.ahead:
            box = self.boxes.popleft()
            self.pending.append((box, self.pool.submit(_render_in_worker, *box, self.modality)))

    def __call__(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        if self.pending and self.pending[0][0] == (x, y, w, h):
            _, fut = self.pending.popleft()
            self._fill()
            return fut.result()
        return self.ph.renderer.render(x, y, w, h, self.modality)

    def close(self) -> None:
        """Stop the worker processes."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def __enter__(self) -> ChunkFeeder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class PhantomOutput:
    """Where a written phantom's files are, and its summary."""

    folder: Path
    he_path: Path
    ihc_path: Path | None
    geojson_path: Path
    ihc_geojson_path: Path | None
    summary_path: Path
    cells_path: Path
    spec_path: Path
    summary: dict
    seconds: dict


def write_slide(ph: Phantom, path: Path, modality: str, workers: int = 1, progress: bool = False) -> Path:
    """Write one modality of a phantom as a pyramidal TIFF (OpenSlide-readable, with mpp)."""
    from histo.synth.tiff_writer import write_pyramidal_tiff

    sp = ph.spec
    desc = f"histo phantom {sp.name} seed={sp.seed} modality={modality}" + (f" marker={sp.ihc.marker}" if modality == "ihc" else "")
    with ChunkFeeder(ph, modality, workers) as feed:
        return write_pyramidal_tiff(path, ph.width_px, ph.height_px, sp.mpp, feed, chunk_px=CHUNK_PX,
                                    jpeg_quality=sp.stain.jpeg_quality, progress=progress, description=desc)


def make_phantom(
    spec: PhantomSpec | str | Path,
    out_dir: str | Path,
    *,
    seed: int | None = None,
    workers: int = 1,
    size_px: tuple[int, int] | None = None,
    ihc: bool | None = None,
    progress: bool = False,
) -> PhantomOutput:
    """Build a phantom and write DIR/<case>/: <case>_HE.tiff, <case>_IHC_<marker>.tiff, truth GeoJSONs, summary.json, cells.parquet."""
    if not isinstance(spec, PhantomSpec):
        spec = load_spec(spec)
    if seed is not None:
        spec = dataclasses.replace(spec, seed=int(seed))
    if size_px is not None:
        spec = replace_size(spec, *size_px)
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    folder = Path(out_dir) / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ph = build_phantom(spec)
    secs = {"build": round(time.perf_counter() - t0, 3)}
    do_ihc = spec.ihc.enabled if ihc is None else ihc
    he_path = folder / f"{spec.name}_HE.tiff"
    t = time.perf_counter()
    write_slide(ph, he_path, "he", workers, progress)
    secs["he"] = round(time.perf_counter() - t, 3)
    ihc_path = None
    if do_ihc:
        ihc_path = folder / f"{spec.name}_IHC_{spec.ihc.marker}.tiff"
        t = time.perf_counter()
        write_slide(ph, ihc_path, "ihc", workers, progress)
        secs["ihc"] = round(time.perf_counter() - t, 3)
    t = time.perf_counter()
    summ = summary(ph)
    summ["renderer_digest"] = code_digest()
    summ["files"] = {"he": he_path.name, "ihc": ihc_path.name if ihc_path else None, "truth": "truth.geojson",
                     "truth_ihc": "truth_ihc.geojson" if ihc_path else None, "cells": "cells.parquet"}
    gj = write_json_atomic(folder / "truth.geojson", geojson(ph, "he"))
    gji = write_json_atomic(folder / "truth_ihc.geojson", geojson(ph, "ihc")) if ihc_path else None
    cells_path = write_parquet_atomic(folder / "cells.parquet", cell_table(ph))
    spec_path = write_text(folder / "spec.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False))
    secs["truth"] = round(time.perf_counter() - t, 3)
    summ["timing_s"] = secs
    sp_path = write_json_atomic(folder / "summary.json", summ)
    return PhantomOutput(folder, he_path, ihc_path, gj, gji, sp_path, cells_path, spec_path, summ, secs)
