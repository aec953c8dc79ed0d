"""``load_model(spec)``: every way to name a classifier, each giving an eval-mode ``nn.Module`` that takes [0,1]
N×C×H×W images and returns logits N×classes. ``model.spec`` is the spec; card-backed models have ``model.card``.

Specs (any of them may end in ``?mean=0.485,0.456,0.406&std=0.229,0.224,0.225``, same as the ``mean=``/``std=``
arguments: ``(x - mean) / std`` per channel is applied before the model):

- ``zoo:NAME`` — a shipped checkpoint (a name, never a path); ``PATH.safetensors`` / ``PATH.json`` — a checkpoint
  with its card beside it;
- ``py:FILE.py:NAME[@WEIGHTS]`` — ``NAME()`` (a class or zero-argument function) from the user's Python file;
  ``WEIGHTS`` a ``.safetensors`` or ``.pt``/``.pth`` state dict (read with ``weights_only=True``);
- ``timm:NAME[@WEIGHTS]``, ``torchvision:NAME[@WEIGHTS]`` — built without downloading anything (no weights:
  random, with a warning); ImageNet normalisation by default (timm: the model's ``pretrained_cfg`` mean/std);
- ``hf:DIR`` — a local HuggingFace image-classification checkpoint (safetensors weights; mean/std from
  ``DIR/preprocessor_config.json``, class names from the config's ``id2label`` as ``model.class_names``);
- ``torchscript:PATH`` — a TorchScript file (cannot be hooked: no SSP ``layer=``).

Models returning a tuple, a dict with ``"logits"`` or an object with ``.logits`` are wrapped in
:class:`~advshield.models.outputs.LogitsOutput`; wrappers keep the model's layer names.
"""
from __future__ import annotations

import importlib.util
import inspect
import itertools
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from .checkpoint import card_path, load_checkpoint, load_weights, parse_json, read_card
from .outputs import LogitsOutput, Normalized
from .vgg16 import IMAGENET_MEAN, IMAGENET_STD
from .zoo import zoo_path

CLASSIFIER_KINDS = ("classifier",)
_QUERY_KEYS = ("mean", "std")
_counter = itertools.count()

Norm = tuple[tuple[float, ...] | None, tuple[float, ...] | None]


def load_model(spec: str, kinds: tuple[str, ...] = CLASSIFIER_KINDS, *, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None) -> nn.Module:
    """Load a classifier (eval mode) taking [0,1] N×C×H×W images and returning logits (see the module docstring
    for the specs). ``kinds``: card kinds accepted for card-backed specs. ``mean``/``std``: per-channel
    normalisation (one value or one per channel, std > 0) put in front of the model, overriding a loader's
    default; the same as a ``?mean=…&std=…`` suffix (not both)."""
    spec = str(spec)
    base, q_mean, q_std = split_query(spec)
    if (q_mean is not None and mean is not None) or (q_std is not None and std is not None):
        raise ModelError(f"model {spec!r}: give mean/std either in the spec's ?query or as arguments, not both")
    mean = q_mean if q_mean is not None else _floats(mean, "mean", spec)
    std = q_std if q_std is not None else _floats(std, "std", spec)
    model, default = _load_base(base, kinds)
    mean = mean if mean is not None else default[0]
    std = std if std is not None else default[1]
    if mean is not None or std is not None:
        mean, std = check_norm(mean, std, spec)
        model = Normalized(model, mean, std)
    model.eval()
    model.spec = spec  # type: ignore[assignment]
    return model


def short_name(spec: str) -> str:
    """A model's name in reports: ``zoo:fmnist-vgg`` → ``fmnist-vgg``; other specs as given."""
    return spec.split(":", 1)[1] if spec.startswith(("zoo:", "torchvision:", "timm:")) else spec


def load_models(specs: Sequence[str], flag: str = "--models", **kw: Any) -> dict[str, nn.Module]:
    """{short name → :func:`load_model` (spec, ``**kw``)} for several specs; a spec given twice is refused."""
    models: dict[str, nn.Module] = {}
    for spec in specs:
        name = short_name(spec)
        if name in models:
            raise ModelError(f"{flag}: {spec} is given twice")
        models[name] = load_model(spec, **kw)
    return models


def _load_base(spec: str, kinds: tuple[str, ...]) -> tuple[nn.Module, Norm]:
    """(model, default (mean, std)) for a spec without its query."""
    none: Norm = (None, None)
    loaders: dict[str, Callable[[str], tuple[nn.Module, Norm]]] = {
        "py:": _load_py, "timm:": _load_timm, "torchvision:": _load_torchvision, "hf:": _load_hf,
        "torchscript:": lambda rest: (_load_torchscript(Path(rest)), none)}
    for prefix, loader in loaders.items():
        if spec.startswith(prefix):
            return loader(spec[len(prefix):])
    if spec.startswith("zoo:"):
        return _load_card_checked(zoo_path(spec[4:]), kinds), none
    path = Path(spec)
    if path.suffix == ".safetensors":
        return _load_card_checked(path, kinds), none
    if path.suffix == ".json" and path.with_suffix(".safetensors").exists():
        return _load_card_checked(path.with_suffix(".safetensors"), kinds), none
    raise ModelError(f"cannot load model {spec!r}: use zoo:NAME, a .safetensors file with its card, "
                     "py:FILE.py:NAME[@WEIGHTS], timm:NAME, torchvision:NAME, hf:DIR or torchscript:PATH")


# -- ?mean=…&std=… ------------------------------------------------------------------------------------------
def split_query(spec: str) -> tuple[str, tuple[float, ...] | None, tuple[float, ...] | None]:
    """``SPEC?mean=…&std=…`` → (SPEC, mean, std); no ``?key=`` suffix → (spec, None, None)."""
    base, sep, query = spec.rpartition("?")
    if not sep or "=" not in query:
        return spec, None, None
    values: dict[str, tuple[float, ...]] = {}
    for part in query.split("&"):
        key, eq, val = part.partition("=")
        if key not in _QUERY_KEYS or not eq:
            raise ModelError(f"model {spec!r}: unknown query {part!r} (known: mean=…, std=…)")
        if key in values:
            raise ModelError(f"model {spec!r}: {key} is given twice")
        values[key] = _floats(val.split(","), key, spec)
    return base, values.get("mean"), values.get("std")


def _floats(values: Sequence[Any] | None, key: str, spec: str) -> tuple[float, ...] | None:
    if values is None:
        return None
    if isinstance(values, (int, float)):
        values = [values]
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ModelError(f"model {spec!r}: {key} must be numbers separated by commas, not {values!r}") from None
    if not out or not all(math.isfinite(v) for v in out):
        raise ModelError(f"model {spec!r}: {key} must be one or more finite numbers")
    return out


def check_norm(mean: Sequence[float] | None, std: Sequence[float] | None, spec: str = "model"
               ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """A missing mean is 0, a missing std 1 (as long as the other); equal lengths, finite, std > 0."""
    if mean is None and std is None:
        raise ModelError(f"model {spec!r}: normalisation needs mean or std")
    mean = tuple(mean) if mean is not None else (0.0,) * len(std or ())
    std = tuple(std) if std is not None else (1.0,) * len(mean)
    if len(mean) != len(std):
        raise ModelError(f"model {spec!r}: mean has {len(mean)} values, std {len(std)}; give as many")
    if not all(math.isfinite(v) for v in mean + std):
        raise ModelError(f"model {spec!r}: mean and std must be finite")
    if not all(v > 0 for v in std):
        raise ModelError(f"model {spec!r}: std must be > 0, not {list(std)}")
    return mean, std


# -- card-backed --------------------------------------------------------------------------------------------
def _load_card_checked(path: Path, kinds: tuple[str, ...]) -> nn.Module:
    if path.is_file():
        card = read_card(card_path(path))
        if card["kind"] not in kinds:
            raise ModelError(f"{card['name']!r} is a {card['kind']}, not a {' or '.join(kinds)}")
    # advshield's own architectures run channels-last: oneDNN's CPU convolutions are 1.1–2× faster on the small
    # zoo nets (same predictions; logits equal to ~1e-6). Users' own modules are left as they are.
    return load_checkpoint(path)[0].to(memory_format=torch.channels_last)


# -- py:FILE.py:NAME[@WEIGHTS] --------------------------------------------------------------------------------
def _split_weights(rest: str) -> tuple[str, str | None]:
    name, at, weights = rest.partition("@")
    if at and not weights:
        raise ModelError(f"nothing after '@' in {rest!r}: give @WEIGHTS (.safetensors, .pt or .pth)")
    return name, (weights or None)


def _load_py(rest: str) -> tuple[nn.Module, Norm]:
    spec = f"py:{rest}"
    file, sep, tail = rest.partition(".py:")
    if not sep or not file:
        raise ModelError(f"model {spec!r}: use py:FILE.py:NAME[@WEIGHTS]")
    path = Path(file + ".py")
    name, weights = _split_weights(tail)
    if not name.isidentifier():
        raise ModelError(f"model {spec!r}: {name!r} is not a Python name (py:FILE.py:NAME[@WEIGHTS])")
    module = import_user_file(path)
    if not hasattr(module, name):
        defined = ", ".join(n for n, v in vars(module).items() if not n.startswith("_") and callable(v)
                            and getattr(v, "__module__", None) == module.__name__) or "nothing callable"
        raise ModelError(f"model {spec!r}: {path} has no {name} (it defines {defined})")
    model = call_factory(getattr(module, name), f"{path}:{name}")
    if weights:
        load_weights(model, weights, f"weights {weights} of {path}:{name}")
    return LogitsOutput(model), (None, None)


def import_user_file(path: Path) -> Any:
    """Import the Python file ``path`` as a fresh module (unique name; its folder on ``sys.path`` only while it
    is imported, for its own sibling imports). One-line :class:`ModelError` if it is missing or fails."""
    if not path.is_file():
        raise ModelError(f"Python file {path} does not exist")
    mod_name = f"advshield_user_{path.stem.replace('-', '_')}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(mod_name, str(path))
    if spec is None or spec.loader is None:
        raise ModelError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's file failed; report it in one line
        sys.modules.pop(mod_name, None)
        raise ModelError(f"importing {path} failed: {_one_line(e)}") from None
    finally:
        if sys.path and sys.path[0] == folder:
            del sys.path[0]
        elif folder in sys.path:
            sys.path.remove(folder)
    return module


def call_factory(obj: Any, what: str) -> nn.Module:
    """``obj()`` for a class or zero-argument function, which must return an ``nn.Module``."""
    if not callable(obj):
        raise ModelError(f"{what} is a {type(obj).__name__}, not a class or function")
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        needed = [p.name for p in sig.parameters.values() if p.default is p.empty
                  and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if needed:
            raise ModelError(f"{what} needs arguments ({', '.join(needed)}); give a class or function that "
                             "takes none")
    try:
        model = obj()
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"{what}() raised {_one_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"{what}() returned a {type(model).__name__}, not a torch nn.Module")
    return model


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


# -- timm / torchvision / hf ----------------------------------------------------------------------------------
def _import(package: str, spec: str) -> Any:
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ModelError(f"{spec} needs {package}, which is not installed (pip install {package})") from None


def _random_weights_warning(spec: str) -> None:
    warnings.warn(f"{spec} has RANDOM weights (no @WEIGHTS given); its predictions mean nothing", stacklevel=3)


def _load_timm(rest: str) -> tuple[nn.Module, Norm]:
    name, weights = _split_weights(rest)
    spec = f"timm:{name}"
    timm = _import("timm", spec)
    try:
        model = timm.create_model(name, pretrained=False)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"{spec} could not be built: {_one_line(e)}") from None
    _weights_or_warn(model, weights, spec)
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    if mean is None or std is None:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    return LogitsOutput(model), (tuple(mean), tuple(std))


def _load_torchvision(rest: str) -> tuple[nn.Module, Norm]:
    name, weights = _split_weights(rest)
    spec = f"torchvision:{name}"
    _import("torchvision", spec)
    tvm = _import("torchvision.models", spec)
    try:
        model = tvm.get_model(name, weights=None)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"{spec} could not be built: {_one_line(e)}") from None
    _weights_or_warn(model, weights, spec)
    return LogitsOutput(model), (IMAGENET_MEAN, IMAGENET_STD)


def _weights_or_warn(model: nn.Module, weights: str | None, spec: str) -> None:
    if weights:
        load_weights(model, weights, f"weights {weights} of {spec}")
    else:
        _random_weights_warning(spec)


def _load_hf(rest: str) -> tuple[nn.Module, Norm]:
    spec, folder = f"hf:{rest}", Path(rest)
    if not folder.is_dir():
        raise ModelError(f"{spec}: {folder} is not a directory (hf:DIR takes a local checkpoint folder)")
    transformers = _import("transformers", spec)
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"{spec} could not be loaded (it needs a config and model.safetensors): "
                         f"{_one_line(e)}") from None
    wrapped = LogitsOutput(model)
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    if isinstance(id2label, dict) and id2label:
        try:
            labels = {int(k): str(v) for k, v in id2label.items()}
            wrapped.class_names = [labels[i] for i in range(len(labels))]  # type: ignore[assignment]
        except (KeyError, ValueError):
            pass
    mean = std = None
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        try:
            cfg = parse_json(pre.read_text())
        except (OSError, ValueError) as e:
            raise ModelError(f"{spec}: {pre} is not readable JSON: {str(e).splitlines()[0]}") from None
        if isinstance(cfg, dict):
            mean, std = cfg.get("image_mean"), cfg.get("image_std")
            mean = _floats(mean, "image_mean", spec) if mean is not None else None
            std = _floats(std, "image_std", spec) if std is not None else None
    return wrapped, (mean, std)


# -- torchscript ----------------------------------------------------------------------------------------------
def _load_torchscript(path: Path) -> nn.Module:
    if not path.is_file():
        raise ModelError(f"TorchScript file {path} does not exist")
    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001 - report the user's bad file in one line
        raise ModelError(f"cannot load TorchScript {path}: {str(e).strip().splitlines()[0]}") from None
    return LogitsOutput(model.eval())
