"""A DataModule over tiny phantom slides in seconds, for tests, smoke runs and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from histo.data.config import DataConfig, data_config_from_dict
from histo.data.module import TileDataModule
from histo.inputs import DEFAULT_PATTERN_CLASSES, InputSpec

# A small, busy phantom: every pattern, necrosis, and enough mitoses that small tiles hold some.
TINY_SPEC = {
    "name": "tiny",
    "mpp": 0.25,
    "width_px": 1536,
    "height_px": 1536,
    "tissue": {"coverage": 0.7},
    "tumour": {"fraction_of_tissue": 0.7, "region_scale_um": 120, "orientation_scale_um": 200},
    "mitoses": {"per_mm2": 200.0},
    "necrosis": {"fraction_of_tumour": 0.25},
}


def tiny_data_config(cache_dir: str | Path, *, n_slides: int = 2, size_px: tuple[int, int] = (1536, 1536),
                     **data: Any) -> DataConfig:
    """A DataConfig over `n_slides` tiny phantoms cached in `cache_dir` (seeds 0..n-1); `data` sets other keys."""
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    spec_path = cache / "tiny_spec.yaml"
    text = yaml.safe_dump(TINY_SPEC, sort_keys=False)
    if not spec_path.is_file() or spec_path.read_text(encoding="utf-8") != text:
        spec_path.write_text(text, encoding="utf-8")
    raw = {
        "phantoms": {"specs": [str(spec_path)], "n_per_spec": n_slides, "size_px": list(size_px), "cache_dir": str(cache)},
        "split": {"val_fraction": 0.5 if n_slides > 1 else 0.0, "seed": 0},
        "batch_size": 8,
        "num_workers": 0,
        **data,
    }
    return data_config_from_dict(raw, "<tiny_data_config>")


def tiny_datamodule(cache_dir: str | Path, *, tile_px: int = 64, mpp: float = 1.0, mitosis_stride_px: int | None = 4,
                    pattern_classes: Sequence[str] = DEFAULT_PATTERN_CLASSES, n_slides: int = 2,
                    size_px: tuple[int, int] = (1536, 1536), **data: Any) -> TileDataModule:
    """A prepared and set-up TileDataModule over tiny phantoms (written once into `cache_dir`, then reused)."""
    cfg = tiny_data_config(cache_dir, n_slides=n_slides, size_px=size_px, **data)
    spec = InputSpec(tile_px=tile_px, mpp=mpp, mitosis_stride_px=mitosis_stride_px, pattern_classes=list(pattern_classes))
    dm = TileDataModule(cfg, spec)
    dm.prepare_data()
    dm.setup("fit")
    return dm
