"""The model card: a JSON file beside the weights saying how to build the net and feed it tiles."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from histo import __version__ as _HISTO_VERSION
from histo.errors import ModelError
from histo.models.multitask import resolve_heads

SCHEMA_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def config_digest(text: str) -> str:
    """sha256 hex digest of a resolved config's text (ties a model to the run that made it)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class ModelCard:
    """What a saved model is and how to feed it: architecture, heads, input resolution and normalisation.

    Inputs are RGB tiles of ``tile_px`` read at ``mpp`` µm/px, scaled to [0, 1] then normalised with
    ``mean``/``std``. Mitosis points come from the heatmap at ``threshold`` and ``min_distance_um``.
    """

    name: str
    backbone: str
    heads: dict[str, dict[str, Any]]
    tile_px: int
    mpp: float
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    mitosis_threshold: float = 0.5
    mitosis_min_distance_um: float = 4.0
    metrics: dict[str, float] = field(default_factory=dict)
    config_digest: str | None = None
    weights_sha256: str | None = None
    histo_version: str = _HISTO_VERSION
    created: str = field(default_factory=_now)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _validate(self, "ModelCard")

    @property
    def classes(self) -> list[str]:
        """Pattern class names in logit order (empty without a pattern head)."""
        return list(self.heads.get("pattern", {}).get("classes", []))

    @property
    def mitosis_stride_px(self) -> int | None:
        """Stride of the mitosis heatmap in input pixels, or None without a mitosis head."""
        return self.heads["mitosis"]["stride_px"] if "mitosis" in self.heads else None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def to_json(self) -> str:
        """The card as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> ModelCard:
        """Build and validate a card; missing/unknown field or wrong schema → ModelError naming ``source``."""
        if not isinstance(data, dict):
            raise ModelError(f"model card {source}: expected a JSON object, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ModelError(f"model card {source}: unknown field(s) {unknown}")
        if "schema_version" not in data:
            raise ModelError(f"model card {source}: missing field 'schema_version'")
        if data["schema_version"] != SCHEMA_VERSION:
            raise ModelError(f"model card {source}: field 'schema_version' is {data['schema_version']!r}, "
                             f"this histo ({_HISTO_VERSION}) reads schema version {SCHEMA_VERSION}")
        # Every field is required in a file: a card written by histo has them all, so a gap means damage.
        missing = [n for n in names if n not in data]
        if missing:
            raise ModelError(f"model card {source}: missing field(s) {missing}")
        card = cls.__new__(cls)
        for n in names:
            setattr(card, n, data[n])
        _validate(card, source)
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

    def check_slide_mpp(self, mpp: float, tolerance: float = 0.1, *, allow_finer: bool = True) -> None:
        """Raise ModelError unless a slide at ``mpp`` µm/px can feed this model.

        Reading resamples to the card's mpp, so a finer slide is fine (it is downsampled) unless
        ``allow_finer`` is False; a slide coarser than ``mpp * (1 + tolerance)`` would need upsampling,
        which invents detail the model never saw.
        """
        if isinstance(mpp, bool) or not isinstance(mpp, (int, float)) or not math.isfinite(mpp) or mpp <= 0:
            raise ModelError(f"slide mpp must be a positive number, got {mpp!r}")
        rel = mpp / self.mpp - 1.0
        if rel > tolerance:
            raise ModelError(
                f"slide resolution {mpp:g} µm/px is coarser than model {self.name!r} allows "
                f"({self.mpp:g} µm/px, tolerance {tolerance:.0%}); the model needs a finer scan")
        if not allow_finer and rel < -tolerance:
            raise ModelError(
                f"slide resolution {mpp:g} µm/px differs from model {self.name!r} "
                f"({self.mpp:g} µm/px) by more than {tolerance:.0%}")


def _validate(card: ModelCard, source: str) -> None:
    """Check every field's type and range, normalising lists/tuples; errors name source and field."""

    def fail(name: str, why: str) -> None:
        raise ModelError(f"model card {source}: field {name!r} {why}")

    def number(name: str, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            fail(name, f"must be a finite number, got {v!r}")
        return float(v)

    if card.schema_version != SCHEMA_VERSION:
        fail("schema_version", f"is {card.schema_version!r}, expected {SCHEMA_VERSION}")
    for name in ("name", "backbone", "histo_version", "created"):
        v = getattr(card, name)
        if not isinstance(v, str) or not v:
            fail(name, f"must be a non-empty string, got {v!r}")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", card.name):
        fail("name", f"must be a file-name-safe word (letters, digits, . _ -), got {card.name!r}")
    try:
        datetime.fromisoformat(card.created)
    except ValueError:
        fail("created", f"must be an ISO 8601 timestamp, got {card.created!r}")
    if not isinstance(card.heads, dict):
        fail("heads", f"must be an object of head name → options, got {card.heads!r}")
    card.heads = resolve_heads(card.heads, source=f"model card {source}: field 'heads'")
    if isinstance(card.tile_px, bool) or not isinstance(card.tile_px, int) or card.tile_px <= 0:
        fail("tile_px", f"must be a positive integer, got {card.tile_px!r}")
    card.mpp = number("mpp", card.mpp)
    if not 0.05 <= card.mpp <= 100:
        fail("mpp", f"must be a plausible µm/px in [0.05, 100], got {card.mpp!r}")
    for name in ("mean", "std"):
        v = getattr(card, name)
        if not isinstance(v, (list, tuple)) or len(v) != 3:
            fail(name, f"must be 3 numbers (R, G, B), got {v!r}")
        vals = tuple(number(name, x) for x in v)
        if name == "std" and min(vals) <= 0:
            fail(name, f"must be positive, got {v!r}")
        setattr(card, name, vals)
    card.mitosis_threshold = number("mitosis_threshold", card.mitosis_threshold)
    if not 0 < card.mitosis_threshold < 1:
        fail("mitosis_threshold", f"must be a probability in (0, 1), got {card.mitosis_threshold!r}")
    card.mitosis_min_distance_um = number("mitosis_min_distance_um", card.mitosis_min_distance_um)
    if card.mitosis_min_distance_um < 0:
        fail("mitosis_min_distance_um", f"must be >= 0, got {card.mitosis_min_distance_um!r}")
    if not isinstance(card.metrics, dict) or not all(isinstance(k, str) for k in card.metrics):
        fail("metrics", f"must be an object of name → number, got {card.metrics!r}")
    card.metrics = {k: number(f"metrics.{k}", v) for k, v in card.metrics.items()}
    for name in ("config_digest", "weights_sha256"):
        v = getattr(card, name)
        if v is not None and (not isinstance(v, str) or not _HEX64.match(v)):
            fail(name, f"must be a 64-character lowercase sha256 hex digest or null, got {v!r}")
