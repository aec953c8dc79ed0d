"""Checkpoints as safetensors plus a JSON card; building a model from its card.

A card (``NAME.json`` beside ``NAME.safetensors``) holds: name, kind (classifier, purifier...), dataset,
architecture and its arguments, input description, class names, metrics, training command and the
sha256 of the weights file. Loading checks the hash and that the tensors match the architecture.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ModelError
from ..registry import MODELS, Registry
from ..utils import atomic_path, sha256_file, write_json

REQUIRED_CARD_KEYS = ("name", "kind", "dataset", "architecture", "arch_args", "metrics", "sha256")


def card_path(weights: str | os.PathLike) -> Path:
    return Path(weights).with_suffix(".json")


def save_checkpoint(model: nn.Module, weights: str | os.PathLike, card: dict[str, Any]) -> dict[str, Any]:
    """Write ``weights`` (safetensors) and its card atomically; fill in ``sha256``. Returns the card."""
    weights = Path(weights)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"name": str(card.get("name", ""))})
        digest = sha256_file(tmp)
    card = {**card, "weights": weights.name, "sha256": digest}
    write_json(card_path(weights), card)
    return card


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a JSON card."""
    path = Path(path)
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"card {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise ModelError(f"card {path} is not readable JSON: {e}") from None
    missing = [k for k in REQUIRED_CARD_KEYS if k not in card] if isinstance(card, dict) else ["all"]
    if missing:
        raise ModelError(f"card {path} lacks {', '.join(missing)}")
    return card


def build_from_card(card: dict[str, Any], registry: Registry = MODELS) -> nn.Module:
    """Instantiate the card's architecture with its arguments (no weights)."""
    factory = registry.get(card["architecture"])
    try:
        return factory(**card["arch_args"])
    except TypeError as e:
        raise ModelError(f"card of {card['name']!r}: bad arguments for {card['architecture']}: {e}") from None


def load_checkpoint(weights: str | os.PathLike, registry: Registry = MODELS,
                    verify_hash: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Load ``weights`` (.safetensors) with its card; return (model in eval mode, card)."""
    weights = Path(weights)
    if not weights.is_file():
        raise ModelError(f"checkpoint {weights} does not exist")
    card = read_card(card_path(weights))
    if verify_hash:
        digest = sha256_file(weights)
        if digest != card["sha256"]:
            raise ModelError(f"checkpoint {weights} does not match its card (sha256 {digest[:12]}…, "
                             f"card says {str(card['sha256'])[:12]}…)")
    model = build_from_card(card, registry)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"checkpoint {weights} is not a readable safetensors file: {e}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise ModelError(f"checkpoint {weights} does not match its card's architecture: {detail}") from None
    model.eval()
    model.card = card  # type: ignore[assignment]
    return model, card
