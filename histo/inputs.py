"""What a model reads, declared once: the input spec of one scale and the defaults every module shares.

The model card (histo.models.card) records one `InputSpec`-worth of fields per scale and is the record
that travels with the weights; training config, data code and prediction read tile size, µm/px,
normalisation and class order from it (or from the training config that writes it), never from a
second copy. This module imports nothing of histo but errors, so the slide, data, models, train,
aggregate and ihc modules can all use it without breaking the module map (docs/architecture.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from histo.errors import ConfigError

#: Per-channel RGB mean and std of ImageNet: the normalisation of every pretrained torchvision backbone.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Pattern classes in logit order when a config names none; the first is the non-spindle class.
DEFAULT_PATTERN_CLASSES: tuple[str, ...] = ("none", "fascicular", "haphazard")

#: Plausible µm per pixel of anything histo reads: a slide's level 0, a model input, an analysis image.
#: 0.02 is finer than any brightfield scanner (0.1-0.25 at 40x-80x); 30 is coarser than any scan that
#: still shows tissue structure. A value outside is a units mistake (mm, inches, a magnification).
MPP_PLAUSIBLE_UM: tuple[float, float] = (0.02, 30.0)


def mpp_is_plausible(mpp: Any) -> bool:
    """True for a finite number of µm/px inside MPP_PLAUSIBLE_UM (bools and strings are not numbers)."""
    if isinstance(mpp, bool) or not isinstance(mpp, (int, float)) or not math.isfinite(mpp):
        return False
    lo, hi = MPP_PLAUSIBLE_UM
    return lo <= float(mpp) <= hi


def mpp_range_text() -> str:
    """The plausible range as text for messages, e.g. '0.02-30'."""
    lo, hi = MPP_PLAUSIBLE_UM
    return f"{lo:g}-{hi:g}"


@dataclass(frozen=True)
class InputSpec:
    """What the model eats: tile edge and µm/px, RGB normalisation, heatmap stride, pattern class order."""

    tile_px: int
    mpp: float
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    mitosis_stride_px: int | None = 4
    pattern_classes: list[str] = field(default_factory=lambda: list(DEFAULT_PATTERN_CLASSES))

    def __post_init__(self) -> None:
        if self.tile_px < 8:
            raise ConfigError(f"InputSpec: tile_px must be at least 8, got {self.tile_px}")
        if not mpp_is_plausible(self.mpp):
            raise ConfigError(f"InputSpec: mpp must be a plausible µm/px in {mpp_range_text()}, got {self.mpp}")
        s = self.mitosis_stride_px
        if s is not None and (s < 1 or self.tile_px % s):
            raise ConfigError(f"InputSpec: mitosis_stride_px {s} must divide tile_px {self.tile_px}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("InputSpec: mean and std need 3 values each, std positive")

    @classmethod
    def from_card(cls, card: Any, scale: str | None = None) -> InputSpec:
        """The input spec of one scale of a histo.models.ModelCard (the card's table scale when `scale` is None)."""
        if scale is None:
            return cls(tile_px=card.tile_px, mpp=card.mpp, mean=_vec3(card.mean), std=_vec3(card.std),
                       mitosis_stride_px=card.mitosis_stride_px, pattern_classes=list(card.classes))
        sc = card.scales[scale]
        stride = sc.heads["mitosis"]["stride_px"] if "mitosis" in sc.heads else None
        return cls(tile_px=sc.tile_px, mpp=sc.mpp, mean=_vec3(sc.mean), std=_vec3(sc.std), mitosis_stride_px=stride,
                   pattern_classes=list(sc.heads.get("pattern", {}).get("classes", [])))


def _vec3(v: Any) -> tuple[float, float, float]:
    a, b, c = (float(x) for x in v)
    return a, b, c
