"""QuPath GeoJSON in: region polygons and point annotations per class, in level-0 pixels."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import shape

from histo.errors import HistoError

_REGION_TYPES = {"Polygon", "MultiPolygon"}
_POINT_TYPES = {"Point", "MultiPoint"}


class AnnotationError(HistoError):
    """An annotation file is missing, not GeoJSON, or holds a feature histo cannot use."""


@dataclass
class Annotations:
    """Annotations of one slide: unioned region geometry and point coordinates (level-0 px) per class name."""

    regions: dict[str, shapely.Geometry] = field(default_factory=dict)
    points: dict[str, np.ndarray] = field(default_factory=dict)  # class -> (N, 2) float64 x, y
    source: str = "<memory>"
    features: list[tuple[int, str, shapely.Geometry]] = field(default_factory=list)  # (feature index, class, geometry) as read

    @property
    def classes(self) -> list[str]:
        """Every class name present, regions then points."""
        return sorted(set(self.regions) | set(self.points))

    def region(self, *names: str) -> shapely.Geometry:
        """Union of the regions of the named classes (empty polygon when none are present)."""
        parts = [self.regions[n] for n in names if n in self.regions]
        if not parts:
            return shapely.Polygon()
        return parts[0] if len(parts) == 1 else shapely.union_all(parts)

    def point_array(self, *names: str) -> np.ndarray:
        """Stacked (N, 2) points of the named classes (empty (0, 2) array when none)."""
        parts = [self.points[n] for n in names if n in self.points]
        return np.concatenate(parts, 0) if parts else np.zeros((0, 2), np.float64)


def _class_name(props: Any, where: str) -> str | None:
    """QuPath keeps the class at properties.classification.name; older exports use a plain string or 'name'."""
    if not isinstance(props, dict):
        return None
    cls = props.get("classification")
    if isinstance(cls, dict) and isinstance(cls.get("name"), str):
        return cls["name"]
    if isinstance(cls, str):
        return cls
    if cls is not None and not isinstance(cls, dict):
        raise AnnotationError(f"{where}: properties.classification must be a mapping or a string, got {cls!r}")
    name = props.get("name")
    return name if isinstance(name, str) else None


def parse_geojson(data: Any, source: str = "<geojson>") -> Annotations:
    """Annotations from parsed GeoJSON: a FeatureCollection, a single Feature, or a bare list of features."""
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list):
            raise AnnotationError(f"{source}: FeatureCollection has no 'features' list")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):
        features = data
    else:
        raise AnnotationError(f"{source}: not QuPath GeoJSON (expected a FeatureCollection or a list of features)")
    region_parts: dict[str, list[shapely.Geometry]] = {}
    point_parts: dict[str, list[np.ndarray]] = {}
    read: list[tuple[int, str, shapely.Geometry]] = []
    for i, feat in enumerate(features):
        where = f"{source}: feature {i}"
        if not isinstance(feat, dict) or not isinstance(feat.get("geometry"), dict):
            raise AnnotationError(f"{where}: not a Feature with a 'geometry' mapping")
        name = _class_name(feat.get("properties"), where)
        if name is None:
            continue  # unclassified objects carry no label
        geom_json = feat["geometry"]
        gtype = geom_json.get("type")
        if gtype not in _REGION_TYPES | _POINT_TYPES:
            if gtype in ("LineString", "MultiLineString", "GeometryCollection"):
                continue  # lines (rulers, arrows) are not labels
            raise AnnotationError(f"{where}: unknown geometry type {gtype!r}")
        try:
            geom = shape(geom_json)
        except Exception as exc:  # shapely raises several types for malformed coordinates
            raise AnnotationError(f"{where} ({name!r}): broken {gtype} coordinates ({exc})") from exc
        if gtype in _POINT_TYPES:
            xy = shapely.get_coordinates(geom)
            if not np.isfinite(xy).all():
                raise AnnotationError(f"{where} ({name!r}): point coordinates are not finite")
            point_parts.setdefault(name, []).append(xy.astype(np.float64))
            read.append((i, name, geom))
            continue
        if not geom.is_valid:
            # QuPath brushes can leave self-touching rings; make_valid keeps the painted area.
            geom = shapely.make_valid(geom)
            geom = shapely.union_all([g for g in shapely.get_parts(geom) if g.geom_type in _REGION_TYPES])
        if not geom.is_empty:
            region_parts.setdefault(name, []).append(geom)
            read.append((i, name, geom))
    regions = {k: (v[0] if len(v) == 1 else shapely.union_all(v)) for k, v in region_parts.items()}
    points = {k: np.concatenate(v, 0) for k, v in point_parts.items()}
    return Annotations(regions=regions, points=points, source=source, features=read)


def read_geojson(path: str | Path) -> Annotations:
    """Read a QuPath GeoJSON export (level-0 px) into region geometries and point arrays per class."""
    p = Path(path)
    if not p.is_file():
        raise AnnotationError(f"{p}: annotation file not found")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{p}: not valid JSON ({exc})") from exc
    return parse_geojson(data, str(p))
