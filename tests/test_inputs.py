"""One record of a model's input: ImageNet normalisation, default classes and the plausible µm/px range declared once."""

from __future__ import annotations

import numpy as np
import pytest

from histo import inputs
from histo.aggregate import GradingConfig
from histo.aggregate.tables import validate_mpp
from histo.data import InputSpec
from histo.errors import ConfigError, MppError
from histo.ihc.cells import _check_mpp as ihc_check_mpp
from histo.models import DEFAULT_PATTERN_CLASSES, IMAGENET_MEAN, IMAGENET_STD, ModelCard, ScaleSpec
from histo.models.domain import DomainHead
from histo.models.multitask import HEAD_DEFAULTS
from histo.slide import MPP_PLAUSIBLE_UM, open_slide


def test_imagenet_normalisation_and_classes_are_the_one_declaration() -> None:
    assert IMAGENET_MEAN is inputs.IMAGENET_MEAN and IMAGENET_STD is inputs.IMAGENET_STD
    head = DomainHead((8, 16))
    assert np.allclose(head.input_mean.numpy(), IMAGENET_MEAN) and np.allclose(head.input_std.numpy(), IMAGENET_STD)
    spec = InputSpec(tile_px=64, mpp=1.0)
    assert spec.mean == IMAGENET_MEAN and spec.std == IMAGENET_STD
    assert DEFAULT_PATTERN_CLASSES is inputs.DEFAULT_PATTERN_CLASSES
    assert tuple(spec.pattern_classes) == GradingConfig().tiles.pattern_classes == DEFAULT_PATTERN_CLASSES
    assert tuple(HEAD_DEFAULTS["pattern"]["classes"]) == DEFAULT_PATTERN_CLASSES


def test_input_spec_reads_each_scale_of_the_card() -> None:
    card = ModelCard("two", scales={
        "cells": ScaleSpec("tiny", 64, 0.5, {"mitosis": {"stride_px": 4}}),
        "context": ScaleSpec("tiny", 96, 2.0, {"pattern": {"classes": list(DEFAULT_PATTERN_CLASSES)}, "necrosis": {}}),
    })
    cells, context = InputSpec.from_card(card, "cells"), InputSpec.from_card(card, "context")
    assert (cells.tile_px, cells.mpp, cells.mitosis_stride_px) == (64, 0.5, 4)
    assert (context.tile_px, context.mpp, context.mitosis_stride_px) == (96, 2.0, None)
    assert tuple(context.pattern_classes) == DEFAULT_PATTERN_CLASSES


def test_one_plausible_mpp_range_everywhere(tmp_path) -> None:
    lo, hi = inputs.MPP_PLAUSIBLE_UM
    assert MPP_PLAUSIBLE_UM is inputs.MPP_PLAUSIBLE_UM
    too_coarse = hi * 1.5  # accepted by the seven old ranges that went up to 50 or 100, refused now
    assert validate_mpp(hi) == hi
    with pytest.raises(MppError, match=inputs.mpp_range_text()):
        validate_mpp(too_coarse)
    with pytest.raises(MppError):
        ihc_check_mpp(too_coarse)
    with pytest.raises(ConfigError, match="plausible"):
        InputSpec(tile_px=64, mpp=too_coarse)
    with pytest.raises(Exception, match="plausible"):
        ModelCard("m", backbone="tiny", heads={"necrosis": {}}, tile_px=64, mpp=too_coarse).to_json()
    with pytest.raises(MppError, match="plausible"):
        open_slide(_png(tmp_path), mpp=too_coarse)
    assert inputs.mpp_is_plausible(lo) and not inputs.mpp_is_plausible(lo / 2) and not inputs.mpp_is_plausible(True)


def _png(tmp_path):
    from PIL import Image

    p = tmp_path / "t.png"
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(p)
    return p


def test_shared_leaf_modules_import_nothing_of_histo_but_errors() -> None:
    import subprocess
    import sys

    code = ("import sys, histo.inputs, histo.config; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'openslide', 'scipy', 'numpy') "
            "or (m.startswith('histo.') and m not in ('histo.inputs', 'histo.config', 'histo.errors'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
