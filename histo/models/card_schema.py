"""The model card's file layout and its checks: what a ``.card.json`` may hold, field by field.

`CardFields` (schema 2), `ScaleFields` (one input scale) and `V1Fields` (the old flat schema 1) are the
keys and types, read by the one config loader (`histo.config.from_dict`, whose ConfigError becomes the
ModelError of model loading); `check_card`/`check_scale` hold the ranges and cross-field rules a type
cannot say and turn each scale into a `ScaleSpec`. `histo.models.card.ModelCard` is the API built on them.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any, NoReturn, TypeVar

from histo.config import from_dict
from histo.errors import ConfigError, ModelError
from histo.inputs import IMAGENET_MEAN, IMAGENET_STD, mpp_is_plausible, mpp_range_text
from histo.models.multitask import resolve_heads

SCHEMA_VERSION = 2
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
T = TypeVar("T")


@dataclass
class ScaleSpec:
    """One input of a model: a backbone reading ``tile_px`` tiles at ``mpp`` µm/px for the heads it feeds."""

    backbone: str
    tile_px: int
    mpp: float
    heads: dict[str, dict[str, Any]]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return {"backbone": self.backbone, "tile_px": self.tile_px, "mpp": self.mpp,
                "heads": copy.deepcopy(self.heads), "mean": list(self.mean), "std": list(self.std)}

    @property
    def tile_um(self) -> float:
        """Tile edge in µm."""
        return self.tile_px * self.mpp


@dataclass(frozen=True)
class ScaleFields:
    """The keys and types of one entry of a card's ``scales`` (ranges and heads: check_scale)."""

    backbone: str
    tile_px: int
    mpp: float
    heads: dict[str, dict[str, Any] | None] | list[str]  # head → options (None: defaults), or head names
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class CardFields:
    """The keys and types of a schema-2 card; all required: a card written by histo has them all, a gap is damage."""

    name: str
    scales: dict[str, ScaleFields]
    mitosis_threshold: float
    mitosis_min_distance_um: float
    threshold_selection: dict[str, Any]
    preprocessing: dict[str, Any]
    metrics: dict[str, float]
    provenance: dict[str, Any]
    domain: dict[str, Any] | None
    config_digest: str | None
    weights_sha256: str | None
    histo_version: str
    created: str
    schema_version: int


@dataclass(frozen=True)
class V1Fields:
    """The keys and types of a schema-1 card: one backbone and a flat input spec (read as the scale ``main``)."""

    name: str
    backbone: str
    heads: dict[str, dict[str, Any] | None] | list[str]
    tile_px: int
    mpp: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    mitosis_threshold: float
    mitosis_min_distance_um: float
    metrics: dict[str, float]
    config_digest: str | None
    weights_sha256: str | None
    histo_version: str
    created: str
    schema_version: int


SCALE_KEYS = tuple(f.name for f in fields(ScaleFields))
DEFAULT_SELECTION = {"method": "config"}
DEFAULT_PREPROCESSING = {"stain_normalisation": {"method": "none"}}


def load_fields(cls: type[T], data: dict[str, Any], source: str) -> T:
    """histo.config.from_dict with its ConfigError (dotted key, what is wrong) as the ModelError of model loading."""
    try:
        return from_dict(cls, data, f"model card {source}")
    except ConfigError as exc:
        raise ModelError(str(exc)) from exc


def upgrade_v1(data: dict[str, Any], source: str) -> dict[str, Any]:
    """A schema-1 card (one backbone, flat input spec), checked as such, as the fields of a one-scale card."""
    v1 = asdict(load_fields(V1Fields, data, source))
    main = {k: v1.pop(k) for k in SCALE_KEYS}
    return {**v1, "scales": {"main": main}, "threshold_selection": dict(DEFAULT_SELECTION),
            "preprocessing": copy.deepcopy(DEFAULT_PREPROCESSING), "provenance": {}, "domain": None,
            "schema_version": SCHEMA_VERSION}


def _fail(source: str, name: str, why: str) -> NoReturn:
    raise ModelError(f"model card {source}: field {name!r} {why}")


def _finite(source: str, name: str, v: float) -> float:
    if not math.isfinite(v):
        _fail(source, name, f"must be a finite number, got {v!r}")
    return v


def check_card(card: CardFields, source: str) -> dict[str, ScaleSpec]:
    """The ranges and cross-field rules the types of CardFields cannot say; returns the checked scales."""
    if card.schema_version != SCHEMA_VERSION:
        _fail(source, "schema_version", f"is {card.schema_version!r}, expected {SCHEMA_VERSION}")
    for name in ("name", "histo_version", "created"):
        if not getattr(card, name):
            _fail(source, name, "must be a non-empty string, got ''")
    if not NAME_RE.fullmatch(card.name):
        _fail(source, "name", f"must be a file-name-safe word (letters, digits, . _ -), got {card.name!r}")
    try:
        datetime.fromisoformat(card.created)
    except ValueError:
        _fail(source, "created", f"must be an ISO 8601 timestamp, got {card.created!r}")
    if not card.scales:
        _fail(source, "scales", "must be a non-empty object of scale name → input spec, got {}")
    scales: dict[str, ScaleSpec] = {}
    seen: dict[str, str] = {}
    for sname, raw in card.scales.items():
        p = f"scales.{sname}"
        if not isinstance(sname, str) or not NAME_RE.fullmatch(sname):
            _fail(source, "scales", f"has a scale name {sname!r} that is not a word (letters, digits, . _ -)")
        scales[sname] = check_scale(raw, p, source)
        for h in scales[sname].heads:
            if h in seen:
                _fail(source, f"{p}.heads", f"repeats head {h!r} (already fed by scale {seen[h]!r}): one scale per head")
            seen[h] = sname
    if not 0 < card.mitosis_threshold < 1:
        _fail(source, "mitosis_threshold", f"must be a probability in (0, 1), got {card.mitosis_threshold!r}")
    if not _finite(source, "mitosis_min_distance_um", card.mitosis_min_distance_um) >= 0:
        _fail(source, "mitosis_min_distance_um", f"must be >= 0, got {card.mitosis_min_distance_um!r}")
    for k, v in card.metrics.items():
        _finite(source, f"metrics.{k}", v)
    for head in card.provenance:
        if head not in seen:
            _fail(source, "provenance", f"describes head {head!r}, which the model does not have")
    stain = card.preprocessing.get("stain_normalisation", {})
    if not isinstance(stain, dict):
        _fail(source, "preprocessing.stain_normalisation", f"must be an object with a method, got {stain!r}")
    method = stain.get("method", "none")
    if method not in ("none", "macenko", "reinhard"):
        _fail(source, "preprocessing.stain_normalisation.method", f"must be none, macenko or reinhard, got {method!r}")
    for name in ("config_digest", "weights_sha256"):
        v = getattr(card, name)
        if v is not None and not _HEX64.match(v):
            _fail(source, name, f"must be a 64-character lowercase sha256 hex digest or null, got {v!r}")
    return scales


def check_scale(raw: ScaleFields, p: str, source: str) -> ScaleSpec:
    """One scale's ranges (its keys and types are checked by the loader) as a ScaleSpec with resolved heads."""
    if not raw.backbone:
        _fail(source, f"{p}.backbone", "must be a non-empty string, got ''")
    heads = resolve_heads(raw.heads, source=f"model card {source}: field '{p}.heads'")
    if raw.tile_px <= 0:
        _fail(source, f"{p}.tile_px", f"must be a positive integer, got {raw.tile_px!r}")
    if not mpp_is_plausible(raw.mpp):
        _fail(source, f"{p}.mpp", f"must be a plausible µm/px in {mpp_range_text()}, got {raw.mpp!r}")
    for name in ("mean", "std"):
        for v in getattr(raw, name):
            _finite(source, f"{p}.{name}", v)
    if min(raw.std) <= 0:
        _fail(source, f"{p}.std", f"must be positive, got {list(raw.std)!r}")
    if "mitosis" in heads and raw.tile_px % heads["mitosis"]["stride_px"]:
        _fail(source, f"{p}.tile_px",
              f"({raw.tile_px}) must be a multiple of the mitosis stride_px {heads['mitosis']['stride_px']}")
    return ScaleSpec(backbone=raw.backbone, tile_px=raw.tile_px, mpp=raw.mpp, heads=heads, mean=raw.mean, std=raw.std)
