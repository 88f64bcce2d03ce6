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
TUMOUR_KINDS = (SPINDLE, OVOID)
N_ORIENT = 36  # orientation bins over 180°
N_VARIANT = 4
N_SIZE = 5  # nuclear size bins (pleomorphism); bin 2 is the mean size
_BLOCK = 64  # grid cells per generator block side
_SIZE_CDF = np.cumsum([0.12, 0.22, 0.32, 0.22])  # upper bounds of bins 0..3; the rest is bin 4


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

    def take(self, idx: np.ndarray) -> Cells:
        """A subset of rows."""
        return Cells(**{k: getattr(self, k)[idx] for k in self.__dataclass_fields__})

    @staticmethod
    def concat(parts: list[Cells]) -> Cells:
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
    t, infl = spec.tumour, spec.inflammation
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
            # Centre-weighted size bins: most nuclei near the mean, a few small or large ones.
            c["size"] = np.searchsorted(_SIZE_CDF, r2[5], side="right").astype(np.int8)
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
    """Give every viable tumour cell an IHC class 0..3 and a DAB OD inside that class's band.

    Class 0 cells carry no specific stain. A positive cell's OD varies around its class's typical
    value but keeps 15 % of the band's width away from the class bounds, so the truth class is
    unambiguous while intensities still spread within each class.
    """
    tum = np.isin(cells.kind, TUMOUR_KINDS)
    n = int(tum.sum())
    fr = np.asarray(spec.ihc.class_fractions, float)
    fr = fr / fr.sum()
    cls = rng.choice(4, size=n, p=fr).astype(np.int8)
    od = np.asarray(spec.ihc.class_dab_od, float)
    b = np.asarray(spec.ihc.class_bounds_od, float)
    lo = np.concatenate([[0.0], b])
    hi = np.concatenate([b, [max(od[3] * 1.25, b[2] + 0.2)]])
    guard = 0.15 * (hi - lo)
    val = od[cls] * (1.0 + 0.12 * rng.standard_normal(n))
    val = np.clip(val, (lo + guard)[cls], (hi - guard)[cls])
    val[cls == 0] = 0.0
    cells.ihc_class[tum] = cls
    cells.dab_od[tum] = val.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Sprites: masks built analytically at the slide's mpp, rotated by construction. Chromatin and
# cytoplasm granularity are NOT in the sprites: the renderer multiplies them in from textures
# addressed by global position, so every cell's texture is its own while the bank stays small.


@dataclass(frozen=True)
class Sprite:
    """One cell's masks, (2*half+1)² each, float16 to keep the bank small."""

    nuc: np.ndarray  # hematoxylin density of the nucleus: outline, darker rim, nucleoli (0..~1.5)
    shape: np.ndarray  # nuclear occupancy 0..1 (the nucleus' soft-edged silhouette)
    body: np.ndarray  # cytoplasm 0..1: 1 near the nucleus, fading to 0 at the cell border
    ring: np.ndarray  # cell membrane: a thin band just inside the cell border, 0..1
    half: int


def size_factor(size: int, pleomorphism: float) -> float:
    """Linear size factor of a nucleus in size bin `size` (0..N_SIZE-1; bin 2 is the mean)."""
    spread = 0.06 + 0.3 * pleomorphism  # pleomorphism 0.4: lengths 0.82..1.18 x the mean
    return 1.0 + spread * (size - (N_SIZE - 1) / 2) / ((N_SIZE - 1) / 2)


def _grid(half: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Sprite pixel centres in the cell's own frame (u along the long axis, v across)."""
    r = np.arange(-half, half + 1, dtype=np.float32)
    yy, xx = np.meshgrid(r, r, indexing="ij")
    c, s = np.cos(angle), np.sin(angle)
    return xx * c + yy * s, -xx * s + yy * c


def _wobble(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, amp: float) -> np.ndarray:
    """Radial outline factor 1 + low-frequency Fourier terms (orders 2..5) of the polar angle of (x, y)."""
    r = np.sqrt(x * x + y * y) + np.float32(1e-6)
    c1, s1 = x / r, y / r
    ck, sk = c1, s1
    out = np.ones_like(x)
    for k in range(2, 6):
        # cos/sin of k·phi by the angle-addition recurrence: no trigonometry on the arrays.
        ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
        p = rng.uniform(0, 2 * np.pi)
        w = (amp / k**0.7) * rng.normal()
        out += np.float32(w * np.cos(p)) * ck - np.float32(w * np.sin(p)) * sk
    return np.clip(out, 0.6, 1.4)


def _soft(rr: np.ndarray, scale_px: float) -> np.ndarray:
    """Anti-aliased inside-ness of a region whose normalised radius is `rr` (1 at the border)."""
    return np.clip((1.0 - rr) * scale_px + 0.5, 0, 1)


def _border_distance(u: np.ndarray, v: np.ndarray, A: float, B: float, rng: np.random.Generator,
                     irregular: float) -> np.ndarray:
    """Distance (px) inside the border of an irregular ellipse of semi-axes A, B (negative outside)."""
    rb = np.sqrt((u / A) ** 2 + (v / B) ** 2)
    rb = rb / _wobble(rng, u / A, v / B, irregular)
    # (1 - rb) over the gradient of rb: exact for a circle, close for these mild ellipses.
    g = np.sqrt((u / A**2) ** 2 + (v / B**2) ** 2) / np.maximum(rb, 1e-3)
    return (1.0 - rb) / np.maximum(g, 1e-6)


def _cell(u: np.ndarray, v: np.ndarray, A: float, B: float, rng: np.random.Generator, irregular: float,
          membrane_px: float, nucleus_ab: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(body, ring) of an irregular elliptical cell of semi-axes A, B (px): body fades to 0 over the outer
    ~2 µm; ring is the membrane band. With `nucleus_ab` the membrane hugs the nucleus at about 1.9 µm
    (packed tumour cells: where a membrane marker outlines each cell, and where scorers look for it)
    while the cytoplasm's tapering tails reach further."""
    dist = _border_distance(u, v, A, B, rng, irregular)
    t = np.clip(dist / (2.0 * membrane_px / 0.45), 0, 1)
    body = t * t * (3 - 2 * t)  # smoothstep: cytoplasm thins out towards the border
    if nucleus_ab is not None:
        gap = 2.1 * membrane_px / 0.45
        dist = np.maximum(_border_distance(u, v, nucleus_ab[0] + gap, nucleus_ab[1] + gap, rng, irregular * 0.5),
                          np.minimum(dist, 0.0))
    # DAB lines a membrane ~0.75 µm thick (FWHM) on the glass: thin, yet resolvable at 0.5 µm/px.
    w = 2.0 * membrane_px
    ring = np.exp(-(((dist - 0.6 * w) / (0.5 * w)) ** 2)) * (dist > -w)
    return body, ring


class SpriteBank:
    """Nucleus and cell-body sprites for every (kind, size, variant, orientation), built on first use."""

    def __init__(self, spec: PhantomSpec):
        self.spec = spec
        self.um = 1.0 / spec.mpp  # px per µm
        self._cache: dict[tuple, Sprite] = {}
        t = spec.tumour
        self.max_half = int(np.ceil(max(t.nuclear_length_um * size_factor(N_SIZE - 1, t.pleomorphism) * 1.6 + 7,
                                        26.0) * self.um / 2)) + 3

    def sprite(self, kind: int, size: int, variant: int, angle: float, stretch: float = 1.0) -> Sprite:
        """The masks of a cell (cached by kind, size, variant, orientation bin and stretch bin)."""
        # Round cells (lymphocytes, dust) are drawn in one orientation: it is not part of their key, so it
        # must not reach _make either, or the cached sprite would be whichever orientation came first and
        # a chunk's pixels would depend on the chunks rendered before it.
        ob = int(round(angle / np.pi * N_ORIENT)) % N_ORIENT if kind not in (LYMPHOCYTE, DUST) else 0
        sb = int(round((stretch - 0.45) / 0.55 * 3)) if stretch < 1.0 else 4
        key = (kind, size, variant, ob, sb)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._make(kind, size, variant, ob * np.pi / N_ORIENT, 0.45 + sb * 0.55 / 3 if sb < 4 else 1.0)
            self._cache[key] = hit
        return hit

    def get(self, kind: int, size: int, variant: int, angle: float, stretch: float = 1.0) -> tuple[np.ndarray, np.ndarray, int]:
        """(nucleus, body, half) for a cell; nucleus and body are (2*half+1)² masks."""
        s = self.sprite(kind, size, variant, angle, stretch)
        return s.nuc.astype(np.float32), s.body.astype(np.float32), s.half

    def _make(self, kind: int, size: int, variant: int, angle: float, stretch: float) -> Sprite:
        um = self.um
        t = self.spec.tumour
        rng = np.random.default_rng([kind, size, variant, int(angle * 1000), int(stretch * 100), 7])
        sz = size_factor(size, t.pleomorphism)
        irr = 0.05 + 0.12 * t.pleomorphism  # outline irregularity of tumour nuclei
        mem = 0.45 * um  # membrane band width
        ring = None
        if kind in (SPINDLE, FIBROBLAST):
            if kind == SPINDLE:
                a = t.nuclear_length_um * sz * stretch / 2 * um
                b = t.nuclear_width_um * (sz * 0.5 + 0.5) / 2 * um * (1.0 + 0.5 * (1 - stretch)) * (0.9 + 0.07 * variant)
                bend, wob = 0.12, irr
            else:
                a = 12.0 * sz / 2 * um
                b = 1.4 / 2 * um
                bend, wob = 0.35, 0.04
            A, B = a + max(0.6 * a, 3.0 * um), b + 3.4 * um
            half = int(np.ceil(max(a, A) + 1.5 * um)) + 2
            u, v = _grid(half, angle)
            # A wavy, cigar-shaped nucleus with blunt-tapered ends and an irregular outline.
            vb = v - bend * b * np.sin(np.pi * u / max(a, 1) + variant) * (2 if kind == FIBROBLAST else 1)
            taper = np.sqrt(np.clip(1 - (u / a) ** 4, 0, 1))
            rr = np.maximum(np.abs(u) / a, np.abs(vb) / np.maximum(b * taper, 0.3))
            rr = rr / _wobble(rng, u / a, vb / b, wob)
            shape = _soft(rr, min(a, b) / 0.9)
            rim = np.exp(-((rr - 0.88) / 0.1) ** 2)
            nuc = shape * (0.7 + 0.35 * rim)
            if kind == SPINDLE and variant == 0 and stretch > 0.6:
                # A small nucleolus in some tumour cells.
                cu = rng.uniform(-0.3, 0.3) * a
                nuc = nuc + 0.55 * np.exp(-((u - cu) ** 2 + vb**2) / (0.5 * um) ** 2) * shape
            body, ring = _cell(u, vb * 0.7 + v * 0.3, A, B, rng, 0.12, mem, (a, b) if kind == SPINDLE else None)
        elif kind == OVOID:
            a = 4.6 * sz * um * (1.08 if variant % 2 else 0.95)
            b = 3.2 * sz * um * (0.95 if variant >= 2 else 1.05)
            A, B = a + 3.0 * um, b + 2.6 * um
            half = int(np.ceil(A + 1.5 * um)) + 2
            u, v = _grid(half, angle)
            rr = np.sqrt((u / a) ** 2 + (v / b) ** 2)
            rr = rr / _wobble(rng, u / a, v / b, irr * 1.2)
            shape = _soft(rr, b / 0.9)
            # Vesicular chromatin: a crisp dark membrane, a paler interior, one or two nucleoli.
            rim = np.exp(-((rr - 0.9) / 0.09) ** 2)
            nuc = shape * (0.5 + 0.55 * rim)
            for _ in range(1 if variant < 2 else (2 if variant == 2 else 0)):
                cu, cv = rng.uniform(-0.35, 0.35) * a, rng.uniform(-0.3, 0.3) * b
                r_nl = rng.uniform(0.55, 0.85) * um
                nuc = nuc + 0.75 * np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / r_nl**2) * shape
            body, ring = _cell(u, v, A, B, rng, 0.12, mem, (a, b))
        elif kind in (LYMPHOCYTE, PLASMA):
            rad = (3.0 if kind == LYMPHOCYTE else 2.7) * um * (0.92 + 0.05 * size)
            half = int(np.ceil(rad * 3.2)) + 2
            u, v = _grid(half, angle)
            off = 1.9 * um if kind == PLASMA else 0.0  # plasma cells: eccentric nucleus
            un = u + off
            rr = np.sqrt(un**2 + v**2) / rad
            rr = rr / _wobble(rng, un, v, 0.06)
            shape = _soft(rr, rad / 0.9)
            if kind == LYMPHOCYTE:
                # Small, round and dense, a barely visible rim of cytoplasm.
                nuc = shape * (1.0 + 0.15 * np.exp(-((rr - 0.85) / 0.15) ** 2))
                body, ring = _cell(u, v, rad * 1.25, rad * 1.2, rng, 0.05, mem)
            else:
                # Clock-face chromatin: coarse clumps against the membrane, one in the middle.
                ang = np.arctan2(v, un)
                clock = np.clip(np.cos(rng.integers(5, 8) * ang + variant) * 1.6 - 0.2, 0, 1)
                centre = np.exp(-(un**2 + v**2) / (0.8 * um) ** 2)
                nuc = shape * (0.45 + 0.7 * clock * np.clip((rr - 0.45) * 3, 0, 1) + 0.6 * centre)
                body, ring = _cell(u, v, rad * 2.2, rad * 1.65, rng, 0.06, mem)
                # The pale perinuclear hof (Golgi) beside the nucleus, on the cell's side.
                hof = np.exp(-((u - (rad - off + 1.1 * um)) ** 2 / (1.2 * um) ** 2 + v**2 / (1.5 * um) ** 2))
                body = body * (1.0 - 0.7 * hof) * (1 - shape)
        elif kind == GHOST:
            sg = 0.85 + 0.15 * size / (N_SIZE - 1) * 2
            a, b = 5.0 * sg * um, 3.2 * sg * um
            half = int(np.ceil(a * 2.0)) + 2
            u, v = _grid(half, angle)
            rr = np.sqrt((u / a) ** 2 + (v / b) ** 2)
            # Pale nuclear outline only: the chromatin has gone.
            nuc = 0.22 * np.exp(-((rr - 0.9) / 0.15) ** 2) + 0.06 * (rr < 1)
            shape = (rr < 1).astype(np.float32)
            rb = np.sqrt((u / (a * 1.8)) ** 2 + (v / (b * 2.0)) ** 2)
            body = np.sqrt(np.clip((1.0 - rb) * 1.6, 0, 1))
        elif kind == DUST:
            half = int(np.ceil(6 * um)) + 2
            u, v = _grid(half, angle)
            nuc = np.zeros_like(u)
            for _ in range(rng.integers(4, 10)):
                cx, cy = rng.normal(0, 2.2 * um, 2)
                rad = rng.uniform(0.45, 1.1) * um
                d = np.sqrt((u - cx) ** 2 + (v - cy) ** 2) / rad
                nuc = np.maximum(nuc, np.clip((1 - d) * rad / 0.8 + 0.5, 0, 1) * 1.35)
            shape = np.clip(nuc, 0, 1)
            body = np.zeros_like(u)
        elif kind == MITOSIS:
            sm = 0.85 + 0.3 * size / (N_SIZE - 1)
            half = int(np.ceil(9 * sm * um)) + 2
            u, v = _grid(half, angle)
            nuc = np.zeros_like(u)
            if variant < 2:
                # Metaphase plate: a dense bar of chromosomes with ragged, spiky edges.
                lu, lv = 4.6 * sm * um, 1.3 * um
                for _ in range(40):
                    cu = rng.uniform(-lu, lu)
                    cv = rng.normal(0, lv * 0.6)
                    ru, rv = rng.uniform(0.5, 1.0) * um, rng.uniform(0.4, 1.6) * um
                    d = np.sqrt(((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2)
                    nuc = np.maximum(nuc, np.clip((1 - d) * 2.0 + 0.5, 0, 1))
            else:
                # Atypical figure: irregular clumps of condensed chromatin.
                for _ in range(rng.integers(5, 9)):
                    cu, cv = rng.normal(0, 2.6 * sm * um, 2)
                    ru, rv = rng.uniform(0.8, 1.9) * um, rng.uniform(0.7, 1.5) * um
                    a2 = rng.uniform(0, np.pi)
                    du = (u - cu) * np.cos(a2) + (v - cv) * np.sin(a2)
                    dv = -(u - cu) * np.sin(a2) + (v - cv) * np.cos(a2)
                    d = np.sqrt((du / ru) ** 2 + (dv / rv) ** 2)
                    nuc = np.maximum(nuc, np.clip((1 - d) * 2.0 + 0.5, 0, 1))
            shape = np.clip(nuc, 0, 1)
            nuc = nuc * 1.55
            # The clear halo: a round pale zone around the figure (body mask = halo).
            rr = np.sqrt(u**2 + v**2) / (8.0 * sm * um)
            body = np.clip((1.0 - rr) * 4.0, 0, 1)
        else:  # pragma: no cover
            raise ValueError(kind)
        if ring is None:
            ring = np.zeros_like(body)
        f16 = np.float16
        return Sprite(nuc.astype(f16), shape.astype(f16), body.astype(f16), ring.astype(f16), half)
