"""Cells: deterministic placement over the whole slide and a bank of nucleus / cell-body sprites.

Placement is a jittered grid thinned by the local region's density; each block of grid cells draws
from its own generator seeded by (seed, block row, block column), so the table does not depend on
how the slide is later cut into chunks. Every cell is listed (the truth counts all of them); a tile
renders only the cells whose sprites overlap it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

from .layout import FASCICULAR, HAPHAZARD, INFLAMMATION, NECROSIS, STROMA, Layout
from .spec import PhantomSpec

# Cell kinds.
SPINDLE, OVOID, FIBROBLAST, LYMPHOCYTE, PLASMA, GHOST, DUST, MITOSIS = range(8)
KIND_NAMES = ("spindle", "ovoid", "fibroblast", "lymphocyte", "plasma", "ghost", "karyorrhexis", "mitosis")
TUMOR_KINDS = (SPINDLE, OVOID)
N_ORIENT = 36  # orientation bins over 180°
N_VARIANT = 4
N_SIZE = 3
_BLOCK = 64  # grid cells per generator block side


@dataclass
class Cells:
    """Columnar cell table (level-0 px positions); row order is stable for a seed."""

    x: np.ndarray  # float32
    y: np.ndarray
    kind: np.ndarray  # int8, see KIND_NAMES
    region: np.ndarray  # int8 region label at the centre
    angle: np.ndarray  # float32 radians, long axis
    size: np.ndarray  # int8 size bin 0..N_SIZE-1
    stretch: np.ndarray  # float32 length factor (cross-cut fascicles show short nuclei)
    variant: np.ndarray  # int8 sprite variant
    dark: np.ndarray  # float32 hematoxylin multiplier
    ihc_class: np.ndarray  # int8 0..3 for scored tumour cells, -1 otherwise
    dab_od: np.ndarray  # float32 mean DAB OD of the cell's stained compartment

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, idx: np.ndarray) -> "Cells":
        """A subset of rows."""
        return Cells(**{k: getattr(self, k)[idx] for k in self.__dataclass_fields__})

    @staticmethod
    def concat(parts: list["Cells"]) -> "Cells":
        """Rows of several tables, in order."""
        return Cells(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in Cells.__dataclass_fields__})


def _empty(n: int) -> dict[str, np.ndarray]:
    return {
        "x": np.zeros(n, np.float32), "y": np.zeros(n, np.float32), "kind": np.zeros(n, np.int8),
        "region": np.zeros(n, np.int8), "angle": np.zeros(n, np.float32), "size": np.zeros(n, np.int8),
        "stretch": np.ones(n, np.float32), "variant": np.zeros(n, np.int8), "dark": np.ones(n, np.float32),
        "ihc_class": np.full(n, -1, np.int8), "dab_od": np.zeros(n, np.float32),
    }


def _band_hash(band: np.ndarray, seed: int) -> np.ndarray:
    """A stable pseudo-random number in [0, 1) per fascicle band index."""
    h = (band.astype(np.int64) * 2654435761 + seed * 97531) & 0xFFFFFFFF
    h ^= h >> 15
    h = (h * 2246822519) & 0xFFFFFFFF
    h ^= h >> 13
    return (h & 0xFFFFFF) / float(1 << 24)


def place_cells(spec: PhantomSpec, lay: Layout) -> Cells:
    """All ordinary cells of the slide (no mitoses), by jittered grid and region densities."""
    t, infl = spec.tumor, spec.inflammation
    dens = {
        FASCICULAR: t.fascicular_density_per_mm2,
        HAPHAZARD: t.haphazard_density_per_mm2,
        STROMA: spec.stroma.fibroblast_density_per_mm2,
        INFLAMMATION: infl.patch_density_per_mm2,
        NECROSIS: 0.55 * t.fascicular_density_per_mm2,
    }
    fasc_mod = 0.8  # fascicles: density rises and falls across each band, so bands show
    max_d = max(max(dens.values()) * (1 + fasc_mod), 1.0) + infl.scattered_per_mm2
    g_um = min(12.0, 1000.0 / np.sqrt(max_d * 1.02))
    g = g_um / spec.mpp  # level-0 px
    W, H = spec.slide_width_px, spec.slide_height_px
    nxg, nyg = int(np.ceil(W / g)), int(np.ceil(H / g))
    cell_mm2 = (g_um / 1000.0) ** 2
    parts = []
    # Only blocks that meet the tissue's bounding box can hold cells.
    tb = lay.polygons["Tissue"].bounds if not lay.polygons["Tissue"].is_empty else None
    if tb is None:
        return Cells(**_empty(0))
    bx0, by0 = int(tb[0] // (g * _BLOCK)), int(tb[1] // (g * _BLOCK))
    bx1, by1 = int(tb[2] // (g * _BLOCK)), int(tb[3] // (g * _BLOCK))
    for by in range(by0, by1 + 1):
        for bx in range(bx0, bx1 + 1):
            rng = np.random.default_rng([spec.seed, 101, by, bx])
            gy, gx = np.mgrid[by * _BLOCK:min((by + 1) * _BLOCK, nyg), bx * _BLOCK:min((bx + 1) * _BLOCK, nxg)]
            gy, gx = gy.ravel(), gx.ravel()
            n = gx.size
            if n == 0:
                continue
            x = (gx + rng.random(n)) * g
            y = (gy + rng.random(n)) * g
            u = rng.random(n)
            r2 = rng.random((8, n))
            keep = (x < W) & (y < H)
            lab = lay.labels_at(x, y)
            d = np.zeros(n)
            for k, v in dens.items():
                d[lab == k] = v
            psi = lay.sample(lay.psi, x, y)
            fas = lab == FASCICULAR
            d[fas] *= 1.0 + fasc_mod * np.cos(2 * np.pi * psi[fas])
            p_region = d * cell_mm2
            p_scatter = np.where(lab > 0, infl.scattered_per_mm2 * cell_mm2, 0.0)
            sel = keep & (u < p_region + p_scatter)
            if not sel.any():
                continue
            c = _empty(int(sel.sum()))
            x, y, lab, u, psi, r2 = x[sel], y[sel], lab[sel], u[sel], psi[sel], r2[:, sel]
            scatter = u >= p_region[sel]
            c["x"], c["y"], c["region"] = x.astype(np.float32), y.astype(np.float32), lab.astype(np.int8)
            kind = np.full(x.size, FIBROBLAST, np.int8)
            tum = (lab == FASCICULAR) | (lab == HAPHAZARD)
            kind[tum] = np.where(r2[0, tum] < t.ovoid_fraction, OVOID, SPINDLE)
            # Fascicles are mostly spindle cells; ovoid cells gather in the haphazard areas.
            kind[(lab == FASCICULAR) & (kind == OVOID) & (r2[4] < 0.6)] = SPINDLE
            kind[lab == NECROSIS] = np.where(r2[0, lab == NECROSIS] < 0.22, DUST, GHOST)
            inf = (lab == INFLAMMATION) | scatter
            kind[inf] = np.where(r2[1, inf] < infl.plasma_fraction, PLASMA, LYMPHOCYTE)
            c["kind"] = kind
            # Orientation: along the fascicle (with a small per-band offset), random elsewhere.
            ang = r2[2] * np.pi
            theta = lay.theta_at(x, y)
            band = np.floor(psi).astype(np.int64)
            bh = _band_hash(band, spec.seed)
            f_sp = (lab == FASCICULAR) & (kind == SPINDLE)
            ang[f_sp] = theta[f_sp] + (bh[f_sp] - 0.5) * 0.8 + (r2[3, f_sp] - 0.5) * 0.22
            fb = kind == FIBROBLAST
            ang[fb] = lay.sample(lay.stroma_theta, x[fb], y[fb]) + (r2[3, fb] - 0.5) * 0.5
            c["angle"] = np.mod(ang, np.pi).astype(np.float32)
            # Some fascicles are cut across: their nuclei look short and plump.
            stretch = np.ones(x.size, np.float32)
            cross = f_sp & (bh < 0.22)
            stretch[cross] = 0.45 + 0.15 * r2[4, cross]
            c["stretch"] = stretch
            pleo = t.pleomorphism
            c["size"] = np.minimum((r2[5] * N_SIZE).astype(np.int8), N_SIZE - 1)
            c["variant"] = (r2[6] * N_VARIANT).astype(np.int8)
            c["dark"] = (1.0 + pleo * 1.2 * (r2[7] - 0.5) * 2).astype(np.float32)
            parts.append(Cells(**c))
    return Cells.concat(parts) if parts else Cells(**_empty(0))


def place_mitoses(spec: PhantomSpec, lay: Layout, rng: np.random.Generator) -> Cells:
    """Mitotic figures: a Poisson number from the viable tumour area, uniform in it."""
    viable = lay.polygons["Viable tumor"]
    area_mm2 = viable.area * (spec.mpp / 1000.0) ** 2
    n = int(rng.poisson(spec.mitoses.per_mm2 * area_mm2)) if area_mm2 > 0 else 0
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    if n:
        shapely.prepare(viable)
        x0, y0, x1, y1 = viable.bounds
        got = 0
        while got < n:
            m = max(64, 4 * (n - got))
            px = rng.uniform(x0, x1, m)
            py = rng.uniform(y0, y1, m)
            ok = shapely.contains_xy(viable, px, py)
            px, py = px[ok][: n - got], py[ok][: n - got]
            xs.append(px)
            ys.append(py)
            got += px.size
    c = _empty(n)
    if n:
        c["x"] = np.concatenate(xs).astype(np.float32)
        c["y"] = np.concatenate(ys).astype(np.float32)
        c["kind"][:] = MITOSIS
        c["region"] = lay.labels_at(c["x"], c["y"]).astype(np.int8)
        c["angle"] = rng.uniform(0, np.pi, n).astype(np.float32)
        # variant 0..1: metaphase plate; 2..3: atypical / irregular clumps.
        atyp = rng.random(n) < spec.mitoses.atypical_fraction
        c["variant"] = np.where(atyp, 2 + rng.integers(0, 2, n), rng.integers(0, 2, n)).astype(np.int8)
        c["size"] = rng.integers(0, N_SIZE, n).astype(np.int8)
    return Cells(**c)


def clear_around(cells: Cells, mitoses: Cells, radius_px: float) -> Cells:
    """Drop ordinary cells whose centre lies within `radius_px` of a mitosis (the figure's clear halo)."""
    if len(mitoses) == 0 or len(cells) == 0:
        return cells
    from scipy.spatial import cKDTree

    tree = cKDTree(np.column_stack([mitoses.x, mitoses.y]))
    d, _ = tree.query(np.column_stack([cells.x, cells.y]), k=1, distance_upper_bound=radius_px)
    return cells.take(np.nonzero(~np.isfinite(d))[0])


def assign_ihc(spec: PhantomSpec, cells: Cells, rng: np.random.Generator) -> None:
    """Give every viable tumour cell an IHC class 0..3 and a DAB OD inside that class's band."""
    tum = np.isin(cells.kind, TUMOR_KINDS)
    n = int(tum.sum())
    fr = np.asarray(spec.ihc.class_fractions, float)
    fr = fr / fr.sum()
    cls = rng.choice(4, size=n, p=fr).astype(np.int8)
    od = np.asarray(spec.ihc.class_dab_od, float)
    # Intensity varies within a class but never crosses half-way to the neighbouring class.
    lo = np.concatenate([[od[0]], (od[:-1] + od[1:]) / 2])
    hi = np.concatenate([(od[:-1] + od[1:]) / 2, [od[-1] * 1.15 + 0.01]])
    val = od[cls] * (1.0 + 0.12 * rng.standard_normal(n))
    val = np.clip(val, lo[cls] + 0.25 * (od[cls] - lo[cls]), hi[cls] - 0.25 * (hi[cls] - od[cls]))
    val[cls == 0] = 0.0
    cells.ihc_class[tum] = cls
    cells.dab_od[tum] = val.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Sprites: float masks (0..1) built analytically at the slide's mpp, rotated by construction.


def _grid(half: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Sprite pixel centres in the cell's own frame (u along the long axis, v across)."""
    r = np.arange(-half, half + 1, dtype=np.float32)
    yy, xx = np.meshgrid(r, r, indexing="ij")
    c, s = np.cos(angle), np.sin(angle)
    return xx * c + yy * s, -xx * s + yy * c


def _value_noise(rng: np.random.Generator, shape: tuple[int, int], cell_px: float) -> np.ndarray:
    """Smooth random texture in 0..1 (for chromatin granularity)."""
    from scipy import ndimage

    n = rng.random(shape).astype(np.float32)
    n = ndimage.gaussian_filter(n, max(cell_px, 0.5))
    n -= n.min()
    m = n.max()
    return n / m if m > 0 else n


class SpriteBank:
    """Nucleus and cell-body sprites for every (kind, size, variant, orientation), built on first use."""

    def __init__(self, spec: PhantomSpec):
        self.spec = spec
        self.um = 1.0 / spec.mpp  # px per µm
        self._cache: dict[tuple, tuple[np.ndarray, np.ndarray, int]] = {}
        t = spec.tumor
        self.max_half = int(np.ceil(max(t.nuclear_length_um * 1.8, 26.0) * self.um / 2)) + 3

    def get(self, kind: int, size: int, variant: int, angle: float, stretch: float = 1.0) -> tuple[np.ndarray, np.ndarray, int]:
        """(nucleus, body, half) for a cell; nucleus and body are (2*half+1)² float32 masks."""
        ob = int(round(angle / np.pi * N_ORIENT)) % N_ORIENT
        sb = int(round((stretch - 0.45) / 0.55 * 3)) if stretch < 1.0 else 4
        key = (kind, size, variant, ob if kind not in (LYMPHOCYTE, DUST) else 0, sb)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._make(kind, size, variant, ob * np.pi / N_ORIENT, 0.45 + sb * 0.55 / 3 if sb < 4 else 1.0)
            self._cache[key] = hit
        return hit

    def _make(self, kind: int, size: int, variant: int, angle: float, stretch: float) -> tuple[np.ndarray, np.ndarray, int]:
        um = self.um
        t = self.spec.tumor
        rng = np.random.default_rng([kind, size, variant, int(angle * 1000), int(stretch * 100), 7])
        sz = 0.85 + 0.15 * size  # size bins: 0.85, 1.0, 1.15
        if kind in (SPINDLE, FIBROBLAST):
            if kind == SPINDLE:
                a = t.nuclear_length_um * sz * stretch / 2 * um
                b = t.nuclear_width_um * sz / 2 * um * (1.0 + 0.5 * (1 - stretch))
                bend, dark_core = 0.12, 0.9
            else:
                a = 12.0 * sz / 2 * um
                b = 1.5 / 2 * um
                bend, dark_core = 0.35, 1.15
            half = int(np.ceil(max(a * 1.9, b * 5))) + 2
            u, v = _grid(half, angle)
            # A wavy, cigar-shaped nucleus with blunt-tapered ends.
            v = v - bend * b * np.sin(np.pi * u / max(a, 1) + variant) * (2 if kind == FIBROBLAST else 1)
            taper = np.sqrt(np.clip(1 - (u / a) ** 4, 0, 1))
            rr = np.maximum(np.abs(u) / a, np.abs(v) / np.maximum(b * taper, 0.3))
            nuc = np.clip((1.0 - rr) * min(a, b) / 0.9 + 0.5, 0, 1)
            tex = _value_noise(rng, u.shape, 0.35 * um)
            rim = np.exp(-((rr - 0.85) / 0.15) ** 2)
            nuc = nuc * (0.42 + 0.85 * tex + 0.15 * rim) * dark_core
            ab, bb = a * 1.9 + 2 * um, b * 3.0 + 1.5 * um
            rb = np.sqrt((u / ab) ** 2 + (v / bb) ** 2)
        elif kind == OVOID:
            a = 4.6 * sz * um * (1.1 if variant % 2 else 1.0)
            b = 3.2 * sz * um
            half = int(np.ceil(a * 2.2)) + 2
            u, v = _grid(half, angle)
            rr = np.sqrt((u / a) ** 2 + (v / b) ** 2)
            nuc = np.clip((1.0 - rr) * b / 0.9 + 0.5, 0, 1)
            tex = _value_noise(rng, u.shape, 0.7 * um)
            # Vesicular chromatin: rim and clumps darker than the centre, a small nucleolus.
            rim = np.exp(-((rr - 0.88) / 0.12) ** 2)
            nucleolus = np.exp(-((u - 0.2 * a) ** 2 + (v + 0.1 * b) ** 2) / (0.7 * um) ** 2)
            nuc = nuc * (0.45 + 0.45 * tex + 0.35 * rim) + 0.5 * nucleolus * (rr < 1)
            rb = np.sqrt((u / (a * 1.9)) ** 2 + (v / (b * 2.3)) ** 2)
        elif kind in (LYMPHOCYTE, PLASMA):
            rad = (3.2 if kind == LYMPHOCYTE else 3.0) * sz * um
            half = int(np.ceil(rad * 3.2)) + 2
            u, v = _grid(half, angle)
            if kind == PLASMA:
                u = u + 1.6 * um  # eccentric nucleus
            rr = np.sqrt(u**2 + v**2) / rad
            nuc = np.clip((1.0 - rr) * rad / 0.9 + 0.5, 0, 1)
            tex = _value_noise(rng, u.shape, 0.45 * um)
            if kind == LYMPHOCYTE:
                nuc = nuc * (1.05 + 0.35 * tex)
                rb = rr / 1.25
            else:
                # Clock-face chromatin; an amphophilic cytoplasm with a pale perinuclear hof.
                ang = np.arctan2(v, u)
                clock = 0.5 + 0.5 * np.cos(6 * ang + variant)
                nuc = nuc * (0.55 + 0.55 * clock * (rr > 0.5) + 0.25 * tex)
                uu = u - 1.6 * um
                rb = np.sqrt((uu / (rad * 2.1)) ** 2 + (v / (rad * 1.6)) ** 2)
        elif kind == GHOST:
            a, b = 5.0 * sz * um, 3.2 * sz * um
            half = int(np.ceil(a * 2.0)) + 2
            u, v = _grid(half, angle)
            rr = np.sqrt((u / a) ** 2 + (v / b) ** 2)
            # Pale nuclear outline only: the chromatin has gone.
            nuc = 0.22 * np.exp(-((rr - 0.9) / 0.15) ** 2) + 0.06 * (rr < 1)
            rb = np.sqrt((u / (a * 1.8)) ** 2 + (v / (b * 2.0)) ** 2)
        elif kind == DUST:
            half = int(np.ceil(6 * um)) + 2
            u, v = _grid(half, angle)
            nuc = np.zeros_like(u)
            for _ in range(rng.integers(4, 10)):
                cx, cy = rng.normal(0, 2.2 * um, 2)
                rad = rng.uniform(0.45, 1.1) * um
                d = np.sqrt((u - cx) ** 2 + (v - cy) ** 2) / rad
                nuc = np.maximum(nuc, np.clip((1 - d) * rad / 0.8 + 0.5, 0, 1) * 1.35)
            rb = np.full_like(u, 9.0)
        elif kind == MITOSIS:
            half = int(np.ceil(9 * sz * um)) + 2
            u, v = _grid(half, angle)
            nuc = np.zeros_like(u)
            if variant < 2:
                # Metaphase plate: a dense bar of chromosomes with ragged, spiky edges.
                lu, lv = 4.6 * sz * um, 1.3 * um
                for _ in range(40):
                    cu = rng.uniform(-lu, lu)
                    cv = rng.normal(0, lv * 0.6)
                    ru, rv = rng.uniform(0.5, 1.0) * um, rng.uniform(0.4, 1.6) * um
                    d = np.sqrt(((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2)
                    nuc = np.maximum(nuc, np.clip((1 - d) * 2.0 + 0.5, 0, 1))
            else:
                # Atypical figure: irregular clumps of condensed chromatin.
                for _ in range(rng.integers(5, 9)):
                    cu, cv = rng.normal(0, 2.6 * sz * um, 2)
                    ru, rv = rng.uniform(0.8, 1.9) * um, rng.uniform(0.7, 1.5) * um
                    a2 = rng.uniform(0, np.pi)
                    du = (u - cu) * np.cos(a2) + (v - cv) * np.sin(a2)
                    dv = -(u - cu) * np.sin(a2) + (v - cv) * np.cos(a2)
                    d = np.sqrt((du / ru) ** 2 + (dv / rv) ** 2)
                    nuc = np.maximum(nuc, np.clip((1 - d) * 2.0 + 0.5, 0, 1))
            nuc = nuc * 1.55
            # The clear halo: a round pale zone around the figure (body mask = halo).
            rr = np.sqrt(u**2 + v**2) / (8.0 * sz * um)
            rb = rr
        else:  # pragma: no cover
            raise ValueError(kind)
        # Soft-edged cytoplasm with a granular texture (DAB and eosin both follow it).
        gran = _value_noise(rng, rb.shape, 0.3 * um)
        body = (np.sqrt(np.clip((1.0 - rb) * 1.6, 0, 1)) * (0.75 + 0.5 * gran)).astype(np.float32)
        if kind == MITOSIS:
            body = np.clip((1.0 - rb) * 4.0, 0, 1).astype(np.float32)
        return nuc.astype(np.float32), body, half
