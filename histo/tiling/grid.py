"""`TileGrid`: level-0 boxes of tiles at a target mpp over detected tissue, saved as Parquet with provenance."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

import histo
from histo.atomic import atomic_path
from histo.config import from_dict, load_yaml, to_dict
from histo.errors import ConfigError
from histo.slide import Slide
from histo.tissue import TissueConfig, TissueMask, detect_tissue, tissue_fraction_warning

GRID_SCHEMA_VERSION = 1
_META_KEY = b"histo.tilegrid"


@dataclass(frozen=True)
class GridConfig:
    """Where tiles go: size in output px at a target µm/px, overlap, and how much tissue a tile needs."""

    tile_px: int = 256
    mpp: float = 0.5
    overlap_px: int = 0
    min_tissue_fraction: float = 0.5
    mask_mpp: float = 8.0

    def __post_init__(self) -> None:
        if self.tile_px < 8:
            raise ValueError(f"tile_px must be at least 8, got {self.tile_px}")
        if not self.mpp > 0:
            raise ValueError(f"mpp must be positive, got {self.mpp}")
        if not 0 <= self.overlap_px < self.tile_px:
            raise ValueError(f"overlap_px must be in [0, tile_px), got {self.overlap_px}")
        if not 0.0 <= self.min_tissue_fraction <= 1.0:
            raise ValueError(f"min_tissue_fraction must be in [0, 1], got {self.min_tissue_fraction}")
        if not self.mask_mpp >= self.mpp:
            raise ValueError(f"mask_mpp ({self.mask_mpp}) must be coarser than or equal to mpp ({self.mpp})")

    @property
    def stride_px(self) -> int:
        """Step between tile origins in output px."""
        return self.tile_px - self.overlap_px


@dataclass(frozen=True)
class QCConfig:
    """Per-tile quality control measured on the pixels read (blur, pen ink, background)."""

    enabled: bool = False
    min_blur_score: float = 15.0  # variance of the Laplacian of grey levels; sharp H&E tiles score 100s
    max_pen_fraction: float = 0.05
    max_background_fraction: float = 0.6


@dataclass(frozen=True)
class ExtractConfig:
    """Whether and how tiles are written out."""

    format: Literal["none", "png", "jpeg"] = "none"
    store: Literal["files", "zip"] = "files"
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")


@dataclass(frozen=True)
class TilingConfig:
    """Everything `histo tile` needs; defaults live here and in the nested configs."""

    grid: GridConfig = field(default_factory=GridConfig)
    tissue: TissueConfig = field(default_factory=TissueConfig)
    qc: QCConfig = field(default_factory=QCConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    workers: int = 2
    pool: Literal["thread", "process"] = "thread"
    batch_tiles: int = 64

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = read in this process), got {self.workers}")
        if self.batch_tiles < 1:
            raise ValueError(f"batch_tiles must be >= 1, got {self.batch_tiles}")

    @classmethod
    def from_yaml(cls, path: str | Path) -> TilingConfig:
        """Load and validate a tiling config file."""
        return cls.from_dict(load_yaml(path), str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> TilingConfig:
        """Validate a mapping (unknown keys and wrong types are ConfigErrors naming the key and source)."""
        tissue = data.get("tissue")
        rest = {k: v for k, v in data.items() if k != "tissue"}
        cfg = from_dict(cls, rest, source)
        if tissue is not None:
            if not isinstance(tissue, dict):
                raise ConfigError(f"{source}: 'tissue' must be a mapping")
            cfg = dataclasses.replace(cfg, tissue=TissueConfig.from_dict(tissue, source))
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain values, as saved beside outputs."""
        return to_dict(self)


@dataclass
class TileGrid:
    """A table of tiles (level-0 boxes) for one slide, with the slide metadata and settings that made it."""

    table: pd.DataFrame
    slide: dict[str, Any]
    settings: dict[str, Any]

    COLUMNS = ("col", "row", "x", "y", "w", "h", "tissue_fraction")

    def __len__(self) -> int:
        return len(self.table)

    @property
    def tile_px(self) -> int:
        """Tile edge in output px."""
        return int(self.settings["grid"]["tile_px"])

    @property
    def mpp(self) -> float:
        """Target µm/px the tiles are read at."""
        return float(self.settings["grid"]["mpp"])

    def save(self, path: str | Path) -> Path:
        """Write the grid as Parquet atomically, with slide metadata and settings in the file's metadata."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(self.table, preserve_index=False)
        meta = {
            "schema_version": GRID_SCHEMA_VERSION,
            "histo_version": histo.__version__,
            "slide": self.slide,
            "settings": self.settings,
        }
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), _META_KEY: json.dumps(meta).encode()})
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return path

    @classmethod
    def load(cls, path: str | Path) -> TileGrid:
        """Read a grid written by `save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no tile grid here")
        table = pq.read_table(path)
        raw = (table.schema.metadata or {}).get(_META_KEY)
        if raw is None:
            raise ValueError(f"{path}: a Parquet file but not a histo tile grid (no {_META_KEY.decode()} metadata)")
        meta = json.loads(raw)
        if meta.get("schema_version") != GRID_SCHEMA_VERSION:
            raise ValueError(f"{path}: tile grid schema {meta.get('schema_version')} is not {GRID_SCHEMA_VERSION}")
        return cls(table=table.to_pandas(), slide=meta["slide"], settings=meta["settings"])


def slide_metadata(slide: Slide) -> dict[str, Any]:
    """The slide facts a grid keeps so tiles can be re-read and checked later."""
    w, h = slide.dimensions
    return {
        "path": str(slide.path.resolve()),
        "name": slide.name,
        "vendor": slide.vendor,
        "width_px": w,
        "height_px": h,
        "mpp": slide.mpp,
        "mpp_source": slide.mpp_source,
        "objective_power": slide.objective_power,
    }


def tissue_fractions(mask: TissueMask, x: np.ndarray, y: np.ndarray, w: float, h: float) -> np.ndarray:
    """Share of each level-0 box (x, y, w, h) covered by the mask, from an integral image (outside = 0)."""
    m = mask.mask.astype(np.int32)
    integral = np.zeros((m.shape[0] + 1, m.shape[1] + 1), np.int64)
    integral[1:, 1:] = m.cumsum(0).cumsum(1)
    ds = mask.downsample
    mh, mw = m.shape
    x0 = np.clip(np.round(x / ds).astype(np.int64), 0, mw)
    y0 = np.clip(np.round(y / ds).astype(np.int64), 0, mh)
    x1 = np.clip(np.round((x + w) / ds).astype(np.int64), 0, mw)
    y1 = np.clip(np.round((y + h) / ds).astype(np.int64), 0, mh)
    inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    # Denominator: the full box in mask px, so tiles hanging over the slide edge count the outside as glass.
    box_px = max((w / ds) * (h / ds), 1e-9)
    return np.clip(inside / box_px, 0.0, 1.0)


def plan_grid(slide: Slide, config: TilingConfig | None = None, mask: TissueMask | None = None) -> tuple[TileGrid, TissueMask]:
    """Detect tissue (unless a mask is given) and lay the tile grid over it; no tissue gives an empty grid."""
    config = config or TilingConfig()
    g = config.grid
    if mask is None:
        mask = detect_tissue(slide, mask_mpp=g.mask_mpp, config=config.tissue)
    ds = g.mpp / slide.mpp  # level-0 px per output px
    tile0, stride0 = g.tile_px * ds, g.stride_px * ds
    W, H = slide.dimensions
    # Tiles start inside the slide and may hang over the right/bottom edge (read as white glass) so
    # tissue at the edge is not lost.
    ncols = max(1, math.ceil((W - tile0) / stride0) + 1) if tile0 < W else 1
    nrows = max(1, math.ceil((H - tile0) / stride0) + 1) if tile0 < H else 1
    col_grid, row_grid = np.meshgrid(np.arange(ncols), np.arange(nrows))
    cols, rows = col_grid.ravel(), row_grid.ravel()
    xs, ys = cols * stride0, rows * stride0
    frac = tissue_fractions(mask, xs, ys, tile0, tile0)
    keep = frac >= g.min_tissue_fraction if g.min_tissue_fraction > 0 else np.ones_like(frac, bool)
    table = pd.DataFrame(
        {
            "col": cols[keep].astype(np.int32),
            "row": rows[keep].astype(np.int32),
            "x": xs[keep].astype(np.float64),
            "y": ys[keep].astype(np.float64),
            "w": np.full(int(keep.sum()), tile0, np.float64),
            "h": np.full(int(keep.sum()), tile0, np.float64),
            "tissue_fraction": frac[keep].astype(np.float32),
        }
    )
    settings = {
        "grid": to_dict(g),
        "tissue": to_dict(config.tissue),
        "stride_px": g.stride_px,
        "tile_level0_px": tile0,
        "grid_cols": ncols,
        "grid_rows": nrows,
        "tissue_area_mm2": mask.area_mm2,
        "tissue_fraction": mask.fraction,
        "tissue_warning": tissue_fraction_warning(mask),
        "histo_version": histo.__version__,
    }
    return TileGrid(table=table, slide=slide_metadata(slide), settings=settings), mask
