"""``audit``: the adaptive evaluation a defense must pass before its robustness number means anything.

Threat models, each run on the samples the defended model classifies correctly and scored on its own:

- ``transfer``: APGD-CE crafted on the undefended model (defense-unaware; the number a naive report shows);
- ``full``: APGD-CE then APGD-DLR through the defense with exact gradients — only where the defense is
  differentiable, which is measured (a finite, non-zero input gradient for most samples), not assumed;
- ``bpda``: the same through the defense's BPDA substitute (:meth:`Defense.substitute`; the identity for a module
  that declares none);
- ``square``: Square, score-based, as the gradient-free check.

Randomized defenses (detected by two forward passes on the same images, as AutoAttack does) are attacked with
EOT (``eot`` gradient samples per step, ≥ 20 by default) and scored over ``draws`` repeated forward passes: a sample
is robust only if it is classified correctly in every draw (``robust_accuracy``, worst of R); the majority-vote
number is reported beside it. A sample counts as robust overall only if it survives every threat model.

Sanity checks (Carlini et al. 2019; AutoAttack's checks) become named ``flags``: ``zero-gradients``,
``gradient-free-beats-white-box``, ``transfer-beats-white-box``, ``unbounded-attack-fails``,
``not-monotone-in-eps``, ``not-reproducible``, ``softmax-output``, ``non-differentiable`` (informational).

Images are float N×C×H×W in [0,1]; eps in [0,1] units (L∞ per pixel, L2 over the image).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..attacks.apgd import APGD
from ..attacks.base import seeded
from ..attacks.pgd import PGD
from ..attacks.square import Square
from ..checks import check_eps, check_images, check_labels, check_steps
from ..defenses.base import Defense
from ..defenses.purifier import defend
from ..errors import AdvshieldError
from ..utils import mix
from .blockcache import BlockCache, fingerprint
from .engine import restart_randomness, shrink

# Version of APGD's rule for EOT runs recorded in AuditResult.meta["eot_rule"]: 2 = a sample keeps ascending until a
# point fools every draw of a step, the latest point fooling the largest share is returned (1, before: the first
# point fooling one draw ended the run). Cells measured under rule 1 are weaker attacks on randomized defenses.
EOT_RULE = 2
VERSIONS = ("auto", "quick")
ZERO_GRAD_SHARE = 0.5  # more samples than this with an all-zero input gradient: the defense masks gradients
CURVE_EOT = 5  # EOT of the sanity eps curve (the same attack at each eps: a like-for-like check, cheaper than EOT 20)


@dataclass
class AuditResult:
    """What :func:`audit` found. Accuracies are fractions in [0,1]; ``per_attack`` maps a threat-model label to the
    accuracy of the defended model under it alone; ``robust`` is the per-sample flag (N bool) of surviving all."""

    clean_accuracy: float
    robust_accuracy: float
    robust_accuracy_majority: float
    ci95: tuple[float, float]
    per_attack: dict[str, float]
    flags: list[str]
    robust: torch.Tensor
    per_sample: dict[str, torch.Tensor] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    # a few seeded samples for the report: "index", "labels", "clean" (k×C×H×W), "adv/MODE", "pred/MODE"
    examples: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready summary (no per-sample tensors: see :attr:`per_sample`)."""
        return {"clean_accuracy": self.clean_accuracy, "robust_accuracy": self.robust_accuracy,
                "robust_accuracy_majority": self.robust_accuracy_majority, "ci95": list(self.ci95),
                "per_attack": self.per_attack, "flags": self.flags, "notes": self.notes, "n": int(len(self.robust)),
                "meta": self.meta}

    def to_markdown(self, title: str = "advshield audit") -> str:
        m = self.meta
        lines = [f"# {title}", "",
                 f"Defense `{m.get('defense')}` on `{m.get('model')}`, {m.get('norm')} eps {m.get('eps_255')}/255, "
                 f"n = {len(self.robust)}, seed {m.get('seed')}, {m.get('seconds')} s.", "",
                 f"**Robust accuracy (adaptive, worst case over every threat model"
                 f"{' and ' + str(m.get('draws')) + ' draws' if m.get('randomized') else ''}): "
                 f"{100 * self.robust_accuracy:.1f} %** (95 % CI {100 * self.ci95[0]:.1f}–{100 * self.ci95[1]:.1f}); "
                 f"clean {100 * self.clean_accuracy:.1f} %"
                 + (f"; majority vote over draws {100 * self.robust_accuracy_majority:.1f} %" if m.get("randomized")
                    else "") + ".", "",
                 "| threat model | accuracy |", "|:---|---:|"]
        lines += [f"| {k} | {100 * v:.1f} % |" for k, v in self.per_attack.items()]
        lines += ["", "Flags: " + (", ".join(f"`{f}`" for f in self.flags) if self.flags else "none"), ""]
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def __repr__(self) -> str:
        return (f"AuditResult(n={len(self.robust)}, clean={self.clean_accuracy:.3f}, "
                f"robust={self.robust_accuracy:.3f}, modes={list(self.per_attack)}, flags={self.flags})")


class _BPDA(nn.Module):
    """Forward through ``defense``; backward through its substitute (identity when it declares none)."""

    def __init__(self, defense: nn.Module) -> None:
        super().__init__()
        self.defense = defense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.defense, Defense):
            return self.defense.bpda(x)
        with torch.no_grad():
            out = self.defense(x)
        sub = self.defense.substitute(x) if hasattr(self.defense, "substitute") else x
        return sub + (out - sub).detach()


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


@torch.no_grad()
def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, draws: int, batch: int) -> torch.Tensor:
    """draws × N bool: correct in each forward pass."""
    out = torch.zeros(draws, len(x), dtype=torch.bool)
    for r in range(draws):
        for s in _batches(len(x), batch):
            out[r, s] = (model(x[s]).argmax(1) == y[s]).cpu()
    return out


def is_randomized(model: nn.Module, x: torch.Tensor) -> bool:
    """Two forward passes on the same images differ (AutoAttack's check)."""
    with torch.no_grad():
        return not torch.equal(model(x), model(x))


def input_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor | None:
    """∇ₓ CE(model(x), y) (N×C×H×W), or None when autograd cannot go through ``model``."""
    x = x.clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            loss = nn.functional.cross_entropy(model(x), y, reduction="sum")
            (g,) = torch.autograd.grad(loss, x)
    except RuntimeError:
        return None
    return g


def _attack(make: Callable[[], Any], x: torch.Tensor, y: torch.Tensor, todo: torch.Tensor, seed: int,
            batch: int) -> torch.Tensor:
    """``make()``'s attack on the samples ``todo`` (N bool), seeded per batch; the others are returned as is."""
    x_adv = x.clone()
    idx = todo.nonzero().flatten()
    for b, s in enumerate(_batches(len(idx), batch)):
        atk = make()
        atk.seed = seed + b
        sel = idx[s]
        x_adv[sel] = atk(x[sel], y[sel])
    return x_adv


def audit(model: nn.Module, defense: Any, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf",
          version: str = "auto", *, steps: int | None = None, eot: int = 20, draws: int = 10,
          n_queries: int | None = None, seed: int = 0, batch_size: int = 250, adapt_channels: bool = False,
          device: str | torch.device = "cpu", examples: int = 4, resume_dir: str | Path | None = None,
          log: Callable[[str], None] | None = None) -> AuditResult:
    """Audit ``defense`` in front of ``model`` on images ``x`` (N×C×H×W in [0,1]) with labels ``y`` (N int).

    ``defense``: a registered name or spec (``"jpeg:quality=50"``, ``"median+jpeg"``), a trained purifier spec, any
    ``nn.Module`` mapping [0,1] images to [0,1] images, or None (the undefended model). ``version``: ``"auto"``
    (APGD 100 steps, Square 1000 queries) or ``"quick"`` (APGD 20 steps, Square 200 queries); ``steps`` /
    ``n_queries`` override. ``eot``: gradient samples per step for a randomized defense (≥ 20 recommended);
    ``draws``: forward passes each sample is scored over when the defense is randomized. ``examples``: samples
    (seeded choice) kept as images per threat model for the report (:attr:`AuditResult.examples`).
    ``resume_dir``: store each finished block of ``batch_size`` samples (and the sanity checks) there, keyed by the
    images, labels, weights and settings, so a stopped audit re-run with the same arguments resumes (results are
    identical: each block's randomness restarts from (seed, block start))."""
    t0 = time.time()
    say = log or (lambda s: None)
    if version not in VERSIONS:
        raise AdvshieldError(f"version must be one of {', '.join(VERSIONS)}, not {version!r}")
    norm = norm.lower()
    if norm not in ("linf", "l2"):
        raise AdvshieldError(f"norm must be 'linf' or 'l2', not {norm!r}")
    eps = check_eps(eps, "eps", norm)
    x = check_images(x, "x").detach().to(device)
    y = check_labels(y, len(x), name="y").to(device)
    steps = check_steps(steps if steps is not None else (100 if version == "auto" else 20), "steps")
    n_queries = check_steps(n_queries if n_queries is not None else (1000 if version == "auto" else 200),
                            "n_queries")
    eot, draws = check_steps(eot, "eot"), check_steps(draws, "draws")
    model = model.to(device).eval()
    guarded = defend(model, defense, seed=seed, adapt_channels=adapt_channels) if defense is not None else model
    guarded = guarded.to(device).eval()
    inner = getattr(guarded, "defense", None)
    flags: list[str] = []
    notes: list[str] = []
    probe = x[: min(len(x), 64)]

    with torch.no_grad():
        raw = model(probe)
    if bool(((raw >= 0) & (raw <= 1)).all()) and torch.allclose(raw.sum(1), torch.ones(len(raw), device=raw.device),
                                                                 atol=1e-4):
        flags.append("softmax-output")
        notes.append("softmax-output: the model returns probabilities, not logits; gradients of CE through them "
                     "vanish near one-hot outputs. Return logits.")
    with seeded(seed):
        randomized = is_randomized(guarded, probe)
    runs = draws if randomized else 1
    eot_iter = eot if randomized else 1
    if randomized:
        notes.append(f"randomized defense (two forward passes differ): EOT {eot} per gradient step, each sample "
                     f"scored over {draws} draws")

    # differentiability, measured on the defended model
    diff = inner is not None
    zero_share = 0.0
    if inner is not None:
        g = input_gradients(guarded, probe, y[: len(probe)])
        if g is None or not torch.isfinite(g).all():
            diff = False
            notes.append("non-differentiable: autograd cannot go through the defense; full-gradient mode skipped")
        else:
            zero_share = float((g.flatten(1).abs().amax(1) == 0).float().mean())
            if zero_share > ZERO_GRAD_SHARE:
                diff = False
                flags.append("zero-gradients")
                notes.append(f"zero-gradients: {100 * zero_share:.0f} % of the samples have an all-zero input "
                             "gradient through the defense (gradient masking); full-gradient mode skipped, BPDA used")
        if not diff:
            flags.append("non-differentiable")

    lp = "Linf" if norm == "linf" else "L2"
    cache = BlockCache(resume_dir, fingerprint(
        model, guarded, x, y, repr(guarded), {"eps": eps, "norm": norm, "steps": steps, "n_queries": n_queries,
                                              "eot": eot, "draws": draws, "seed": seed, "batch": batch_size,
                                              **({"eot_rule": EOT_RULE} if randomized else {})}))

    def apgd_pair(target: nn.Module, e: float = eps, k: int = steps) -> Mode:
        """APGD-CE, then APGD-DLR on what CE left robust (DLR needs ≥ 4 classes)."""
        def run(xx: torch.Tensor, yy: torch.Tensor, mask: torch.Tensor, sd: int) -> torch.Tensor:
            kw = dict(norm=lp, eps=e, steps=k, eot_iter=eot_iter)
            x1 = _attack(lambda: APGD(target, loss="ce", **kw), xx, yy, mask, sd, batch_size)
            with seeded(mix(sd, "still")):
                still = _correct(guarded, x1, yy, runs, batch_size).all(0).to(device) & mask
            n_classes = int(raw.shape[1])
            if n_classes >= 4 and still.any():
                x2 = _attack(lambda: APGD(target, loss="dlr", **kw), xx, yy, still, mix(sd, "dlr"), batch_size)
                x1 = torch.where(still.view(-1, 1, 1, 1), x2, x1)
            return x1

        return run

    modes: list[tuple[str, Mode]] = []
    if inner is not None:
        modes.append(("transfer (APGD-CE on the undefended model)",
                      lambda xx, yy, m, sd: _attack(lambda: APGD(model, norm=lp, eps=eps, steps=steps, loss="ce"),
                                                    xx, yy, m, sd, batch_size)))
    if diff or inner is None:
        label = "white-box APGD-CE+DLR" if inner is None else "full gradient APGD-CE+DLR through the defense"
        modes.append((label + (f", EOT {eot}" if randomized else ""), apgd_pair(guarded)))
    if inner is not None:
        modes.append(("BPDA APGD-CE+DLR (backward through the substitute)" + (f", EOT {eot}" if randomized else ""),
                      apgd_pair(nn.Sequential(_BPDA(inner), model))))
    modes.append((f"Square ({n_queries} queries, gradient-free)",
                  lambda xx, yy, m, sd: _attack(lambda: Square(guarded, norm=lp, eps=eps, n_queries=n_queries),
                                                xx, yy, m, sd, batch_size)))

    # every threat model on blocks of ``batch_size`` samples; block b runs on rank b % N under torchrun, its
    # randomness (attack seeds, draws, defense noise) restarted from (seed, block start): 1 and N processes agree
    ex_rows = _example_rows(len(x), examples, seed)
    rank, size = distributed.world()
    blocks = []
    for b, sl in enumerate(_batches(len(x), batch_size)):
        if b % size == rank:
            t1 = time.time()
            blk = cache.get(f"block-{sl.start}")
            if blk is None:
                blk = _block(guarded, modes, x[sl], y[sl], sl.start, ex_rows, runs, seed, batch_size)
                blk["seconds"] = torch.tensor(time.time() - t1, dtype=torch.float64)
                cache.put(f"block-{sl.start}", blk)
            blocks.append((b, blk))
            say(f"samples {sl.start}–{sl.stop} done ({time.time() - t1:.1f} s)")
    if size > 1:
        blocks = sorted((p for ps in distributed.gather(blocks) for p in ps), key=lambda p: p[0])
    clean = torch.cat([blk["clean"] for _, blk in blocks], 1)
    clean_all = clean.all(0)
    per_sample: dict[str, torch.Tensor] = {"clean": clean_all}
    per_attack = {"clean": float(clean.float().mean())}
    say(f"clean accuracy {per_attack['clean']:.3f} ({'randomized' if randomized else 'deterministic'} defense)")
    robust = clean_all.clone()
    robust_major = clean.float().mean(0) > 0.5
    adv_for: dict[str, torch.Tensor] = {}
    for label, _ in modes:
        ok = torch.cat([blk[label] for _, blk in blocks], 1)
        adv_for[label] = torch.cat([blk["ex/" + label] for _, blk in blocks])
        survive = ok.all(0)
        per_sample[label] = survive
        per_attack[label] = float(survive.float().mean())
        robust &= survive
        robust_major &= ok.float().mean(0) > 0.5
        say(f"{label}: {per_attack[label]:.3f}")

    white = [v for k, v in per_attack.items() if k.startswith(("full", "BPDA", "white-box"))]
    best_white = min(white) if white else None
    if best_white is not None:
        for k, v in per_attack.items():
            if k.startswith("Square") and v < best_white - 0.01:
                flags.append("gradient-free-beats-white-box")
                notes.append(f"gradient-free-beats-white-box: Square {100 * v:.1f} % < best white-box "
                             f"{100 * best_white:.1f} %: the gradients mislead (masking or a too weak attack)")
            if k.startswith("transfer") and v < best_white - 0.01:
                flags.append("transfer-beats-white-box")
                notes.append(f"transfer-beats-white-box: transfer {100 * v:.1f} % < best white-box "
                             f"{100 * best_white:.1f} %")

    sub = min(len(x), 100)
    xs, ys = x[:sub], y[:sub]
    route = guarded if (diff or inner is None) else nn.Sequential(_BPDA(inner), model)
    everyone = torch.ones(sub, dtype=torch.bool, device=device)
    unb_eps = 1.0 if norm == "linf" else float(math.sqrt(xs[0].numel()))  # the whole pixel range
    curve_eot = min(eot_iter, CURVE_EOT)
    fracs = (0.25, 0.5, 1.0)

    def piece(name: str) -> float | bool:
        """One sanity check on the first 100 samples with the strongest white-box route, its randomness restarted
        from (seed, name) so that any rank computes the same answer: "unbounded" (accuracy under an unbounded
        attack), "curve-F" (accuracy at eps × F, the same attack with EOT ≤ CURVE_EOT at each F), "repro" (two
        seeded runs give the same images)."""
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            restart_randomness([guarded], mix(seed, "sanity", name))
            if name == "unbounded":
                with seeded(seed):
                    x_unb = PGD(route, eps=unb_eps, alpha=unb_eps / 10, steps=20, random_start=True)(xs, ys) \
                        if norm == "linf" else _attack(lambda: APGD(route, norm="L2", eps=unb_eps, steps=20), xs,
                                                       ys, everyone, seed, batch_size)
                    return float(_correct(guarded, x_unb, ys, 1, batch_size).float().mean())
            if name.startswith("curve-"):
                f = float(name[6:])
                xe = _attack(lambda: APGD(route, norm="Linf" if norm == "linf" else "L2", eps=eps * f,
                                          steps=min(steps, 20), eot_iter=curve_eot), xs, ys, everyone, seed,
                             batch_size)
                with seeded(seed + 1):
                    return float(_correct(guarded, xe, ys, 1, batch_size).float().mean())
            if randomized:  # a randomized defense draws new noise on every call: two runs differ by design
                return True
            again, twice = _repeat(route, xs, ys, eps, norm, min(steps, 20), seed, batch_size, device)
            return bool(torch.equal(again, twice))

    def sanity() -> tuple[list[str], list[str], float, list[float]]:
        """The sanity checks (flags, notes, unbounded accuracy, accuracy at eps × 0.25, 0.5, 1); under torchrun
        rank r computes the checks r, r + N, ... and every rank gets all answers."""
        names = ["unbounded", *(f"curve-{f}" for f in fracs), "repro"]
        rank, size = distributed.world()
        got: dict[str, float | bool] = {}
        for part in distributed.gather({n: piece(n) for i, n in enumerate(names) if i % size == rank}):
            got.update(part)
        fl: list[str] = []
        nt: list[str] = []
        unb = float(got["unbounded"])
        if unb > 0.1:
            fl.append("unbounded-attack-fails")
            nt.append(f"unbounded-attack-fails: with eps = {unb_eps:g} "
                      f"the white-box attack leaves {100 * unb:.0f} % accuracy (should be ~0): the attack does not "
                      "reach the model")
        curve = [float(got[f"curve-{f}"]) for f in fracs]
        if any(b > a + 0.02 for a, b in zip(curve, curve[1:])):
            fl.append("not-monotone-in-eps")
            nt.append("not-monotone-in-eps: accuracy at eps × 0.25, 0.5, 1 = "
                      + ", ".join(f"{c:.2f}" for c in curve))
        if not got["repro"]:
            fl.append("not-reproducible")
            nt.append("not-reproducible: the same attack with the same seed gave different images")
        return fl, nt, unb, curve

    # read back by rank 0 (under torchrun, every rank takes its answer), else computed by all ranks together
    sanity_key = "sanity" if curve_eot == eot_iter else f"sanity-curve-eot{curve_eot}"
    got = distributed.broadcast(cache.get_json(sanity_key) if distributed.is_main() else None)
    if got is None:
        t1 = time.time()
        got = [*sanity(), time.time() - t1]
        if distributed.is_main():
            cache.put_json(sanity_key, got)
    more_flags, more_notes, unb, curve, sanity_s = got
    flags += more_flags
    notes += more_notes

    kept = _examples(guarded, x, y, adv_for, ex_rows, seed)
    n = len(x)
    k = int(robust.sum())
    meta = {"eps": eps, "eps_255": round(eps * 255, 4), "norm": norm, "version": version, "steps": steps,
            "n_queries": n_queries, "eot": eot_iter, "draws": runs, "randomized": randomized,
            "differentiable": diff, "zero_gradient_share": zero_share, "seed": seed,
            "unbounded_accuracy": unb, "eps_curve": curve, "eps_curve_eot": curve_eot, "eot_rule": EOT_RULE,
            "seconds": round(time.time() - t0, 1),
            "compute_s": round(sum(float(blk["seconds"]) for _, blk in blocks) + sanity_s, 1),
            "defense": _describe(defense), "model": str(getattr(model, "spec", type(model).__name__)),
            "threat_models": list(per_attack)}
    return AuditResult(per_attack["clean"], k / n, float(robust_major.float().mean()), wilson(k, n), per_attack,
                       list(dict.fromkeys(flags)), robust.cpu(), {k2: v.cpu() for k2, v in per_sample.items()}, notes,
                       meta, kept)


Mode = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]  # (x, y, todo, seed) → x_adv


def _block(guarded: nn.Module, modes: list[tuple[str, Mode]], x: torch.Tensor, y: torch.Tensor, start: int,
           ex_rows: torch.Tensor, runs: int, seed: int, batch: int) -> dict[str, torch.Tensor]:
    """Every threat model on the samples ``x`` (global indices from ``start``): {"clean": runs×n bool,
    LABEL: runs×n bool (correct under that mode, and clean), "ex/LABEL": the adversarial images of the example
    rows in this block}. All randomness restarts from (seed, start), whatever else ran before."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    mine = ex_rows[(ex_rows >= start) & (ex_rows < start + len(x))] - start
    with torch.random.fork_rng(devices=devices):
        restart_randomness([guarded], mix(seed, start, "clean"))
        clean = _correct(guarded, x, y, runs, batch)
        todo = clean.all(0).to(x.device)
        out = {"clean": clean}
        for i, (label, run) in enumerate(modes):
            restart_randomness([guarded], mix(seed, start, i))
            x_adv = run(x, y, todo, mix(seed, start, i, "attack"))
            restart_randomness([guarded], mix(seed, start, i, "score"))
            out[label] = _correct(guarded, x_adv, y, runs, batch) & clean.all(0)
            out["ex/" + label] = x_adv[mine.to(x.device)].cpu()
    return out


def _example_rows(n: int, k: int, seed: int) -> torch.Tensor:
    """``k`` seeded sample indices (sorted) kept as report examples."""
    if k <= 0 or not n:
        return torch.empty(0, dtype=torch.long)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values


@torch.no_grad()
def _examples(guarded: nn.Module, x: torch.Tensor, y: torch.Tensor, adv_for: dict[str, torch.Tensor],
              rows: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
    """The samples ``rows``: clean and adversarial images per mode (``adv_for``: label → those rows' images;
    shrunk for the report) and the defended model's prediction on each (one draw, seeded; the RNG outside is
    left as it was)."""
    if not len(rows):
        return {}
    dev = x.device
    out = {"index": rows.clone(), "labels": y[rows.to(y.device)].cpu(), "clean": shrink(x[rows.to(dev)]).cpu()}
    for label, xa in adv_for.items():
        xr = xa.to(dev)
        with seeded(seed + 2):
            out[f"pred/{label}"] = guarded(xr).argmax(1).cpu()
        out[f"adv/{label}"] = shrink(xr).cpu()
    return out


def _repeat(route: nn.Module, xs: torch.Tensor, ys: torch.Tensor, eps: float, norm: str, steps: int, seed: int,
            batch: int, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The same seeded APGD run twice (a deterministic pipeline must give the same images)."""
    everyone = torch.ones(len(xs), dtype=torch.bool, device=device)
    make = lambda: APGD(route, norm="Linf" if norm == "linf" else "L2", eps=eps, steps=steps)  # noqa: E731
    return _attack(make, xs, ys, everyone, seed, batch), _attack(make, xs, ys, everyone, seed, batch)


def _describe(defense: Any) -> str:
    if defense is None:
        return "none"
    if isinstance(defense, str):
        return defense
    return type(defense).__name__
