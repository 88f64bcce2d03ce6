"""Tile rendering: region fields → stain concentration maps → cell sprites → Beer–Lambert RGB.

Every value is a function of level-0 position only (fields, periodic textures addressed by global
coordinates, hashed sensor noise, cells from the global table), and each chunk is painted with a
margin as wide as its widest blur, so any chunking of the slide gives the same pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from .cells import (
    DUST,
    FIBROBLAST,
    GHOST,
    LYMPHOCYTE,
    MITOSIS,
    OVOID,
    PLASMA,
    SPINDLE,
    Cells,
    SpriteBank,
)
from .layout import FASCICULAR, HAPHAZARD, INFLAMMATION, NECROSIS, STROMA, Layout, combine_labels, smooth_noise
from .spec import PhantomSpec
from .stain import PEN_INKS, StainModel

_TEX = 1024  # period of the texture tiles (px)
_K = 8  # orientation bins of the fibre textures
_BUCKET = 256  # spatial index bucket (px)

# Nuclear hematoxylin strength (OD) of each kind, H&E; the IHC counterstain is lighter.
_H_NUC = {SPINDLE: 0.85, OVOID: 0.85, FIBROBLAST: 0.9, LYMPHOCYTE: 1.15, PLASMA: 0.9, GHOST: 1.0, DUST: 1.05, MITOSIS: 1.25}
_E_BODY = {SPINDLE: 0.30, OVOID: 0.32, FIBROBLAST: 0.0, LYMPHOCYTE: 0.0, PLASMA: 0.32, GHOST: 0.45, DUST: 0.0, MITOSIS: 0.0}
_IHC_COUNTER = 0.62
# Relative chromatin texture (sd of the granular modulation) of each kind's nucleus.
_CHROM = {SPINDLE: 0.32, OVOID: 0.42, FIBROBLAST: 0.2, LYMPHOCYTE: 0.22, PLASMA: 0.2, GHOST: 0.1, DUST: 0.1, MITOSIS: 0.1}
# Painted DAB per unit of a cell's dab_od, by compartment: makes the mean DAB OD that deconvolution
# measures in the compartment (a 2 µm ring round the nucleus, the nucleus, the cell border) come out
# near the cell's dab_od despite the fading edge, the granules and the optics blur.
_DAB_GAIN = {"cytoplasmic": 1.0, "nuclear": 1.1, "membranous": 1.15}
_CYTO_FILL = 2.5
# Texture warp: displacement sd (px) and its correlation length (px); decorrelates the periodic banks.
_WARP_PX = 220.0
_WARP_SCALE_PX = 1500.0
_CRIMP_UM = 1.2  # amplitude of the collagen crimp (µm)


def _noise_spectrum(rng: np.random.Generator) -> np.ndarray:
    """Spectrum of a P×P white-noise field (shared by a bank of textures so orientations blend smoothly)."""
    return np.fft.rfft2(rng.standard_normal((_TEX, _TEX)).astype(np.float32))


def _filtered_noise(spectrum: np.ndarray, along_px: float, across_px: float, angle: float) -> np.ndarray:
    """A periodic (P×P) Gaussian-filtered noise texture, streaky along `angle`, zero mean, unit sd."""
    fy = np.fft.fftfreq(_TEX).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(_TEX).astype(np.float32)[None, :]
    fa = fx * np.cos(angle) + fy * np.sin(angle)
    fc = -fx * np.sin(angle) + fy * np.cos(angle)
    filt = np.exp(-2 * np.pi**2 * ((fa * along_px) ** 2 + (fc * across_px) ** 2)).astype(np.float32)
    out = np.fft.irfft2(spectrum * filt, s=(_TEX, _TEX)).astype(np.float32)
    out -= out.mean()
    return out / max(float(out.std()), 1e-12)


class Textures:
    """Periodic textures, read through an aperiodic warp of global level-0 coordinates.

    The banks repeat every ``_TEX`` px; reading them at ``(x, y) + d(x, y)`` with a smooth random
    displacement ``d`` (hundreds of px, varying over hundreds of µm, see :class:`Renderer`) makes two
    points one period apart read unrelated texels, so no repeat shows, while every value stays a
    function of the global position alone (chunking cannot change it).
    """

    def __init__(self, seed: int, mpp: float):
        rng = np.random.default_rng([seed, 202])
        um = 1.0 / mpp
        self.grain = _filtered_noise(_noise_spectrum(rng), 0.5 * um, 0.5 * um, 0.0)
        self.mottle = _filtered_noise(_noise_spectrum(rng), 5 * um, 5 * um, 0.0)
        s1, s2, s3 = _noise_spectrum(rng), _noise_spectrum(rng), _noise_spectrum(rng)
        self.fibre = np.stack([_filtered_noise(s1, 14 * um, 0.55 * um, k * np.pi / _K) for k in range(_K)])
        self.fibril = np.stack([_filtered_noise(s2, 6 * um, 0.8 * um, k * np.pi / _K) for k in range(_K)])
        # Collagen bundles: long, a few µm wide; their crests and troughs make bundles and clefts.
        self.bundle = np.stack([_filtered_noise(s3, 30 * um, 2.2 * um, k * np.pi / _K) for k in range(_K)])
        self.speckle = _filtered_noise(_noise_spectrum(rng), 0.3 * um, 0.3 * um, 0.0)
        self.mottle_t = np.ascontiguousarray(self.mottle[::-1].T)  # a second mottle, independent where it is read

    @staticmethod
    def positions(x0: int, y0: int, w: int, h: int, dx: np.ndarray | None = None, dy: np.ndarray | None = None) -> np.ndarray:
        """Flat texel index (h, w) of each pixel of the box, displaced by (dx, dy) px when given."""
        ys = np.arange(y0, y0 + h, dtype=np.int64)[:, None]
        xs = np.arange(x0, x0 + w, dtype=np.int64)[None, :]
        if dx is not None and dy is not None:
            xs = xs + np.floor(dx + 0.5).astype(np.int64)
            ys = ys + np.floor(dy + 0.5).astype(np.int64)
        return ((ys % _TEX) * _TEX + xs % _TEX).astype(np.int32)

    @staticmethod
    def look(tex: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """The texture at flat texel indices `pos`."""
        return tex.reshape(-1).take(pos)

    @staticmethod
    def oriented(bank: np.ndarray, angle: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Texture following a per-pixel angle (blend of the two nearest orientation bins)."""
        b = np.mod(angle, np.pi) * np.float32(_K / np.pi)
        lo = b.astype(np.int32)
        wt = b - lo
        lo %= _K
        hi = (lo + 1) % _K
        flat = bank.reshape(-1)
        t_lo = flat.take(lo * (_TEX * _TEX) + pos)
        t_hi = flat.take(hi * (_TEX * _TEX) + pos)
        return t_lo + wt * (t_hi - t_lo)


def hash_noise(x0: int, y0: int, w: int, h: int, seed: int) -> np.ndarray:
    """Per-pixel noise (zero mean, unit sd) from a hash of global (x, y, seed): chunking cannot change it."""
    ys = (np.arange(y0, y0 + h, dtype=np.int64) & 0xFFFFFFFF).astype(np.uint32)
    xs = (np.arange(x0, x0 + w, dtype=np.int64) & 0xFFFFFFFF).astype(np.uint32)
    with np.errstate(over="ignore"):
        v = ys[:, None] * np.uint32(0x9E3779B1) ^ xs[None, :] * np.uint32(0x85EBCA77) ^ np.uint32((seed * 0x27D4EB2F) & 0xFFFFFFFF)
        v ^= v >> np.uint32(16)
        v *= np.uint32(0x7FEB352D)
        v ^= v >> np.uint32(15)
        v *= np.uint32(0x846CA68B)
        v ^= v >> np.uint32(16)
    u = v.astype(np.float32) * np.float32(1.0 / 4294967296.0)
    return (u - np.float32(0.5)) * np.float32(3.4641016)


def _axis_weights(start: int, n: int, step: float, size: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Bilinear indices/weights along one axis for pixels start..start+n-1 (layout grid of `size`)."""
    f = (np.arange(start, start + n, dtype=np.float64) + 0.5) / step - 0.5
    f = np.clip(f, 0, size - 1)
    i0 = np.minimum(np.floor(f).astype(np.int64), size - 2) if size > 1 else np.zeros(n, np.int64)
    wt = (f - i0).astype(np.float32)
    lo, hi = int(i0.min()), int(i0.max()) + 2
    return i0 - lo, wt, lo, hi


class Interp:
    """Bilinear upsampling of layout arrays onto one pixel box (elementwise, so results never depend on the box)."""

    def __init__(self, lay: Layout, x0: int, y0: int, w: int, h: int, stride: int = 1):
        ny, nx = lay.fields["tissue"].shape
        self.stride = stride
        self.shape = (h, w)
        # Coarse sampling (slowly varying quantities such as orientations) sits on a global lattice of
        # `stride` px, so every chunk samples the same points.
        bx, by = (x0 // stride) * stride, (y0 // stride) * stride
        self.off = (y0 - by, x0 - bx)
        self.ry, self.wy, self.r0, self.r1 = _axis_weights(by, h + self.off[0], lay.step_px, ny)
        self.cx, self.wx, self.c0, self.c1 = _axis_weights(bx, w + self.off[1], lay.step_px, nx)
        if stride > 1:
            self.ry, self.wy = self.ry[::stride], self.wy[::stride]
            self.cx, self.wx = self.cx[::stride], self.wx[::stride]

    def block(self, arr: np.ndarray) -> np.ndarray:
        """The layout samples this box's interpolation reads."""
        return arr[self.r0:self.r1, self.c0:self.c1]

    def __call__(self, arr: np.ndarray) -> np.ndarray:
        b = self.block(arr).astype(np.float32)
        rows = b[self.ry] * (1 - self.wy)[:, None] + b[self.ry + 1] * self.wy[:, None]
        out = rows[:, self.cx] * (1 - self.wx)[None, :] + rows[:, self.cx + 1] * self.wx[None, :]
        if self.stride > 1:
            s = self.stride
            oy, ox = self.off
            out = np.repeat(np.repeat(out, s, axis=0), s, axis=1)[oy:oy + self.shape[0], ox:ox + self.shape[1]]
        return out


class CellIndex:
    """Cells bucketed on a coarse grid for quick box queries."""

    def __init__(self, cells: Cells, width_px: int, height_px: int):
        self.nbx = int(np.ceil(width_px / _BUCKET)) + 1
        self.nby = int(np.ceil(height_px / _BUCKET)) + 1
        bx = np.clip((cells.x // _BUCKET).astype(np.int64), 0, self.nbx - 1)
        by = np.clip((cells.y // _BUCKET).astype(np.int64), 0, self.nby - 1)
        key = by * self.nbx + bx
        order = np.argsort(key, kind="stable")
        self.cells = cells.take(order)
        self.starts = np.searchsorted(key[order], np.arange(self.nby * self.nbx + 1))

    def query(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        """Row indices (into self.cells) of cells whose centre lies in the box, in a stable order."""
        bx0, bx1 = max(int(x0 // _BUCKET), 0), min(int(x1 // _BUCKET), self.nbx - 1)
        by0, by1 = max(int(y0 // _BUCKET), 0), min(int(y1 // _BUCKET), self.nby - 1)
        if bx0 > bx1 or by0 > by1:
            return np.zeros(0, np.int64)
        idx = np.concatenate([np.arange(self.starts[by * self.nbx + bx0], self.starts[by * self.nbx + bx1 + 1])
                              for by in range(by0, by1 + 1)])
        c = self.cells
        sel = (c.x[idx] >= x0) & (c.x[idx] < x1) & (c.y[idx] >= y0) & (c.y[idx] < y1)
        return idx[sel]


class Renderer:
    """Paints H&E or IHC pixels of any level-0 box of one phantom."""

    def __init__(self, spec: PhantomSpec, lay: Layout, cells: Cells, he: StainModel, ihc: StainModel):
        self.spec, self.lay, self.he, self.ihc = spec, lay, he, ihc
        self.index = CellIndex(cells, spec.slide_width_px, spec.slide_height_px)
        self._tex: Textures | None = None
        self._bank: SpriteBank | None = None
        tx, ty = lay.tangent()
        ang = np.arctan2(ty, tx)
        self.fasc_c2, self.fasc_s2 = np.cos(2 * ang).astype(np.float32), np.sin(2 * ang).astype(np.float32)
        self.str_c2 = np.cos(2 * lay.stroma_theta).astype(np.float32)
        self.str_s2 = np.sin(2 * lay.stroma_theta).astype(np.float32)
        # The texture warp (see Textures): smooth, aperiodic, on the layout grid, its own generator so
        # the layout and cells of a seed do not change with it.
        wrng = np.random.default_rng([spec.seed, 303])
        shape = lay.fields["tissue"].shape
        scale = _WARP_SCALE_PX / lay.step_px
        self.warp_x = (_WARP_PX * smooth_noise(wrng, shape, scale)).astype(np.float32)
        self.warp_y = (_WARP_PX * smooth_noise(wrng, shape, scale)).astype(np.float32)
        um = 1.0 / spec.mpp
        self.patch_sigma_px = 2.2 * um
        a = spec.artefacts
        # Each slide carries its own artefacts (fields named per modality in the layout).
        self.artefacts: dict[str, dict[str, Any]] = {
            "he": {"prefix": "", "pen": a.pen_marks > 0, "blur": a.blur_patches > 0, "fold": a.folds > 0},
            "ihc": {"prefix": "ihc_", "pen": a.ihc_pen_marks > 0, "blur": a.ihc_blur_patches > 0, "fold": a.ihc_folds > 0},
        }

    # Heavy members are built lazily so a Renderer pickles small into worker processes.
    @property
    def tex(self) -> Textures:
        """The texture banks (built on first use)."""
        if self._tex is None:
            self._tex = Textures(self.spec.seed, self.spec.mpp)
        return self._tex

    @property
    def bank(self) -> SpriteBank:
        """The cell sprite bank (built on first use)."""
        if self._bank is None:
            self._bank = SpriteBank(self.spec)
        return self._bank

    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        d["_tex"] = None
        d["_bank"] = None
        return d

    def render(self, x: int, y: int, w: int, h: int, modality: str = "he") -> np.ndarray:
        """RGB uint8 (h, w, 3) of level-0 box (x, y, w, h); modality 'he' or 'ihc'."""
        ihc = modality == "ihc"
        stain = self.ihc if ihc else self.he
        art = self.artefacts["ihc" if ihc else "he"]
        sig = stain.blur_sigma_px * (0.25 / self.spec.mpp)
        r_opt = int(4.0 * sig + 0.5) if sig > 0 else 0
        r_patch = int(4.0 * self.patch_sigma_px + 0.5) if art["blur"] else 0
        m = max(r_opt, 0) + r_patch  # margin so blurs see the same neighbours in any chunking
        X0, Y0, Wm, Hm = x - m, y - m, w + 2 * m, h + 2 * m
        it = Interp(self.lay, X0, Y0, Wm, Hm)
        tissue_block = it.block(self.lay.fields["tissue"])
        pen_here = art["pen"] and it.block(self.lay.fields[art["prefix"] + "pen"]).max() > 0
        if tissue_block.max() <= 0 and not pen_here:
            od = None  # bare glass
        else:
            od = self._paint(it, X0, Y0, Wm, Hm, ihc, stain, art)
        glass = od is None
        if od is None:
            rgb = np.broadcast_to(stain.background.astype(np.float32), (Hm, Wm, 3)).copy()
        else:
            rgb = np.power(np.float32(10.0), -od, dtype=np.float32) * stain.background.astype(np.float32)
        if sig > 0 and not glass:
            for c in range(3):
                rgb[..., c] = ndimage.gaussian_filter(rgb[..., c], sig, truncate=4.0, mode="nearest")
        if r_patch and not glass:
            field = self.lay.fields[art["prefix"] + "blur"]
            if it.block(field).max() > 0:
                wgt = np.clip(it(field) * 5.0, 0, 1)
                for c in range(3):
                    soft = ndimage.gaussian_filter(rgb[..., c], self.patch_sigma_px, truncate=4.0, mode="nearest")
                    rgb[..., c] += wgt * (soft - rgb[..., c])
        rgb = rgb[m:m + h, m:m + w]
        if stain.noise_sd > 0:
            rgb += hash_noise(x, y, w, h, self.spec.seed * 2 + int(ihc))[..., None] * np.float32(stain.noise_sd)
        np.clip(rgb, 0, 255, out=rgb)
        return (rgb + 0.5).astype(np.uint8)

    def _paint(self, it: Interp, X0: int, Y0: int, W: int, H: int, ihc: bool, stain: StainModel, art: dict) -> np.ndarray:
        """Optical density (H, W, 3) of the box: background stains, cells, artefacts."""
        lay, sp, tex = self.lay, self.spec, self.tex
        f = {}
        for k in ("tissue", "tumour", "fascicular", "necrosis", "inflammation"):
            arr = lay.fields[k]
            blk = it.block(arr)
            f[k] = np.full((H, W), -1.0, np.float32) if blk.max() <= 0 else it(arr)
        lab = combine_labels(f)
        coarse = Interp(lay, X0, Y0, W, H, stride=4)
        dx, dy = coarse(self.warp_x), coarse(self.warp_y)
        pos = tex.positions(X0, Y0, W, H, dx, dy)
        grain = tex.look(tex.grain, pos)
        mottle = tex.look(tex.mottle, pos)
        c_h = np.zeros((H, W), np.float32)
        c_e = np.zeros((H, W), np.float32)
        c_d = np.zeros((H, W), np.float32)
        present = set(np.nonzero(np.bincount(lab.ravel(), minlength=6))[0].tolist())
        um = 1.0 / sp.mpp

        hyal = sp.tumour.haphazard_stroma == "hyalinised"
        if STROMA in present or INFLAMMATION in present or HAPHAZARD in present:
            sang = 0.5 * np.arctan2(coarse(self.str_s2), coarse(self.str_c2))
            # Crimp: the collagen is read through a second, small warp (a few µm), so fibres wave.
            m2 = tex.look(tex.mottle_t, pos)
            pos_w = tex.positions(X0, Y0, W, H, dx + _CRIMP_UM * um * mottle, dy + _CRIMP_UM * um * m2)
            fib = tex.oriented(tex.fibre, sang, pos_w)
            bund = tex.oriented(tex.bundle, sang, pos_w)
        if STROMA in present or INFLAMMATION in present:
            # Collagen bundles of varied width and strength, thin fibres within, pale clefts between.
            strength = 0.62 + 0.22 * np.tanh(0.8 * bund) + 0.06 * mottle
            col = strength * (1.0 + 0.3 * fib)
            cleft = np.clip((-0.9 - bund) * 1.5, 0, 1)
            col = np.clip(col * (1.0 - 0.75 * cleft), 0.0, 1.2)
            m = (lab == STROMA) | (lab == INFLAMMATION)
            scale = np.where(lab == INFLAMMATION, 0.6, 1.0)
            c_e[m] = (0.42 * col * scale)[m]
            c_h[m] = np.clip(0.025 + 0.07 * col + 0.02 * mottle, 0, None)[m]
        if FASCICULAR in present:
            fang = 0.5 * np.arctan2(coarse(self.fasc_s2), coarse(self.fasc_c2))
            fbl = tex.oriented(tex.fibril, fang, pos)
            m = lab == FASCICULAR
            c_e[m] = np.clip(0.22 + 0.035 * fbl + 0.03 * grain + 0.02 * mottle, 0.05, None)[m]
            c_h[m] = np.clip(0.07 + 0.025 * fbl + 0.025 * mottle, 0.0, None)[m]
        if HAPHAZARD in present:
            m = lab == HAPHAZARD
            if hyal:
                # Hyalinised: glassy, homogeneous pink collagen; faint broad bands, hardly any fibres.
                c_e[m] = np.clip(0.36 + 0.035 * mottle + 0.03 * bund + 0.012 * fib, 0.12, None)[m]
                c_h[m] = np.clip(0.035 + 0.015 * mottle, 0, None)[m]
            else:
                # Myxoid: pale blue-grey loose matrix, thin stellate strands, clear spaces.
                strands = np.clip(fib - 1.1, 0, 1.5)
                loose = np.clip(0.55 + 0.35 * mottle + 0.15 * grain, 0, 1) * (1.0 - 0.7 * np.clip(mottle - 0.9, 0, 1))
                c_e[m] = (0.025 + 0.04 * loose + 0.10 * strands)[m]
                c_h[m] = (0.045 + 0.10 * loose + 0.08 * strands)[m]
        if NECROSIS in present:
            m = lab == NECROSIS
            c_e[m] = np.clip(0.36 + 0.05 * grain + 0.04 * mottle, 0.1, None)[m]
            c_h[m] = np.clip(0.025 + 0.03 * grain + 0.015 * mottle, 0.0, None)[m]
        if ihc:
            # Counterstain only: the eosin is absent; tissue keeps a faint bluish tint, and a faint
            # non-specific DAB haze lies over all tissue (stronger in necrosis).
            tis = (lab > 0).astype(np.float32)
            c_h = c_h * 0.35 + tis * 0.02
            c_e[:] = 0.0
            haze = np.where(lab == NECROSIS, 0.05, 0.014) * np.clip(1.0 + 0.45 * mottle + 0.25 * grain, 0.2, None)
            c_d = (haze * tis).astype(np.float32)

        speckle = tex.look(tex.speckle, pos)
        chrom = 0.75 * speckle + 0.45 * grain  # chromatin: fine granules on a coarser grain
        # Cell DAB is painted divided by the slide's DAB strength, so what lies on the glass in a cell
        # is its truth dab_od whatever this slide's stain-strength draw (the haze still varies with it).
        self._stamp_cells(c_h, c_e, c_d, X0, Y0, W, H, ihc, chrom, speckle, 1.0 / float(stain.strengths[2]))

        if art["fold"]:
            field = lay.fields[art["prefix"] + "fold"]
            if it.block(field).max() > 0:
                fold = np.clip(it(field) / (3.0 / sp.mpp), 0, 1) * (lab > 0)
                gain = 1.0 + 0.95 * fold
                c_h *= gain
                c_e *= gain
                c_d *= gain
        od = stain.od(c_h, c_e, c_d)
        if art["pen"]:
            field = lay.fields[art["prefix"] + "pen"]
            if it.block(field).max() > 0:
                pen = np.clip(it(field) / (4.0 / sp.mpp), 0, 1)
                colors = lay.ihc_pen_colors if ihc else lay.pen_colors
                ink = PEN_INKS[colors[0]] if colors else PEN_INKS["green"]
                od += (pen * (0.75 + 0.12 * mottle))[..., None] * ink.astype(np.float32)
        return od

    def _stamp_cells(self, c_h, c_e, c_d, X0, Y0, W, H, ihc, chrom, speckle, dab_scale=1.0) -> None:
        """Add every cell whose sprite meets the box to the concentration maps."""
        bank = self.bank
        pad = bank.max_half + 2
        idx = self.index.query(X0 - pad, Y0 - pad, X0 + W + pad, Y0 + H + pad)
        c = self.index.cells
        comp = self.spec.ihc.compartment
        hscale = _IHC_COUNTER if ihc else 1.0
        mit: list[int] = []
        owner = np.zeros_like(c_d) if ihc else None
        myxoid = self.spec.tumour.haphazard_stroma == "myxoid"
        for i in idx:
            kind = int(c.kind[i])
            if kind == MITOSIS:
                mit.append(int(i))
                continue
            s = bank.sprite(kind, int(c.size[i]), int(c.variant[i]), float(c.angle[i]), float(c.stretch[i]))
            sl, ss = _slices(c.x[i], c.y[i], s.half, X0, Y0, W, H)
            if sl is None:
                continue
            nuc = s.nuc[ss].astype(np.float32)
            # Chromatin texture from global position: every nucleus has its own granules.
            tex = np.clip(1.0 + _CHROM[kind] * chrom[sl], 0.25, None)
            hn = nuc * tex * (_H_NUC[kind] * float(c.dark[i]) * hscale)
            np.maximum(c_h[sl], hn, out=c_h[sl])
            if not ihc:
                eb = _E_BODY[kind] * (0.4 if myxoid and c.region[i] == HAPHAZARD else 1.0)  # scant in myxoid matrix
                if eb:
                    np.maximum(c_e[sl], s.body[ss] * (eb * (1.0 + 0.12 * chrom[sl])), out=c_e[sl])
                if kind == PLASMA:  # amphophilic (purple-pink) cytoplasm
                    np.maximum(c_h[sl], s.body[ss] * np.float32(0.17), out=c_h[sl])
            elif kind in (SPINDLE, OVOID):
                # Cells own the pixels where they are strongest (its nucleus beats a neighbour's
                # cytoplasm), so a negative cell is not painted over by its positive neighbours.
                body = s.body[ss].astype(np.float32)
                shape = s.shape[ss].astype(np.float32)
                key = body + shape + 0.5 * _proximity(s.half)[ss]  # nearest cell wins where bodies overlap
                assert owner is not None  # this branch is the IHC one: owner was allocated above
                mine = key > owner[sl]
                owner[sl][mine] = key[mine]
                d = float(c.dab_od[i]) * dab_scale
                if d <= 0:
                    c_d[sl][mine] = np.minimum(c_d[sl][mine], 0.02)
                    continue
                if comp == "cytoplasmic":
                    # Granular cytoplasmic DAB, fading towards the cell border, none in the nucleus.
                    gran = np.clip(1.0 + 0.25 * speckle[sl], 0.4, None)
                    fill = np.minimum(body * _CYTO_FILL, 1.0)
                    val = fill * (1.0 - shape) * gran * (d * _DAB_GAIN["cytoplasmic"])
                elif comp == "nuclear":
                    val = shape * np.clip(1.0 + 0.3 * chrom[sl], 0.3, None) * (d * _DAB_GAIN["nuclear"])
                else:  # membranous: a thin ring at the cell border, a faint cytoplasmic blush
                    ring = s.ring[ss].astype(np.float32)
                    val = (ring + 0.12 * body * (1.0 - shape)) * (d * _DAB_GAIN["membranous"])
                c_d[sl][mine] = np.maximum(val[mine], c_d[sl][mine] * (1.0 - body[mine]))
        for i in mit:
            s = bank.sprite(MITOSIS, int(c.size[i]), int(c.variant[i]), float(c.angle[i]))
            sl, ss = _slices(c.x[i], c.y[i], s.half, X0, Y0, W, H)
            if sl is None:
                continue
            clear = 1.0 - 0.85 * s.body[ss].astype(np.float32)  # the clear halo around the figure
            c_e[sl] *= clear
            c_h[sl] *= clear
            c_d[sl] *= clear
            np.maximum(c_h[sl], s.nuc[ss].astype(np.float32) * (_H_NUC[MITOSIS] * (0.85 if ihc else 1.0)), out=c_h[sl])


_PROX: dict[int, np.ndarray] = {}


def _proximity(half: int) -> np.ndarray:
    """1 at a sprite's centre falling linearly to 0 at its corner radius (tie-break of cell ownership)."""
    p = _PROX.get(half)
    if p is None:
        r = np.arange(-half, half + 1, dtype=np.float32)
        p = 1.0 - np.sqrt(r[:, None] ** 2 + r[None, :] ** 2) / (half * 1.415 + 1)
        _PROX[half] = p
    return p


def _slices(cx: float, cy: float, half: int, X0: int, Y0: int, W: int, H: int):
    """(box slice, sprite slice) where a sprite centred at (cx, cy) meets the box; (None, None) if not."""
    ix = int(np.floor(cx)) - half - X0
    iy = int(np.floor(cy)) - half - Y0
    n = 2 * half + 1
    x0, y0 = max(ix, 0), max(iy, 0)
    x1, y1 = min(ix + n, W), min(iy + n, H)
    if x0 >= x1 or y0 >= y1:
        return None, None
    return (slice(y0, y1), slice(x0, x1)), (slice(y0 - iy, y1 - iy), slice(x0 - ix, x1 - ix))
