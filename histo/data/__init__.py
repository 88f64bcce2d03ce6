"""Training data: tiles read on the fly from slides or image files, labels from annotations, augmentation,
stain normalisation, and the LightningDataModule that yields contract-B batches.

A batch is a dict: image float32 (N,3,H,W) normalised; pattern int64 (N,) (-1 = unlabelled); necrosis
float32 (N,) (1/0, -1 = unlabelled); mitosis_heatmap float32 (N,1,H/s,W/s); mitosis_labelled bool (N,);
mitosis_points float32 (N,32,2) tile px, NaN-padded; slide list[str].
"""

from histo.data.config import (
    DataConfig,
    NormaliseConfig,
    PhantomSource,
    SlideSource,
    SplitConfig,
    data_config_from_dict,
    load_data_config,
)
from histo.data.datasets import ImageTileDataset, SlideRef, SlideTileDataset
from histo.data.sample import MAX_POINTS, InputSpec, SampleMaker, heatmap_target
from histo.data.sources import assign_splits
from histo.data.stain import MacenkoNormaliser, ReinhardNormaliser, lab_stats, macenko_stains, make_normaliser
from histo.data.transforms import HEDJitter, build_pipeline, build_transform, hed_jitter, register_transform

__all__ = [
    "DataConfig", "HEDJitter", "ImageTileDataset", "InputSpec", "MAX_POINTS", "MacenkoNormaliser", "NormaliseConfig",
    "PhantomSource", "ReinhardNormaliser", "SampleMaker", "SlideRef", "SlideSource", "SlideTileDataset", "SplitConfig",
    "TINY_SPEC", "TileDataModule", "assign_splits", "build_pipeline", "build_transform", "data_config_from_dict",
    "hed_jitter", "heatmap_target", "lab_stats", "load_data_config", "macenko_stains", "make_normaliser",
    "register_transform", "sample_weights", "tiny_data_config", "tiny_datamodule",
]

# The DataModule pulls in pytorch_lightning (seconds to import); load it only when asked for.
_LAZY = {"TileDataModule": "histo.data.module", "sample_weights": "histo.data.module", "TINY_SPEC": "histo.data.tiny",
         "tiny_data_config": "histo.data.tiny", "tiny_datamodule": "histo.data.tiny"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'histo.data' has no attribute {name!r}")
