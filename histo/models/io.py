"""Model files: ``<name>.safetensors`` weights plus ``<name>.card.json``, written atomically, never pickled."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from torch import nn

from histo.atomic import atomic_path
from histo.errors import ModelError
from histo.models.card import ModelCard
from histo.models.domain import BANK_TILES, METHOD_V1, DomainHead
from histo.models.multitask import MultiScaleNet, MultiTaskNet, scale_nets
from histo.models.registry import (
    PICKLE_SUFFIXES,
    format_keys,
    read_safetensors,
    refuse_pickle,
    safetensors_metadata,
)

WEIGHTS_SUFFIX = ".safetensors"
CARD_SUFFIX = ".card.json"
BINDING_KEY = "histo_card_binding"  # safetensors metadata: JSON of the card's bound fields at export


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` through histo.atomic (temp file, fsync, rename), so a killed run leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def model_paths(dir_or_prefix: str | Path, name: str | None = None) -> tuple[Path, Path]:
    """(weights, card) paths: ``dir/<name>.*`` for a directory, else ``<prefix>.*``."""
    p = Path(dir_or_prefix)
    if p.is_dir() or str(dir_or_prefix).endswith(("/", os.sep)):
        if not name:
            raise ModelError(f"{p} is a directory; a model name is needed to name the files in it")
        p = p / name
    s = str(p)
    for suffix in (CARD_SUFFIX, WEIGHTS_SUFFIX):
        if s.endswith(suffix):
            s = s[: -len(suffix)]
    return Path(s + WEIGHTS_SUFFIX), Path(s + CARD_SUFFIX)


def build_model(card: ModelCard, pretrained: bool = False) -> nn.Module:
    """The untrained net a card describes: a MultiTaskNet for one scale, a MultiScaleNet for several.

    A scale with a training domain gets the DomainHead its card section describes (method, bank size), so
    the weights of models calibrated by an earlier histo (METHOD_V1) load as they were saved.
    """
    domain = card.domain or {}
    with_domain = set(domain.get("scales", {}))
    if not card.multiscale:
        name, s = next(iter(card.scales.items()))
        model: nn.Module = MultiTaskNet(s.backbone, s.heads, pretrained=pretrained)
    else:
        model = MultiScaleNet({k: (s.backbone, s.heads) for k, s in card.scales.items()}, pretrained=pretrained)
    nets = scale_nets(model, card.scales)
    for name in with_domain & set(nets):
        net = nets[name]
        if not isinstance(net, MultiTaskNet):
            raise ModelError(f"scale {name!r} of the card is not a MultiTaskNet")
        fig = domain["scales"][name] or {}
        net.attach_domain(DomainHead(net.backbone.feature_channels, domain.get("method", METHOD_V1),
                                     int(fig.get("bank_tiles", BANK_TILES))))
    return model


def _check_fits(model: nn.Module, card: ModelCard) -> None:
    """ModelError unless ``model``'s backbones and heads are the ones ``card`` describes."""
    if not isinstance(model, (MultiTaskNet, MultiScaleNet)):
        raise ModelError(f"save_model expects a MultiTaskNet or MultiScaleNet, got {type(model).__name__}")
    nets = scale_nets(model, card.scales)
    for name, spec in card.scales.items():
        net = nets[name]
        if spec.backbone != net.backbone_name:
            raise ModelError(f"card backbone {spec.backbone!r} (scale {name!r}) does not match the model's "
                             f"{net.backbone_name!r}")
        if spec.heads != net.heads_config:
            raise ModelError(f"card heads {spec.heads} (scale {name!r}) do not match the model's {net.heads_config}")


def save_model(model: nn.Module, card: ModelCard, dir_or_prefix: str | Path) -> tuple[Path, Path]:
    """Write weights and card (card last, as the completion mark); returns (weights_path, card_path).

    The card fields that change how the model is applied (ModelCard.binding) are stored in the
    safetensors metadata too, so load_model refuses a card edited after export.
    """
    from safetensors.torch import save

    _check_fits(model, card)
    weights_path, card_path = model_paths(dir_or_prefix, card.name)
    # contiguous(): channels_last tensors are strided views that safetensors would otherwise reject.
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {"format": "pt", "histo_model": card.name, BINDING_KEY: json.dumps(card.binding(), sort_keys=True)}
    blob = save(tensors, metadata=meta)
    card = card.replace(weights_sha256=hashlib.sha256(blob).hexdigest())
    _atomic_write(weights_path, blob)
    _atomic_write(card_path, card.to_json().encode("utf-8"))
    return weights_path, card_path


def default_model_dir() -> Path:
    """The folder of the default model shipped in the package (histo/resources/models/default)."""
    return Path(__file__).resolve().parents[1] / "resources" / "models" / "default"


def resolve_model(path: str | Path | None) -> tuple[Path, str]:
    """(model path, how it was chosen): the given path, or the shipped default model when None."""
    if path is None:
        d = default_model_dir()
        if not d.is_dir():
            raise ModelError(f"no --model given and the default model is missing from {d}: reinstall histo, "
                             "or pass --model")
        return d, "the default model shipped with histo"
    return Path(path), "given with --model"


def describe_model(card: ModelCard, path: Path, how: str) -> str:
    """One line naming the model a command uses: name, where from, its scales and what it learned from."""
    scales = ", ".join(f"{'/'.join(s.heads)} at {s.mpp:g} µm/px" for s in card.scales.values())
    data = "trained on synthetic phantoms only" if card.synthetic_only else "trained on real and synthetic data"
    return f"model {card.name!r} ({how}: {path}); {scales}; {data}; weights sha256 {(card.weights_sha256 or '?')[:12]}"


def find_card(path: str | Path) -> Path:
    """The card of a model given as a folder holding exactly one card, or the path itself (prefix/card/weights)."""
    p = Path(path)
    if not p.is_dir():
        return p
    cards = sorted(p.glob(f"*{CARD_SUFFIX}"))
    if len(cards) != 1:
        found = ", ".join(c.name for c in cards) or "none"
        raise ModelError(f"model folder {p} must hold exactly one *{CARD_SUFFIX} (found {found}); "
                         "give the card or prefix of the one to use")
    return cards[0]


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelCard]:
    """Rebuild the net from its card and load the safetensors weights strictly; returns (model in eval mode, card).

    The model is a MultiTaskNet for a one-scale card and a MultiScaleNet for several scales; a card
    whose bound fields (input spec, heads, thresholds, preprocessing) differ from the ones stored in the
    weights at export is refused, naming the field.

    ``path`` is a model folder holding one card, a card, a weights file or their common prefix.
    """
    p = find_card(path)
    if p.suffix.lower() in PICKLE_SUFFIXES or (p.is_file() and not str(p).endswith((CARD_SUFFIX, WEIGHTS_SUFFIX))):
        refuse_pickle(p)
    weights_path, card_path = model_paths(p)
    if not card_path.is_file():
        raise ModelError(f"model card {card_path} is missing (a model is {weights_path.name} + {card_path.name})")
    card = ModelCard.load(card_path)
    if not weights_path.is_file():
        raise ModelError(f"weights file {weights_path} is missing (named by card {card_path})")
    if card.weights_sha256 is not None:
        digest = hashlib.sha256(weights_path.read_bytes()).hexdigest()
        if digest != card.weights_sha256:
            raise ModelError(f"weights file {weights_path} does not match its card {card_path}: "
                             f"sha256 {digest[:12]}… vs card weights_sha256 {card.weights_sha256[:12]}…")
    metadata = safetensors_metadata(weights_path)
    if BINDING_KEY in metadata:
        try:
            bound = json.loads(metadata[BINDING_KEY])
        except ValueError as exc:
            raise ModelError(f"weights {weights_path}: damaged {BINDING_KEY} metadata ({exc})") from exc
        card.check_binding(bound, str(weights_path))
    elif card_schema_version(card_path) >= 2:
        raise ModelError(f"weights {weights_path} carry no card binding ({BINDING_KEY} metadata); a schema-2 card "
                         "is only valid with the weights it was exported with: re-export the model with histo")
    state = read_safetensors(weights_path)
    model = build_model(card)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ModelError(f"weights {weights_path} do not fit the net described by {card_path}: "
                         f"missing keys {format_keys(missing)}; unexpected keys {format_keys(unexpected)}")
    bad = [k for k in own if own[k].shape != state[k].shape]
    if bad:
        raise ModelError(f"weights {weights_path} do not fit the net described by {card_path}: "
                         f"{bad[0]} has shape {tuple(state[bad[0]].shape)} in the file, "
                         f"{tuple(own[bad[0]].shape)} in the net ({len(bad)} tensors differ)")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), card


def card_schema_version(card_path: Path) -> int:
    """The schema_version a card file was written with (1 for legacy cards; ModelCard.load upgrades them)."""
    try:
        return int(json.loads(card_path.read_text(encoding="utf-8")).get("schema_version", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0
