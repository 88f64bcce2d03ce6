"""`predict_image`: score an in-memory RGB image (a patch, a camera frame) without writing any file."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from histo.errors import ConfigError, ModelError
from histo.models import ModelCard
from histo.predict.engine import candidate_threshold, resolve_device
from histo.predict.scales import TtaTables, predict_scales
from histo.slide import Slide
from histo.tiling import TilingConfig

MIN_IMAGE_PX = 32


@dataclass
class ImagePrediction:
    """Outputs of :func:`predict_image`.

    ``tiles``: one row per tile of the table scale, with x, y, w, h in the image's pixels (its level 0),
    tissue_fraction, p_necrosis and p_pattern_<class>. ``mitoses``: every candidate with x, y in the
    image's pixels, x_um, y_um and score (count those with score >= ``mitosis_threshold``, the card's).
    """

    tiles: pd.DataFrame
    mitoses: pd.DataFrame
    mpp: float
    mitosis_threshold: float
    n_tiles: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    heads_not_run: dict[str, str] = field(default_factory=dict)  # head -> why: the image is too coarse for its scale
    tta: TtaTables | None = None  # with tta=True: each flip/turn's own tiles and mitoses (long form)

    @property
    def counted_mitoses(self) -> pd.DataFrame:
        """The mitoses at or above the card's threshold (what a report counts by default)."""
        return self.mitoses[self.mitoses["score"] >= self.mitosis_threshold].reset_index(drop=True)


def predict_image(rgb: np.ndarray, mpp: float, model: nn.Module, card: ModelCard, *,
                  tiling: TilingConfig | None = None, batch_size: int = 64,
                  device: str | torch.device = "auto", tta: bool = False) -> ImagePrediction:
    """Tile probabilities and mitosis points of an H×W×3 uint8 RGB image at ``mpp`` µm/px.

    Heads whose scale is finer than the image (a 0.25 µm/px mitosis head on a 0.5 µm/px image) do not run:
    they are listed in ``heads_not_run`` and leave no column (no mitosis rows), never zeros.
    The image is treated exactly as `histo predict` treats a slide file with ``--mpp``: the same
    tissue detection, tile grids per scale, reads, model and joins, so both give the same numbers.
    Images of any size from 32 px work: tiles that hang over the right or bottom edge (or an image
    smaller than one tile) are padded with white, which reads as glass. For a frame that is all tissue
    pass ``tiling=TilingConfig(grid=GridConfig(min_tissue_fraction=0))`` to score every tile.
    ``tta=True`` averages every tile over the 8 flips and turns (as `histo predict --tta`).
    """
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ConfigError(f"predict_image needs an H×W×3 uint8 RGB array, got shape {arr.shape} and dtype {arr.dtype}")
    if min(arr.shape[:2]) < MIN_IMAGE_PX:
        raise ConfigError(f"predict_image needs an image of at least {MIN_IMAGE_PX}×{MIN_IMAGE_PX} px, got "
                          f"{arr.shape[1]}×{arr.shape[0]}")
    if not isinstance(card, ModelCard):
        raise ModelError(f"predict_image needs the model's ModelCard, got {type(card).__name__}")
    slide = Slide.from_array(arr, mpp)
    dev = resolve_device(device)
    try:
        res = predict_scales(slide, slide.path, None, model, card, dev, tiling=tiling, batch_size=batch_size,
                             in_process=True, tta=tta)
    except ModelError as exc:
        raise ModelError(f"image at {mpp:g} µm/px: {exc}") from exc
    finally:
        slide.close()
    return ImagePrediction(tiles=res.tiles, mitoses=res.mitoses, mpp=float(mpp),
                           mitosis_threshold=card.mitosis_threshold, n_tiles=res.n_tiles,
                           timings={**res.timings, "candidate_threshold": candidate_threshold(card)},
                           heads_not_run=res.heads_not_run, tta=res.tta)


