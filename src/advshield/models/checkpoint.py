"""Checkpoints as safetensors plus a JSON card; building a model from its card; reading user weight files.

A card (``NAME.json`` beside ``NAME.safetensors``) holds: name, kind (classifier, purifier...), dataset,
architecture and its arguments, input description, class names, metrics, training command and the
sha256 of the weights file. Cards are validated before anything is built (strict JSON, a registered
architecture, small plain ``arch_args``, a bounded parameter count); loading checks the hash and that the
tensors match the architecture.
"""
from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ModelError
from ..registry import MODELS, PURIFIERS, Registry
from ..utils import atomic_path, sha256_file, write_json

REQUIRED_CARD_KEYS = ("name", "kind", "dataset", "architecture", "arch_args", "metrics", "sha256")
MAX_ARG_INT = 65536  # no architecture argument (width, size, count) is larger
MAX_ARG_LIST = 64  # nor a list longer
MAX_ARG_STR = 256
MAX_ARG_DEPTH = 3  # dicts inside arch_args (FRU's base_args) nest at most this deep
MAX_PARAMETERS = 2**28  # a card's architecture is refused above ~268M parameters (1 GiB of float32)
_ARCH_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def card_path(weights: str | os.PathLike) -> Path:
    return Path(weights).with_suffix(".json")


# -- cards ----------------------------------------------------------------------------------------------------
def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(text: str) -> Any:
    """Strict JSON: bare NaN / Infinity / -Infinity are refused (``ValueError``)."""
    return json.loads(text, parse_constant=_no_constant)


def read_card(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a JSON card (see :func:`validate_card`)."""
    path = Path(path)
    try:
        card = parse_json(path.read_text())
    except FileNotFoundError:
        raise ModelError(f"card {path} does not exist") from None
    except (OSError, ValueError) as e:
        raise ModelError(f"card {path} is not readable JSON: {str(e).splitlines()[0]}") from None
    return validate_card(card, f"card {path}")


def validate_card(card: Any, where: str = "card") -> dict[str, Any]:
    """Check the card's shape before anything is built: the required keys; ``name``, ``kind``, ``dataset``,
    ``architecture`` strings (the architecture a plain name); ``arch_args`` a dict of ints (|v| ≤
    :data:`MAX_ARG_INT`), finite floats, bools, short strings, None, lists of those (≤ :data:`MAX_ARG_LIST`) and
    nested dicts of the same; ``metrics`` a dict. Returns ``card``; :class:`ModelError` naming the field."""
    if not isinstance(card, dict):
        raise ModelError(f"{where} is not a JSON object")
    missing = [k for k in REQUIRED_CARD_KEYS if k not in card]
    if missing:
        raise ModelError(f"{where} lacks {', '.join(missing)}")
    for key in ("name", "kind", "dataset", "architecture", "sha256"):
        if not isinstance(card[key], str):
            raise ModelError(f"{where}: {key} must be a string, not {type(card[key]).__name__}")
    if not _ARCH_NAME.match(card["architecture"]):
        raise ModelError(f"{where}: architecture {card['architecture']!r} is not a name")
    if not isinstance(card["metrics"], dict):
        raise ModelError(f"{where}: metrics must be an object")
    _check_args(card["arch_args"], "arch_args", where, 0)
    return card


def _check_args(value: Any, key: str, where: str, depth: int) -> None:
    if isinstance(value, dict):
        if depth > MAX_ARG_DEPTH:
            raise ModelError(f"{where}: {key} nests too deep")
        for k, v in value.items():
            if not isinstance(k, str):
                raise ModelError(f"{where}: {key} has a non-string key {k!r}")
            _check_args(v, f"{key}.{k}", where, depth + 1)
        return
    if depth == 0:
        raise ModelError(f"{where}: arch_args must be an object, not {type(value).__name__}")
    if isinstance(value, (list, tuple)):
        if len(value) > MAX_ARG_LIST:
            raise ModelError(f"{where}: {key} has {len(value)} items (at most {MAX_ARG_LIST})")
        for i, v in enumerate(value):
            if isinstance(v, (list, tuple, dict)):
                raise ModelError(f"{where}: {key}[{i}] must be a number, string, bool or null")
            _check_args(v, f"{key}[{i}]", where, depth + 1)
        return
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if abs(value) > MAX_ARG_INT:
            raise ModelError(f"{where}: {key} = {value} is too large (at most {MAX_ARG_INT})")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ModelError(f"{where}: {key} must be finite")
        return
    if isinstance(value, str):
        if len(value) > MAX_ARG_STR:
            raise ModelError(f"{where}: {key} is a string of {len(value)} characters (at most {MAX_ARG_STR})")
        return
    raise ModelError(f"{where}: {key} must be a number, string, bool, null, list or object, "
                     f"not {type(value).__name__}")


def registry_for(card: dict[str, Any], registry: Registry | None = None) -> Registry:
    """The registry that builds the card's architecture: ``registry`` if given; else the one of its kind
    (purifier → PURIFIERS, otherwise MODELS) when it has the name, else whichever has it."""
    if registry is not None:
        return registry
    order = (PURIFIERS, MODELS) if card.get("kind") == "purifier" else (MODELS, PURIFIERS)
    return next((r for r in order if card["architecture"] in r), order[0])


def build_from_card(card: dict[str, Any], registry: Registry | None = None) -> nn.Module:
    """Instantiate the card's architecture with its arguments (no weights), after :func:`validate_card` and a
    parameter count on the meta device (nothing allocated) of at most :data:`MAX_PARAMETERS`."""
    validate_card(card, f"card of {card.get('name', '?')!r}" if isinstance(card, dict) else "card")
    name, arch = card["name"], card["architecture"]
    registry = registry_for(card, registry)
    try:
        factory = registry.get(arch)
    except ValueError as e:
        raise ModelError(f"card of {name!r}: {e}") from None
    n = _meta_parameter_count(factory, card["arch_args"])
    if n is not None and n > MAX_PARAMETERS:
        raise ModelError(f"card of {name!r}: {arch} with these arch_args would have {n:.3g} parameters "
                         f"(at most {MAX_PARAMETERS:.3g}); the card's arch_args look wrong")
    try:
        return factory(**card["arch_args"])
    except (TypeError, ValueError) as e:
        raise ModelError(f"card of {name!r}: bad arguments for {arch}: {str(e).splitlines()[0]}") from None


def _ints(value: Any) -> list[int]:
    if isinstance(value, dict):
        return [i for v in value.values() for i in _ints(v)]
    if isinstance(value, (list, tuple)):
        return [i for v in value for i in _ints(v)]
    return [abs(value)] if isinstance(value, int) and not isinstance(value, bool) else []


def _meta_parameter_count(factory: Callable[..., nn.Module], args: dict[str, Any]) -> int | None:
    """Parameters + buffers of ``factory(**args)`` built on the meta device; None if it cannot be built there,
    or when every int argument is small (max ≤ 1024, sum ≤ 4096: such a model cannot be huge, and some
    builders' meta ops cost seconds of imports)."""
    ints = _ints(args)
    if max(ints, default=0) <= 1024 and sum(ints) <= 4096:
        return None
    try:
        with torch.device("meta"):
            model = factory(**args)
        return sum(t.numel() for t in model.state_dict().values())
    except Exception:  # noqa: BLE001 - some builders need real tensors; the real build reports bad arguments
        return None


def _state_shapes(card: dict[str, Any], registry: Registry | None) -> dict[str, tuple[int, ...]]:
    """Key → shape of the state dict ``build_from_card(card)`` has (the model to save is in memory already,
    so building its twin is affordable; a card that would be huge is refused by :func:`build_from_card`)."""
    return {k: tuple(v.shape) for k, v in build_from_card(card, registry).state_dict().items()}


# -- state dicts ----------------------------------------------------------------------------------------------
def first_mismatch(have: dict[str, Any], want: dict[str, Any]) -> str | None:
    """The first difference between state dicts ``have`` (a file) and ``want`` (the model), or None: a missing
    key, a shape (in the model's key order), then an unexpected key (in the file's order). Values: tensors or
    shapes."""
    def shape(v: Any) -> tuple[int, ...]:
        return tuple(v.shape) if hasattr(v, "shape") else tuple(v)

    for k, v in want.items():
        if k not in have:
            return f"missing key {k!r}"
        if shape(have[k]) != shape(v):
            return f"{k!r} has shape {shape(have[k])}, the model's is {shape(v)}"
    extra = next((k for k in have if k not in want), None)
    return None if extra is None else f"unexpected key {extra!r}"


def read_weights(path: str | os.PathLike, what: str = "weights") -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or ``.pt``/``.pth`` (``torch.load(weights_only=True)``: nothing but
    tensors and containers is unpickled); a dict holding it under ``"state_dict"`` or ``"model"`` is accepted."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{what} file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            state: Any = load_file(str(path))
        elif path.suffix in (".pt", ".pth"):
            state = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise ModelError(f"{what} file {path} must be .safetensors, .pt or .pth")
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - any parse failure is the user's file being wrong
        raise ModelError(f"cannot read {what} from {path}: {str(e).strip().splitlines()[0]}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ModelError(f"{path} is not a state dict of tensors")
    return state


def load_weights(model: nn.Module, path: str | os.PathLike, what: str = "weights") -> nn.Module:
    """Load :func:`read_weights` ``path`` into ``model`` with strict key and shape matching; the error names the
    first mismatch. Returns ``model``."""
    state = read_weights(path, what)
    bad = first_mismatch(state, model.state_dict())
    if bad:
        raise ModelError(f"{what} {path} do not fit the model: {bad}")
    model.load_state_dict(state, strict=True)
    return model


# -- checkpoints ----------------------------------------------------------------------------------------------
def save_checkpoint(model: nn.Module, weights: str | os.PathLike, card: dict[str, Any],
                    registry: Registry | None = None) -> dict[str, Any]:
    """Write ``weights`` (safetensors) and its card atomically; fill in ``weights`` and ``sha256``. Returns the
    card. Before writing anything the card is validated and ``model``'s state dict must have exactly the keys
    and shapes of ``build_from_card(card)`` (else :class:`ModelError`, nothing written)."""
    weights = Path(weights)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    draft = {**card, "weights": weights.name, "sha256": card.get("sha256", "")}
    try:
        shapes = _state_shapes(draft, registry)
    except ValueError as e:  # ModelError, or the registry's unknown-name error
        raise ModelError(f"not saving {weights}: {e}") from None
    try:
        json.dumps(draft, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ModelError(f"not saving {weights}: the card is not strict JSON ({e})") from None
    bad = first_mismatch(state, shapes)
    if bad:
        raise ModelError(f"not saving {weights}: the model does not match its card's architecture "
                         f"{card['architecture']}: {bad}")
    with atomic_path(weights) as tmp:
        save_file(state, str(tmp), metadata={"name": str(card.get("name", ""))})
        digest = sha256_file(tmp)
    card = {**card, "weights": weights.name, "sha256": digest}
    write_json(card_path(weights), card)
    return card


def load_checkpoint(weights: str | os.PathLike, registry: Registry | None = None,
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
    model = build_from_card(card, registry or MODELS)
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"checkpoint {weights} is not a readable safetensors file: {e}") from None
    bad = first_mismatch(state, model.state_dict())
    if bad:
        raise ModelError(f"checkpoint {weights} does not match its card's architecture: {bad}")
    model.load_state_dict(state, strict=True)
    model.eval()
    model.card = card  # type: ignore[assignment]
    return model, card
