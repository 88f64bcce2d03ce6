"""IHC quantification: colour deconvolution, cell detection, DAB scoring (H-score) and marker calls.

Array-level core: everything takes an RGB array (or its :class:`StainMaps`) and an explicit ``mpp``;
slide reading and reports live elsewhere.
"""

from histo.ihc.cells import COMPARTMENTS, NUCLEAR_CHANNELS, CellDetection, CellParams, detect_cells, nuclear_channel, segment_nuclei
from histo.ihc.deconvolution import (
    RUIFROK_DAB,
    RUIFROK_HEMATOXYLIN,
    StainEstimationError,
    StainMaps,
    StainMatrix,
    compose_rgb,
    deconvolve,
    estimate_background_rgb,
    estimate_stain_matrix,
    od_to_rgb,
    rgb_to_od,
    ruifrok_hdab,
)
from histo.ihc.markers import CallRule, MarkerCall, MarkerSpec, call_marker, default_panel_path, load_panel, parse_panel
from histo.ihc.matching import match_cells, nuclei_from_colour_mask
from histo.ihc.qc import IHCQC, QCFlag, QCParams, ihc_qc
from histo.ihc.scoring import DEFAULT_THRESHOLDS_OD, ScoreSummary, cell_classes, classify_intensity, h_score_from_counts, score_cells

__all__ = [
    "COMPARTMENTS", "NUCLEAR_CHANNELS", "CellDetection", "CellParams", "detect_cells", "nuclear_channel",
    "segment_nuclei", "RUIFROK_DAB", "RUIFROK_HEMATOXYLIN", "StainEstimationError", "StainMaps", "StainMatrix",
    "compose_rgb", "deconvolve", "estimate_background_rgb", "estimate_stain_matrix", "od_to_rgb", "rgb_to_od",
    "ruifrok_hdab", "CallRule", "MarkerCall", "MarkerSpec", "call_marker", "default_panel_path", "load_panel",
    "parse_panel", "IHCQC", "QCFlag", "QCParams", "ihc_qc", "DEFAULT_THRESHOLDS_OD", "ScoreSummary",
    "cell_classes", "classify_intensity", "h_score_from_counts", "score_cells", "match_cells", "nuclei_from_colour_mask",
]
