"""The region layout, decided once at low resolution: smooth fields whose zero sets are the region borders.

Each region is the positive set of a smooth field sampled on a coarse grid (``layout_mpp``). Rendering
interpolates the fields bilinearly at every pixel and thresholds them, so borders are smooth at any
zoom and any tile agrees with any other; the truth polygons are the zero contours of the same fields,
so region areas are exact for what is painted (to the contour's sub-pixel interpolation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import shapely
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon
from skimage import measure

from .spec import PhantomSpec

# Region labels, in paint order; 0 is bare glass.
GLASS, STROMA, FASCICULAR, HAPHAZARD, NECROSIS, INFLAMMATION = 0, 1, 2, 3, 4, 5
REGION_CLASSES = {
    STROMA: "Stroma",
    FASCICULAR: "Tumor-fascicular",
    HAPHAZARD: "Tumor-haphazard",
    NECROSIS: "Necrosis",
    INFLAMMATION: "Inflammation",
}
FIELD_NAMES = ("tissue", "tumour", "fascicular", "necrosis", "inflammation", "pen", "blur", "fold", "ihc_pen", "ihc_blur", "ihc_fold")


@dataclass
class Layout:
    """Region fields on the layout grid and the polygons they define (level-0 px)."""

    width_px: int
    height_px: int
    mpp: float
    step_px: float  # level-0 px between layout samples
    fields: dict[str, np.ndarray]  # name -> float32 (ny, nx); region where > 0
    psi: np.ndarray  # fascicle stream function (bands are its integer level sets)
    stroma_theta: np.ndarray  # collagen fibre angle (radians)
    polygons: dict[str, shapely.Geometry] = field(default_factory=dict)
    pen_colors: list[str] = field(default_factory=list)
    ihc_pen_colors: list[str] = field(default_factory=list)
    _tangent: tuple[np.ndarray, np.ndarray] | None = None

    def grid_coords(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fractional layout-grid indices (col, row) of level-0 pixel positions."""
        return x / self.step_px - 0.5, y / self.step_px - 0.5

    def sample(self, arr: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Bilinear value of a layout array at level-0 positions (x, y)."""
        c, r = self.grid_coords(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
        return ndimage.map_coordinates(arr, [r, c], order=1, mode="nearest")

    def labels_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Region label at level-0 positions."""
        f = {k: self.sample(self.fields[k], x, y) for k in ("tissue", "tumour", "fascicular", "necrosis", "inflammation")}
        return combine_labels(f)

    def tangent(self) -> tuple[np.ndarray, np.ndarray]:
        """Unit-free fascicle direction field (tx, ty): along the stream function's level sets."""
        if self._tangent is None:
            gy, gx = np.gradient(self.psi)
            self._tangent = (gy.astype(np.float32), (-gx).astype(np.float32))
        return self._tangent

    def theta_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Fascicle direction (radians) at level-0 positions."""
        tx, ty = self.tangent()
        return np.arctan2(self.sample(ty, x, y), self.sample(tx, x, y))


def combine_labels(f: dict[str, np.ndarray]) -> np.ndarray:
    """Region labels from field values (same shapes) by the fixed hierarchy of the phantom."""
    tissue = f["tissue"] > 0
    tumour = tissue & (f["tumour"] > 0)
    lab = np.where(tissue, STROMA, GLASS).astype(np.uint8)
    lab[tumour] = HAPHAZARD
    lab[tumour & (f["fascicular"] > 0)] = FASCICULAR
    lab[tumour & (f["necrosis"] > 0)] = NECROSIS
    lab[tissue & ~tumour & (f["inflammation"] > 0)] = INFLAMMATION
    return lab


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """Zero-mean, unit-sd smooth random field with features about `scale_px` across (cheap at any size)."""
    factor = max(1.0, scale_px / 4.0)
    cshape = (int(np.ceil(shape[0] / factor)) + 6, int(np.ceil(shape[1] / factor)) + 6)
    coarse = ndimage.gaussian_filter(rng.standard_normal(cshape), sigma=scale_px / factor / 1.5, mode="reflect")
    rr = np.arange(shape[0]) / factor + 3
    cc = np.arange(shape[1]) / factor + 3
    out = ndimage.map_coordinates(coarse, np.meshgrid(rr, cc, indexing="ij"), order=3, mode="reflect")
    out = out - out.mean()
    sd = out.std()
    return (out / sd if sd > 0 else out).astype(np.float32)


def _threshold_at_fraction(values: np.ndarray, within: np.ndarray, fraction: float) -> float:
    """The value above which `fraction` of the `within` samples lie."""
    v = values[within]
    if v.size == 0 or fraction <= 0:
        return float(np.inf)
    if fraction >= 1:
        return float(v.min() - 1.0)
    return float(np.quantile(v, 1.0 - fraction))


def build_layout(spec: PhantomSpec, rng: np.random.Generator) -> Layout:
    """Decide tissue, regions, orientation fields and artefacts for the whole slide."""
    W, H = spec.slide_width_px, spec.slide_height_px
    step = spec.layout_mpp / spec.mpp
    nx = int(np.ceil(W / step - 0.5)) + 2
    ny = int(np.ceil(H / step - 0.5)) + 2
    lm = spec.layout_mpp
    ys = (np.arange(ny) + 0.5) * step
    xs = (np.arange(nx) + 0.5) * step
    X, Y = np.meshgrid(xs / W, ys / H)  # normalised 0..1 slide coordinates

    # Tissue: an irregular blob (radial falloff + smooth noise), kept off the slide edge.
    short_um = min(W, H) * spec.mpp
    outline_um = spec.tissue.outline_scale_um or short_um / 4.0
    cx, cy = 0.5 + rng.uniform(-0.05, 0.05), 0.5 + rng.uniform(-0.05, 0.05)
    ang = rng.uniform(0, np.pi)
    dx, dy = X - cx, Y - cy
    u = dx * np.cos(ang) + dy * np.sin(ang)
    v = -dx * np.sin(ang) + dy * np.cos(ang)
    elong = rng.uniform(1.0, 1.4)
    r = np.sqrt((u / elong) ** 2 + (v * elong) ** 2)
    rough = spec.tissue.roughness
    t_field = -r + 0.22 * rough * smooth_noise(rng, (ny, nx), outline_um / lm)
    t_field += 0.05 * rough * smooth_noise(rng, (ny, nx), outline_um / lm / 4)
    edge = np.minimum.reduce([X, 1 - X, Y, 1 - Y])
    # A soft push away from the slide edge keeps the outline curved; nothing within 3 % of the edge.
    t_field -= 1.0 * (np.clip(0.12 - edge, 0, None) / 0.12) ** 2 + 10.0 * (edge < 0.03)
    thr = _threshold_at_fraction(t_field, np.ones_like(t_field, bool), spec.tissue.coverage)
    tissue_f = (t_field - thr).astype(np.float32)
    tissue = tissue_f > 0

    # Tumour: smooth islands, biased to the inside of the tissue.
    depth = ndimage.distance_transform_edt(tissue) * lm
    depth_n = np.clip(depth / max(depth.max(), 1e-6), 0, 1)
    region_px = spec.tumour.region_scale_um / lm
    u_field = smooth_noise(rng, (ny, nx), region_px) + 1.2 * depth_n
    thr = _threshold_at_fraction(u_field, tissue, spec.tumour.fraction_of_tissue)
    tumour_f = (u_field - thr).astype(np.float32)
    tumour = tissue & (tumour_f > 0)

    f_field = smooth_noise(rng, (ny, nx), region_px * 0.8)
    thr = _threshold_at_fraction(f_field, tumour, spec.tumour.fascicular_fraction)
    fasc_f = (f_field - thr).astype(np.float32)

    # Necrosis: geographic areas in the depth of the tumour.
    if spec.necrosis.fraction_of_tumour > 0:
        tdepth = ndimage.distance_transform_edt(tumour) * lm
        tdepth_n = np.clip(tdepth / max(tdepth.max(), 1e-6), 0, 1)
        n_field = smooth_noise(rng, (ny, nx), region_px * 0.45) + 2.0 * tdepth_n
        thr = _threshold_at_fraction(n_field, tumour, spec.necrosis.fraction_of_tumour)
        necr_f = (n_field - thr).astype(np.float32)
    else:
        rng.standard_normal(1)
        necr_f = np.full((ny, nx), -1.0, np.float32)

    # Inflammation: patches in the stroma, preferring the tumour border.
    stroma = tissue & ~tumour
    if spec.inflammation.fraction_of_tissue > 0 and stroma.any():
        near = np.exp(-ndimage.distance_transform_edt(~tumour) * lm / 250.0)
        i_field = smooth_noise(rng, (ny, nx), 160.0 / lm) + 1.0 * near
        want = spec.inflammation.fraction_of_tissue * tissue.sum() / max(stroma.sum(), 1)
        thr = _threshold_at_fraction(i_field, stroma, min(want, 0.9))
        infl_f = (i_field - thr).astype(np.float32)
    else:
        infl_f = np.full((ny, nx), -1.0, np.float32)

    # Fascicles: bands between integer level sets of a stream function; cells align with the bands.
    fw_px = spec.tumour.fascicle_width_um / lm
    a0 = rng.uniform(0, np.pi)
    lin = ((X * W * np.cos(a0) + Y * H * np.sin(a0)) / step) / fw_px
    amp = 0.55 * spec.tumour.orientation_scale_um / spec.tumour.fascicle_width_um
    psi = (lin + amp * smooth_noise(rng, (ny, nx), spec.tumour.orientation_scale_um / lm)).astype(np.float32)
    stroma_theta = (rng.uniform(0, np.pi) + 0.9 * smooth_noise(rng, (ny, nx), 400.0 / lm)).astype(np.float32)

    fields = {"tissue": tissue_f, "tumour": tumour_f, "fascicular": fasc_f, "necrosis": necr_f, "inflammation": infl_f}
    lay = Layout(W, H, spec.mpp, step, fields, psi, stroma_theta)
    a = spec.artefacts
    _add_artefacts(lay, rng, X, Y, "", a.pen_marks, a.blur_patches, a.folds)
    # The IHC slide's own artefacts come from their own generator: the H&E layout of a seed stays as it was.
    _add_artefacts(lay, np.random.default_rng([spec.seed, 1, 6]), X, Y, "ihc_", a.ihc_pen_marks, a.ihc_blur_patches,
                   a.ihc_folds)
    lay.polygons = region_polygons(lay)
    return lay


def _polyline_field(lay: Layout, pts_norm: np.ndarray, half_width_px: float) -> np.ndarray:
    """Field > 0 within `half_width_px` of a polyline given in normalised slide coordinates."""
    ny, nx = lay.fields["tissue"].shape
    canvas = np.ones((ny, nx), bool)
    n = 400
    t = np.linspace(0, 1, n)
    seg = np.interp(t, np.linspace(0, 1, len(pts_norm)), np.arange(len(pts_norm)))
    i0 = np.clip(seg.astype(int), 0, len(pts_norm) - 2)
    fr = seg - i0
    p = pts_norm[i0] * (1 - fr[:, None]) + pts_norm[i0 + 1] * fr[:, None]
    cols = np.clip((p[:, 0] * lay.width_px / lay.step_px - 0.5).round().astype(int), 0, nx - 1)
    rows = np.clip((p[:, 1] * lay.height_px / lay.step_px - 0.5).round().astype(int), 0, ny - 1)
    canvas[rows, cols] = False
    dist = ndimage.distance_transform_edt(canvas) * lay.step_px
    return (half_width_px - dist).astype(np.float32)


def _add_artefacts(lay: Layout, rng: np.random.Generator, X: np.ndarray, Y: np.ndarray, prefix: str,
                   pen_marks: int, blur_patches: int, folds: int) -> None:
    """Pen strokes, out-of-focus patches and folds of one slide: fields `prefix`pen/blur/fold (> 0 inside)."""
    ny, nx = X.shape
    um = 1.0 / lay.mpp  # level-0 px per µm
    pen = np.full((ny, nx), -1e3, np.float32)
    colors = ["green", "blue", "black"]
    # The IHC slide's pens: a felt-tip drawn at random (the H&E one keeps its green, as before).
    ink = colors[int(rng.integers(0, 3))] if prefix and pen_marks else colors[0]
    pen_colors = lay.ihc_pen_colors if prefix else lay.pen_colors
    for i in range(pen_marks):
        # A hand-drawn stroke: a wobbly arc partly over the tissue edge.
        c = np.array([rng.uniform(0.2, 0.8), rng.uniform(0.12, 0.3) if i % 2 == 0 else rng.uniform(0.7, 0.88)])
        ang = rng.uniform(0, np.pi)
        length = rng.uniform(0.25, 0.45)
        t = np.linspace(-0.5, 0.5, 7)
        d = np.array([np.cos(ang), np.sin(ang)])
        nrm = np.array([-d[1], d[0]])
        pts = c + t[:, None] * length * d + (0.04 * np.sin(t * np.pi * rng.uniform(1, 2.5)) + rng.normal(0, 0.006, 7))[:, None] * nrm
        half = rng.uniform(90, 160) * um
        pen = np.maximum(pen, _polyline_field(lay, np.clip(pts, 0.02, 0.98), half))
        pen_colors.append(ink)  # one felt-tip per slide (the renderer paints all strokes in it)
    blur = np.full((ny, nx), -1.0, np.float32)
    tis = lay.fields["tissue"] > 0
    iy, ix = np.nonzero(tis)
    for _ in range(blur_patches):
        k = rng.integers(len(iy)) if len(iy) else 0
        cx, cy = (ix[k] + 0.5) / nx if len(iy) else 0.5, (iy[k] + 0.5) / ny if len(iy) else 0.5
        rad = rng.uniform(0.08, 0.14)
        rr = np.sqrt(((X - cx) * lay.width_px) ** 2 + ((Y - cy) * lay.height_px) ** 2) / (rad * min(lay.width_px, lay.height_px))
        blur = np.maximum(blur, (1.0 - rr).astype(np.float32))
    fold = np.full((ny, nx), -1e3, np.float32)
    for _ in range(folds):
        ang = rng.uniform(0, np.pi)
        c = np.array([0.5 + rng.uniform(-0.15, 0.15), 0.5 + rng.uniform(-0.15, 0.15)])
        d = np.array([np.cos(ang), np.sin(ang)])
        nrm = np.array([-d[1], d[0]])
        t = np.linspace(-0.7, 0.7, 9)
        pts = c + t[:, None] * d + (0.03 * np.sin(t * 3 + rng.uniform(0, 6)))[:, None] * nrm
        half = rng.uniform(40, 80) * um
        fold = np.maximum(fold, _polyline_field(lay, np.clip(pts, 0.0, 1.0), half))
    lay.fields[prefix + "pen"] = pen
    lay.fields[prefix + "blur"] = blur
    lay.fields[prefix + "fold"] = fold


def field_polygon(arr: np.ndarray, step_px: float) -> shapely.Geometry:
    """Polygon (level-0 px) of the set where the bilinearly interpolated field is > 0."""
    if not (arr > 0).any():
        return Polygon()
    pad = np.pad(arr.astype(np.float64), 1, constant_values=min(float(arr.min()), 0.0) - 1.0)
    loops = measure.find_contours(pad, 0.0)
    polys = []
    for c in loops:
        if len(c) < 4:
            continue
        xy = np.column_stack([(c[:, 1] - 1 + 0.5) * step_px, (c[:, 0] - 1 + 0.5) * step_px])
        p = shapely.make_valid(Polygon(xy))
        if not p.is_empty:
            polys.append(p)
    # Level-set loops never cross, so the region is their even-odd combination (islands in holes in islands).
    while len(polys) > 1:
        nxt = [shapely.symmetric_difference(polys[i], polys[i + 1]) for i in range(0, len(polys) - 1, 2)]
        if len(polys) % 2:
            nxt.append(polys[-1])
        polys = nxt
    g = polys[0] if polys else Polygon()
    return _polygonal(g)


def _polygonal(g: shapely.Geometry) -> shapely.Geometry:
    """Keep only the polygon parts of a geometry (set operations may leave slivers of lines)."""
    if g.is_empty:
        return MultiPolygon()
    if isinstance(g, (Polygon, MultiPolygon)):
        return g
    parts = [p for p in getattr(g, "geoms", []) if isinstance(p, (Polygon, MultiPolygon))]
    return shapely.union_all(parts) if parts else MultiPolygon()


def region_polygons(lay: Layout) -> dict[str, shapely.Geometry]:
    """Exact region polygons (level-0 px) for the truth: tissue, each leaf region, tumour and artefacts."""
    s = lay.step_px
    P = {k: field_polygon(v, s) for k, v in lay.fields.items()}
    tissue = P["tissue"]
    tumour = _polygonal(shapely.intersection(tissue, P["tumour"]))
    necrosis = _polygonal(shapely.intersection(tumour, P["necrosis"]))
    viable = _polygonal(shapely.difference(tumour, necrosis))
    fasc = _polygonal(shapely.intersection(viable, P["fascicular"]))
    hap = _polygonal(shapely.difference(viable, P["fascicular"]))
    stroma_all = _polygonal(shapely.difference(tissue, tumour))
    infl = _polygonal(shapely.intersection(stroma_all, P["inflammation"]))
    stroma = _polygonal(shapely.difference(stroma_all, P["inflammation"]))
    return {
        "Tissue": tissue,
        "Tumor": tumour,
        "Viable tumor": viable,
        "Stroma": stroma,
        "Tumor-fascicular": fasc,
        "Tumor-haphazard": hap,
        "Necrosis": necrosis,
        "Inflammation": infl,
        "Pen": P["pen"],
        "Blur": P["blur"],
        "Fold": _polygonal(shapely.intersection(P["fold"], tissue)),
        "IHC pen": P["ihc_pen"],
        "IHC blur": P["ihc_blur"],
        "IHC fold": _polygonal(shapely.intersection(P["ihc_fold"], tissue)),
    }
