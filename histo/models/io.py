"""Model files: ``<name>.safetensors`` weights plus ``<name>.card.json``, written atomically, never pickled."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import torch

from histo.atomic import atomic_path
from histo.errors import ModelError
from histo.models.card import ModelCard
from histo.models.multitask import MultiTaskNet
from histo.models.registry import PICKLE_SUFFIXES, format_keys, read_safetensors, refuse_pickle

WEIGHTS_SUFFIX = ".safetensors"
CARD_SUFFIX = ".card.json"


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


def save_model(model: MultiTaskNet, card: ModelCard, dir_or_prefix: str | Path) -> tuple[Path, Path]:
    """Write weights and card (card last, as the completion mark); returns (weights_path, card_path)."""
    from safetensors.torch import save

    if not isinstance(model, MultiTaskNet):
        raise ModelError(f"save_model expects a MultiTaskNet, got {type(model).__name__}")
    if card.backbone != model.backbone_name:
        raise ModelError(f"card backbone {card.backbone!r} does not match the model's {model.backbone_name!r}")
    if card.heads != model.heads_config:
        raise ModelError(f"card heads {card.heads} do not match the model's {model.heads_config}")
    weights_path, card_path = model_paths(dir_or_prefix, card.name)
    # contiguous(): channels_last tensors are strided views that safetensors would otherwise reject.
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    blob = save(tensors, metadata={"format": "pt", "histo_model": card.name})
    card = dataclasses.replace(card, weights_sha256=hashlib.sha256(blob).hexdigest())
    _atomic_write(weights_path, blob)
    _atomic_write(card_path, card.to_json().encode("utf-8"))
    return weights_path, card_path


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


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[MultiTaskNet, ModelCard]:
    """Rebuild the net from its card and load the safetensors weights strictly; returns (model in eval mode, card).

    ``path`` is a model folder holding one card, a card, a weights file or their common prefix.
    """
    p = find_card(path)
    if p.suffix.lower() in PICKLE_SUFFIXES or (p.is_file() and not str(p).endswith(CARD_SUFFIX)):
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
    state = read_safetensors(weights_path)
    model = MultiTaskNet(card.backbone, card.heads, pretrained=False)
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
