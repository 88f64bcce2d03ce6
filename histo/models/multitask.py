"""MultiTaskNet: one backbone, any subset of the pattern / necrosis / mitosis heads."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from histo.errors import ModelError
from histo.inputs import DEFAULT_PATTERN_CLASSES
from histo.models.domain import DomainHead
from histo.models.heads import ClassificationHead, HeatmapHead, LogitHead
from histo.models.registry import create_backbone

HEAD_NAMES = ("pattern", "necrosis", "mitosis")
# The architecture options of each head and their defaults; this is what a model card stores.
HEAD_DEFAULTS: dict[str, dict[str, Any]] = {
    "pattern": {"classes": list(DEFAULT_PATTERN_CLASSES), "dropout": 0.0},
    "necrosis": {"dropout": 0.0},
    "mitosis": {"stride_px": 4, "width": 64},
}


def resolve_heads(heads: Mapping[str, Mapping[str, Any] | None] | Iterable[str], source: str = "heads") -> dict[str, dict[str, Any]]:
    """Fill head options with defaults and check them; unknown head or option → ModelError."""
    if isinstance(heads, str):
        heads = [heads]
    items = heads.items() if isinstance(heads, Mapping) else ((h, None) for h in heads)
    out: dict[str, dict[str, Any]] = {}
    for name, opts in items:
        if name not in HEAD_DEFAULTS:
            raise ModelError(f"{source}: unknown head {name!r}; known heads: {', '.join(HEAD_NAMES)}")
        opts = dict(opts or {})
        unknown = sorted(set(opts) - set(HEAD_DEFAULTS[name]))
        if unknown:
            raise ModelError(f"{source}: unknown option(s) {unknown} for head {name!r}; "
                             f"known: {sorted(HEAD_DEFAULTS[name])}")
        res = copy.deepcopy(HEAD_DEFAULTS[name])
        res.update(opts)
        _check_head(name, res, source)
        out[name] = res
    if not out:
        raise ModelError(f"{source}: at least one head is needed, choose from {', '.join(HEAD_NAMES)}")
    # Canonical order keeps the output dict and the card stable whatever order the caller used.
    return {k: out[k] for k in HEAD_NAMES if k in out}


def _check_head(name: str, opts: dict[str, Any], source: str) -> None:
    """Type and range checks of one head's options."""
    if "dropout" in opts:
        d = opts["dropout"]
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d < 1:
            raise ModelError(f"{source}: {name}.dropout must be a number in [0, 1), got {d!r}")
        opts["dropout"] = float(d)
    if name == "pattern":
        cls = opts["classes"]
        if (not isinstance(cls, (list, tuple)) or len(cls) < 2
                or not all(isinstance(c, str) and c for c in cls) or len(set(cls)) != len(cls)):
            raise ModelError(f"{source}: pattern.classes must be a list of at least 2 distinct names, got {cls!r}")
        opts["classes"] = list(cls)
    if name == "mitosis":
        for key in ("stride_px", "width"):
            v = opts[key]
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ModelError(f"{source}: mitosis.{key} must be a positive integer, got {v!r}")


class MultiTaskNet(nn.Module):
    """Backbone + selected heads; ``forward(x)`` → dict of logits per head.

    Output: ``pattern`` ``(N, C)``, ``necrosis`` ``(N,)``, ``mitosis`` ``(N, 1, H/s, W/s)``; only
    the heads asked for. Inputs are normalised float RGB ``(N, 3, H, W)``.
    """

    def __init__(self, backbone_name: str,
                 heads: Mapping[str, Mapping[str, Any] | None] | Iterable[str] = HEAD_NAMES,
                 pretrained: bool | str | Path = False):
        super().__init__()
        self.backbone_name = backbone_name
        self.heads_config = resolve_heads(heads)
        self.backbone, nf = create_backbone(backbone_name, pretrained)
        self.num_features = nf
        # The training domain (histo.models.domain): attached once calibrated (attach_domain; build_model rebuilds
        # it from the card); its buffers travel with the weights.
        self.domain: DomainHead | None = None
        h = self.heads_config
        if "pattern" in h:
            self.pattern = ClassificationHead(nf, len(h["pattern"]["classes"]), h["pattern"]["dropout"])
        if "necrosis" in h:
            self.necrosis = LogitHead(nf, h["necrosis"]["dropout"])
        if "mitosis" in h:
            self.mitosis = HeatmapHead(self.backbone.feature_channels, self.backbone.feature_strides,
                                       h["mitosis"]["stride_px"], h["mitosis"]["width"])

    @property
    def pattern_classes(self) -> list[str]:
        """Pattern class names in logit order (empty without a pattern head)."""
        return list(self.heads_config.get("pattern", {}).get("classes", []))

    def attach_domain(self, head: DomainHead) -> None:
        """Give the net its training-domain statistics (forward then also returns ``ood``)."""
        self.domain = head

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per selected head; with a domain head also ``ood`` (N,): the tile's ood_score (<= 1 in domain)."""
        pyramid = self.backbone.forward_pyramid(x)
        out: dict[str, torch.Tensor] = {}
        if self.domain is not None:
            out["ood"] = self.domain(x, pyramid)
        if "pattern" in self.heads_config or "necrosis" in self.heads_config:
            pooled = self.backbone.pool(pyramid[-1])
            if "pattern" in self.heads_config:
                out["pattern"] = self.pattern(pooled)
            if "necrosis" in self.heads_config:
                out["necrosis"] = self.necrosis(pooled)
        if "mitosis" in self.heads_config:
            out["mitosis"] = self.mitosis(pyramid)
        return out


class MultiScaleNet(nn.Module):
    """Several MultiTaskNets, one per input scale (each its own backbone, tile size and µm/px).

    ``forward(x, scale)`` runs the net of one scale; ``nets[scale]`` is that MultiTaskNet. The heads of
    all scales together are disjoint: each head reads at exactly one scale (see histo.models.ModelCard).
    """

    def __init__(self, scales: Mapping[str, tuple[str, Mapping[str, Mapping[str, Any] | None]]],
                 pretrained: bool | str | Path = False):
        super().__init__()
        if not scales:
            raise ModelError("MultiScaleNet needs at least one scale")
        nets = {name: MultiTaskNet(backbone, heads, pretrained=pretrained)
                for name, (backbone, heads) in scales.items()}
        self.nets = nn.ModuleDict(nets)
        seen: dict[str, str] = {}
        for name, net in nets.items():
            for h in net.heads_config:
                if h in seen:
                    raise ModelError(f"head {h!r} is fed by scales {seen[h]!r} and {name!r}: one scale per head")
                seen[h] = name

    @property
    def scale_names(self) -> list[str]:
        """Scale names in card order."""
        return list(self.nets.keys())

    def forward(self, x: torch.Tensor, scale: str) -> dict[str, torch.Tensor]:
        """Logits of the heads of ``scale`` for tiles read at that scale."""
        return self.nets[scale](x)


def scale_nets(model: nn.Module, scales: Iterable[str]) -> dict[str, nn.Module]:
    """The per-scale nets of a model: a MultiScaleNet's ``nets``, or a one-scale model under its only scale name."""
    names = list(scales)
    if isinstance(model, MultiScaleNet):
        missing = [n for n in names if n not in model.nets]
        if missing:
            raise ModelError(f"model has no net for scale(s) {missing} (it has {model.scale_names})")
        return {n: model.nets[n] for n in names}
    if len(names) != 1:
        raise ModelError(f"a one-scale model cannot serve scales {names}; build a MultiScaleNet")
    return {names[0]: model}
