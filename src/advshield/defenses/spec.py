"""Defense specs: the one grammar (library and CLI) naming a defense or a stack of defenses, and the one builder.

Grammar::

    SPEC  := ITEM ("+" ITEM)*                              applied left to right
    ITEM  := NAME [":" KEY "=" VALUE ("," KEY "=" VALUE)*]
    NAME  := a registered defense (jpeg, median, nrp, ...) | zoo:NAME | PATH.safetensors (a trained purifier,
             or a diffusion denoiser: DiffPure with it)

VALUEs are parsed as int, float, bool (``true``/``false``), ``none``, else a string; each must fit the type of
the constructor argument it sets (checked before building). Examples: ``"jpeg:quality=50"``,
``"median:window=5+jpeg"``, ``"zoo:nrp-fmnist:adapt_channels=true"``. A registered name never holds a colon, so
``zoo:`` and file paths are recognised first. Limits: values cannot hold ``,`` or ``+`` (``1e+3`` is understood).
"""
from __future__ import annotations

import inspect
import math
import numbers
import re
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import AdvshieldError
from ..registry import DEFENSES
from .base import Defense, Identity, check_once, init_settings, trusted_input
from .nrp import Purifier
from .purifier import card_channels, fit_channels, purifier_card

__all__ = ["DefenseItem", "Stack", "build_defense", "compatible_defenses", "describe_defense", "is_named",
           "parse_defense_spec"]

_TRAINED_FILE = re.compile(r"^(.+?\.(?:safetensors|json))(?::(.*))?$", re.DOTALL)
_AUTOENCODER_ARCHS = ("ae", "vae")


@dataclass
class DefenseItem:
    """One parsed spec item: ``name`` (registered name, ``zoo:NAME`` or a file path) and its settings."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def trained(self) -> bool:
        """A trained purifier checkpoint (``zoo:NAME`` or a file), not a registered defense."""
        return self.name.startswith("zoo:") or _TRAINED_FILE.match(self.name) is not None


# -- parsing ---------------------------------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """``"50"`` → 50, ``"0.5"`` → 0.5, ``"true"``/``"false"`` → bool, ``"none"`` → None, else the string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _split_items(spec: str) -> list[str]:
    """Split on ``+``, gluing back the exponent of a float (``1e+3``)."""
    parts: list[str] = []
    for piece in spec.split("+"):
        if parts and re.search(r"[0-9.][eE]$", parts[-1]) and re.match(r"[0-9]", piece):
            parts[-1] += "+" + piece
        else:
            parts.append(piece)
    return parts


def _parse_settings(item: str, text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    settings: dict[str, Any] = {}
    for pair in text.split(","):
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise AdvshieldError(f"defense spec item {item!r}: expected KEY=VALUE after ':', got {pair.strip()!r}")
        if key in settings:
            raise AdvshieldError(f"defense spec item {item!r} sets {key} twice")
        settings[key] = parse_value(value)
    return settings


def parse_item(text: str) -> DefenseItem:
    """One ITEM (see the module docstring) → :class:`DefenseItem`; the name is checked later, when built."""
    item = text.strip()
    if not item:
        raise AdvshieldError("defense spec has an empty item (check for a doubled or trailing '+')")
    if item.startswith("zoo:"):
        name, _, rest = item[4:].partition(":")
        if not name.strip():
            raise AdvshieldError(f"defense spec item {item!r}: zoo: needs a NAME")
        return DefenseItem("zoo:" + name.strip(), _parse_settings(item, rest if ":" in item[4:] else None))
    match = _TRAINED_FILE.match(item)
    if match:
        return DefenseItem(match.group(1).strip(), _parse_settings(item, match.group(2)))
    name, colon, rest = item.partition(":")
    return DefenseItem(name.strip().lower(), _parse_settings(item, rest if colon else None))


def parse_defense_spec(spec: str) -> list[DefenseItem]:
    """A SPEC string → its items, left to right. Malformed text → one-line :class:`AdvshieldError`."""
    if not isinstance(spec, str):
        raise AdvshieldError(f"a defense spec must be a string, not {type(spec).__name__}")
    if not spec.strip():
        raise AdvshieldError("defense spec is empty (use 'none' for no defense)")
    return [parse_item(part) for part in _split_items(spec)]


# -- the constructor a spec item names -----------------------------------------------------------------------------
def _item_class(item: DefenseItem) -> type[nn.Module]:
    if item.trained:
        from .shipped import ZooPurifier
        from .shipped_ae import ZooAutoencoder
        from .shipped_diffusion import DiffPureDefense

        card = purifier_card(item.name)
        if card.get("kind") == "diffusion":  # a DDPM checkpoint names DiffPure with that denoiser
            return DiffPureDefense
        if card.get("kind") not in (None, "purifier"):
            raise AdvshieldError(f"{item.name} is a {card.get('kind')} checkpoint, not a purifier or a diffusion "
                                 "denoiser")
        return ZooAutoencoder if str(card.get("architecture")) in _AUTOENCODER_ARCHS else ZooPurifier
    if item.name not in DEFENSES:
        known = ", ".join(DEFENSES.names())
        raise AdvshieldError(f"unknown defense {item.name!r} (known: {known}; or zoo:NAME / PATH.safetensors)")
    return DEFENSES.get(item.name)


def _parameters(cls: type, trained: bool) -> dict[str, inspect.Parameter]:
    """Keyword settings of ``cls`` (``spec`` is the item name itself for a trained purifier)."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return {p.name: p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            and not (trained and p.name == "spec")}


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls.__init__)
    except (NameError, TypeError, AttributeError):  # an annotation that does not resolve: types go unchecked
        return {}


def _type_name(hint: Any) -> str:
    args = typing.get_args(hint)
    if args and (typing.get_origin(hint) in (typing.Union, types.UnionType)):
        return " or ".join(_type_name(a) for a in args)
    return "none" if hint is type(None) else getattr(hint, "__name__", str(hint))


def _fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits a (resolved) type hint; unknown hints accept anything."""
    args = typing.get_args(hint)
    if args and typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    return True


def _accepted(cls: type, trained: bool) -> str:
    hints = _hints(cls)
    names = [f"{n} ({_type_name(hints[n])})" if n in hints else n for n in _parameters(cls, trained)]
    return ", ".join(names) or "none"


def check_settings(item: DefenseItem, cls: type | None = None) -> type:
    """The class ``item`` names, after checking each setting's keyword and type against its constructor."""
    cls = cls or _item_class(item)
    params, hints = _parameters(cls, item.trained), _hints(cls)
    for key, value in item.settings.items():
        if key not in params:
            raise AdvshieldError(f"defense {item.name} has no setting {key!r} "
                                 f"(accepted: {_accepted(cls, item.trained)})")
        if key in hints and not _fits(value, hints[key]):
            raise AdvshieldError(f"defense {item.name}: {key}={value!r} is not {_type_name(hints[key])} "
                                 f"(accepted: {_accepted(cls, item.trained)})")
    return cls


# -- stacks --------------------------------------------------------------------------------------------------------
def _label(m: nn.Module) -> str:
    if isinstance(m, Defense):
        return f"{m.name}({m.extra_repr()})"
    return type(m).__name__


class Stack(Defense):
    """Defenses applied left to right: N×C×H×W in [0,1] → same shape in [0,1].

    Randomized if any member is; differentiable if all are; BPDA substitute: the members' substitutes composed
    (:meth:`bpda` composes the members' BPDA, so the forward value stays exact). ``repr``:
    ``jpeg(quality=50)+median(window=3)``."""

    name = "stack"

    def __init__(self, members: Iterable[nn.Module]) -> None:
        super().__init__()
        flat: list[nn.Module] = []
        for m in members:
            flat.extend(m.members if isinstance(m, Stack) else [] if isinstance(m, Identity) else [m])
        self.members = nn.ModuleList(flat)
        self.name = "+".join(getattr(m, "name", type(m).__name__) for m in flat) or "none"

    @property
    def randomized(self) -> bool:  # type: ignore[override]
        return any(bool(getattr(m, "randomized", False)) for m in self.members)

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        return all(bool(getattr(m, "differentiable", True)) for m in self.members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.members:
            x = m(x)
        return x

    def substitute(self, x: torch.Tensor) -> torch.Tensor:
        with trusted_input():
            for m in self.members:
                x = m.substitute(x) if isinstance(m, Defense) else m(x)
        return x

    def bpda(self, x: torch.Tensor) -> torch.Tensor:
        check_once(x)
        with trusted_input():
            for m in self.members:
                x = m.bpda(x) if isinstance(m, Defense) else m(x)
        return x

    def settings(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return "+".join(_label(m) for m in self.members) or "none()"


# -- building ------------------------------------------------------------------------------------------------------
def is_named(spec: Any) -> bool:
    """Whether ``spec`` is a string naming exactly one defense (so keyword settings can go to it)."""
    return isinstance(spec, str) and bool(spec.strip()) and len(_split_items(spec)) == 1


def _build_item(item: DefenseItem, seed: int | None, adapt_channels: bool) -> nn.Module:
    cls = check_settings(item)
    params = _parameters(cls, item.trained)
    kwargs = dict(item.settings)
    if item.trained:
        kwargs["spec"] = item.name
    if seed is not None and "seed" in params:
        kwargs.setdefault("seed", seed)
    if adapt_channels and "adapt_channels" in params:
        kwargs.setdefault("adapt_channels", True)
    try:
        defense = cls(**kwargs)
    except AdvshieldError as e:
        raise type(e)(f"defense {item.name}: {e}") from None
    except (TypeError, ValueError) as e:
        raise AdvshieldError(f"defense {item.name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None
    if item.trained:
        defense.name = item.name
    return defense


def _build_module(m: nn.Module, adapt_channels: bool) -> nn.Module:
    if isinstance(m, Purifier):  # a bare trained purifier: same channel rule as one named by spec
        return fit_channels(m, m.in_channels, m.name, adapt_channels)
    return m


def build_defense(spec: Any, seed: int | None = None, *, adapt_channels: bool = False, **kwargs: Any) -> nn.Module:
    """THE builder: a defense spec → an ``nn.Module`` mapping [0,1] images to [0,1] images.

    ``spec``: a SPEC string (module docstring), an ``nn.Module``, or a list/tuple of those (a :class:`Stack`,
    applied left to right; a single item is returned as itself). ``seed``: given to every defense with a
    ``seed`` argument not set in the spec (stack member i gets ``seed + i``), so a run repeats exactly.
    ``adapt_channels``: trained purifiers may run on images with another channel count (else refused).
    ``**kwargs``: settings of a single named defense (``build_defense("jpeg", quality=50)``). Unknown names,
    unknown or ill-typed settings and out-of-range values raise a one-line :class:`AdvshieldError`."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise AdvshieldError(f"seed must be an integer or None, not {seed!r}")
    parts: list[Any] = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not parts:
        return Identity()
    items: list[DefenseItem | nn.Module] = []
    for part in parts:
        if isinstance(part, str):
            items.extend(parse_defense_spec(part))
        elif isinstance(part, nn.Module):
            items.append(part)
        else:
            raise AdvshieldError(f"a defense must be a spec string, an nn.Module or a list of them, not "
                                 f"{type(part).__name__}")
    if kwargs:
        if len(items) != 1 or not isinstance(items[0], DefenseItem):
            raise AdvshieldError(f"settings {', '.join(sorted(kwargs))} need a single named defense, not {spec!r}")
        twice = sorted(set(kwargs) & set(items[0].settings))
        if twice:
            raise AdvshieldError(f"defense {items[0].name}: {', '.join(twice)} set both in the spec and as argument")
        items[0] = DefenseItem(items[0].name, {**items[0].settings, **kwargs})
    built = [_build_item(it, None if seed is None else seed + i, adapt_channels) if isinstance(it, DefenseItem)
             else _build_module(it, adapt_channels) for i, it in enumerate(items)]
    return built[0] if len(built) == 1 else Stack(built)


# -- names for reports ---------------------------------------------------------------------------------------------
def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        return format(value, ".10g")
    return str(value)


def _canonical(name: str, settings: dict[str, Any], cls: type | None, trained: bool) -> str:
    if cls is not None:
        params = _parameters(cls, trained)
        order = {k: i for i, k in enumerate(params)}
        keys = sorted(settings, key=lambda k: order.get(k, len(order)))
        settings = {k: settings[k] for k in keys if not (k in params and _same(settings[k], params[k].default))}
    if not settings:
        return name
    return name + ":" + ",".join(f"{k}={_format_value(v)}" for k, v in settings.items())


def _same(a: Any, b: Any) -> bool:
    if b is inspect.Parameter.empty or isinstance(a, bool) != isinstance(b, bool):
        return False
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    try:
        return bool(a == b)
    except (TypeError, ValueError, RuntimeError):  # e.g. a tensor setting
        return False


def _describe_module(m: nn.Module) -> str:
    if isinstance(m, Stack):
        return "+".join(_describe_module(x) for x in m.members) or "none"
    name = getattr(m, "name", None)
    if isinstance(m, Defense) and isinstance(name, str):
        trained = name.startswith("zoo:") or _TRAINED_FILE.match(name) is not None
        cls = type(m) if trained or (name in DEFENSES and DEFENSES.get(name) is type(m)) else None
        settings = {k: v for k, v in init_settings(m).items() if not (trained and k == "spec")}
        return _canonical(name, settings if cls is not None else {}, cls, trained)
    return type(m).__name__


def describe_defense(spec: Any, **kwargs: Any) -> str:
    """Canonical name of a defense for reports: the spec with lowercase names and the settings that differ from
    the defaults, in constructor order (``"jpeg:quality=75"`` → ``"jpeg"``, ``"JPEG: quality=50"`` →
    ``"jpeg:quality=50"``); modules by their name and settings; None → ``"none"``. Unknown names and settings are
    refused as by :func:`build_defense` (trained purifiers need their card)."""
    if spec is None:
        return "none"
    parts: Sequence[Any] = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    out: list[str] = []
    items: list[DefenseItem | nn.Module] = []
    for part in parts:
        items.extend(parse_defense_spec(part) if isinstance(part, str) else [part])
    if kwargs:
        if len(items) != 1 or not isinstance(items[0], DefenseItem):
            raise AdvshieldError(f"settings {', '.join(sorted(kwargs))} need a single named defense, not {spec!r}")
        items[0] = DefenseItem(items[0].name, {**items[0].settings, **kwargs})
    for it in items:
        if isinstance(it, DefenseItem):
            cls = check_settings(it)
            if it.name != "none" or it.settings:
                out.append(_canonical(it.name, it.settings, cls, it.trained))
        elif isinstance(it, nn.Module):
            if not isinstance(it, Identity):
                out.append(_describe_module(it))
        else:
            raise AdvshieldError(f"a defense must be a spec string, an nn.Module or a list of them, not "
                                 f"{type(it).__name__}")
    return "+".join(out) or "none"


# -- domains -------------------------------------------------------------------------------------------------------
def _item_channels(item: DefenseItem) -> tuple[int | None, str]:
    """(channels the item requires or None, its label); ``adapt_channels=true`` in the spec lifts the limit."""
    if item.settings.get("adapt_channels") is True:
        return None, item.name
    if item.trained:
        return card_channels(purifier_card(item.name)), item.name
    cls = _item_class(item)
    getter = getattr(cls, "input_channels", None)
    channels = getter() if callable(getter) else None
    spec = getattr(cls, "spec", None)
    return channels, f"{item.name} ({spec})" if isinstance(spec, str) else item.name


def compatible_defenses(names: Iterable[str], channels: int) -> tuple[list[str], dict[str, str]]:
    """Split defense specs into those that run on ``channels``-channel images and those left out.

    Returns (kept specs in order, {left-out spec: reason}). A trained purifier (or a stack holding one) whose card
    records another channel count is left out, as is one whose card cannot be read; unknown names raise."""
    kept: list[str] = []
    left: dict[str, str] = {}
    for spec in names:
        reason = None
        for item in parse_defense_spec(spec):
            try:
                need, label = _item_channels(item)
            except AdvshieldError as e:
                if not item.trained and item.name not in DEFENSES:
                    raise
                reason = str(e)
                break
            if need is not None and need != channels:
                reason = (f"{label} takes {need}-channel images, the data are {channels}-channel "
                          f"(add adapt_channels=true to use it anyway)")
                break
        if reason is None:
            kept.append(spec)
        else:
            left[spec] = reason
    return kept, left
