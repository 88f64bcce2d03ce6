"""QuPath GeoJSON annotations in, and tile labels from them (pattern, necrosis, mitosis points)."""

from histo.annotations.geojson import AnnotationError, Annotations, parse_geojson, read_geojson
from histo.annotations.labels import (
    PHANTOM_PATTERN_MAP,
    LabelMap,
    TileLabels,
    area_fractions,
    label_tiles,
    points_in_boxes,
)

__all__ = [
    "AnnotationError", "Annotations", "LabelMap", "PHANTOM_PATTERN_MAP", "TileLabels", "area_fractions",
    "label_tiles", "parse_geojson", "points_in_boxes", "read_geojson",
]
