"""Build an :class:`Engine` from registry names and write its results (Markdown, JSON, per-sample flags)."""
from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import save_file
from torch import nn

from ..data.tensors import TensorDataset
from ..defenses.base import build_defense
from ..registry import ATTACKS
from ..utils import atomic_path, write_text
from .engine import Engine, GridResults


def attack_factory(name: str, eps: float, eps_l2: float, **kw: Any):
    """model → the registered attack ``name`` at its paper-default settings for the budget
    (``eps`` for L∞ attacks, ``eps_l2`` for L2 attacks; both in [0,1] units)."""
    cls = ATTACKS.get(name)
    budget = eps_l2 if getattr(cls, "norm", "linf") == "l2" else eps
    return lambda model: cls.for_budget(model, budget, **kw)


def evaluate(models: dict[str, nn.Module], data: TensorDataset, attacks: Sequence[str], defenses: Sequence[str],
             eps: float, eps_l2: float, batch_size: int = 250, seed: int = 0, device: str | torch.device = "cpu",
             sources: dict[str, nn.Module] | None = None, cache_dir: str | Path | None = None,
             overrides: dict[str, dict[str, Any]] | None = None,
             perturbations: dict[str, torch.Tensor] | None = None,
             baselines: dict[str, nn.Module] | None = None) -> GridResults:
    """Run the attack × source × defense × target grid on ``data`` (streamed in batches).

    ``overrides``: per-attack keyword arguments on top of the paper defaults, e.g. ``{"ssp": {"steps": 20}}``.
    ``perturbations``: name → universal perturbation (C×H×W); ``baselines``: target → undefended model."""
    overrides = overrides or {}
    engine = Engine(targets=models, sources=sources,
                    attacks={a: attack_factory(a, eps, eps_l2, **overrides.get(a, {})) for a in attacks},
                    defenses={d: build_defense(d, seed) for d in defenses}, seed=seed, device=device,
                    cache_dir=cache_dir, perturbations=perturbations, baselines=baselines)
    res = engine.run(data.batches(batch_size), total=-(-len(data) // batch_size))
    res.meta.update({"dataset": data.name, "eps": eps, "eps_255": round(eps * 255, 4), "eps_l2": eps_l2,
                     "batch_size": batch_size, "overrides": overrides, "torch": torch.__version__, "python": platform.python_version()})
    return res


def save_results(res: GridResults, out_dir: str | Path, title: str, notes: Sequence[str] = ()) -> dict[str, Path]:
    """Write ``report.md``, ``report.json`` and ``flags.safetensors`` (per-sample predictions) atomically."""
    from ..report.tables import grid_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "report.md", "json": out / "report.json", "flags": out / "flags.safetensors"}
    write_text(paths["json"], json.dumps(res.to_json(), indent=2) + "\n")
    with atomic_path(paths["flags"]) as tmp:
        save_file({k: v.contiguous() for k, v in res.flags().items()}, str(tmp))
    write_text(paths["markdown"], grid_report(res, title, notes))
    return paths
