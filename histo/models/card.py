"""The model card: a JSON file beside the weights saying how to build the net and feed it tiles.

A model has one or more input *scales*. Each scale is one backbone reading tiles of ``tile_px`` at
``mpp`` µm/px (normalised with ``mean``/``std``) and feeding some of the heads: for example a mitosis
head at 0.25 µm/px and the pattern and necrosis heads on more context at 1 µm/px. Every head belongs to
exactly one scale. The card is the one record of that input spec (timm's pretrained config plays the
same role): data and prediction code read it from here.

Schema version 2 holds ``scales``; version 1 cards (one backbone, flat ``tile_px``/``mpp``) still load,
as a single scale named ``main``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from histo import __version__ as _HISTO_VERSION
from histo.errors import ModelError
from histo.inputs import IMAGENET_MEAN, IMAGENET_STD, MPP_PLAUSIBLE_UM
from histo.models.card_schema import (
    DEFAULT_PREPROCESSING,
    DEFAULT_SELECTION,
    SCHEMA_VERSION,
    CardFields,
    ScaleSpec,
    check_card,
    load_fields,
    upgrade_v1,
)
from histo.models.multitask import HEAD_NAMES

MPP_RANGE = MPP_PLAUSIBLE_UM  # a plausible µm/px of a model input (the one range of histo.inputs)
# Card fields that change how a model is applied; they are bound to the weights at export (see binding()).
BOUND_FIELDS = ("scales", "mitosis_threshold", "mitosis_min_distance_um", "preprocessing", "domain")


def config_digest(text: str) -> str:
    """sha256 hex digest of a resolved config's text (ties a model to the run that made it)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ModelCard:
    """What a saved model is and how to feed it: its scales (backbone, heads, input resolution, normalisation),
    the mitosis operating point, training provenance per head and validation metrics.

    Build it from ``scales`` (name → ScaleSpec or dict), or, for a one-scale model, from the flat
    ``backbone``, ``heads``, ``tile_px``, ``mpp``, ``mean``, ``std`` (one scale named ``main``).
    Keywords and card files take the one path: histo.config.from_dict checks keys and types against
    CardFields, then check_card the ranges.
    """

    FIELDS = tuple(f.name for f in fields(CardFields))

    name: str
    scales: dict[str, ScaleSpec]
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

    def __init__(self, name: str, scales: dict[str, Any] | None = None, *, backbone: str | None = None,
                 heads: Any = None, tile_px: int | None = None, mpp: float | None = None,
                 mean: Any = IMAGENET_MEAN, std: Any = IMAGENET_STD, mitosis_threshold: float = 0.5,
                 mitosis_min_distance_um: float = 4.0, threshold_selection: dict[str, Any] | None = None,
                 preprocessing: dict[str, Any] | None = None, metrics: dict[str, float] | None = None,
                 provenance: dict[str, Any] | None = None, domain: dict[str, Any] | None = None,
                 config_digest: str | None = None, weights_sha256: str | None = None,
                 histo_version: str = _HISTO_VERSION, created: str | None = None,
                 schema_version: int = SCHEMA_VERSION, source: str = "ModelCard"):
        flat = (backbone, heads, tile_px, mpp)
        if scales is None:
            if any(v is None for v in flat):
                raise ModelError(f"model card {source}: give 'scales', or backbone, heads, tile_px and mpp")
            scales = {"main": {"backbone": backbone, "heads": heads, "tile_px": tile_px, "mpp": mpp,
                               "mean": mean, "std": std}}
        elif any(v is not None for v in flat):
            raise ModelError(f"model card {source}: give either 'scales' or the flat backbone/heads/tile_px/mpp")
        self._fill({
            "name": name, "scales": scales, "mitosis_threshold": mitosis_threshold,
            "mitosis_min_distance_um": mitosis_min_distance_um,
            "threshold_selection": DEFAULT_SELECTION if threshold_selection is None else threshold_selection,
            "preprocessing": copy.deepcopy(DEFAULT_PREPROCESSING) if preprocessing is None else preprocessing,
            "metrics": {} if metrics is None else metrics, "provenance": {} if provenance is None else provenance,
            "domain": domain, "config_digest": config_digest, "weights_sha256": weights_sha256,
            "histo_version": histo_version, "created": created or _now(), "schema_version": schema_version,
        }, source)

    def _fill(self, data: dict[str, Any], source: str) -> None:
        """Set every field from a schema-2 mapping, checked by the one loader then by check_card."""
        if isinstance(data.get("scales"), dict):  # ScaleSpec objects (Python callers) as their plain fields
            data = {**data, "scales": {k: v.to_dict() if isinstance(v, ScaleSpec) else v
                                       for k, v in data["scales"].items()}}
        card = load_fields(CardFields, data, source)
        self.scales = check_card(card, source)
        for f in fields(CardFields):
            if f.name != "scales":
                setattr(self, f.name, getattr(card, f.name))  # the loader's own copy of each mapping

    # -- the input spec -----------------------------------------------------------------------------------
    @property
    def heads(self) -> dict[str, dict[str, Any]]:
        """Every head's options, in canonical order, whichever scale feeds it."""
        merged = {h: o for s in self.scales.values() for h, o in s.heads.items()}
        return {h: merged[h] for h in HEAD_NAMES if h in merged}

    def scale_of(self, head: str) -> str:
        """Name of the scale that feeds ``head`` (ModelError when the model has no such head)."""
        for name, s in self.scales.items():
            if head in s.heads:
                return name
        raise ModelError(f"model {self.name!r} has no {head!r} head (heads: {', '.join(self.heads)})")

    @property
    def table_scale(self) -> str:
        """The scale whose tiles make the tile table: that of the area heads (pattern, necrosis), else the first."""
        for head in ("pattern", "necrosis"):
            if head in self.heads:
                return self.scale_of(head)
        return next(iter(self.scales))

    @property
    def multiscale(self) -> bool:
        """True when heads read at more than one scale."""
        return len(self.scales) > 1

    def _table(self) -> ScaleSpec:
        return self.scales[self.table_scale]

    # The tile table's scale, for code that reads one grid (tiling, reports). Per-head specs: self.scales.
    @property
    def backbone(self) -> str:
        """Backbone of the table scale."""
        return self._table().backbone

    @property
    def tile_px(self) -> int:
        """Tile edge (px) of the table scale."""
        return self._table().tile_px

    @property
    def mpp(self) -> float:
        """µm/px of the table scale."""
        return self._table().mpp

    @property
    def mean(self) -> tuple[float, float, float]:
        """RGB mean of the table scale."""
        return self._table().mean

    @property
    def std(self) -> tuple[float, float, float]:
        """RGB std of the table scale."""
        return self._table().std

    @property
    def finest_mpp(self) -> float:
        """The finest µm/px any scale reads (a slide must be at least this fine)."""
        return min(s.mpp for s in self.scales.values())

    @property
    def classes(self) -> list[str]:
        """Pattern class names in logit order (empty without a pattern head)."""
        return list(self.heads.get("pattern", {}).get("classes", []))

    @property
    def mitosis_stride_px(self) -> int | None:
        """Stride of the mitosis heatmap in input pixels, or None without a mitosis head."""
        return self.heads["mitosis"]["stride_px"] if "mitosis" in self.heads else None

    @property
    def synthetic_only(self) -> bool:
        """True when no head of this model learned from real tissue (or the card does not say it did)."""
        return not any(p.get("real") for p in self.provenance.values() if isinstance(p, dict))

    # -- binding to the weights ---------------------------------------------------------------------------
    def binding(self) -> dict[str, Any]:
        """The fields that change how the model is applied (BOUND_FIELDS), as plain JSON values."""
        d = self.to_dict()
        return {k: d[k] for k in BOUND_FIELDS}

    def check_binding(self, bound: dict[str, Any], weights: str) -> None:
        """ModelError naming the first field where this card differs from the one the weights were exported with."""
        mine = self.binding()
        # A bound field added in a later histo version is absent from older exports: null there means unchanged.
        mine = {k: v for k, v in mine.items() if k in bound or v is not None}
        diff = _first_difference(mine, bound)
        if diff is not None:
            key, mine, theirs = diff
            raise ModelError(f"model card field {key!r} is {json.dumps(mine)} but the weights {weights} were "
                             f"exported with {json.dumps(theirs)}: the card was edited after export. Restore it, "
                             "or retrain/re-export; a changed card would silently change every result")

    # -- (de)serialisation --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return {
            "name": self.name,
            "scales": {k: s.to_dict() for k, s in self.scales.items()},
            "mitosis_threshold": self.mitosis_threshold,
            "mitosis_min_distance_um": self.mitosis_min_distance_um,
            "threshold_selection": copy.deepcopy(self.threshold_selection),
            "preprocessing": copy.deepcopy(self.preprocessing),
            "metrics": dict(self.metrics),
            "provenance": copy.deepcopy(self.provenance),
            "domain": copy.deepcopy(self.domain),
            "config_digest": self.config_digest,
            "weights_sha256": self.weights_sha256,
            "histo_version": self.histo_version,
            "created": self.created,
            "schema_version": self.schema_version,
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelCard) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        scales = ", ".join(f"{k}: {s.backbone} {s.tile_px}px@{s.mpp:g} {list(s.heads)}" for k, s in self.scales.items())
        return f"ModelCard({self.name!r}, {scales})"

    def replace(self, **changes: Any) -> ModelCard:
        """A copy with some fields changed (validated again)."""
        d = self.to_dict()
        d.update(changes)
        return ModelCard.from_dict(d)

    def to_json(self) -> str:
        """The card as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> ModelCard:
        """Build and validate a card; missing/unknown field or wrong schema → ModelError naming ``source``."""
        if not isinstance(data, dict):
            raise ModelError(f"model card {source}: expected a JSON object, got {type(data).__name__}")
        if "schema_version" not in data:
            raise ModelError(f"model card {source}: missing key 'schema_version'")
        version = data["schema_version"]
        if type(version) is int and version == 1:
            data = upgrade_v1(data, source)
        elif type(version) is not int or version != SCHEMA_VERSION:
            raise ModelError(f"model card {source}: field 'schema_version' is {version!r}, this histo "
                             f"({_HISTO_VERSION}) reads schema versions 1 and {SCHEMA_VERSION}")
        card = cls.__new__(cls)
        card._fill(data, source)
        return card

    @classmethod
    def from_json(cls, text: str, source: str = "<string>") -> ModelCard:
        """Parse and validate card JSON text."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelError(f"model card {source} is not valid JSON: {exc}") from exc
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        """Read and validate a ``.card.json`` file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ModelError(f"cannot read model card {path}: {exc}") from exc
        return cls.from_json(text, str(path))

    def runnable_scales(self, mpp: float, tolerance: float = 0.1) -> tuple[list[str], dict[str, str]]:
        """(scales a slide at ``mpp`` µm/px can feed, {skipped scale: why}); a scale finer than the slide is skipped.

        Upsampling a coarse scan invents detail the model never saw, so a 20x (0.5 µm/px) slide does not feed a
        0.25 µm/px mitosis scale: its heads are reported as not run, never as zero.
        """
        ok: list[str] = []
        skipped: dict[str, str] = {}
        for name, s in self.scales.items():
            if mpp / s.mpp - 1.0 > tolerance:
                skipped[name] = (f"slide at {mpp:g} µm/px is coarser than the {s.mpp:g} µm/px its "
                                 f"{'/'.join(s.heads)} head(s) read (tolerance {tolerance:.0%}); scan at higher "
                                 "magnification to measure them")
            else:
                ok.append(name)
        return ok, skipped

    def check_slide_mpp(self, mpp: float, tolerance: float = 0.1, *, allow_finer: bool = True) -> None:
        """Raise ModelError unless a slide at ``mpp`` µm/px can feed every scale of this model.

        Reading resamples to each scale's mpp, so a finer slide is fine (it is downsampled) unless
        ``allow_finer`` is False; a slide coarser than the finest scale by more than ``tolerance`` would need
        upsampling, which invents detail the model never saw.
        """
        if isinstance(mpp, bool) or not isinstance(mpp, (int, float)) or not math.isfinite(mpp) or mpp <= 0:
            raise ModelError(f"slide mpp must be a positive number, got {mpp!r}")
        for s in self.scales.values():
            rel = mpp / s.mpp - 1.0
            where = f"{s.mpp:g} µm/px" + (f" for its {'/'.join(s.heads)} head(s)" if self.multiscale else "")
            if rel > tolerance:
                raise ModelError(
                    f"slide resolution {mpp:g} µm/px is coarser than model {self.name!r} allows "
                    f"({where}, tolerance {tolerance:.0%}); the model needs a finer scan")
            if not allow_finer and rel < -tolerance:
                raise ModelError(
                    f"slide resolution {mpp:g} µm/px differs from model {self.name!r} "
                    f"({where}) by more than {tolerance:.0%}")


def _first_difference(a: Any, b: Any, key: str = "") -> tuple[str, Any, Any] | None:
    """(dotted key, a value, b value) of the first place two JSON values differ, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            sub = f"{key}.{k}" if key else str(k)
            if k not in a or k not in b:
                return sub, a.get(k), b.get(k)
            d = _first_difference(a[k], b[k], sub)
            if d is not None:
                return d
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            d = _first_difference(x, y, f"{key}[{i}]")
            if d is not None:
                return d
        return None
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return None if float(a) == float(b) else (key, a, b)
    return None if a == b else (key, a, b)


__all__ = ["BOUND_FIELDS", "IMAGENET_MEAN", "IMAGENET_STD", "MPP_RANGE", "ModelCard", "SCHEMA_VERSION",
           "ScaleSpec", "config_digest"]
