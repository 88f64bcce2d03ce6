"""Tile predictions → slide measurements and grading rules (pure numpy/pandas; no torch, no slides).

Input contract
--------------
Tile table (pandas DataFrame), one row per tile; other columns are ignored:

- ``x``, ``y``, ``w``, ``h``: the tile box in level-0 pixels (top-left and size; tiles may overlap).
- ``tissue_fraction``: share of the tile box that is tissue, 0..1.
- ``p_tumour`` (optional): probability the tile is tumour, 0..1. When absent, a tile is tumour when
  its most probable pattern is not the non-spindle class (``tiles.non_spindle_class``, default none).
- ``p_necrosis``: probability the tile is necrotic, 0..1.
- ``p_pattern_<class>`` for every class in ``tiles.pattern_classes`` (default none, fascicular,
  haphazard); the row sums to 1 (±0.01). A ``p_pattern_*`` column of an unconfigured class is an error.

Mitosis table (DataFrame, or None for no detections): ``x_um``, ``y_um`` (µm from the slide's
level-0 origin) and ``score`` (0..1 detector confidence). The slide's level-0 ``mpp`` (µm/px) is
passed explicitly. A broken contract raises :class:`TableError` (a ``HistoError`` and ``ValueError``)
naming the missing columns; a bad mpp raises ``MppError``; a bad config raises ``ConfigError``.

Definitions
-----------
- Areas: tiles are rasterised and every raster cell is owned by the nearest-centred covering tile,
  so overlapping tiles are never double counted (see :mod:`histo.aggregate.coverage`). A tile's
  tissue area is its owned area × ``tissue_fraction``; all areas below are sums of tissue areas.
- Necrosis is measured as confluent regions (:mod:`histo.aggregate.necrosis`): tiles with
  ``p_necrosis >= tiles.necrosis_min_p`` seed regions that grow through neighbouring tiles with
  ``p_necrosis >= tiles.necrosis_grow_p``; regions under ``tiles.necrosis_min_region_mm2`` (and under
  ``tiles.necrosis_min_region_pct_of_tissue`` % of the tissue) are dropped. A tile is tumour when ``p_tumour >=
  tiles.tumour_min_p``. Necrotic tiles count as tumour: ``tumour_area_mm2`` = viable tumour +
  necrosis, and necrosis % = necrosis / tumour area, as pathologists quote it. All necrosis is taken
  to be tumour necrosis (tile scores cannot tell ulcer or infarct from tumour necrosis).
- Viable tumour = tumour and not necrotic. Spindle fraction and pattern shares are area-weighted
  over viable tumour using each tile's most probable pattern. Mitoses (``score >= mitoses.min_score``)
  are counted only where they fall in a viable tumour tile's owned area: karyorrhectic debris in
  necrosis mimics mitoses, and FNCLCC counts avoid necrotic areas.
- Per 10 HPF = count / the area it was counted in × 10 × HPF area; every figure carries its count,
  ``counted_area_mm2`` and ``hpf_area_mm2``. The hotspot is the placement of a window of
  ``hotspot.n_hpf`` × HPF area (square or circle) whose centre lies over viable tumour (the closed
  union of viable tiles' raster cells) holding the most counted mitoses; the search is exact (see
  :mod:`histo.aggregate.hotspot`). Its count (``window_count``), centre and box (µm, clipped to the
  slide) are reported. A hotspot rate is never below the whole-tumour rate: when the whole viable
  tumour is smaller than the window (``window_exceeds_tumour``), or no window is denser than it, the
  hotspot is the whole viable tumour (``counted_in`` is ``whole_viable_tumour``: count and area are
  the tumour's), so a small high-grade tumour is not under-called for lack of fields. The HPF area
  (default 0.237 mm², field number 22 at 40x; ``fnclcc`` preset 0.1734 mm²; or custom) is always in
  the output.
- No tumour is a result: areas are 0, ratios and scores None, and the grading status is
  ``not_assessable`` (``partially_assessable`` when only one score can be computed, e.g. a fully
  necrotic tumour has a necrosis score but no mitotic score).
"""

from histo.aggregate.config import HPF_PRESETS_MM2, GradingConfig, load_grading_config
from histo.aggregate.measure import (
    AreaMethod,
    HotspotMeasurement,
    MitosisMeasurements,
    PatternMeasurements,
    SlideMeasurements,
    measure_slide,
    necrotic_mask,
)
from histo.aggregate.rules import (
    SCHEMA_VERSION,
    Criterion,
    Evidence,
    Grading,
    HighGradeFlag,
    ScoreResult,
    SlideAssessment,
    assess_slide,
    grade,
)
from histo.aggregate.tables import TableError, validate_mitosis_table, validate_tile_table

__all__ = [
    "HPF_PRESETS_MM2",
    "SCHEMA_VERSION",
    "AreaMethod",
    "Criterion",
    "Evidence",
    "Grading",
    "GradingConfig",
    "HighGradeFlag",
    "HotspotMeasurement",
    "MitosisMeasurements",
    "PatternMeasurements",
    "ScoreResult",
    "SlideAssessment",
    "SlideMeasurements",
    "TableError",
    "assess_slide",
    "grade",
    "load_grading_config",
    "measure_slide",
    "necrotic_mask",
    "validate_mitosis_table",
    "validate_tile_table",
]
