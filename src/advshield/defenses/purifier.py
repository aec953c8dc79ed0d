"""Trained purifiers (zoo or checkpoint files): loading, their input domain (channels, from the card), the
per-channel adapter, and :func:`defend`, the one way to put defenses in front of a model."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checks import check_number
from ..errors import AdvshieldError, ModelError
from ..models.checkpoint import card_path, load_checkpoint, read_card
from ..models.zoo import zoo_path
from ..registry import PURIFIERS
from .base import Defended, Defense, Identity, check_once, trusted_input
from .nrp import DynamicPurifier, Purifier

PURIFIER_KINDS = ("purifier",)


def purifier_path(spec: str) -> Path:
    """The ``.safetensors`` file of a trained purifier spec: ``zoo:NAME``, ``PATH.safetensors`` or its ``.json``
    card."""
    spec = str(spec)
    if spec.startswith("zoo:"):
        return zoo_path(spec[4:])
    path = Path(spec)
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if path.suffix != ".safetensors":
        raise ModelError(f"cannot load purifier {spec!r}: use zoo:NAME or a .safetensors file with its card")
    return path


def purifier_card(spec: str) -> dict[str, Any]:
    """The card of a trained purifier spec, read without loading the weights."""
    return read_card(card_path(purifier_path(spec)))


def card_channels(card: dict[str, Any]) -> int | None:
    """Input channels recorded in a card (``card["input"]["channels"]``, else ``arch_args["in_channels"]``)."""
    channels = (card.get("input") or {}).get("channels", (card.get("arch_args") or {}).get("in_channels"))
    return None if channels is None else int(channels)


def load_purifier(spec: str) -> Purifier:
    """A trained purifier as a :class:`Purifier` defense in eval mode ([0,1] → [0,1], same shape).

    ``spec``: ``zoo:NAME`` or a ``.safetensors`` file with its JSON card beside it (a ``.json`` card path
    works too); the card's kind must be "purifier" and its architecture a :data:`PURIFIERS` name."""
    net, card = load_checkpoint(purifier_path(spec), PURIFIERS)
    if card["kind"] not in PURIFIER_KINDS:
        raise ModelError(f"{card['name']!r} is a {card['kind']}, not a purifier")
    purifier = Purifier(net, name=str(card["name"])).eval()
    purifier.card = card  # type: ignore[assignment]
    return purifier


class _Wrapper(Defense):
    """A defense around another one; differentiable/randomized as the inner defense."""

    def __init__(self, purifier: nn.Module) -> None:
        super().__init__()
        self.purifier = purifier

    @property
    def randomized(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.purifier, "randomized", False))

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.purifier, "differentiable", True))

    def _inner_substitute(self, x: torch.Tensor) -> torch.Tensor:
        return self.purifier.substitute(x) if isinstance(self.purifier, Defense) else self.purifier(x)

    def _inner_bpda(self, x: torch.Tensor) -> torch.Tensor:
        return self.purifier.bpda(x) if isinstance(self.purifier, Defense) else self.purifier(x)


class PerChannel(_Wrapper):
    """A 1-channel purifier applied to each channel on its own: N×C×H×W → (N·C)×1×H×W → purifier → N×C×H×W.

    Differentiable as the purifier; randomized as the purifier; BPDA substitute: the purifier's, per channel."""

    name = "per-channel"

    def _per_channel(self, fn, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return fn(x.reshape(n * c, 1, h, w)).reshape(n, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._per_channel(self.purifier, x)

    def substitute(self, x: torch.Tensor) -> torch.Tensor:
        return self._per_channel(self._inner_substitute, x)

    def bpda(self, x: torch.Tensor) -> torch.Tensor:
        check_once(x)
        with trusted_input():
            return self._per_channel(self._inner_bpda, x)

    def __repr__(self) -> str:
        return f"PerChannel({self.purifier!r})"


class ChannelGuard(_Wrapper):
    """Runs ``purifier`` only on images with its ``channels``; any other count is refused with a one-line
    :class:`~advshield.errors.AdvshieldError` naming ``label`` (the purifier spec) instead of adapting silently."""

    name = "channel-guard"

    def __init__(self, purifier: nn.Module, channels: int, label: str) -> None:
        super().__init__(purifier)
        self.channels, self.label = int(channels), str(label)

    def check(self, x: torch.Tensor) -> None:
        c = int(x.shape[1])
        if c == self.channels:
            return
        hint = {1: " (pass adapt_channels=True / --adapt-channels to purify each channel separately)",
                3: " (pass adapt_channels=True / --adapt-channels to feed gray images replicated to RGB)"}
        adaptable = self.channels == 1 or (self.channels == 3 and c in (1, 2, 4))
        raise AdvshieldError(f"purifier {self.label} takes {self.channels}-channel images, the input has {c} "
                             f"channels{hint[self.channels] if adaptable else ''}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check(x)
        return self.purifier(x)

    def substitute(self, x: torch.Tensor) -> torch.Tensor:
        self.check(x)
        return self._inner_substitute(x)

    def bpda(self, x: torch.Tensor) -> torch.Tensor:
        check_once(x)
        self.check(x)
        with trusted_input():
            return self._inner_bpda(x)

    def __repr__(self) -> str:
        return repr(self.purifier)


def fit_channels(purifier: nn.Module, channels: int | None, label: str, adapt_channels: bool = False) -> nn.Module:
    """``purifier`` (taking ``channels``-channel images) ready for any input: with ``adapt_channels`` a 1-channel
    purifier becomes :class:`PerChannel` and a 3-channel :class:`Purifier` keeps its own gray/RGBA adaptation;
    without it a :class:`ChannelGuard` refuses other channel counts. ``channels`` None: returned as is."""
    if channels is None:
        return purifier
    if adapt_channels:
        return PerChannel(purifier) if channels == 1 else purifier
    return ChannelGuard(purifier, channels, label)


def defend(model: nn.Module, defense: Any = None, /, *, dynamic: bool = False, bpda: bool = False,
           eps: float = 16 / 255, sigma: float = 0.05, seed: int | None = None, adapt_channels: bool = False,
           **kwargs: Any) -> nn.Module:
    """``model`` with ``defense`` in front, as an ``nn.Module`` taking float N×C×H×W images in [0,1] (checked).

    ``defense``: None (``model`` itself), an ``nn.Module`` mapping [0,1] images to [0,1] images (any
    :class:`~advshield.defenses.base.Defense`, a :class:`Purifier`), a spec string (``"jpeg"``,
    ``"jpeg:quality=50"``, ``"median+jpeg"``, ``"zoo:nrp-fmnist"``, ``"PATH.safetensors"``; see
    :mod:`advshield.defenses.spec`), or a list/tuple of those applied left to right. ``**kwargs`` set a single
    named defense: ``defend(model, "jpeg", quality=50)``.

    ``dynamic=True`` wraps the defense in :class:`DynamicPurifier` (noise σ=``sigma`` projected to ±``eps``,
    [0,1] units); without it, ``eps``/``sigma`` other than the defaults go to a single named defense taking them
    (``defend(model, "nrp-dynamic", sigma=0.1)``). ``seed``: reproducible noise, also given to randomized defenses
    built from names. ``adapt_channels``: a trained purifier may run on images with another channel count
    (1-channel purifiers per channel); without it such input is refused. ``bpda``: backward straight through the
    defense's substitute."""
    from .spec import Stack, build_defense, is_named

    for flag, value in (("dynamic", dynamic), ("bpda", bpda), ("adapt_channels", adapt_channels)):
        if not isinstance(value, bool):
            raise AdvshieldError(f"{flag} must be True or False, not {value!r}")
    eps = check_number(eps, "eps", low=0.0, high=1.0)
    sigma = check_number(sigma, "sigma", low=0.0)
    if seed is not None:
        seed = int(check_number(seed, "seed", integer=True))
    if not dynamic:
        for key, value, default in (("eps", eps, 16 / 255), ("sigma", sigma, 0.05)):
            if value != default:
                if not is_named(defense):
                    raise AdvshieldError(f"{key} is used with dynamic=True (or by a single named defense taking "
                                         f"{key}), not with {defense!r}")
                kwargs.setdefault(key, value)
    if defense is None and not kwargs:
        if dynamic:
            raise AdvshieldError("dynamic=True needs a defense (got defense=None)")
        return model
    if defense is None:
        raise AdvshieldError(f"defense settings {', '.join(sorted(kwargs))} need a named defense (got defense=None)")
    built = build_defense(defense, seed, adapt_channels=adapt_channels, **kwargs)
    if dynamic:
        built = DynamicPurifier(built, eps=eps, sigma=sigma, seed=seed)
    elif isinstance(built, Identity) or (isinstance(built, Stack) and not len(built.members)):
        return model
    return Defended(model, built, bpda=bpda).eval()
