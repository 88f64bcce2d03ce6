"""Serial-section registration: map a moving slide (an IHC section) onto a fixed one (its H&E), both ways.

    from histo.register import register_slides, write_registration
    reg = register_slides("case_HE.svs", "case_ALK.svs")          # rigid (any rotation, flips) → affine → non-rigid
    reg.status                                                     # 'ok' | 'poor' | 'failed'
    reg.transform.moving_to_fixed(points_px)                       # level-0 px, either direction
    reg.transform.mask_to_moving(tumour_mask)                      # a TissueMask in the H&E frame → IHC frame
    write_registration(reg, "out/")                                # registration.json + field + QC PNG

Libraries: OpenCV (already a dependency) gives everything this needs in fast, multithreaded C++ with
small memory: ECC affine alignment (robust to gain and offset between two stains), DIS optical flow for
the non-rigid field, remap for warping, phase correlation for the quality residuals. SciPy's FFT runs
the rotation/flip search. SimpleITK would add a large dependency for the same steps; VALIS builds on
pyvips/SimpleElastix, TIAToolbox's DFBR on a CNN's features — heavier than histo's low-resolution needs.

Steps are in :mod:`histo.register.align`, the channel registration looks at in
:mod:`histo.register.images`, the quality measures and status in :mod:`histo.register.quality`.

registration.json (``histo.registration/1``), written by :func:`write_registration` and read back by
:func:`load_transform`:

- ``status``: ``ok`` | ``poor`` | ``failed`` (see histo.register.quality); ``units``: ``"µm"``.
- ``fixed`` / ``moving``: ``path``, ``name``, ``width_px``, ``height_px`` (level-0 frame), ``mpp``.
- ``transform``: ``model`` (``affine`` or ``affine+field``); ``affine_um`` (3×3, fixed µm → moving µm,
  µm = level-0 px × that slide's mpp, origin at the top-left corner); ``affine_px`` (the same in level-0
  px); ``rotation_deg``, ``flipped``, ``scale``, ``translation_um``; ``field``: null or ``file``
  (displacement_field.npz with ``forward_um`` and ``inverse_um``, H×W×2 float32, and ``grid_um``),
  ``grid_um``, ``shape``, ``max_um``, ``max_inverse_error_um``. A fixed point f (µm) maps to the moving
  slide as ``m = affine_um · (f + forward(f))``; a moving point as ``f = g + inverse(g)``, ``g =
  affine_um⁻¹ · m``. Field pixel (i, j) is centred at ((j + 0.5)·grid_um, (i + 0.5)·grid_um) µm.
- ``quality``: ``status``, ``reasons``, ``dice`` (tissue overlap), ``correlation``,
  ``estimated_error_um`` (median residual shift of tissue patches, no landmarks needed),
  ``residual_p90_um``, ``n_residual_patches``, ``measured_at_mpp``, ``thresholds``.
- ``levels_mpp`` (coarse to fine), ``settings`` (RegisterConfig), ``timing_s``, ``files`` (``json``,
  ``field``, ``qc`` = registration_qc.png: fixed magenta, moving green, before | after;
  ``landmarks_in_fixed``).
"""

from __future__ import annotations

from histo.register.align import RegisterConfig
from histo.register.io import (
    FIELD_FILE,
    LANDMARKS_OUT,
    QC_PNG,
    REGISTRATION_JSON,
    SCHEMA,
    load_transform,
    read_landmarks,
    registration_dict,
    write_landmarks,
    write_registration,
)
from histo.register.run import Registration, register_slides, warp_view_image
from histo.register.transform import DisplacementField, SlideTransform

__all__ = [
    "RegisterConfig", "Registration", "register_slides", "warp_view_image", "SlideTransform", "DisplacementField",
    "write_registration", "load_transform", "read_landmarks", "write_landmarks", "registration_dict",
    "SCHEMA", "REGISTRATION_JSON", "FIELD_FILE", "QC_PNG", "LANDMARKS_OUT",
]
