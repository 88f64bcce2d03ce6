"""Brightfield or fluorescence: H&E and IHC analysis need transmitted light on bright glass.

A fluorescence scan is dark where there is no tissue; every brightfield rule (optical density above
glass, colour deconvolution) would read that darkness as dense stain and call the whole slide tissue.
The file's metadata decides when it is explicit (OME channels with excitation wavelengths, non-RGB
channel layouts read by tifffile); otherwise the thumbnail does: a fluorescence image
is mostly near-black with almost no bright glass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from histo.errors import HistoError

# Thumbnail rule: most pixels darker than this (brightest channel) ...
_DARK_MAX = 60
_DARK_MIN_FRACTION = 0.5
# ... and almost none as bright as glass.
_BRIGHT_MIN = 180
_BRIGHT_MAX_FRACTION = 0.1


class NotBrightfieldError(HistoError):
    """A fluorescence (or otherwise dark-field) image was given to an analysis that needs brightfield H&E/IHC."""


def pixels_modality(rgb: np.ndarray) -> tuple[str, str]:
    """('fluorescence' | 'brightfield', why) from an RGB overview's brightness distribution."""
    mx = np.asarray(rgb)[..., :3].max(axis=-1)
    if mx.size == 0:
        return "brightfield", "empty image"
    dark = float((mx < _DARK_MAX).mean())
    bright = float((mx >= _BRIGHT_MIN).mean())
    if dark >= _DARK_MIN_FRACTION and bright <= _BRIGHT_MAX_FRACTION:
        return "fluorescence", (f"{dark:.0%} of the thumbnail is near-black and {bright:.0%} bright: "
                                "a dark background, as in fluorescence")
    return "brightfield", f"{bright:.0%} of the thumbnail is bright, {dark:.0%} near-black"


def _metadata_modality(backend: Any) -> tuple[str, str] | None:
    hint = getattr(backend, "modality_hint", None)
    if hint == "fluorescence":
        return "fluorescence", "the file's channels are fluorescence channels, not interleaved RGB"
    return None  # an RGB layout alone does not prove brightfield: the pixels decide


def slide_modality(backend: Any, thumbnail: Callable[[], np.ndarray]) -> tuple[str, str]:
    """(modality, reason) of an opened slide: explicit metadata first, else the thumbnail's colours."""
    meta = _metadata_modality(backend)
    if meta is not None:
        return meta
    try:
        return pixels_modality(thumbnail())
    except HistoError as exc:
        return "brightfield", f"unknown: the thumbnail could not be read ({exc})"


def require_brightfield(slide: Any, rgb: np.ndarray | None = None, what: str = "H&E and IHC analysis") -> None:
    """Raise NotBrightfieldError naming the slide when it is fluorescence (by its metadata, or by `rgb`)."""
    backend = getattr(slide, "_backend", None)
    verdict = _metadata_modality(backend) if backend is not None else None
    if verdict is None and rgb is not None:
        verdict = pixels_modality(rgb)
    if verdict is None and hasattr(slide, "modality"):
        verdict = (slide.modality, slide.modality_reason)
    if verdict is not None and verdict[0] == "fluorescence":
        name = getattr(slide, "path", getattr(slide, "name", "slide"))
        raise NotBrightfieldError(
            f"{name}: this is a fluorescence image ({verdict[1]}); {what} needs a brightfield slide "
            "(transmitted light on bright glass), so histo refuses it rather than call the dark background tissue"
        )
