"""Carry a mask made on the fixed slide (the H&E tumour mask) onto a moving slide (an IHC section), or refuse to."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from histo.register.run import register_slides
from histo.slide import Slide
from histo.tissue import TissueMask


@dataclass(frozen=True)
class MappedMask:
    """The mask on the moving slide (None: registration was not good enough, count in all tissue) and why."""

    mask: TissueMask | None
    registration: dict[str, Any]  # what ihc.json and the case report show
    message: str | None  # a warning to show when the mask was not used


def map_mask_onto(mask: TissueMask, fixed: Slide | str | os.PathLike[str], moving: Slide | str | os.PathLike[str],
                  *, fixed_mpp: float | None = None) -> MappedMask:
    """Register ``moving`` onto ``fixed`` and resample ``mask`` (fixed frame) onto ``moving``; unchanged when the frames agree."""
    reg = register_slides(fixed, moving, fixed_mpp=fixed_mpp)
    t, q = reg.transform, reg.quality
    info: dict[str, Any] = {
        "status": reg.status, "estimated_error_um": q.get("estimated_error_um"), "dice": q.get("dice"),
        "rotation_deg": round(t.rotation_deg(), 2), "flipped": t.flipped(),
        "model": "affine+field" if t.field is not None else "affine", "fixed": os.fspath(reg.fixed_path),
        "reasons": list(q.get("reasons", [])),
    }
    if reg.status != "ok":
        info["applied"] = "none: counted in all tissue"
        why = "; ".join(q.get("reasons", [])) or reg.status
        return MappedMask(None, info, f"registration onto the H&E is {reg.status} ({why}): the tumour mask was not "
                                      "used and cells were counted in all tissue")
    # A transform that moves no point by more than half a mask pixel changes nothing the mask can show.
    if t.is_identity(0.5 * mask.mpp) and tuple(mask.slide_dimensions) == tuple(t.moving_dimensions):
        info["applied"] = "identity: the frames agree"
        return MappedMask(mask, info, None)
    info["applied"] = "tumour mask warped onto this slide"
    return MappedMask(t.mask_to_moving(mask), info, None)
