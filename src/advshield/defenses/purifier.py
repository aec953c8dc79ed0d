"""Loading trained purifiers (zoo or checkpoint files) and putting one, static or dynamic, in front of a model."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import ModelError
from ..models.checkpoint import load_checkpoint
from ..models.zoo import zoo_path
from ..registry import DEFENSES, PURIFIERS
from . import base
from .nrp import DynamicPurifier, Purifier

PURIFIER_KINDS = ("purifier",)


def load_purifier(spec: str) -> Purifier:
    """A trained purifier as a :class:`Purifier` defense in eval mode ([0,1] → [0,1], same shape).

    ``spec``: ``zoo:NAME`` or a ``.safetensors`` file with its JSON card beside it (a ``.json`` card path
    works too); the card's kind must be "purifier" and its architecture a :data:`PURIFIERS` name."""
    spec = str(spec)
    if spec.startswith("zoo:"):
        path = zoo_path(spec[4:])
    else:
        path = Path(spec)
        if path.suffix == ".json":
            path = path.with_suffix(".safetensors")
        if path.suffix != ".safetensors":
            raise ModelError(f"cannot load purifier {spec!r}: use zoo:NAME or a .safetensors file with its card")
    net, card = load_checkpoint(path, PURIFIERS)
    if card["kind"] not in PURIFIER_KINDS:
        raise ModelError(f"{card['name']!r} is a {card['kind']}, not a purifier")
    purifier = Purifier(net, name=str(card["name"])).eval()
    purifier.card = card  # type: ignore[assignment]
    return purifier


def defend(model: nn.Module, purifier: nn.Module | str | None = None, dynamic: bool = False, *,
           bpda: bool = False, eps: float = 16 / 255, sigma: float = 0.05, seed: int | None = None) -> nn.Module:
    """``model`` with a defense in front, as an ``nn.Module`` taking [0,1] images.

    ``purifier``: a module mapping [0,1] images to [0,1] images (a :class:`Purifier`, any
    :class:`~advshield.defenses.base.Defense`), a spec string (``zoo:NAME``/``.safetensors`` of a trained
    purifier, or a registered input-transform defense name such as ``jpeg``), or None (``model`` itself).
    ``dynamic=True`` wraps it in :class:`DynamicPurifier` (noise σ=``sigma`` projected to ±``eps``, [0,1]
    units; ``seed`` for a reproducible noise sequence, also given to a randomized defense named by string).
    ``bpda``: backward straight through the defense's substitute (identity)."""
    if isinstance(purifier, str):
        purifier = base.build_defense(purifier, seed) if purifier in DEFENSES else load_purifier(purifier)
    if purifier is None:
        if dynamic:
            raise ValueError("dynamic=True needs a purifier")
        return model
    if dynamic:
        purifier = DynamicPurifier(purifier, eps=eps, sigma=sigma, seed=seed)
    return base.defend(model, purifier, bpda=bpda)
