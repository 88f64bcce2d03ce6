"""Tile grids at a target µm/px over detected tissue: planning, fast reading, QC, extraction, Parquet tables."""

from histo.tiling.grid import (
    ExtractConfig,
    GridConfig,
    QCConfig,
    TileGrid,
    TilingConfig,
    plan_grid,
    tissue_fractions,
)
from histo.tiling.reader import TileBatch, iter_batches, make_pool, read_run
from histo.tiling.run import SlideResult, tile_slide, tile_slide_isolated

__all__ = [
    "ExtractConfig", "GridConfig", "QCConfig", "SlideResult", "TileBatch", "TileGrid", "TilingConfig",
    "iter_batches", "make_pool", "plan_grid", "read_run", "tile_slide", "tile_slide_isolated", "tissue_fractions",
]
