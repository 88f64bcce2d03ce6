"""Backbone registry: named feature extractors (torchvision CNNs, a small CPU CNN, a tiny test net).

Every backbone is a :class:`Backbone`: ``forward(x)`` gives pooled features ``(N, num_features)``,
``forward_pyramid(x)`` the feature maps at strides 4, 8, 16 and 32 (for dense heads), and
``forward_features(x)`` the last (stride-32) map.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from histo.errors import ModelError

# Extensions of pickle-based PyTorch files; unpickling a file a user hands in can run arbitrary code.
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle", ".tar")
PICKLE_REFUSAL = (
    "it is a pickle-based PyTorch file, and unpickling a file can run arbitrary code, so histo never "
    "loads one; convert it once in a trusted environment with "
    "safetensors.torch.save_file(state_dict, 'weights.safetensors') and pass the .safetensors file"
)

BackboneFactory = Callable[[bool], "Backbone"]
_REGISTRY: dict[str, BackboneFactory] = {}


class Backbone(nn.Module):
    """A feature extractor: pooled features, and feature maps at strides 4, 8, 16, 32."""

    num_features: int
    feature_channels: tuple[int, int, int, int]
    feature_strides: tuple[int, int, int, int] = (4, 8, 16, 32)
    # State-dict key prefixes of the original classifier, ignored when loading full-model weights.
    classifier_keys: tuple[str, ...] = ()

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at ``feature_strides``, finest first."""
        raise NotImplementedError

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        """Pool the last feature map to ``(N, num_features)``."""
        return F.adaptive_avg_pool2d(fmap, 1).flatten(1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last (stride-32) feature map, ``(N, num_features, H/32, W/32)``."""
        return self.forward_pyramid(x)[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(N, num_features)``."""
        return self.pool(self.forward_features(x))


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator registering ``factory(imagenet: bool) -> Backbone`` under ``name``."""

    def deco(factory: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY:
            raise ModelError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return deco


def list_backbones() -> list[str]:
    """Names of the registered backbones, sorted."""
    return sorted(_REGISTRY)


def create_backbone(name: str, pretrained: bool | str | Path = False) -> tuple[Backbone, int]:
    """Build a backbone; ``pretrained`` is False, ``"imagenet"`` (downloads) or a local .safetensors path."""
    if name not in _REGISTRY:
        raise ModelError(f"unknown backbone {name!r}; registered backbones: {', '.join(list_backbones())}")
    if pretrained is True:
        raise ModelError("pretrained=True is ambiguous; pass pretrained='imagenet' or a .safetensors path")
    imagenet = isinstance(pretrained, str) and pretrained == "imagenet"
    model = _REGISTRY[name](imagenet)
    if isinstance(pretrained, (str, Path)) and pretrained != "imagenet":
        load_backbone_weights(model, Path(pretrained), name)
    return model, model.num_features


_MAX_HEADER = 100 * 1024 * 1024  # safetensors caps its JSON header at 100 MB


def safetensors_header(path: Path) -> dict[str, Any] | None:
    """The parsed JSON header of a safetensors file, or None when ``path`` is not one.

    The format is an 8-byte little-endian header length, then that many bytes of JSON (an object whose
    values are tensor entries, plus an optional ``__metadata__``). Deciding by parsing that header, not by
    sniffing the first bytes, keeps a valid file whose length byte happens to be 0x80 from looking like a pickle.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return None
            n = int.from_bytes(head, "little")
            size = os.fstat(fh.fileno()).st_size
            if not 2 <= n <= min(_MAX_HEADER, size - 8):
                return None
            raw = fh.read(n)
    except OSError as exc:
        raise ModelError(f"cannot read weights file {path}: {exc}") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if not all(isinstance(v, dict) and "dtype" in v and "shape" in v and "data_offsets" in v for v in entries.values()):
        return None
    return header


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` strings of a safetensors file ({} when it has none); ModelError when not safetensors."""
    header = safetensors_header(path)
    if header is None:
        refuse_pickle(path)
        raise ModelError(f"{path} is not a safetensors file (no valid safetensors header)")
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}


def refuse_pickle(path: Path) -> None:
    """Raise ModelError when ``path`` is (by name or by content) a pickle-based PyTorch file."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelError(f"refusing to load {path}: {PICKLE_REFUSAL}")
    if safetensors_header(path) is not None:
        return  # a valid safetensors header: whatever its first byte, it is not a pickle
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
    except OSError as exc:
        raise ModelError(f"cannot read weights file {path}: {exc}") from exc
    # torch.save writes a zip archive ("PK") or a raw pickle (protocol byte 0x80).
    if head == b"PK" or head[:1] == b"\x80":
        raise ModelError(f"refusing to load {path}: {PICKLE_REFUSAL}")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a local .safetensors file on CPU; never unpickles."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    refuse_pickle(path)
    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ModelError(f"cannot read {path} as safetensors: {exc}") from exc


def load_backbone_weights(model: Backbone, path: Path, name: str = "") -> None:
    """Load a local safetensors state dict into ``model`` (histo or torchvision key names), strictly."""
    state = read_safetensors(path)
    own = model.state_dict()
    # Accept both histo's names ("body.conv1.weight") and the plain torchvision names ("conv1.weight").
    prefix = getattr(model, "key_prefix", "")
    if prefix and not any(k in own for k in state):
        state = {prefix + k: v for k, v in state.items()}
    drop = tuple(prefix + c for c in model.classifier_keys)
    state = {k: v for k, v in state.items() if not (drop and k.startswith(drop))}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ModelError(
            f"weights in {path} do not fit backbone {name or type(model).__name__}: "
            f"missing keys {format_keys(missing)}; unexpected keys {format_keys(unexpected)}"
        )
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        k = bad[0]
        raise ModelError(
            f"weights in {path} do not fit backbone {name}: {len(bad)} tensors have the wrong shape, "
            f"e.g. {k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        )
    model.load_state_dict(state, strict=True)


def format_keys(keys: Sequence[str], n: int = 5) -> str:
    """Up to ``n`` keys for an error message, with a count of the rest."""
    if not keys:
        return "none"
    shown = ", ".join(keys[:n])
    return f"[{shown}{f', ... {len(keys) - n} more' if len(keys) > n else ''}]"


# -- torchvision backbones ----------------------------------------------------------------------------
class TorchvisionBackbone(Backbone):
    """A torchvision classifier with its final Linear removed, run stage by stage."""

    key_prefix = "body."

    def __init__(self, body: nn.Module, stages: Sequence[Sequence[str]], channels: Sequence[int],
                 classifier_keys: Sequence[str], pool_paths: Sequence[str] = (), relu_last: bool = False):
        super().__init__()
        self.body = body
        # Plain lists (not ModuleList) so each parameter keeps exactly one state-dict name under body.
        self._stages = [[body.get_submodule(p) for p in stage] for stage in stages]
        self._pool_norm = [body.get_submodule(p) for p in pool_paths]
        self._relu_last = relu_last
        self.feature_channels = tuple(channels)  # type: ignore[assignment]
        self.num_features = int(channels[-1])
        self.classifier_keys = tuple(classifier_keys)

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at strides 4, 8, 16, 32."""
        out = []
        for stage in self._stages:
            for mod in stage:
                x = mod(x)
            out.append(x)
        if self._relu_last:  # densenet applies its final ReLU in forward(), not as a module
            out[-1] = F.relu(out[-1])
        return out

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        """Average pool, then the classifier's own norm where it has one (convnext)."""
        x = F.adaptive_avg_pool2d(fmap, 1)
        for mod in self._pool_norm:
            x = mod(x)
        return x.flatten(1)


def _torchvision(arch: str, imagenet: bool) -> nn.Module:
    """A torchvision classifier, with ImageNet weights when asked (network on first use)."""
    import torchvision

    if not imagenet:
        return torchvision.models.get_model(arch, weights=None)
    try:
        return torchvision.models.get_model(arch, weights="DEFAULT")
    except Exception as exc:  # download errors come in many types (URLError, OSError, HTTPError)
        raise ModelError(
            f"cannot get ImageNet weights for {arch}: {exc}; without network, save the weights once as "
            f".safetensors and pass pretrained=<path>"
        ) from exc


def _resnet(arch: str, channels: Sequence[int]) -> BackboneFactory:
    def factory(imagenet: bool) -> Backbone:
        body = _torchvision(arch, imagenet)
        body.fc = nn.Identity()
        stages = [["conv1", "bn1", "relu", "maxpool", "layer1"], ["layer2"], ["layer3"], ["layer4"]]
        return TorchvisionBackbone(body, stages, channels, classifier_keys=("fc.",))

    return factory


register_backbone("resnet18")(_resnet("resnet18", (64, 128, 256, 512)))
register_backbone("resnet34")(_resnet("resnet34", (64, 128, 256, 512)))
register_backbone("resnet50")(_resnet("resnet50", (256, 512, 1024, 2048)))


@register_backbone("efficientnet_b0")
def _efficientnet_b0(imagenet: bool) -> Backbone:
    body = _torchvision("efficientnet_b0", imagenet)
    body.classifier = nn.Identity()
    f = [f"features.{i}" for i in range(9)]
    stages = [f[0:3], f[3:4], f[4:6], f[6:9]]
    return TorchvisionBackbone(body, stages, (24, 40, 112, 1280), classifier_keys=("classifier.",))


@register_backbone("convnext_tiny")
def _convnext_tiny(imagenet: bool) -> Backbone:
    body = _torchvision("convnext_tiny", imagenet)
    body.classifier[2] = nn.Identity()  # type: ignore[operator,assignment]  # torchvision is untyped here; keep classifier.0 (LayerNorm2d): pooled features pass through it
    f = [f"features.{i}" for i in range(8)]
    stages = [f[0:2], f[2:4], f[4:6], f[6:8]]
    return TorchvisionBackbone(body, stages, (96, 192, 384, 768), classifier_keys=("classifier.2.",),
                               pool_paths=("classifier.0",))


@register_backbone("densenet121")
def _densenet121(imagenet: bool) -> Backbone:
    body = _torchvision("densenet121", imagenet)
    body.classifier = nn.Identity()
    p = "features."
    stages = [
        [p + n for n in ("conv0", "norm0", "relu0", "pool0", "denseblock1")],
        [p + "transition1", p + "denseblock2"],
        [p + "transition2", p + "denseblock3"],
        [p + "transition3", p + "denseblock4", p + "norm5"],
    ]
    return TorchvisionBackbone(body, stages, (256, 512, 1024, 1024), classifier_keys=("classifier.",),
                               relu_last=True)


# -- tiny test backbone -------------------------------------------------------------------------------
def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _PlainCNN(Backbone):
    """A plain CNN of four stages (``stem`` to stride 4, then ``stage2``-``stage4``), built by subclasses."""

    stem: nn.Module
    stage2: nn.Module
    stage3: nn.Module
    stage4: nn.Module

    def forward_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps at strides 4, 8, 16, 32."""
        s4 = self.stem(x)
        s8 = self.stage2(s4)
        s16 = self.stage3(s8)
        return [s4, s8, s16, self.stage4(s16)]


class TinyBackbone(_PlainCNN):
    """A ~50k-parameter CNN with the same interface as the real backbones, for fast tests."""

    def __init__(self) -> None:
        super().__init__()
        c = (16, 32, 48, 64)
        self.stem = nn.Sequential(_conv_bn(3, 16, 2), _conv_bn(16, c[0], 2))
        self.stage2 = _conv_bn(c[0], c[1], 2)
        self.stage3 = _conv_bn(c[1], c[2], 2)
        self.stage4 = _conv_bn(c[2], c[3], 2)
        self.feature_channels = c
        self.num_features = c[-1]


@register_backbone("tiny")
def _tiny(imagenet: bool) -> Backbone:
    if imagenet:
        raise ModelError("backbone 'tiny' is a test network and has no ImageNet weights")
    return TinyBackbone()


class SmallBackbone(_PlainCNN):
    """A ~0.5M-parameter CNN (2 MB) for CPU-trained demo models: two convolutions per stage.

    ``tiny`` reaches stride 4 after two convolutions (a 7 px receptive field), too little to tell a
    mitotic figure from a dark lymphocyte at 1 µm/px; here the stride-4 map has seen 11 px and the
    stride-8 map 35 px (tiny: 15 px), with twice the channels.
    """

    def __init__(self) -> None:
        super().__init__()
        c = (32, 64, 96, 128)
        self.stem = nn.Sequential(_conv_bn(3, 24, 2), _conv_bn(24, c[0], 1), _conv_bn(c[0], c[0], 2))
        self.stage2 = nn.Sequential(_conv_bn(c[0], c[1], 2), _conv_bn(c[1], c[1], 1))
        self.stage3 = nn.Sequential(_conv_bn(c[1], c[2], 2), _conv_bn(c[2], c[2], 1))
        self.stage4 = nn.Sequential(_conv_bn(c[2], c[3], 2), _conv_bn(c[3], c[3], 1))
        self.feature_channels = c
        self.num_features = c[-1]


@register_backbone("small")
def _small(imagenet: bool) -> Backbone:
    if imagenet:
        raise ModelError("backbone 'small' is trained from scratch and has no ImageNet weights")
    return SmallBackbone()
