"""Build an :class:`Engine` from registry names and run it (:func:`evaluate`); results in :mod:`.results`.

:func:`evaluate` takes the data as tensors, a dataset or a loader, the models as a dict or one module, the defenses as
names, spec strings or modules, and checks all of it up front (one-line :class:`~advshield.errors.AdvshieldError`)."""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..attacks.base import frozen_eval
from ..checks import check_eps, check_images, check_labels, check_number
from ..data.stream import FolderStream
from ..data.tensors import TensorDataset
from ..defenses.base import build_defense
from ..errors import AdvshieldError
from ..registry import ATTACKS
from ..utils import machine_line
from .engine import AttackFactory, Engine, GridResults


def attack_factory(name: str, eps: float, eps_l2: float | None = None, **kw: Any) -> AttackFactory:
    """model → the registered attack ``name`` at its paper-default settings for the budget
    (``eps`` for L∞ attacks, ``eps_l2`` for L2 attacks; both in [0,1] units). An L2 attack without ``eps_l2`` is
    refused with an :class:`AdvshieldError`."""
    cls = ATTACKS.get(name)
    l2 = getattr(cls, "norm", "linf") == "l2"
    if l2 and eps_l2 is None:
        raise AdvshieldError(f"eps_l2: attack {name!r} is an L2 attack; pass eps_l2 (its L2 radius in [0,1] units)")
    budget = eps_l2 if l2 else eps
    return lambda model: cls.for_budget(model, budget, **kw)


def named_models(models: Any, arg: str, default_name: str = "model") -> dict[str, nn.Module]:
    """A dict name → ``nn.Module`` from a dict or a single module (named ``default_name``); checked."""
    if isinstance(models, nn.Module):
        return {default_name: models}
    if not isinstance(models, dict) or not models:
        what = "an empty dict" if isinstance(models, dict) else type(models).__name__
        raise AdvshieldError(f"{arg} must be an nn.Module or a non-empty dict name → nn.Module, not {what}")
    for k, m in models.items():
        if not isinstance(k, str) or not isinstance(m, nn.Module):
            raise AdvshieldError(f"{arg} must map names (str) to nn.Module, got {type(k).__name__} → "
                                 f"{type(m).__name__}")
    return dict(models)


def _module_name(m: nn.Module) -> str:
    name = getattr(m, "name", None)
    return name if isinstance(name, str) and name and name != "defense" else type(m).__name__.lower()


def build_defenses(defenses: Any, seed: int | None) -> dict[str, nn.Module]:
    """name → defense module from: one spec string, a list of registered names / spec strings (``"jpeg:quality=50
    +median"``) / ``nn.Module`` objects, or a dict name → module (or spec). Built with
    :func:`advshield.defenses.base.build_defense`; modules in a list are named by their ``name`` attribute or class
    (``-2``, ``-3`` ... for repeats)."""
    if isinstance(defenses, (str, nn.Module)):
        defenses = [defenses]
    if isinstance(defenses, dict):
        pairs = list(defenses.items())
        if not all(isinstance(k, str) for k, _ in pairs):
            raise AdvshieldError("defenses: a dict must map names (str) to defense modules or specs")
    elif isinstance(defenses, (list, tuple)):
        pairs = []
        for d in defenses:
            if isinstance(d, str):
                pairs.append((d, d))
            elif isinstance(d, nn.Module):
                pairs.append((_module_name(d), d))
            else:
                raise AdvshieldError(f"defenses must hold spec strings or nn.Module objects, not {type(d).__name__}")
    else:
        raise AdvshieldError(f"defenses must be a list of specs / modules or a dict name → module, not "
                             f"{type(defenses).__name__}")
    if not pairs:
        raise AdvshieldError("defenses is empty: pass ['none'] for the undefended models")
    out: dict[str, nn.Module] = {}
    for name, spec in pairs:
        key, i = name, 2
        while key in out:
            if isinstance(spec, str):
                raise AdvshieldError(f"defenses: {name!r} is given twice")
            key, i = f"{name}-{i}", i + 1
        out[key] = build_defense(spec, seed)
    return out


def data_batches(data: Any, batch_size: int) -> tuple[Iterable[tuple[torch.Tensor, torch.Tensor]], int | None, str]:
    """(batches, number of batches or None, dataset name) for ``data``: an ``(x, y)`` pair of tensors (x float
    N×C×H×W in [0,1], y N int labels), an advshield :class:`TensorDataset`, any ``Dataset`` of (image C×H×W,
    label) items, or a ``DataLoader`` of (x, y) batches (its own batch size is used)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(v, torch.Tensor) for v in data):
        x, y = data
        check_images(x, "data (images)")
        check_labels(y, len(x), name="data (labels)")
        return ((x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)), \
            -(-len(x) // batch_size), "tensors"
    if isinstance(data, FolderStream):  # read from disk; under torchrun each rank reads its own batches
        return data.batches(batch_size, sharded=True), -(-len(data) // batch_size), data.name
    if isinstance(data, TensorDataset):
        return data.batches(batch_size), -(-len(data) // batch_size), data.name
    if isinstance(data, DataLoader):
        total = len(data) if hasattr(data.dataset, "__len__") else None
        return data, total, _data_name(data.dataset)
    if isinstance(data, Dataset):
        loader = DataLoader(data, batch_size=batch_size, shuffle=False)
        return loader, len(loader) if hasattr(data, "__len__") else None, _data_name(data)
    raise AdvshieldError(f"data must be an (x, y) pair of tensors, a Dataset or a DataLoader, not "
                         f"{type(data).__name__}")


def _data_name(ds: Any) -> str:
    name = getattr(ds, "name", None)
    return name if isinstance(name, str) else type(ds).__name__


def checked_batches(batches: Iterable[Any], models: dict[str, nn.Module],
                    device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``batches`` with each checked: (images float N×C×H×W in [0,1], labels N int ≥ 0 and below every model's
    class count — read from one image's logits on the first batch)."""
    classes: dict[str, int] | None = None
    for batch in batches:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise AdvshieldError(f"data must yield (images, labels) batches, got a {type(batch).__name__}")
        x, y = batch[0], batch[1]
        check_images(x, "data (images)")
        check_labels(y, len(x), name="data (labels)")
        if classes is None and len(x):
            classes = _class_counts(models, x[:1].to(device))
        for name, k in (classes or {}).items():
            if len(y) and int(y.max()) >= k:
                raise AdvshieldError(f"data (labels) holds label {int(y.max())}, but model {name!r} has {k} classes")
        yield x, y


@torch.no_grad()
def _class_counts(models: dict[str, nn.Module], x1: torch.Tensor) -> dict[str, int]:
    """name → width of the model's N×K logits on ``x1`` (torch's RNG untouched); models with other outputs left out."""
    out = {}
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        for name, m in models.items():
            with frozen_eval(m):
                logits = m(x1)
            if isinstance(logits, torch.Tensor) and logits.dim() == 2:
                out[name] = logits.shape[1]
    return out


def evaluate(models: dict[str, nn.Module] | nn.Module, data: Any, attacks: Sequence[str] | str,
             defenses: Sequence[str | nn.Module] | dict[str, nn.Module] | str, eps: float,
             eps_l2: float | None = None, batch_size: int = 250, seed: int = 0, device: str | torch.device = "cpu",
             sources: dict[str, nn.Module] | nn.Module | None = None, cache_dir: str | Path | None = None,
             overrides: dict[str, dict[str, Any]] | None = None,
             perturbations: dict[str, torch.Tensor] | None = None,
             baselines: dict[str, nn.Module] | None = None, adaptive: Sequence[str] | str = (),
             adaptive_attacks: Sequence[str] | None = None, eot: int = 1, draws: int = 1, examples: int = 0,
             eps_sweep: Sequence[float] | None = None) -> GridResults:
    """Run the attack × source × defense × target grid on ``data`` (streamed in batches).

    ``models``: dict name → classifier ([0,1] N×C×H×W → logits) or one module (named "model"). ``data``: see
    :func:`data_batches`; each batch is checked (:func:`checked_batches`). ``attacks``: registered names (or one).
    ``defenses``: see :func:`build_defenses` (``["none"]``: undefended). ``eps``: the L∞ budget, ``eps_l2`` the L2
    radius (optional; L2 attacks need it), both in [0,1] units. ``overrides``: per-attack keyword arguments on top
    of the paper defaults, e.g. ``{"ssp": {"steps": 20}}``. ``perturbations``: name → universal perturbation
    (C×H×W); ``baselines``: target → undefended model. ``adaptive``: ``"full"`` and/or ``"bpda"``: the
    ``adaptive_attacks`` (default all) are also crafted on each defended target itself, with exact gradients through
    the defense (skipped, with a note, for a defense autograd cannot go through) or through its BPDA substitute;
    ``eot`` gradient samples per step and the worst of ``draws`` predictions for randomized defenses (detected).
    ``examples``: keep that many samples (seeded) as images for the report. ``eps_sweep``: L∞ budgets ([0,1]
    units) at which the grid is run again; their worst cases go to ``meta["eps_sweep"]`` (robust accuracy versus
    eps; ``eps_l2`` attacks keep their radius). Bad arguments raise a one-line :class:`AdvshieldError`."""
    models = named_models(models, "models")
    sources = None if sources is None else named_models(sources, "sources", "source")
    eps = check_eps(eps, "eps")
    eps_l2 = None if eps_l2 is None else check_eps(eps_l2, "eps_l2", "l2")
    batch_size = int(check_number(batch_size, "batch_size", low=1, integer=True))
    seed = int(check_number(seed, "seed", integer=True))
    attacks = [attacks] if isinstance(attacks, str) else list(attacks)
    if not all(isinstance(a, str) for a in attacks):
        raise AdvshieldError("attacks must be registered attack names (str)")
    overrides = overrides or {}
    adaptive = [m.strip() for m in adaptive.split(",") if m.strip()] if isinstance(adaptive, str) else list(adaptive)
    factories = {a: attack_factory(a, eps, eps_l2, **overrides.get(a, {})) for a in attacks}
    sweep = sorted({check_eps(e, "eps_sweep") for e in (eps_sweep or [])} | ({eps} if eps_sweep else set()))
    built = build_defenses(defenses, seed)
    crafting = {**models, **(sources or {})}

    def run(e: float, n_examples: int) -> GridResults:
        batches, total, _ = data_batches(data, batch_size)
        fac = factories if e == eps else {a: attack_factory(a, e, eps_l2, **overrides.get(a, {})) for a in attacks}
        engine = Engine(targets=models, sources=sources, attacks=fac, defenses=built, seed=seed, device=device,
                        cache_dir=cache_dir, perturbations=perturbations, baselines=baselines, adaptive=adaptive,
                        adaptive_attacks=adaptive_attacks, eot=eot, draws=draws, examples=n_examples)
        return engine.run(checked_batches(batches, crafting, engine.device), total=total)

    res = run(eps, examples)
    if sweep:
        res.meta["eps_sweep"] = [{"eps": e, "eps_255": round(e * 255, 4),
                                  "worst_case": (res if e == eps else run(e, 0)).worst_case()} for e in sweep]
    if isinstance(data, DataLoader):
        batch_size = data.batch_size
    res.meta.update({"dataset": data_batches(data, batch_size)[2], "eps": eps, "eps_255": round(eps * 255, 4),
                     "eps_l2": eps_l2, "batch_size": batch_size, "overrides": overrides, "torch": torch.__version__,
                     "python": platform.python_version(), "machine": machine_line()})
    classes = getattr(data, "classes", None) or getattr(getattr(data, "dataset", None), "classes", None)
    if isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes):
        res.meta["classes"] = list(classes)
    return res

