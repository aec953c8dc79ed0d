"""The model zoo: checkpoints shipped in the repository's ``zoo/`` folder, loadable offline as ``zoo:NAME``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ModelError
from .checkpoint import read_card

_PKG = Path(__file__).resolve().parent.parent


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
    """Path of ``NAME.safetensors`` in the zoo; :class:`ModelError` listing known names if absent."""
    for d in zoo_dirs():
        p = d / f"{name}.safetensors"
        if p.is_file():
            return p
    known = ", ".join(c["name"] for c in zoo_cards()) or "none"
    raise ModelError(f"unknown zoo model {name!r} (known: {known})")
