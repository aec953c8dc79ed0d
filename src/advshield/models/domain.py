"""What images a model takes (channels, size), checks against the data, and 1↔3 channel adaptation.

Images are float N×C×H×W in [0,1]. The input domain comes from the model's card (``card["input"]``), else from
its first convolution (channels only).

Size rule: a card's ``input.size`` (an int or [H, W]) is binding, except when it is ``"any"`` or absent, or the
card's ``input.note`` says other sizes are resized (the ``ae``/``vae`` purifiers resize inside, so any size
works). Classifiers are held to their card's size: a flatten/linear head (LeNet) fails at other sizes, and the
global-pool ones (VGG, ResNet) run but were only trained and measured at that size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import AdvshieldError
from .outputs import ModelWrapper

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601


@dataclass(frozen=True)
class InputDomain:
    """``channels`` (None: unknown/any) and ``size`` (H, W) (None: any size)."""

    channels: int | None
    size: tuple[int, int] | None


def input_channels(model: nn.Module) -> int | None:
    """Channels the model's first convolution expects (through wrappers, TorchScript too); None without one."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
        if getattr(m, "original_name", None) == "Conv2d":  # a scripted Conv2d
            weight = getattr(m, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.dim() == 4:
                return int(weight.shape[1]) * int(getattr(m, "groups", 1))
    return None


def _card_size(inp: dict[str, Any]) -> tuple[int, int] | None:
    size = inp.get("size")
    if "resiz" in str(inp.get("note", "")).lower():
        return None
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return (size, size)
    if (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        return (int(size[0]), int(size[1]))
    return None  # "any", absent or malformed: not fixed


def input_domain(model: nn.Module) -> InputDomain:
    """The model's :class:`InputDomain`: from ``model.card["input"]`` when it has one (see the module docstring
    for the size rule), else channels from the first convolution and any size."""
    card = getattr(model, "card", None)
    inp = card.get("input") if isinstance(card, dict) else None
    if isinstance(inp, dict):
        ch = inp.get("channels")
        channels = ch if isinstance(ch, int) and not isinstance(ch, bool) and ch > 0 else input_channels(model)
        return InputDomain(channels, _card_size(inp))
    return InputDomain(input_channels(model), None)


def check_domain(domain: InputDomain, shape: tuple[int, int, int], what: str,
                 adapt_channels: bool = False) -> None:
    """Refuse data of ``shape`` (C, H, W) the model described by ``what`` (e.g. ``"--model zoo:fmnist-vgg"``)
    cannot take: other channels (unless ``adapt_channels`` and the pair is 1↔3) or another fixed size.
    One-line :class:`AdvshieldError` with the flag that fixes it."""
    c, h, w = (int(v) for v in shape)
    if domain.channels is not None and c != domain.channels:
        pair = {c, domain.channels} == {1, 3}
        if not (adapt_channels and pair):
            hint = ""
            if pair:
                how = "the luma" if domain.channels == 1 else "the gray channel repeated"
                hint = f" (pass --adapt-channels to feed it {how})"
            raise AdvshieldError(f"{what} takes {domain.channels}-channel images, the data are {c}-channel{hint}")
    if domain.size is not None and (h, w) != tuple(domain.size):
        sh, sw = domain.size
        raise AdvshieldError(f"{what} takes {sh}×{sw} images, the data are {h}×{w} "
                             f"(pass --size {sh} {sw} to resize)")


class ChannelAdapter(ModelWrapper):
    """``inner`` fed ``channels``-channel images whatever the batch has: gray → RGB by repeating the channel,
    RGB → gray by ITU-R 601 luma (0.299 R + 0.587 G + 0.114 B). Differentiable, so gradients (and adversarial
    perturbations) stay in the data's own channels. Other channel counts pass through unchanged. Layer names are
    the wrapped model's (see :class:`~advshield.models.outputs.ModelWrapper`)."""

    def __init__(self, inner: nn.Module, channels: int) -> None:
        super().__init__(inner)
        if channels not in (1, 3):
            raise AdvshieldError(f"ChannelAdapter channels must be 1 or 3, not {channels!r}")
        object.__setattr__(self, "channels", channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(to_channels(x, self.channels))

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """N×C×H×W images as ``channels`` (1 or 3) channels when C is the other of 1 and 3; else ``x`` unchanged."""
    if x.dim() != 4 or x.shape[1] == channels or {int(x.shape[1]), channels} != {1, 3}:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1)
    luma = torch.tensor(LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * luma).sum(1, keepdim=True)


def adapt_channels(model: nn.Module, channels: int | None = None) -> nn.Module:
    """``model`` wrapped in a :class:`ChannelAdapter` for its own channel count (``channels``, else
    :func:`input_domain`'s), so it takes 1- or 3-channel images; ``model`` itself when that count is not 1 or 3
    or unknown. Wrap the whole model (an ensemble averaging logits of members with equal channels included);
    when members of an ensemble take different channels, wrap each member instead."""
    want = channels if channels is not None else input_domain(model).channels
    if want not in (1, 3):
        return model
    return ChannelAdapter(model, want)
