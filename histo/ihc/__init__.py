"""IHC quantification: colour deconvolution, cell detection, DAB scoring (H-score) and marker calls.

Array level (everything takes an RGB array or its :class:`StainMaps` and an explicit ``mpp``) and slide
level: :func:`score_slide` scores a whole IHC slide for one marker (tiles read with a margin, cells counted
once, in a tumour mask or the tissue), :func:`write_ihc_outputs` writes ihc.json and friends (docs/formats.md),
:func:`tumour_mask_from_tiles` turns H&E tile predictions into the counting region.
"""

from histo.ihc.calibrate import calibrate_thresholds
from histo.ihc.cells import (
    COMPARTMENTS,
    NUCLEAR_CHANNELS,
    CellDetection,
    CellParams,
    detect_cells,
    nuclear_channel,
    segment_nuclei,
)
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
from histo.ihc.outputs import cells_geojson, write_ihc_outputs
from histo.ihc.qc import IHCQC, QCFlag, QCParams, ihc_qc
from histo.ihc.regions import (
    FrameMismatchError,
    check_frame,
    mask_from_geojson,
    mask_from_polygons,
    read_prediction_tiles,
    tumour_mask_from_tiles,
)
from histo.ihc.result import SlideIHCResult, SlideQCFlag
from histo.ihc.scoring import (
    DEFAULT_THRESHOLDS_OD,
    ScoreSummary,
    cell_classes,
    classify_intensity,
    h_score_from_counts,
    score_cells,
)
from histo.ihc.slide import score_slide, slide_background_rgb

__all__ = [
    "COMPARTMENTS", "NUCLEAR_CHANNELS", "CellDetection", "CellParams", "detect_cells", "nuclear_channel",
    "segment_nuclei", "RUIFROK_DAB", "RUIFROK_HEMATOXYLIN", "StainEstimationError", "StainMaps", "StainMatrix",
    "compose_rgb", "deconvolve", "estimate_background_rgb", "estimate_stain_matrix", "od_to_rgb", "rgb_to_od",
    "ruifrok_hdab", "CallRule", "MarkerCall", "MarkerSpec", "call_marker", "default_panel_path", "load_panel",
    "parse_panel", "IHCQC", "QCFlag", "QCParams", "ihc_qc", "DEFAULT_THRESHOLDS_OD", "ScoreSummary",
    "cell_classes", "classify_intensity", "h_score_from_counts", "score_cells", "match_cells", "nuclei_from_colour_mask",
    "score_slide", "slide_background_rgb", "SlideIHCResult", "SlideQCFlag", "write_ihc_outputs", "cells_geojson",
    "FrameMismatchError", "check_frame", "mask_from_geojson", "mask_from_polygons", "read_prediction_tiles",
    "tumour_mask_from_tiles", "calibrate_thresholds",
]
