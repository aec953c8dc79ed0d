"""The model zoo: checkpoints shipped with the package (``advshield/zoo/``), loadable offline as ``zoo:NAME``.

A zoo entry is always a *name* (letters, digits, ``.``, ``_``, ``-``; no ``/``, no ``..``), never a path; so is
a card's ``base`` (the zoo classifier an FRU model was built on): see :func:`zoo_base_spec`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ModelError
from .checkpoint import read_card

_PKG = Path(__file__).resolve().parent.parent
ZOO_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_zoo_name(name: Any, what: str = "zoo model name") -> str:
    """``name`` if it is a zoo name (see the module docstring); else a one-line :class:`ModelError`."""
    if not isinstance(name, str) or not ZOO_NAME.match(name) or ".." in name or len(name) > 128:
        raise ModelError(f"{what} {name!r} is not a zoo name (letters, digits, '.', '_', '-'; not a path)")
    return name


def zoo_dirs() -> list[Path]:
    """Where zoo entries are looked up: ``$ADVSHIELD_ZOO`` (``:``-separated), the package's ``zoo/``, the
    repository's ``zoo/`` (for an editable install)."""
    dirs = [Path(p) for p in os.environ.get("ADVSHIELD_ZOO", "").split(os.pathsep) if p]
    dirs += [_PKG / "zoo", _PKG.parent.parent / "zoo"]
    return [d for d in dirs if d.is_dir()]


def zoo_cards() -> list[dict[str, Any]]:
    """Every card in the zoo (first directory wins for a name), sorted by kind then name."""
    seen: dict[str, dict[str, Any]] = {}
    for d in zoo_dirs():
        for card_file in sorted(d.glob("*.json")):
            if not card_file.with_suffix(".safetensors").is_file():
                continue
            card = read_card(card_file)
            seen.setdefault(card["name"], {**card, "path": str(card_file.with_suffix(".safetensors"))})
    return sorted(seen.values(), key=lambda c: (c["kind"], c["name"]))


def zoo_path(name: str) -> Path:
    """Path of ``NAME.safetensors`` in the zoo; :class:`ModelError` for a name that is not a zoo name, or
    listing the known names if absent."""
    check_zoo_name(name)
    for d in zoo_dirs():
        p = d / f"{name}.safetensors"
        if p.is_file():
            return p
    known = ", ".join(c["name"] for c in zoo_cards()) or "none"
    raise ModelError(f"unknown zoo model {name!r} (known: {known})")


def zoo_base_spec(card: dict[str, Any]) -> str:
    """``zoo:BASE`` for a card naming a ``base`` (FRU models); the base is only ever a zoo name.
    :class:`ModelError` if the card has none or it is not a zoo name."""
    base = card.get("base")
    if base is None:
        raise ModelError(f"card of {card.get('name', '?')!r} names no base model")
    return "zoo:" + check_zoo_name(base, f"card of {card.get('name', '?')!r}: base")


def resolve_base(card: dict[str, Any]) -> nn.Module:
    """The zoo classifier a card's ``base`` names, loaded (eval mode)."""
    from .specs import load_model

    return load_model(zoo_base_spec(card))
