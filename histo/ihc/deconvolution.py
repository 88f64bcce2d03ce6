"""Colour deconvolution of brightfield hematoxylin–DAB images into per-stain optical-density maps.

Beer–Lambert: a stain of concentration ``c`` and unit optical-density (OD) colour vector ``v`` absorbs
``OD = c * v`` per RGB channel, and stains add in OD space. With the stain vectors as the rows of a 3×3
matrix ``M`` (hematoxylin, DAB, residual), the OD of a pixel is ``od = c @ M`` and the stain amounts are
``c = od @ inv(M)``. Because every row of ``M`` has unit length, ``c`` is the OD that stain contributes
along its own colour, which is the "DAB OD" that IHC thresholds (e.g. QuPath's 0.2/0.4/0.6) are given in.

OD here is ``-log10((I + 1) / (I0 + 1))`` per channel, with ``I0`` the background (glass) intensity:
the ``+1`` keeps black pixels finite (max OD = log10(256) ≈ 2.41 for 8-bit) and makes a pixel equal to
the background exactly zero OD.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from histo.errors import HistoError

# Ruifrok & Johnston (2001), "Quantification of histochemical staining by color deconvolution",
# Anal Quant Cytol Histol 23:291-299: the H-DAB vectors (same values as scikit-image's rgb_from_hdx and,
# to 3 decimals, QuPath's "H-DAB default"). Rows are OD per (R, G, B); normalised to unit length below.
RUIFROK_HEMATOXYLIN = (0.650, 0.704, 0.286)
RUIFROK_DAB = (0.268, 0.570, 0.776)

MAX_OD_8BIT = float(np.log10(256.0))


class StainEstimationError(HistoError):
    """Stain vectors could not be estimated from an image (too few stained pixels)."""


def _vec3(v: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    a, b, c = (float(x) for x in v)
    return a, b, c


def _unit(v: Sequence[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    n = float(np.linalg.norm(a))
    if not np.isfinite(n) or n == 0.0:
        raise HistoError(f"stain vector {tuple(v)} has zero or non-finite length")
    return a / n


@dataclass(frozen=True)
class StainMatrix:
    """Unit OD colour vectors of hematoxylin, DAB and a residual channel (rows of ``matrix``)."""

    hematoxylin: tuple[float, float, float]
    dab: tuple[float, float, float]
    residual: tuple[float, float, float]
    source: str = "ruifrok-johnston"

    @classmethod
    def from_vectors(
        cls, hematoxylin: Sequence[float] | np.ndarray, dab: Sequence[float] | np.ndarray, source: str = "custom"
    ) -> StainMatrix:
        """Build a stain matrix from H and DAB OD vectors; the residual is their normalised cross product."""
        h = _unit(hematoxylin)
        d = _unit(dab)
        r = np.cross(h, d)
        if np.linalg.norm(r) < 1e-6:
            raise HistoError(f"hematoxylin {tuple(h)} and DAB {tuple(d)} vectors are parallel")
        r = _unit(r)
        return cls(_vec3(h), _vec3(d), _vec3(r), source)

    @property
    def matrix(self) -> np.ndarray:
        """3×3 float64 array, rows = hematoxylin, DAB, residual OD vectors."""
        return np.array([self.hematoxylin, self.dab, self.residual], dtype=np.float64)

    @property
    def inverse(self) -> np.ndarray:
        """Matrix that maps an OD row vector to (H, DAB, residual) amounts: ``c = od @ inverse``."""
        return np.linalg.inv(self.matrix)


def ruifrok_hdab() -> StainMatrix:
    """The default Ruifrok–Johnston hematoxylin–DAB(–residual) stain matrix."""
    return StainMatrix.from_vectors(RUIFROK_HEMATOXYLIN, RUIFROK_DAB, source="ruifrok-johnston")


@dataclass(frozen=True)
class StainMaps:
    """Per-pixel stain amounts (OD units along each unit stain vector) of one RGB image."""

    hematoxylin: np.ndarray  # (H, W) float32
    dab: np.ndarray  # (H, W) float32
    residual: np.ndarray  # (H, W) float32
    od_max: np.ndarray  # (H, W) float32, largest per-channel OD (for saturation checks)
    od_sum: np.ndarray  # (H, W) float32, summed per-channel OD (for tissue / background)
    stains: StainMatrix
    background_rgb: tuple[float, float, float]


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise HistoError(f"expected an (H, W, 3) RGB image, got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise HistoError(f"image is empty, shape {a.shape}")
    return a[..., :3]


def _check_background(background_rgb: Sequence[float]) -> np.ndarray:
    bg = np.asarray(background_rgb, dtype=np.float64).reshape(-1)
    if bg.size == 1:
        bg = np.repeat(bg, 3)
    if bg.size != 3 or not np.all(np.isfinite(bg)) or np.any(bg <= 0):
        raise HistoError(f"background_rgb must be 3 positive intensities, got {tuple(background_rgb)}")
    return bg


def rgb_to_od(rgb: np.ndarray, background_rgb: Sequence[float] = (255.0, 255.0, 255.0)) -> np.ndarray:
    """Per-channel optical density ``-log10((I+1)/(I0+1))`` as float32 (H, W, 3), clipped at 0."""
    a = _check_rgb(rgb).astype(np.float32)
    bg = _check_background(background_rgb).astype(np.float32)
    od = -np.log10((a + 1.0) / (bg + 1.0))
    # Pixels brighter than the background are background, not negative stain.
    return np.maximum(od, 0.0, out=od)


def od_to_rgb(od: np.ndarray, background_rgb: Sequence[float] = (255.0, 255.0, 255.0)) -> np.ndarray:
    """Inverse of :func:`rgb_to_od`: per-channel OD (H, W, 3) to uint8 RGB (rounded, clipped)."""
    bg = _check_background(background_rgb)
    i = (bg + 1.0) * np.power(10.0, -np.asarray(od, dtype=np.float64)) - 1.0
    return np.clip(np.rint(i), 0, 255).astype(np.uint8)


def compose_rgb(
    hematoxylin: np.ndarray,
    dab: np.ndarray,
    stains: StainMatrix | None = None,
    background_rgb: Sequence[float] = (255.0, 255.0, 255.0),
    residual: np.ndarray | None = None,
) -> np.ndarray:
    """Render uint8 RGB from per-pixel H and DAB amounts by Beer–Lambert (the inverse of :func:`deconvolve`)."""
    st = stains or ruifrok_hdab()
    h = np.asarray(hematoxylin, dtype=np.float64)
    d = np.asarray(dab, dtype=np.float64)
    if h.shape != d.shape or h.ndim != 2:
        raise HistoError(f"hematoxylin {h.shape} and dab {d.shape} must be equal 2-D shapes")
    r = np.zeros_like(h) if residual is None else np.asarray(residual, dtype=np.float64)
    c = np.stack([h, d, r], axis=-1)
    return od_to_rgb(c @ st.matrix, background_rgb)


def estimate_background_rgb(
    rgb: np.ndarray, percentile: float = 99.0, min_intensity: float = 180.0
) -> tuple[float, float, float]:
    """Background (glass) RGB intensity: per-channel median of the brightest pixels, or 255s if none look like glass.

    The brightest ``100 - percentile`` % of pixels by summed intensity are taken as glass. When even those
    are darker than ``min_intensity`` in some channel, the image holds no glass (tissue fills it) and the
    nominal white (255, 255, 255) is returned rather than calling tissue "background".
    """
    a = _check_rgb(rgb).reshape(-1, 3).astype(np.float32)
    s = a.sum(axis=1)
    cut = np.percentile(s, percentile)
    bright = a[s >= cut]
    bg = np.median(bright, axis=0)
    if np.any(bg < min_intensity):
        return (255.0, 255.0, 255.0)
    return tuple(float(x) for x in bg)  # type: ignore[return-value]


def deconvolve(
    rgb: np.ndarray,
    stains: StainMatrix | None = None,
    background_rgb: Sequence[float] | str = (255.0, 255.0, 255.0),
) -> StainMaps:
    """Split an RGB IHC image into per-pixel hematoxylin, DAB and residual amounts (float32 OD units).

    ``stains`` defaults to Ruifrok–Johnston H-DAB; pass :func:`estimate_stain_matrix` output for per-image
    vectors. ``background_rgb`` is I0 per channel, or ``"estimate"`` for :func:`estimate_background_rgb`.
    Amounts are not clipped: small negative values are noise / stain-vector mismatch and are kept so that
    means stay unbiased.
    """
    a = _check_rgb(rgb)
    if isinstance(background_rgb, str):
        if background_rgb != "estimate":
            raise HistoError(f"background_rgb must be 3 intensities or 'estimate', got {background_rgb!r}")
        bg = estimate_background_rgb(a)
    else:
        bg = tuple(float(x) for x in _check_background(background_rgb))  # type: ignore[assignment]
    st = stains or ruifrok_hdab()
    if a.dtype == np.uint8:
        return _deconvolve_lut(a, st, bg)
    od = rgb_to_od(a, bg)
    c = od.reshape(-1, 3) @ st.inverse.astype(np.float32)
    c = c.reshape(od.shape).astype(np.float32, copy=False)
    return StainMaps(
        hematoxylin=np.ascontiguousarray(c[..., 0]),
        dab=np.ascontiguousarray(c[..., 1]),
        residual=np.ascontiguousarray(c[..., 2]),
        od_max=od.max(axis=-1),
        od_sum=od.sum(axis=-1),
        stains=st,
        background_rgb=bg,
    )


def _deconvolve_lut(a: np.ndarray, st: StainMatrix, bg: Sequence[float]) -> StainMaps:
    """:func:`deconvolve` for uint8 input: OD by a 256-entry table per channel, then the 3x3 unmixing per pixel.

    Same maths as the float path (OD of every level computed once, in float32 as there), but a whole-slide
    run deconvolves ~10^9 pixels, and per-pixel log10 and numpy's gathers and 3x3 product dominated the
    time: OpenCV's table look-up and per-pixel matrix transform do the same in a fraction of it.
    """
    levels = np.arange(256, dtype=np.float32)
    bgf = np.asarray(bg, dtype=np.float32)
    od_lut = np.maximum(-np.log10((levels[:, None] + 1.0) / (bgf[None, :] + 1.0)), 0.0).astype(np.float32)  # (256, 3)
    od = cv2.LUT(np.ascontiguousarray(a), od_lut.reshape(256, 1, 3))  # (H, W, 3) float32
    # Rows of m: H, DAB, residual (od row @ inverse) and the OD sum; dst[..., k] = sum_c m[k, c] * od[..., c].
    m = np.vstack([st.inverse.astype(np.float32).T, np.ones((1, 3), np.float32)])
    h, d, r, od_sum = cv2.split(cv2.transform(od, m))
    ch = cv2.split(od)
    od_max = cv2.max(cv2.max(ch[0], ch[1]), ch[2])
    return StainMaps(
        hematoxylin=h,
        dab=d,
        residual=r,
        od_max=od_max,
        od_sum=od_sum,
        stains=st,
        background_rgb=tuple(float(x) for x in bg),  # type: ignore[arg-type]
    )


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    cos = float(np.clip(np.dot(_unit(a), _unit(b)), -1.0, 1.0))
    return float(np.degrees(np.arccos(cos)))


def estimate_stain_matrix(
    rgb: np.ndarray,
    background_rgb: Sequence[float] = (255.0, 255.0, 255.0),
    od_threshold: float = 0.15,
    alpha_percentile: float = 1.0,
    min_pixels: int = 500,
    max_angle_deg: float = 25.0,
    reference: StainMatrix | None = None,
) -> StainMatrix:
    """Per-image H and DAB vectors, Macenko-style: the extreme angles of stained OD in its top-2 SVD plane.

    Macenko et al. (2009) for H&E, applied to H-DAB: stained pixels (all channels OD > ``od_threshold``)
    are projected on the plane of their two main OD directions; the robust extreme angles
    (``alpha_percentile`` and 100 − it) are the two stains. Each is named H or DAB by the nearer
    reference vector. A stain whose estimate lies further than ``max_angle_deg`` from its reference
    (e.g. an image with no DAB, where the "second stain" is noise) keeps the reference vector, and
    ``source`` says which were estimated. Raises :class:`StainEstimationError` with fewer than
    ``min_pixels`` stained pixels.
    """
    ref = reference or ruifrok_hdab()
    od = rgb_to_od(rgb, background_rgb).reshape(-1, 3).astype(np.float64)
    od = od[np.all(od > od_threshold, axis=1)]
    if od.shape[0] < min_pixels:
        raise StainEstimationError(
            f"only {od.shape[0]} stained pixels (OD > {od_threshold} in all channels); need {min_pixels} "
            "to estimate stain vectors"
        )
    # Eigenvectors of the OD covariance (uncentred as in Macenko: directions through the origin).
    _, vecs = np.linalg.eigh(od.T @ od / od.shape[0])
    plane = vecs[:, [2, 1]]  # two largest
    # Orient so OD vectors (all-positive) project with positive first coordinate.
    if plane[:, 0].sum() < 0:
        plane[:, 0] *= -1
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha_percentile, 100.0 - alpha_percentile])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    v1 = np.abs(v1) if np.all(v1 <= 1e-9) else v1  # sign flips of an all-negative vector
    v2 = np.abs(v2) if np.all(v2 <= 1e-9) else v2
    ref_h = np.asarray(ref.hematoxylin)
    ref_d = np.asarray(ref.dab)
    # Assign by total angular distance so the two estimates never both become "H".
    if _angle_deg(v1, ref_h) + _angle_deg(v2, ref_d) <= _angle_deg(v2, ref_h) + _angle_deg(v1, ref_d):
        h_est, d_est = v1, v2
    else:
        h_est, d_est = v2, v1
    used = []
    h = h_est if (np.all(h_est > 0) and _angle_deg(h_est, ref_h) <= max_angle_deg) else ref_h
    d = d_est if (np.all(d_est > 0) and _angle_deg(d_est, ref_d) <= max_angle_deg) else ref_d
    used.append("H estimated" if h is h_est else "H reference")
    used.append("DAB estimated" if d is d_est else "DAB reference")
    return StainMatrix.from_vectors(h, d, source="macenko (" + ", ".join(used) + ")")
