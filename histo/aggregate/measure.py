"""Slide measurements from validated tile and mitosis tables: areas, patterns, mitotic counts."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from histo.aggregate.config import DEFAULT_MITOSIS_THRESHOLD, GradingConfig
from histo.aggregate.coverage import CoverageRaster, build_coverage
from histo.aggregate.hotspot import CellRegion, Window, find_hotspot
from histo.aggregate.necrosis import necrotic_tiles
from histo.aggregate.tables import TableError, pattern_column, validate_mitosis_table, validate_mpp, validate_tile_table
from histo.errors import ConfigError
from histo.jsonsafe import json_safe

_UM2_PER_MM2 = 1e6


@dataclass(frozen=True)
class AreaMethod:
    """How overlapping tiles were turned into areas (see histo.aggregate.coverage)."""

    method: str
    cell_um: float
    exact: bool


@dataclass(frozen=True)
class PatternMeasurements:
    """Spindle-cell pattern over viable tumour, area-weighted by tile tissue area."""

    spindle_fraction: float | None  # share of viable tumour area whose top pattern is a spindle one
    shares: dict[str, float] | None  # share of the spindle area per spindle pattern
    dominant: str | None


@dataclass(frozen=True)
class HotspotMeasurement:
    """The mitotic hotspot: the densest window of n_hpf high-power fields over viable tumour, or the
    whole viable tumour when that is denser (always so when the tumour is smaller than the window)."""

    shape: str
    n_hpf: float
    area_mm2: float  # of the window
    count: int  # the raw count per_10hpf is computed from: in the window, or in the whole viable tumour
    per_10hpf: float  # count / counted_area_mm2 * 10 * hpf_area_mm2; never below the whole-tumour rate
    centre_x_um: float | None  # of the densest window; None when no mitosis was counted
    centre_y_um: float | None
    box_um: tuple[float, float, float, float] | None  # x0, y0, x1, y1 of that window, clipped to the slide
    tumour_area_mm2: float | None  # viable tumour tissue inside the window
    tumour_fraction: float | None  # of the window area
    window_exceeds_tumour: bool  # the whole viable tumour is smaller than the window
    counted_in: str = "window"  # 'window' | 'whole_viable_tumour'
    counted_area_mm2: float = 0.0  # the area count was counted in: the window, or the viable tumour
    hpf_area_mm2: float = 0.0
    window_count: int = 0  # mitoses in the densest window (equals count when counted_in is 'window')


@dataclass(frozen=True)
class MitosisMeasurements:
    """Mitotic counts over viable tumour and in the hotspot."""

    min_score: float
    n_detections: int
    n_above_threshold: int
    count: int  # above threshold and inside viable tumour tiles
    per_mm2: float | None
    per_10hpf: float | None  # count / counted_area_mm2 * 10 * hpf_area_mm2, over all viable tumour
    hpf_preset: str
    hpf_area_mm2: float
    hotspot: HotspotMeasurement | None  # None when there is no viable tumour
    counted_area_mm2: float = 0.0  # the viable tumour area the count was counted in


@dataclass(frozen=True)
class SlideMeasurements:
    """Everything measured on one slide; areas in mm², coordinates in µm from the slide origin."""

    mpp: float
    n_tiles: int
    n_tumour_tiles: int
    n_necrotic_tiles: int
    tumour_source: str  # 'p_tumour' or 'pattern' (tumour = top pattern is not the non-spindle class)
    area_method: AreaMethod
    tissue_area_mm2: float
    tumour_area_mm2: float  # viable tumour + necrosis
    viable_tumour_area_mm2: float
    necrosis_area_mm2: float
    necrosis_pct_of_tumour: float | None
    pattern: PatternMeasurements
    mitoses: MitosisMeasurements

    def to_dict(self) -> dict:
        """Plain, JSON-serialisable dict."""
        return json_safe(dataclasses.asdict(self), non_finite="keep")


def necrotic_mask(tiles: pd.DataFrame, mpp: float, config: GradingConfig | None = None) -> np.ndarray:
    """The tiles the slide's necrosis is measured on (row-aligned bool mask), for reports and maps."""
    # A null min_score is the model card's threshold: callers with a card resolve it (GradingConfig.for_model);
    # without one it is ModelCard's default.
    cfg = (config or GradingConfig()).for_model(DEFAULT_MITOSIS_THRESHOLD)
    mpp = validate_mpp(mpp)
    t = validate_tile_table(tiles, cfg.tiles.pattern_classes)
    raster = build_coverage(t["x"].to_numpy(), t["y"].to_numpy(), t["w"].to_numpy(), t["h"].to_numpy())
    tissue_mm2 = raster.owned_area_px2(len(t)) * t["tissue_fraction"].to_numpy() * mpp * mpp / _UM2_PER_MM2
    return _necrotic(t, tissue_mm2, cfg)


def _necrotic(t: pd.DataFrame, tissue_mm2: np.ndarray, cfg: GradingConfig) -> np.ndarray:
    tr = cfg.tiles
    return necrotic_tiles(t["x"].to_numpy(), t["y"].to_numpy(), t["w"].to_numpy(), t["h"].to_numpy(),
                          t["p_necrosis"].to_numpy(), tissue_mm2, tr.necrosis_min_p, tr.necrosis_grow_p,
                          tr.necrosis_min_region_mm2, tr.necrosis_min_region_pct_of_tissue)


def measure_slide(
    tiles: pd.DataFrame, mitoses: pd.DataFrame | None, mpp: float, config: GradingConfig | None = None,
    slide_size_px: tuple[int, int] | None = None,
) -> SlideMeasurements:
    """Measure tissue, tumour, necrosis, pattern and mitoses of one slide from its prediction tables.

    ``slide_size_px`` (level-0 width, height) clips the hotspot box to the slide; without it the box
    is clipped at the slide origin only (x, y >= 0).
    """
    # A null min_score is the model card's threshold: callers with a card resolve it (GradingConfig.for_model);
    # without one it is ModelCard's default.
    cfg = (config or GradingConfig()).for_model(DEFAULT_MITOSIS_THRESHOLD)
    mpp = validate_mpp(mpp)
    t = validate_tile_table(tiles, cfg.tiles.pattern_classes)
    m = validate_mitosis_table(mitoses)
    classes = list(cfg.tiles.pattern_classes)
    n = len(t)

    raster = build_coverage(t["x"].to_numpy(), t["y"].to_numpy(), t["w"].to_numpy(), t["h"].to_numpy())
    mm2_per_px2 = mpp * mpp / _UM2_PER_MM2
    tissue_mm2 = raster.owned_area_px2(n) * t["tissue_fraction"].to_numpy() * mm2_per_px2

    probs = t[[pattern_column(c) for c in classes]].to_numpy()
    top = np.array(classes, dtype=object)[np.argmax(probs, axis=1)] if n else np.zeros(0, dtype=object)
    spindle = top != cfg.tiles.non_spindle_class
    if "p_tumour" in t.columns:
        tumour, source = t["p_tumour"].to_numpy() >= cfg.tiles.tumour_min_p, "p_tumour"
    else:
        tumour, source = spindle.copy(), "pattern"
    necrotic = _necrotic(t, tissue_mm2, cfg)
    # necrotic tiles are tumour necrosis: the tumour area includes them, as pathologists quote
    # necrosis as % of the whole tumour; mitoses are only counted in viable (non-necrotic) tumour
    region = tumour | necrotic
    viable = tumour & ~necrotic

    tumour_area = float(tissue_mm2[region].sum())
    viable_area = float(tissue_mm2[viable].sum())
    necrosis_area = float(tissue_mm2[necrotic].sum())
    necrosis_pct = 100.0 * necrosis_area / tumour_area if tumour_area > 0 else None

    return SlideMeasurements(
        mpp=mpp,
        n_tiles=n,
        n_tumour_tiles=int(region.sum()),
        n_necrotic_tiles=int(necrotic.sum()),
        tumour_source=source,
        area_method=AreaMethod("coverage_raster_nearest_centre", raster.cell_px * mpp, raster.exact),
        tissue_area_mm2=float(tissue_mm2.sum()),
        tumour_area_mm2=tumour_area,
        viable_tumour_area_mm2=viable_area,
        necrosis_area_mm2=necrosis_area,
        necrosis_pct_of_tumour=necrosis_pct,
        pattern=_patterns(classes, cfg.tiles.non_spindle_class, top[viable], tissue_mm2[viable]),
        mitoses=_mitoses(m, mpp, cfg, raster, viable, tissue_mm2, t["tissue_fraction"].to_numpy(), viable_area,
                         _slide_extent_um(slide_size_px, mpp)),
    )


def _slide_extent_um(slide_size_px: tuple[int, int] | None, mpp: float) -> tuple[float, float, float, float]:
    """The slide's extent in µm: from its origin to its size when known (tiles cover only tissue, so
    they cannot stand in for the far edges)."""
    if slide_size_px is None:
        return (0.0, 0.0, math.inf, math.inf)
    try:
        w, h = (float(v) for v in slide_size_px)
    except (TypeError, ValueError) as exc:
        raise TableError(f"slide size must be (width, height) in level-0 pixels, got {slide_size_px!r}") from exc
    if not (w > 0 and h > 0 and math.isfinite(w) and math.isfinite(h)):
        raise TableError(f"slide size must be two positive level-0 pixel counts, got {slide_size_px!r}")
    return (0.0, 0.0, w * mpp, h * mpp)


def _patterns(classes: list[str], non_spindle: str, top: np.ndarray, area: np.ndarray) -> PatternMeasurements:
    total = float(area.sum())
    if total <= 0:
        return PatternMeasurements(None, None, None)
    spindle_classes = [c for c in classes if c != non_spindle]
    by_class = {c: float(area[top == c].sum()) for c in spindle_classes}
    spindle_area = sum(by_class.values())
    if spindle_area <= 0:
        return PatternMeasurements(0.0, None, None)
    shares = {c: a / spindle_area for c, a in by_class.items()}
    # ties resolve to the earlier configured class, so the answer does not depend on dict order
    dominant = max(spindle_classes, key=lambda c: (shares[c], -spindle_classes.index(c)))
    return PatternMeasurements(spindle_area / total, shares, dominant)


def _mitoses(
    m: pd.DataFrame,
    mpp: float,
    cfg: GradingConfig,
    raster: CoverageRaster,
    viable: np.ndarray,
    tissue_mm2: np.ndarray,
    tissue_fraction: np.ndarray,
    viable_area: float,
    clip_um: tuple[float, float, float, float],
) -> MitosisMeasurements:
    hpf = cfg.hpf_area_mm2
    min_score = cfg.mitoses.min_score
    if min_score is None:  # measure_slide resolves a null (the card's threshold) before it gets here
        raise ConfigError("mitoses.min_score is null: resolve it with GradingConfig.for_model first")
    above = m["score"].to_numpy() >= min_score
    x_um, y_um = m["x_um"].to_numpy()[above], m["y_um"].to_numpy()[above]
    owner = raster.owner_at(x_um / mpp, y_um / mpp)
    in_viable = np.zeros(len(owner), dtype=bool)
    in_viable[owner >= 0] = viable[owner[owner >= 0]]
    x_um, y_um = x_um[in_viable], y_um[in_viable]
    count = int(len(x_um))
    has_tumour = viable_area > 0
    per_mm2 = count / viable_area if has_tumour else None
    return MitosisMeasurements(
        min_score=min_score,
        n_detections=int(len(m)),
        n_above_threshold=int(above.sum()),
        count=count,
        per_mm2=per_mm2,
        per_10hpf=per_10hpf(count, viable_area, hpf) if has_tumour else None,
        hpf_preset=cfg.hpf.preset,
        hpf_area_mm2=hpf,
        hotspot=(_hotspot(x_um, y_um, mpp, cfg, raster, viable, tissue_fraction, viable_area, clip_um)
                 if has_tumour else None),
        counted_area_mm2=viable_area,
    )


def per_10hpf(count: int, area_mm2: float, hpf_area_mm2: float) -> float:
    """Mitoses per 10 HPF: count / area it was counted in × 10 × HPF area."""
    return count / area_mm2 * 10.0 * hpf_area_mm2


def _hotspot(
    x_um: np.ndarray,
    y_um: np.ndarray,
    mpp: float,
    cfg: GradingConfig,
    raster: CoverageRaster,
    viable: np.ndarray,
    tissue_fraction: np.ndarray,
    viable_area: float,
    clip_um: tuple[float, float, float, float],
) -> HotspotMeasurement:
    hpf = cfg.hpf_area_mm2
    area_mm2 = cfg.hotspot_area_mm2
    window = Window(cfg.hotspot.shape, area_mm2 * _UM2_PER_MM2)
    exceeds = viable_area < area_mm2
    region = viable_region(raster, viable, mpp)
    best = find_hotspot(x_um, y_um, window, region)
    window_count = best.count if best is not None else 0
    whole_count = int(len(x_um))
    window_rate = per_10hpf(window_count, area_mm2, hpf)
    whole_rate = per_10hpf(whole_count, viable_area, hpf)
    # The rule: a hotspot is never less dense than the tumour it is in. When the viable tumour is
    # smaller than the window no window can hold 10 HPF of it, so the hotspot is the whole tumour;
    # otherwise too the whole tumour is used when no window is denser (a thin or scattered tumour).
    whole = exceeds or whole_rate > window_rate
    count, counted_mm2 = (whole_count, viable_area) if whole else (window_count, area_mm2)
    if best is None:
        cx = cy = box = inside_mm2 = fraction = None
    else:
        cx, cy = best.centre_x_um, best.centre_y_um
        box = _clip_box(window.box_um(cx, cy), clip_um)
        inside_mm2 = _viable_tissue_in_window(raster, viable, tissue_fraction, mpp, window, cx, cy)
        fraction = inside_mm2 / area_mm2
    return HotspotMeasurement(
        shape=cfg.hotspot.shape,
        n_hpf=cfg.hotspot.n_hpf,
        area_mm2=area_mm2,
        count=count,
        per_10hpf=per_10hpf(count, counted_mm2, hpf),
        centre_x_um=cx,
        centre_y_um=cy,
        box_um=box,
        tumour_area_mm2=inside_mm2,
        tumour_fraction=fraction,
        window_exceeds_tumour=exceeds,
        counted_in="whole_viable_tumour" if whole else "window",
        counted_area_mm2=counted_mm2,
        hpf_area_mm2=hpf,
        window_count=window_count,
    )


def viable_region(raster: CoverageRaster, viable: np.ndarray, mpp: float) -> CellRegion:
    """The viable tumour as a closed cell region in µm: the raster cells owned by viable tiles."""
    own = raster.owner
    mask = np.zeros(own.shape, dtype=bool)
    mask[own >= 0] = viable[own[own >= 0]]
    return CellRegion(raster.origin_x * mpp, raster.origin_y * mpp, raster.cell_px * mpp, mask)


def _clip_box(box: tuple[float, float, float, float], clip: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """The box cut to the slide's extent (the window may reach past the slide edge)."""
    return (max(box[0], clip[0]), max(box[1], clip[1]), min(box[2], clip[2]), min(box[3], clip[3]))


def _viable_tissue_in_window(
    raster: CoverageRaster, viable: np.ndarray, tissue_fraction: np.ndarray, mpp: float,
    window: Window, cx_um: float, cy_um: float,
) -> float:
    """Viable tumour tissue (mm²) whose raster cells have their centre inside the window."""
    xs, ys = raster.cell_centres()
    xs_um, ys_um = xs * mpp, ys * mpp
    bx0, by0, bx1, by1 = window.box_um(cx_um, cy_um)
    ci = np.flatnonzero((xs_um >= bx0) & (xs_um <= bx1))
    ri = np.flatnonzero((ys_um >= by0) & (ys_um <= by1))
    if len(ci) == 0 or len(ri) == 0:
        return 0.0
    own = raster.owner[np.ix_(ri, ci)]
    gx, gy = np.meshgrid(xs_um[ci], ys_um[ri])
    if window.shape == "circle":
        r = window.extent_um / 2.0
        own = np.where((gx - cx_um) ** 2 + (gy - cy_um) ** 2 <= r * r, own, -1)
    o = own[own >= 0]
    o = o[viable[o]]
    return float(tissue_fraction[o].sum() * raster.cell_area_px2 * mpp * mpp / _UM2_PER_MM2)
