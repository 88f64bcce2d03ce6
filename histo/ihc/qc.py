"""IHC-aware quality checks on a deconvolved image: no DAB at all, saturated stain, no tissue."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from histo.errors import HistoError
from histo.ihc.deconvolution import StainMaps


@dataclass(frozen=True)
class QCParams:
    """Limits of the IHC checks (OD units; fractions of tissue pixels in [0, 1])."""

    tissue_od: float = 0.15  # summed RGB OD above which a pixel is tissue (glass is ~0 with the right I0)
    min_tissue_fraction: float = 0.01  # below this the tile has no tissue to judge
    dab_od: float = 0.15  # a pixel with DAB amount above this carries visible brown
    min_dab_fraction: float = 0.001  # fewer tissue pixels with DAB than this → "no_dab"
    saturation_od: float = 1.5  # largest channel OD beyond this (8-bit intensity <= ~7): detector floor
    max_saturated_fraction: float = 0.05  # more tissue pixels saturated than this → "saturated_stain"


@dataclass(frozen=True)
class QCFlag:
    """One raised check: its name, the measured value, the limit it crossed and a sentence for people."""

    name: str
    value: float
    limit: float
    message: str


@dataclass(frozen=True)
class IHCQC:
    """Measured QC values of one image and the flags they raised (empty list = passed)."""

    tissue_fraction: float
    dab_fraction: float  # of tissue pixels
    dab_p99_od: float  # 99th percentile of DAB amount in tissue
    saturated_fraction: float  # of tissue pixels
    flags: list[QCFlag] = field(default_factory=list)
    params: QCParams = field(default_factory=QCParams)

    @property
    def ok(self) -> bool:
        """True when no flag was raised."""
        return not self.flags

    def to_dict(self) -> dict:
        """JSON-ready dict of values, flags and limits."""
        return asdict(self)


def ihc_qc(maps: StainMaps, tissue_mask: np.ndarray | None = None, params: QCParams | None = None) -> IHCQC:
    """Check an IHC image for missing tissue, missing DAB and saturated stain; values are fractions of tissue pixels.

    ``tissue_mask`` (bool, same shape) overrides the OD-based tissue estimate, e.g. a slide-level mask.
    """
    p = params or QCParams()
    shape = maps.dab.shape
    if tissue_mask is None:
        tissue = maps.od_sum > p.tissue_od
    else:
        tissue = np.asarray(tissue_mask)
        if tissue.shape != shape or tissue.dtype != bool:
            raise HistoError(f"tissue_mask must be a bool array of shape {shape}, got {tissue.dtype} {tissue.shape}")
    n_tissue = int(tissue.sum())
    tissue_fraction = n_tissue / tissue.size
    flags: list[QCFlag] = []
    if tissue_fraction < p.min_tissue_fraction or n_tissue == 0:
        flags.append(QCFlag("no_tissue", tissue_fraction, p.min_tissue_fraction,
                            f"only {100 * tissue_fraction:.2f}% of pixels are tissue (summed OD > {p.tissue_od})"))
    if n_tissue:
        dab_t = maps.dab[tissue]
        dab_fraction = float(np.mean(dab_t > p.dab_od))
        dab_p99 = float(np.percentile(dab_t, 99))
        saturated = float(np.mean(maps.od_max[tissue] > p.saturation_od))
    else:
        # No tissue: judge the whole image, so a blank slide still says "no DAB".
        dab_fraction = float(np.mean(maps.dab > p.dab_od))
        dab_p99 = float(np.percentile(maps.dab, 99))
        saturated = float(np.mean(maps.od_max > p.saturation_od))
    if dab_fraction < p.min_dab_fraction:
        flags.append(QCFlag("no_dab", dab_fraction, p.min_dab_fraction,
                            f"{100 * dab_fraction:.3f}% of tissue pixels have DAB OD > {p.dab_od} "
                            f"(99th percentile {dab_p99:.3f}): no DAB staining at all — check the run's controls"))
    if saturated > p.max_saturated_fraction:
        flags.append(QCFlag("saturated_stain", saturated, p.max_saturated_fraction,
                            f"{100 * saturated:.2f}% of tissue pixels have a channel OD > {p.saturation_od} "
                            "(near black): intensities there are clipped and H-scores understate the stain"))
    return IHCQC(tissue_fraction, dab_fraction, dab_p99, saturated, flags, p)
