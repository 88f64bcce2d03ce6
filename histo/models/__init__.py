"""Plain nn.Module models: backbone registry, task heads, MultiTaskNet, model card and model files."""

from histo.inputs import DEFAULT_PATTERN_CLASSES, IMAGENET_MEAN, IMAGENET_STD
from histo.models.card import SCHEMA_VERSION, ModelCard, ScaleSpec, config_digest
from histo.models.heads import (
    ClassificationHead,
    HeatmapHead,
    LogitHead,
    heatmap_to_points,
    heatmaps_to_points,
)
from histo.models.io import (
    build_model,
    default_model_dir,
    describe_model,
    find_card,
    load_model,
    model_paths,
    resolve_model,
    save_model,
)
from histo.models.multitask import HEAD_NAMES, MultiScaleNet, MultiTaskNet, resolve_heads, scale_nets
from histo.models.registry import Backbone, create_backbone, list_backbones, register_backbone

__all__ = [
    "Backbone", "ClassificationHead", "DEFAULT_PATTERN_CLASSES", "HEAD_NAMES", "HeatmapHead",
    "IMAGENET_MEAN", "IMAGENET_STD", "LogitHead", "ModelCard", "MultiScaleNet", "MultiTaskNet", "SCHEMA_VERSION",
    "ScaleSpec", "build_model", "default_model_dir", "describe_model", "resolve_model", "scale_nets",
    "config_digest", "create_backbone", "heatmap_to_points", "heatmaps_to_points", "list_backbones",
    "find_card", "load_model", "model_paths", "register_backbone", "resolve_heads", "save_model",
]
