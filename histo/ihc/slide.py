"""Score a whole IHC slide for one marker: tissue, tiles read with a margin, deconvolution, cells, H-score, call, QC.

Each tile of the grid (``histo.tiling.plan_grid`` at the analysis mpp, no overlap) is read with a margin
of ``margin_um`` on every side so that a cell on a tile edge is segmented whole; a cell belongs to the
tile whose core contains its centroid, so it is counted exactly once. The glass colour (``I0`` of the
deconvolution) and, on request, the stain vectors are estimated once per slide, never per tile, so the
same pixel gives the same stain amounts in every tile. Memory is bounded: tiles are processed and
dropped as they come; only one row per cell is kept.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from histo.errors import HistoError, MppError
from histo.ihc.cells import CellParams, detect_cells
from histo.ihc.deconvolution import (
    StainEstimationError,
    StainMatrix,
    deconvolve,
    estimate_background_rgb,
    estimate_stain_matrix,
    ruifrok_hdab,
)
from histo.ihc.markers import ANALYSIS_MPP_RANGE, MarkerSpec, call_marker
from histo.ihc.qc import QCParams
from histo.ihc.regions import check_frame, mask_values_at
from histo.ihc.result import CELL_COLUMNS, SlideIHCResult, SlideQCFlag
from histo.ihc.scoring import ScoreSummary, classify_intensity, h_score_from_counts
from histo.slide import Slide, open_slide, renamed_mpp
from histo.tiling import GridConfig, TilingConfig, plan_grid, tissue_fractions
from histo.tissue import TissueMask, detect_tissue

STAIN_METHODS = ("ruifrok", "estimate")
POOLS = ("thread", "process")
# DAB amounts are histogrammed per tile on this grid (OD) so the slide's percentiles need no pixel store.
_HIST_EDGES = np.linspace(-0.5, 3.0, 351)
# The margin must hold half the longest nucleus plus the cytoplasm ring plus the top-hat support.
DEFAULT_MARGIN_UM = 20.0
DEFAULT_ANALYSIS_MPP = 0.5  # µm/px cells are read at when neither the caller nor the panel says
MIN_GLASS_FRACTION = 0.02
# "No DAB at all" is judged on clearly brown pixels: with fixed Ruifrok vectors, dark hematoxylin leaks
# into the DAB channel (measured on the alk_negative phantom, which has no DAB: 0.8% of stained pixels
# above 0.15 OD, 99th percentile 0.15), so the 0.15 OD of the tile-level check would never fire on a slide.
NO_DAB_OD = 0.25


@dataclass(frozen=True)
class _Work:
    """Everything a worker needs to score tiles: plain values, cheap to pickle to a process."""

    slide_path: str
    mpp_override: float | None
    mpp: float
    tile_px: int
    margin_px: int
    stains: StainMatrix
    background_rgb: tuple[float, float, float]
    cell_params: CellParams
    compartment: str
    thresholds_od: tuple[float, float, float]
    qc: QCParams
    ring_tissue_od: float | None


_LOCAL = threading.local()


def _own_slide(work: _Work) -> Slide:
    """This worker's slide handle (one per process or thread, opened once)."""
    cache = getattr(_LOCAL, "slides", None)
    if cache is None:
        cache = _LOCAL.slides = {}
    key = (work.slide_path, work.mpp_override)
    s = cache.get(key)
    if s is None:
        if len(cache) > 2:
            for old in cache.values():
                old.close()
            cache.clear()
        s = cache[key] = open_slide(work.slide_path, mpp=work.mpp_override)
    return s


def _score_tile(work: _Work, index: int, x0: float, y0: float, slide: Slide | None = None) -> dict[str, Any]:
    """Cells (centroid in this tile's core) and DAB pixel statistics of one tile read with its margin."""
    slide = slide if slide is not None else _own_slide(work)
    ds = work.mpp / slide.mpp
    m, t = work.margin_px, work.tile_px
    rgb = slide.read(x0 - m * ds, y0 - m * ds, t + 2 * m, t + 2 * m, work.mpp)
    maps = deconvolve(rgb, work.stains, work.background_rgb)
    ring_mask = maps.od_sum > work.ring_tissue_od if work.ring_tissue_od is not None else None
    det = detect_cells(maps, work.mpp, work.cell_params, tissue_mask=ring_mask)
    tab = det.table
    # Continuous coordinates (pixel i spans [i, i+1)): the centroid of pixel-index mean c is at c + 0.5.
    cx = tab["x_px"].to_numpy() + 0.5
    cy = tab["y_px"].to_numpy() + 0.5
    core = (cx >= m) & (cx < m + t) & (cy >= m) & (cy < m + t)
    dab = tab[f"dab_{work.compartment}"].to_numpy()[core]
    cls = classify_intensity(dab, work.thresholds_od)
    measured = cls >= 0
    sel = np.flatnonzero(core)[measured]
    # Pixel statistics of the core only, so margins shared by neighbours are not counted twice.
    sl = (slice(m, m + t), slice(m, m + t))
    tissue = maps.od_sum[sl] > work.qc.tissue_od
    dab_t = maps.dab[sl][tissue]
    # Equal-width bins given as (count, range): numpy's direct bin computation, not a sort of every pixel
    # (same counts as bins=_HIST_EDGES, a fifth of the time).
    hist, _ = np.histogram(dab_t, bins=len(_HIST_EDGES) - 1, range=(float(_HIST_EDGES[0]), float(_HIST_EDGES[-1])))
    below = int(np.count_nonzero(dab_t < _HIST_EDGES[0]))
    hist[0] += below
    hist[-1] += int(dab_t.size - hist.sum())  # above the last edge
    return {
        "index": index,
        "x": x0 - m * ds + cx[sel] * ds,
        "y": y0 - m * ds + cy[sel] * ds,
        "area_um2": tab["area_um2"].to_numpy()[sel],
        "cell_area_um2": tab["cell_area_um2"].to_numpy()[sel],
        "dab_od": dab[measured],
        "h_od": tab["h_nucleus"].to_numpy()[sel],
        "ihc_class": cls[measured],
        "n_detected": int(core.sum()),
        "n_unmeasured": int((~measured).sum()),
        "hist": hist,
        "n_tissue_px": int(tissue.sum()),
        "n_saturated_px": int(np.sum(maps.od_max[sl][tissue] > work.qc.saturation_od)),
        "n_dab_px": int(np.sum(dab_t > work.qc.dab_od)),
    }


def _process_entry(work: _Work, index: int, x0: float, y0: float) -> dict[str, Any]:
    return _score_tile(work, index, x0, y0)


def slide_background_rgb(slide: Slide, tissue: TissueMask) -> tuple[float, float, float]:
    """Glass colour of the slide: median RGB of the overview outside the (dilated) tissue mask, else white."""
    from scipy import ndimage as ndi

    rgb = slide.read_overview(tissue.mpp)
    mask = tissue.mask
    if rgb.shape[:2] != mask.shape:
        return (255.0, 255.0, 255.0)
    # Two mask pixels of margin keep the blurred tissue rim out of the glass sample.
    glass = ~ndi.binary_dilation(mask, iterations=2) if mask.any() else np.ones(mask.shape, bool)
    px = rgb[glass].reshape(-1, 3)
    if px.shape[0] < MIN_GLASS_FRACTION * mask.size or px.shape[0] < 16:
        return (255.0, 255.0, 255.0)
    # The brightest tenth of the non-tissue pixels: outside the mask there can also be pale lumen, fat or
    # faint stroma (darker than glass), which must not set I0. Glass darker than 180 is not glass: white.
    return estimate_background_rgb(px.reshape(-1, 1, 3), percentile=90.0, min_intensity=180.0)


def _estimate_stains(slide: Slide, grid: pd.DataFrame, work: _Work, max_tiles: int = 8) -> StainMatrix:
    """Per-slide stain vectors (Macenko) from up to ``max_tiles`` tissue tiles spread over the grid."""
    order = grid.sort_values("tissue_fraction", ascending=False).index.to_numpy()
    pick = order[np.linspace(0, len(order) - 1, min(max_tiles, len(order))).round().astype(int)] if len(order) else []
    parts = []
    for i in pick:
        r = grid.loc[i]
        img = slide.read(float(r["x"]), float(r["y"]), work.tile_px, work.tile_px, work.mpp)
        parts.append(img[::2, ::2].reshape(-1, 1, 3))  # every 4th pixel: the estimate needs statistics, not all pixels
    if not parts:
        raise StainEstimationError("no tissue tiles to estimate stain vectors from")
    return estimate_stain_matrix(np.concatenate(parts, axis=0), background_rgb=work.background_rgb)


def _check_spec(spec: Any) -> MarkerSpec:
    if not isinstance(spec, MarkerSpec):
        raise HistoError(f"spec must be a MarkerSpec (from load_panel), got {type(spec).__name__}")
    return spec


def _check_analysis_mpp(v: Any, slide_mpp: float) -> float:
    lo, hi = ANALYSIS_MPP_RANGE
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise MppError(f"analysis_mpp must be a cell-resolution µm/px within {lo:.1f}-{hi:.1f}, got {v!r}")
    return float(v)


def _flags(qc_values: dict[str, Any], n_cells: int, min_cells: int, p: QCParams) -> list[SlideQCFlag]:
    out = []
    if qc_values["tissue_area_mm2"] <= 0:
        out.append(SlideQCFlag("no_tissue", "error", 0.0, 0.0, "tissue detection found no tissue on the slide"))
    if qc_values["n_tissue_px"] > 0 and qc_values["brown_fraction"] < p.min_dab_fraction:
        out.append(SlideQCFlag(
            "no_dab_detected", "warning", qc_values["brown_fraction"], p.min_dab_fraction,
            f"{100 * qc_values['brown_fraction']:.3f}% of stained pixels have DAB OD > {NO_DAB_OD} (99th percentile "
            f"{qc_values['dab_p99_od']:.3f}): no DAB anywhere, not even background. A negative case still shows "
            "some brown somewhere (internal controls, background); check that the DAB step ran"))
    if qc_values["saturated_fraction"] > p.max_saturated_fraction:
        out.append(SlideQCFlag(
            "saturated_stain", "warning", qc_values["saturated_fraction"], p.max_saturated_fraction,
            f"{100 * qc_values['saturated_fraction']:.2f}% of stained pixels have a channel OD > {p.saturation_od} "
            "(near black): intensities are clipped there and the H-score understates the stain"))
    if qc_values["tissue_area_mm2"] > 0 and n_cells < min_cells:
        out.append(SlideQCFlag("too_few_cells", "warning", float(n_cells), float(min_cells),
                               f"{n_cells} cells scored in the counting region, fewer than the marker's "
                               f"min_cells {min_cells}: no call"))
    if qc_values.get("region") == "tumour" and qc_values.get("tumour_area_mm2", 1.0) <= 0:
        out.append(SlideQCFlag("no_tumour_region", "warning", 0.0, 0.0,
                               "the tumour mask is empty on this slide: no tumour cells to score"))
    return out


def score_slide(
    slide: Slide | str | Path,
    spec: MarkerSpec,
    *,
    analysis_mpp: float | None = None,
    tissue_mask: TissueMask | None = None,
    tumour_mask: TissueMask | None = None,
    stain: str | StainMatrix = "ruifrok",
    tile_px: int = 1024,
    margin_um: float = DEFAULT_MARGIN_UM,
    workers: int = 2,
    pool: str = "thread",
    progress: bool = False,
    mask_mpp: float = 8.0,
    qc_params: QCParams | None = None,
    ring_tissue_od: float | None = None,
    allow_frame_mismatch: bool = False,
    mpp: float | None = None,
    he_slide: Slide | str | Path | None = None,
    slide_mpp: float | None = None,
) -> SlideIHCResult:
    """Score an IHC slide for one marker: per-cell DAB classes, % positive, H-score, the panel call and QC flags.

    Cells are counted in ``tumour_mask`` (region 'tumour') when given, else in the tissue (region
    'tissue'). ``stain`` is 'ruifrok' (fixed H-DAB vectors), 'estimate' (Macenko vectors from a sample
    of tissue tiles, once per slide) or a StainMatrix. ``pool`` 'thread' or 'process' runs ``workers``
    tiles at once (0 = in this thread). A tumour mask made in another level-0 frame raises
    FrameMismatchError unless ``allow_frame_mismatch``. ``mpp`` overrides the level-0 µm/px when
    ``slide`` is a path (``slide_mpp`` is its deprecated old name). With ``he_slide`` (the slide ``tumour_mask`` was made on), this slide is first
    registered onto it (histo.register) and the mask carried over; a poor or failed registration counts
    in all tissue instead, with a QC flag saying so; ``qc_values['registration']`` records the outcome.

    Resolution: ``analysis_mpp`` when given (finer than the slide: interpolated, flagged 'upsampled');
    else the marker's own ``analysis_mpp`` from the panel, but never finer than the slide's level 0
    (flagged 'coarser_than_panel' when the slide cannot give it); else DEFAULT_ANALYSIS_MPP.
    """
    t_start = time.perf_counter()
    timing: dict[str, float] = {}
    spec = _check_spec(spec)
    own = not isinstance(slide, Slide)
    level0_mpp = renamed_mpp(mpp, slide_mpp, "slide_mpp", "score_slide")
    s = slide if isinstance(slide, Slide) else open_slide(slide, mpp=level0_mpp)
    try:
        reg_info, reg_flag = None, None
        if tumour_mask is not None and he_slide is not None:
            from histo.register.mapping import map_mask_onto

            t0 = time.perf_counter()
            mapped = map_mask_onto(tumour_mask, he_slide, s)
            timing["registration"] = time.perf_counter() - t0
            tumour_mask, reg_info = mapped.mask, mapped.registration
            if mapped.message:
                reg_flag = SlideQCFlag(f"registration_{reg_info['status']}", "warning",
                                       float(reg_info.get("estimated_error_um") or float("nan")), 0.0, mapped.message)
        result = _score(s, spec, analysis_mpp, tissue_mask, tumour_mask, stain, tile_px, margin_um, workers, pool,
                        progress, mask_mpp, qc_params or QCParams(), ring_tissue_od, allow_frame_mismatch, t_start, timing)
        if reg_info is not None:
            result.qc_values["registration"] = reg_info
            if reg_flag is not None:
                result.qc.append(reg_flag)
        return result
    finally:
        if own:
            s.close()


def _score(s: Slide, spec: MarkerSpec, analysis_mpp: float | None, tissue_mask: TissueMask | None,
           tumour_mask: TissueMask | None, stain: str | StainMatrix, tile_px: int, margin_um: float, workers: int,
           pool: str, progress: bool, mask_mpp: float, qcp: QCParams, ring_tissue_od: float | None,
           allow_frame_mismatch: bool, t_start: float, timing: dict[str, float]) -> SlideIHCResult:
    slide_mpp = s.mpp  # MppError naming the slide when missing
    flags: list[SlideQCFlag] = []
    if analysis_mpp is not None:
        mpp = _check_analysis_mpp(analysis_mpp, slide_mpp)
    elif spec.analysis_mpp is not None:
        mpp = _check_analysis_mpp(spec.analysis_mpp, slide_mpp)
        if mpp < slide_mpp / 1.05:
            flags.append(SlideQCFlag(
                "coarser_than_panel", "warning", slide_mpp, mpp,
                f"the panel reads {spec.name} at {mpp:g} µm/px; this slide is {slide_mpp:.3f} µm/px, so it was read at "
                f"that: a stained line thinner than two pixels reads weaker (scan at {mpp:g} µm/px or finer)"))
            mpp = min(slide_mpp, ANALYSIS_MPP_RANGE[1])  # a coarser slide is still upsampled to a cell resolution (flagged below)
    else:
        mpp = DEFAULT_ANALYSIS_MPP
    if isinstance(tile_px, bool) or not isinstance(tile_px, int) or not 64 <= tile_px <= 4096:
        raise HistoError(f"tile_px must be an integer within 64-4096, got {tile_px!r}")
    if not (isinstance(margin_um, (int, float)) and math.isfinite(margin_um) and margin_um >= 0):
        raise HistoError(f"margin_um must be a number >= 0, got {margin_um!r}")
    if pool not in POOLS:
        raise HistoError(f"pool must be one of {POOLS}, got {pool!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise HistoError(f"workers must be an integer >= 0, got {workers!r}")
    if not isinstance(stain, StainMatrix) and stain not in STAIN_METHODS:
        raise HistoError(f"stain must be one of {STAIN_METHODS} or a StainMatrix, got {stain!r}")
    dims = (int(s.dimensions[0]), int(s.dimensions[1]))
    mism = 0.0
    if tumour_mask is not None:
        tumour_mask, mism = check_frame(tumour_mask, dims, allow_frame_mismatch=allow_frame_mismatch)
    t0 = time.perf_counter()
    if tissue_mask is None:
        tissue_mask = detect_tissue(s, mask_mpp=mask_mpp)
    else:
        tissue_mask, _ = check_frame(tissue_mask, dims, allow_frame_mismatch=allow_frame_mismatch, what="tissue mask")
    background = slide_background_rgb(s, tissue_mask)
    timing["tissue"] = time.perf_counter() - t0
    region = "tumour" if tumour_mask is not None else "tissue"
    cfg = TilingConfig(grid=GridConfig(tile_px=tile_px, mpp=mpp, overlap_px=0, min_tissue_fraction=1e-9,
                                       mask_mpp=max(tissue_mask.mpp, mpp)))
    grid, _ = plan_grid(s, cfg, mask=tissue_mask)
    tiles = grid.table.reset_index(drop=True)
    tiles["tumour_fraction"] = np.float32(np.nan)
    if tumour_mask is not None and len(tiles):
        tiles["tumour_fraction"] = tissue_fractions(tumour_mask, tiles["x"].to_numpy(), tiles["y"].to_numpy(),
                                                    float(tiles["w"].iloc[0]), float(tiles["h"].iloc[0])).astype(np.float32)
        # Tiles without tumour hold no counted cells; scoring them would only cost time.
        tiles = tiles[tiles["tumour_fraction"] > 0].reset_index(drop=True)
    margin_px = int(math.ceil(margin_um / mpp))
    mpp_override = slide_mpp if s.mpp_source == "override" else None
    cell_params = spec.cell_params
    if spec.compartment != "membrane" and cell_params.shared_membrane != "include":
        # Leaving out shared membrane pixels changes only the membrane compartment's values: a marker
        # read elsewhere skips its cost (two label filters per tile).
        cell_params = replace(cell_params, shared_membrane="include")
    work = _Work(str(s.path), mpp_override, mpp, tile_px, margin_px, ruifrok_hdab(), background, cell_params,
                 spec.compartment, spec.thresholds_od, qcp, ring_tissue_od)
    method = "custom" if isinstance(stain, StainMatrix) else stain
    if isinstance(stain, StainMatrix):
        work = _replace(work, stains=stain)
    elif stain == "estimate":
        t0 = time.perf_counter()
        try:
            work = _replace(work, stains=_estimate_stains(s, tiles, work))
        except StainEstimationError as exc:
            flags.append(SlideQCFlag("stain_estimation_failed", "warning", 0.0, 0.0,
                                     f"per-slide stain vectors could not be estimated ({exc}); Ruifrok H-DAB used"))
        timing["stain_estimate"] = time.perf_counter() - t0
    if mism > 0.0:
        flags.append(SlideQCFlag("frame_mismatch", "warning", mism, 0.0,
                                 f"the tumour mask's slide differs in size by {100 * mism:.1f}%; it was stretched onto "
                                 "this slide (allow_frame_mismatch): the region is only as right as that assumption"))
    if mpp < slide_mpp / 1.05:
        flags.append(SlideQCFlag("upsampled", "warning", mpp, slide_mpp,
                                 f"analysis at {mpp} µm/px is finer than the slide's {slide_mpp:.3f} µm/px: pixels are interpolated"))

    t0 = time.perf_counter()
    results = _run_tiles(s, work, tiles, workers, pool, progress)
    timing["tiles"] = time.perf_counter() - t0
    cells, tiles, qc_values, n_unmeasured = _assemble(results, tiles, tissue_mask, tumour_mask, slide_mpp, spec, region)
    qc_values["stain_background_rgb"] = list(background)
    inside = cells["in_region"].to_numpy()
    cls = cells["ihc_class"].to_numpy()[inside]
    counts = np.bincount(cls, minlength=4)[:4] if cls.size else np.zeros(4, np.int64)
    n = int(counts.sum())
    score = ScoreSummary(
        compartment=spec.compartment,
        thresholds_od=tuple(spec.thresholds_od),  # type: ignore[arg-type]
        n_cells=n,
        n_unmeasured=n_unmeasured,
        n_outside_region=int((~cells["in_region"].to_numpy()).sum()),
        counts=tuple(int(c) for c in counts),  # type: ignore[arg-type]
        pct_by_class=tuple(float(100.0 * c / n) if n else float("nan") for c in counts),  # type: ignore[arg-type]
        pct_positive=float(100.0 * counts[1:].sum() / n) if n else float("nan"),
        h_score=h_score_from_counts(counts) if n else float("nan"),
        mean_dab_od=float(cells["dab_od"].to_numpy()[inside].mean()) if n else float("nan"),
    )
    call = call_marker(spec, score)
    flags = _flags(qc_values, n, spec.call.min_cells, qcp) + flags
    return SlideIHCResult(
        slide=s.name, slide_path=str(s.path), spec=spec, region=region, cells=cells, tiles=tiles, score=score,
        call=call, qc=flags, qc_values=qc_values, stains=work.stains, stain_method=method, background_rgb=background,
        mpp_analysis=mpp, slide_mpp=slide_mpp, slide_dimensions=dims, tile_px=tile_px, margin_px=margin_px,
        seconds=time.perf_counter() - t_start, timing=timing, tissue_mask=tissue_mask, tumour_mask=tumour_mask,
    )


def _replace(work: _Work, **kw: Any) -> _Work:
    return replace(work, **kw)


def _make_pool(workers: int, pool: str) -> Executor | None:
    from histo.workers import make_pool

    return make_pool(workers, pool, name="histo-ihc")


def _run_tiles(s: Slide, work: _Work, tiles: pd.DataFrame, workers: int, pool: str, progress: bool) -> list[dict]:
    """Score every tile, at most 2 x workers in flight (bounded memory), results in table order."""
    from tqdm.auto import tqdm

    xs, ys = tiles["x"].to_numpy(), tiles["y"].to_numpy()
    bar = tqdm(total=len(tiles), desc=f"{s.name} tiles", unit="tile", disable=not progress, leave=False)
    out: list[dict] = []
    ex = _make_pool(workers, pool)
    try:
        if ex is None:
            for i in range(len(tiles)):
                out.append(_slim(_score_tile(work, i, float(xs[i]), float(ys[i]), s)))
                bar.update()
            return out
        submit: Callable[[int], Any]
        if pool == "thread":
            submit = lambda i: ex.submit(_score_tile, work, i, float(xs[i]), float(ys[i]), s)  # noqa: E731
        else:
            submit = lambda i: ex.submit(_process_entry, work, i, float(xs[i]), float(ys[i]))  # noqa: E731
        in_flight: deque = deque()
        for i in range(len(tiles)):
            in_flight.append(submit(i))
            if len(in_flight) >= 2 * workers:
                out.append(_slim(in_flight.popleft().result()))
                bar.update()
        while in_flight:
            out.append(_slim(in_flight.popleft().result()))
            bar.update()
        return out
    finally:
        bar.close()
        if ex is not None:
            ex.shutdown(wait=True, cancel_futures=True)


def _slim(r: dict) -> dict:
    """Compact per-cell arrays (float32/int8) as soon as a tile is done: the cell store is the only growing memory."""
    for k in ("area_um2", "cell_area_um2", "dab_od", "h_od"):
        r[k] = np.asarray(r[k], np.float32)
    r["ihc_class"] = np.asarray(r["ihc_class"], np.int8)
    return r


def _assemble(results: Sequence[dict], tiles: pd.DataFrame, tissue: TissueMask, tumour: TissueMask | None,
              slide_mpp: float, spec: MarkerSpec, region: str) -> tuple[pd.DataFrame, pd.DataFrame, dict, int]:
    """Cell table (with region membership), per-tile counts and slide QC values from the tile results."""
    def cat(key: str, dtype: Any) -> np.ndarray:
        return np.concatenate([np.asarray(r[key], dtype) for r in results]) if results else np.zeros(0, dtype)

    tile_idx = np.concatenate([np.full(len(r["x"]), r["index"], np.int32) for r in results]) if results else np.zeros(0, np.int32)
    x, y = cat("x", np.float64), cat("y", np.float64)
    in_tissue = mask_values_at(tissue, x, y)
    in_tumour = mask_values_at(tumour, x, y) if tumour is not None else np.zeros(len(x), bool)
    in_region = in_tumour if tumour is not None else in_tissue
    cells = pd.DataFrame({
        "x": x, "y": y, "x_um": x * slide_mpp, "y_um": y * slide_mpp,
        "area_um2": cat("area_um2", np.float32), "cell_area_um2": cat("cell_area_um2", np.float32),
        "dab_od": cat("dab_od", np.float32), "h_od": cat("h_od", np.float32),
        "ihc_class": cat("ihc_class", np.int8), "in_tumour": in_tumour, "in_region": in_region, "tile": tile_idx,
    })[list(CELL_COLUMNS)]
    nt = len(tiles)
    reg_idx = tile_idx[in_region]
    pos = cells["ihc_class"].to_numpy()[in_region]
    n_cells = np.bincount(reg_idx, minlength=nt)[:nt]
    n_pos = np.bincount(reg_idx[pos >= 1], minlength=nt)[:nt]
    weighted = np.bincount(reg_idx, weights=pos.astype(np.float64), minlength=nt)[:nt]
    with np.errstate(invalid="ignore", divide="ignore"):
        tiles = tiles.assign(
            n_cells=n_cells.astype(np.int32),
            n_positive=n_pos.astype(np.int32),
            pct_positive=np.where(n_cells > 0, 100.0 * n_pos / np.maximum(n_cells, 1), np.nan).astype(np.float32),
            h_score=np.where(n_cells > 0, 100.0 * weighted / np.maximum(n_cells, 1), np.nan).astype(np.float32),
            n_detected=np.array([r["n_detected"] for r in results], np.int32) if results else np.zeros(0, np.int32),
        )
    hist = np.sum([r["hist"] for r in results], axis=0) if results else np.zeros(len(_HIST_EDGES) - 1, np.int64)
    n_tissue_px = int(sum(r["n_tissue_px"] for r in results))
    n_dab_px = int(sum(r["n_dab_px"] for r in results))
    n_sat = int(sum(r["n_saturated_px"] for r in results))
    if n_tissue_px:
        k = int(np.searchsorted(np.cumsum(hist), 0.99 * n_tissue_px))
        p99 = float(_HIST_EDGES[min(k + 1, len(_HIST_EDGES) - 1)])
    else:
        p99 = float("nan")
    qc_values: dict[str, Any] = {
        "region": region,
        "tissue_area_mm2": float(tissue.area_mm2),
        "tumour_area_mm2": float(tumour.area_mm2) if tumour is not None else None,
        "n_tissue_px": n_tissue_px,
        "dab_fraction": n_dab_px / n_tissue_px if n_tissue_px else 0.0,
        "brown_fraction": float(hist[np.searchsorted(_HIST_EDGES, NO_DAB_OD - 1e-9):].sum()) / n_tissue_px if n_tissue_px else 0.0,
        "dab_p99_od": p99,
        "saturated_fraction": n_sat / n_tissue_px if n_tissue_px else 0.0,
        "n_unmeasured": int(sum(r["n_unmeasured"] for r in results)),
    }
    return cells, tiles, qc_values, qc_values["n_unmeasured"]
