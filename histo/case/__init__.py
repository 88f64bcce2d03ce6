"""One case end to end: predict the H&E slide, grade it, score its IHC slides in the tumour, write the case report.

:func:`run_case` runs the whole case; its steps are plain functions with typed inputs and results:
:func:`predict_he` → :func:`report_prediction` → :func:`score_case_ihc` (one slide:
:func:`score_ihc_slide`) → :func:`write_case`. ``histo case``, ``histo report`` and ``histo ihc`` call these.
"""

from histo.case.casefile import Case, CaseFile, load_case
from histo.case.ihc import (
    IHCOptions,
    IHCSlideResult,
    IHCStatus,
    ihc_run_settings,
    necrosis_rules,
    resolve_tumour_tiles,
    score_ihc_slide,
    tumour_mask_for,
)
from histo.case.pipeline import (
    CASE_RUN_FILE,
    CaseOptions,
    CaseResult,
    predict_he,
    run_case,
    score_case_ihc,
    write_case,
)
from histo.case.report import SlideReport, load_grading, report_prediction

__all__ = [
    "CASE_RUN_FILE", "Case", "CaseFile", "CaseOptions", "CaseResult", "IHCOptions", "IHCSlideResult", "IHCStatus",
    "SlideReport", "ihc_run_settings", "load_case", "load_grading", "necrosis_rules", "predict_he",
    "report_prediction", "resolve_tumour_tiles", "run_case", "score_case_ihc", "score_ihc_slide",
    "tumour_mask_for", "write_case",
]
