"""Open any slide OpenSlide reads, and plain images, and read regions at an explicit µm/px."""

from histo.slide.slide import (
    MPP_PLAUSIBLE_UM,
    Slide,
    check_mpp_override,
    forced_mpp,
    mpp_argument,
    open_slide,
    renamed_mpp,
)

__all__ = ["MPP_PLAUSIBLE_UM", "Slide", "check_mpp_override", "forced_mpp", "mpp_argument", "open_slide", "renamed_mpp"]
