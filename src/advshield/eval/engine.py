"""The evaluation engine: a grid of attack × source model × defense × target model on a stream of batches.

For each batch it crafts every (attack, source) once, checks it against its threat model (budget, [0,1]
range, finite), optionally caches it on disk, and classifies it with every defended target. It keeps only
per-sample prediction flags, so memory does not grow with the images seen. Metrics are computed at the end.

Settings, per row: ``white-box`` (source is the target, no defense), ``defense-unaware`` (source is the target,
attacker ignores the defense), ``transfer`` (source ≠ target: black-box transfer) and, when ``adaptive`` modes are
asked for, ``adaptive-full`` / ``adaptive-bpda``: the attack is crafted on the defended target itself, with the
gradient through the defense or straight through its BPDA substitute, and EOT over randomized defenses; and
``universal``: a fixed image-agnostic perturbation (UAP, sPGD, FFF, GAP …) added to every image (source "universal").

``baselines`` names, per target, the undefended model its restoration accuracy is measured against (Borkar et
al.: (defended clean + defended perturbed) / (2 · baseline clean)); e.g. the base network of an FRU model.
"""
from __future__ import annotations

import copy
import hashlib
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from .. import distributed
from ..attacks.base import Attack
from ..attacks.threat import BudgetError
from ..checks import check_number
from ..defenses.base import Defended
from ..errors import AdvshieldError
from ..utils import atomic_path, progress
from .results import GridResults

AttackFactory = Callable[[nn.Module], Attack]
EXAMPLE_SIDE = 128  # example images larger than this (either side) are shrunk for the report


def shrink(x: torch.Tensor, side: int = EXAMPLE_SIDE) -> torch.Tensor:
    """N×C×H×W images in [0,1] as kept for a report: the longer side scaled down to ``side`` (area interpolation)
    when larger, values rounded to 1/255 steps (as stored, so a report rebuilt from the files is the same)."""
    h, w = x.shape[-2:]
    if max(h, w) > side:
        scale = side / max(h, w)
        x = torch.nn.functional.interpolate(x, size=(max(1, round(h * scale)), max(1, round(w * scale))),
                                            mode="area")
    return (x.detach().float().clamp(0, 1) * 255).round() / 255
ADAPTIVE_MODES = ("full", "bpda")


def restart_randomness(modules: Iterable[nn.Module], stream: int) -> None:
    """Seed torch's global RNG with ``stream`` and restart every seeded noise source inside ``modules`` (submodules
    with ``restart_noise``) at it: what a batch draws then depends on ``stream`` alone."""
    torch.manual_seed(stream)
    for module in modules:
        for m in module.modules():
            restart = getattr(m, "restart_noise", None)
            if callable(restart):
                restart(stream)


class Engine:
    """``Engine(targets, attacks, defenses, sources=None).run(batches)``.

    targets/sources: name → classifier ([0,1] images → logits). attacks: name → factory(model) → Attack.
    defenses: name → ``nn.Module`` ([0,1] → [0,1]); ``"none"`` is the identity. Sources default to the targets.
    ``cache_dir``: store each crafted batch there and reuse it on a re-run with the same settings.
    ``perturbations``: name → universal perturbation C×H×W ([0,1] units), added to every image and clamped.
    ``baselines``: target name → its undefended model (clean accuracy for restoration; default the target).
    ``examples``: keep that many samples of the first batch (seeded choice) as images for the report: clean,
    adversarial per (attack, source) and each defense's output (see :attr:`GridResults.examples`)."""

    def __init__(self, targets: dict[str, nn.Module], attacks: dict[str, AttackFactory],
                 defenses: dict[str, nn.Module] | None = None, sources: dict[str, nn.Module] | None = None,
                 seed: int = 0, device: str | torch.device = "cpu", cache_dir: str | Path | None = None,
                 adaptive: Sequence[str] = (), eot: int = 1, log: Callable[[str], None] | None = None,
                 perturbations: dict[str, torch.Tensor] | None = None,
                 baselines: dict[str, nn.Module] | None = None, adaptive_attacks: Sequence[str] | None = None,
                 draws: int = 1, examples: int = 0) -> None:
        from ..defenses.base import Identity

        self.targets = targets
        self.sources = sources if sources is not None else targets
        self.attacks = attacks
        self.defenses = defenses if defenses is not None else {"none": Identity()}
        self.seed = seed
        self.device = torch.device(device)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.log = log or (lambda s: None)
        bad = [m for m in adaptive if m not in ADAPTIVE_MODES]
        if bad:
            raise AdvshieldError(f"adaptive: unknown mode {bad[0]!r} (known: {', '.join(ADAPTIVE_MODES)})")
        self.adaptive = tuple(adaptive)
        self.eot = int(check_number(eot, "eot", low=1, integer=True))
        self.draws = int(check_number(draws, "draws", low=1, integer=True))
        self.n_examples = int(check_number(examples, "examples", low=0, integer=True))
        self.examples: dict[str, torch.Tensor] = {}
        self.adaptive_attacks = tuple(attacks if adaptive_attacks is None else adaptive_attacks)
        unknown = [a for a in self.adaptive_attacks if a not in attacks]
        if unknown:
            raise AdvshieldError(f"adaptive_attacks: {unknown[0]!r} is not one of the attacks")
        self.notes: list[str] = []
        self._probed = False
        self.differentiable: dict[str, bool] = {}
        self.randomized: dict[str, bool] = {}
        self.perturbations = {k: v.detach().float().to(self.device) for k, v in (perturbations or {}).items()}
        for k, v in self.perturbations.items():
            if v.dim() != 3 or not torch.isfinite(v).all():
                raise AdvshieldError(f"perturbations: {k!r} must be a finite C×H×W tensor, not {tuple(v.shape)}")
        self.baselines = {t: baselines.get(t, m) for t, m in targets.items()} if baselines else dict(targets)
        self._built: dict[tuple[str, str], Attack] = {}
        for m in [*self.targets.values(), *self.defenses.values(), *self.baselines.values()]:
            m.to(self.device).eval()

    def attack(self, a: str, s: str) -> Attack:
        """The attack ``a`` built on source ``s`` (a model name, or ``adaptive-MODE|DEFENSE|TARGET``)."""
        if (a, s) not in self._built:
            if s.startswith("adaptive-"):
                mode, d, t = s[len("adaptive-"):].split("|")
                defense = self.defenses[d]
                atk = self.attacks[a](Defended(self.targets[t], defense, bpda=mode == "bpda").to(self.device))
                if (getattr(defense, "randomized", False) or self.randomized.get(d, False)) and hasattr(atk, "eot"):
                    atk.eot = self.eot
            else:
                atk = self.attacks[a](self.sources[s].to(self.device))
            self._built[(a, s)] = atk
        return self._built[(a, s)]

    def _seed_for(self, a: str, s: str, start: int) -> int:
        h = hashlib.sha256(f"{self.seed}/{a}/{s}/{start}".encode()).digest()
        return int.from_bytes(h[:4], "little")

    def _craft(self, a: str, s: str, x: torch.Tensor, y: torch.Tensor, start: int) -> torch.Tensor:
        atk = self.attack(a, s)
        atk.seed = self._seed_for(a, s, start)
        cache = None
        if self.cache_dir is not None:
            key = hashlib.sha256(f"{a}|{atk!r}|{s}|{start}|{len(x)}|{float(x.sum()):.6f}|{self.seed}".encode())
            cache = self.cache_dir / f"{a}-{s}-{start:07d}-{key.hexdigest()[:12]}.pt"
            if cache.is_file():
                x_adv = torch.load(cache, weights_only=True).to(self.device)
                atk.threat.check(x_adv, x)
                return x_adv
        x_adv = atk(x, y)
        try:
            atk.threat.check(x_adv, x)
        except BudgetError as e:
            raise BudgetError(f"attack {a} on {s}: {e}") from None
        if cache is not None:
            with atomic_path(cache) as tmp:
                torch.save(x_adv.cpu(), tmp)
        return x_adv

    def _adaptive_cells(self) -> list[tuple[str, str, str]]:
        """(mode, defense, target) for every adaptive attack cell; the undefended model needs none, and full-gradient
        mode is skipped for a defense autograd cannot go through (a note says so)."""
        return [(m, d, t) for m in self.adaptive for d in self.defenses if d != "none"
                and not (m == "full" and not self.differentiable.get(d, True)) for t in self.targets]

    def _probe(self, x: torch.Tensor) -> None:
        """On the first batch: which defenses are randomized (declared, or two forward passes differ) and which are
        differentiable (an input gradient through them exists, is finite and not all zero)."""
        if self._probed:
            return
        self._probed = True
        xs = x[: min(len(x), 16)]
        for d, defense in self.defenses.items():
            if d == "none":
                continue
            with torch.no_grad():
                self.randomized[d] = bool(getattr(defense, "randomized", False)) or \
                    not torch.equal(defense(xs), defense(xs))
            xg = xs.clone().requires_grad_(True)
            try:
                with torch.enable_grad():
                    (g,) = torch.autograd.grad(defense(xg).sum(), xg)
                ok = bool(torch.isfinite(g).all()) and bool((g.flatten(1).abs().amax(1) > 0).float().mean() > 0.5)
            except RuntimeError:
                ok = False
            self.differentiable[d] = ok
            if not ok and "full" in self.adaptive:
                self.notes.append(f"defense {d}: no useful gradient through it (non-differentiable or zero); "
                                  "full-gradient cells skipped, BPDA used")
            if self.randomized[d] and self.draws > 1:
                self.notes.append(f"defense {d} is randomized: each prediction is the worst of {self.draws} draws")
        # build every attack now and let it count its model's classes (one forward pass, which draws from a
        # randomized defense's own generator): inside a batch that draw would depend on which batch came first,
        # so 1 and N processes would disagree
        keys = [(a, s) for a in self.attacks for s in self.sources]
        keys += [(a, f"adaptive-{m}|{d}|{t}") for a in self.adaptive_attacks for m, d, t in self._adaptive_cells()]
        for a, s in keys:
            self.attack(a, s).num_classes(xs)

    @torch.no_grad()
    def _classify(self, x: torch.Tensor, y: torch.Tensor | None = None) -> dict[tuple[str, str], torch.Tensor]:
        """Predictions of every target behind every defense; each defense runs once per batch (``draws`` times for
        a randomized one: a sample then keeps a wrong prediction from any draw, so accuracy is the worst of R)."""
        out = {}
        for d, defense in self.defenses.items():
            runs = self.draws if (y is not None and self.randomized.get(d, False)) else 1
            preds: dict[str, torch.Tensor] = {}
            for _ in range(runs):
                xd = defense(x)
                for t, m in self.targets.items():
                    p = m(xd).argmax(1).cpu()
                    if t in preds:
                        keep = preds[t] != y.cpu()
                        p = torch.where(keep, preds[t], p)
                    preds[t] = p
            for t, p in preds.items():
                out[(d, t)] = p
        return out

    @torch.no_grad()
    def _classify_one(self, d: str, t: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Predictions of target ``t`` behind defense ``d`` (worst of ``draws`` for a randomized defense)."""
        runs = self.draws if self.randomized.get(d, False) else 1
        pred = None
        for _ in range(runs):
            p = self.targets[t](self.defenses[d](x)).argmax(1).cpu()
            pred = p if pred is None else torch.where(pred != y.cpu(), pred, p)
        return pred

    def run(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], total: int | None = None) -> GridResults:
        """``batches``: (x N×C×H×W in [0,1], y N int64). Labels drive untargeted attacks.

        Under torchrun (see :mod:`.distributed`) global batch ``b`` is processed by rank ``b % world`` and the
        per-sample results are gathered, in order, on every rank. Each batch's randomness (global RNG, seeded
        defense noise) restarts from the run seed and the batch's start index, so the results are the same for 1
        and N processes (given the same batch size). Torch's global RNG is restored afterwards."""
        t0 = time.time()
        rank, size = distributed.world()
        parts: list[tuple[int, dict[str, Any]]] = []
        start = 0
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            for b, (x, y) in enumerate(progress(batches, "eval", total=total, disable=rank != 0)):
                if b == 0:
                    self._probe(x.to(self.device))  # every rank probes the same (first) batch
                if b % size == rank:
                    parts.append((b, self._batch(x.to(self.device), y.to(self.device), start)))
                start += len(x)
        if size > 1:
            parts = sorted((p for ps in distributed.gather(parts) for p in ps), key=lambda p: p[0])
            self.examples = next((e for e in distributed.gather(self.examples) if e), {})
        ys = [p["y"] for _, p in parts]
        base = {t: [p["base"][t] for _, p in parts] for t in self.targets}
        clean = {k: [p["clean"][k] for _, p in parts] for k in [(d, t) for d in self.defenses for t in self.targets]}
        kind = lambda k: 1 if k[1] == "universal" else 2 if k[1].startswith("adaptive-") else 0  # noqa: E731
        keys = sorted(dict.fromkeys(k for _, p in parts for k in p["adv"]), key=kind)  # transfer, universal, adaptive
        adv = {k: [p["adv"][k] for _, p in parts if k in p["adv"]] for k in keys}
        cat = lambda v: torch.cat(v) if v else torch.empty(0, dtype=torch.long)  # noqa: E731
        info = {a: {s: repr(self.attack(a, s)) for s in self.sources} for a in self.attacks}
        for a in self.adaptive_attacks:
            info[a].update({f"adaptive-{m}": repr(self.attack(a, f"adaptive-{m}|{d}|{t}"))
                            for m, d, t in self._adaptive_cells()})
        for p, delta in self.perturbations.items():
            info[p] = {"universal": f"universal perturbation (L∞ {float(delta.abs().max()):.4g}, "
                                    f"L2 {float(delta.norm()):.4g})"}
        self.examples.update({f"universal/{p}": delta.cpu().half().float()  # as stored (float16)
                              for p, delta in self.perturbations.items() if self.examples})
        res = GridResults(cat(ys), {k: cat(v) for k, v in base.items()}, {k: cat(v) for k, v in clean.items()},
                          {k: cat(v) for k, v in adv.items()}, info,
                          meta={"n": start, "seed": self.seed, "device": str(self.device),
                                "elapsed_s": round(time.time() - t0, 2), "adaptive": list(self.adaptive),
                                "adaptive_attacks": list(self.adaptive_attacks) if self.adaptive else [],
                                "eot": self.eot, "draws": self.draws, "notes": list(self.notes),
                                "randomized_defenses": [d for d, r in self.randomized.items() if r],
                                "non_differentiable_defenses": [d for d, ok in self.differentiable.items()
                                                                if not ok]},
                          examples=dict(self.examples))
        return res

    def _restart(self, start: int) -> None:
        """Seed torch's global RNG and restart every seeded noise source of the defenses (modules with
        ``restart_noise``) from the run seed and the batch's global start index."""
        restart_randomness(self.defenses.values(), self._seed_for("batch", "", start))

    def _batch(self, x: torch.Tensor, y: torch.Tensor, start: int) -> dict[str, Any]:
        """Every cell of the grid on one batch starting at global index ``start``: {"y", "base": target → preds,
        "clean": (defense, target) → preds, "adv": (attack, source, defense, target) → preds} (CPU)."""
        self._restart(start)
        out: dict[str, Any] = {"y": y.cpu(), "base": {}, "clean": {}, "adv": {}}
        with torch.no_grad():
            for t, m in self.baselines.items():
                out["base"][t] = m(x).argmax(1).cpu()
        out["clean"].update(self._classify(x, y))
        keep = self._example_rows(len(x)) if start == 0 else None
        if keep is not None:
            self._keep(keep, x, "clean", list(self.defenses))
        adv = out["adv"]
        for a in self.attacks:
            for s in self.sources:
                x_adv = self._craft(a, s, x, y, start)
                for (d, t), p in self._classify(x_adv, y).items():
                    adv[(a, s, d, t)] = p
                if keep is not None:
                    self._keep(keep, x_adv, f"{a}/{s}", list(self.defenses))
            if a not in self.adaptive_attacks:
                continue
            for mode, d, t in self._adaptive_cells():
                x_adv = self._craft(a, f"adaptive-{mode}|{d}|{t}", x, y, start)
                adv[(a, f"adaptive-{mode}", d, t)] = self._classify_one(d, t, x_adv, y)
                if keep is not None:
                    self._keep(keep, x_adv, f"{a}/adaptive-{mode}|{d}|{t}", [d])
        for p, delta in self.perturbations.items():
            if delta.shape != x.shape[1:]:
                raise AdvshieldError(f"perturbations: {p!r} is {tuple(delta.shape)}, images are "
                                     f"{tuple(x.shape[1:])}")
            for k, pred in self._classify((x + delta).clamp(0, 1), y).items():
                adv[(p, "universal", *k)] = pred
        return out

    def _example_rows(self, n: int) -> torch.Tensor | None:
        """Sorted rows of the first batch kept as examples (seeded by the run seed), or None when none are asked."""
        if not self.n_examples or not n:
            return None
        g = torch.Generator().manual_seed(self.seed)
        rows = torch.randperm(n, generator=g)[: self.n_examples].sort().values
        self.examples["index"] = rows.clone()
        return rows

    @torch.no_grad()
    def _keep(self, rows: torch.Tensor, x: torch.Tensor, name: str, defenses: list[str]) -> None:
        """Store ``x[rows]`` (as "clean" or "adv/NAME") and each listed defense's output on it ("out/D/NAME"),
        shrunk to at most :data:`EXAMPLE_SIDE` pixels a side (area interpolation) to keep reports small. A copy of
        each defense runs under a forked RNG, so keeping examples never changes the draws the metrics see."""
        xr = x[rows.to(x.device)]
        self.examples["clean" if name == "clean" else f"adv/{name}"] = shrink(xr).cpu()
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        for d in defenses:
            if d != "none":
                with torch.random.fork_rng(devices=devices):
                    self.examples[f"out/{d}/{name}"] = shrink(copy.deepcopy(self.defenses[d])(xr)).cpu()
