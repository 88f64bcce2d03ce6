"""One phantom case: the spec, its layout, every cell and mitosis, the two stain models and the renderer."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .cells import Cells, assign_ihc, clear_around, place_cells, place_mitoses
from .layout import Layout, build_layout
from .render import Renderer
from .spec import PhantomSpec
from .stain import StainModel, make_stain_model


@dataclass
class Phantom:
    """Everything decided about a case before any pixel is painted."""

    spec: PhantomSpec
    layout: Layout
    cells: Cells  # every cell, mitoses included (kind == MITOSIS)
    he_stain: StainModel
    ihc_stain: StainModel
    renderer: Renderer

    @property
    def width_px(self) -> int:
        """Level-0 width."""
        return self.spec.slide_width_px

    @property
    def height_px(self) -> int:
        """Level-0 height."""
        return self.spec.slide_height_px

    def render_he(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """H&E RGB uint8 (h, w, 3) of a level-0 box."""
        return self.renderer.render(x, y, w, h, "he")

    def render_ihc(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """IHC RGB uint8 (h, w, 3) of a level-0 box."""
        return self.renderer.render(x, y, w, h, "ihc")


def build_phantom(spec: PhantomSpec) -> Phantom:
    """Decide layout, cells, mitoses, IHC classes and stains for a spec (deterministic in spec.seed)."""
    lay = build_layout(spec, np.random.default_rng([spec.seed, 1]))
    cells = place_cells(spec, lay)
    mitoses = place_mitoses(spec, lay, np.random.default_rng([spec.seed, 2]))
    cells = clear_around(cells, mitoses, radius_px=6.0 / spec.mpp)
    if spec.ihc.enabled:
        assign_ihc(spec, cells, np.random.default_rng([spec.seed, 3]))
    allc = Cells.concat([cells, mitoses])
    he = make_stain_model(spec.stain, np.random.default_rng([spec.seed, 4]), ihc=False)
    ihc = make_stain_model(spec.stain, np.random.default_rng([spec.seed, 5]), ihc=True)
    return Phantom(spec, lay, allc, he, ihc, Renderer(spec, lay, allc, he, ihc))
