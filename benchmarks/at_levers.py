"""Adversarial training of fmnist-lenet at L∞ 0.1: the levers tried for the clean ≥ 85 % / audited ≥ 70 % goal.

Each variant is the shipped ``fmnist-lenet-at`` recipe with one lever changed; it is trained (seeded, resumable)
under ``--work/KEY`` with the library's ``train_classifier`` (the same run as the ``advshield train classifier``
command shown), unless that directory already holds the finished model; the shipped recipe's row reads the zoo
model. Each model is then audited exactly as ``benchmarks/defenses.py`` audits the AT baselines (first 200 test
images, version quick, cached under ``benchmarks/results/at-levers``).

Run: .venv/bin/python benchmarks/at_levers.py --threads 2 [--only KEY,...] [--render-only]
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from _results import RESULTS, audit_cached, machine, pct, update_section

import advshield
from advshield.data import load_dataset
from advshield.eval.blockcache import fingerprint
from advshield.models.recipes import CLASSIFIER_RECIPES
from advshield.models.zoo import zoo_cards
from advshield.report.tables import markdown_table
from advshield.train.classifier import ClassifierConfig, train_classifier

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / "results" / "at-levers"
RECIPE = "fmnist-lenet-at"
# key → (lever, changes to the recipe, the CLI flags that make the same run); None: the shipped recipe as it is
VARIANTS: dict[str, tuple[str, dict | None, str]] = {
    "pgd-8ep": ("PGD-AT (3 steps of eps/2), 8 epochs: the shipped recipe", None, ""),
    "trades-b2-10ep": ("TRADES β = 2 (3 KL steps of eps/2), 10 epochs",
                       {"adversarial": {"method": "trades", "beta": 2.0}, "epochs": 10},
                       "--adversarial trades --adv-beta 2 --epochs 10"),
}


def recipe(changes: dict) -> dict:
    """The shipped recipe with ``changes`` applied (the adversarial spec merged key by key)."""
    r = copy.deepcopy(CLASSIFIER_RECIPES[RECIPE])
    for k, v in changes.items():
        r[k] = {**r[k], **v} if isinstance(v, dict) else v
    return r


def model_of(key: str, work: Path, train: bool) -> tuple[torch.nn.Module, dict] | None:
    """(model, card) of a variant: the zoo model for the shipped recipe; else trained (or resumed) under
    ``work/key`` when ``train``, or None when it is not there yet."""
    _, changes, _ = VARIANTS[key]
    if changes is None:
        card = next(c for c in zoo_cards() if c["name"] == RECIPE)
        return advshield.load_model(f"zoo:{RECIPE}"), card
    out = work / key
    path = out / f"{RECIPE}.safetensors"
    if not path.is_file():
        if not train:
            return None
        train_classifier(ClassifierConfig(name=RECIPE, **recipe(changes)), out, resume=True,
                         log=lambda s: print(f"  {s}", file=sys.stderr, flush=True))
    import json
    return advshield.load_model(str(path)), json.loads(path.with_suffix(".json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=ROOT.parent / ".cache" / "at-levers",
                   help="where the variants are trained (one folder each)")
    p.add_argument("--only", default=None, help="variant keys to train / audit (comma-separated)")
    p.add_argument("--audit-n", type=int, default=200)
    p.add_argument("--eps", type=float, default=25.5, help="L∞ budget, 0-255 (default 25.5 = 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--render-only", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_dataset("fashion-mnist", "test").subset(args.audit_n)
    x, y = next(data.batches(len(data)))
    rows = []
    for key, (lever, _, flags) in VARIANTS.items():
        go = not args.render_only and (args.only is None or key in args.only.split(","))
        got = model_of(key, args.work, go)
        if got is None:
            continue
        model, card = got
        settings = {"model": RECIPE, "variant": key, "n": args.audit_n, "eps_255": args.eps, "version": "quick",
                    "eot": 20, "draws": 10, "seed": args.seed, "weights": fingerprint(model)}

        def run(model=model):
            print(f"audit {key} ...", file=sys.stderr, flush=True)
            return advshield.audit(model, None, x, y, args.eps / 255, version="quick", eot=20, draws=10,
                                   seed=args.seed, batch_size=50)
        doc = audit_cached(CACHE, key, settings, run if go else None)
        if doc is None:
            continue
        m, t = card["metrics"], card["training"]
        clean, robust = m["clean_accuracy"], doc["robust_accuracy"]
        lo, hi = doc["ci95"]
        met = "met" if clean >= 0.85 and robust >= 0.70 else "not met"
        rows.append([lever, f"`--recipe {RECIPE} {flags}`".replace(" `", "`"), pct(clean), pct(m["pgd10_accuracy"]),
                     f"**{pct(robust)}** ({pct(lo)}–{pct(hi)})", met, f"{t['train_time_s'] / 60:.0f} min"])
    body = ["## Adversarial training of fmnist-lenet: the levers tried (L∞ 25.5/255)", "",
            "Command: `.venv/bin/python benchmarks/at_levers.py --threads 2`", f"Machine: {machine()}", "",
            "Each row is the shipped `fmnist-lenet-at` recipe with one lever changed (trained by "
            "`advshield train classifier` with the flags shown, seed 0). *clean*: the full test set; *PGD-10*: "
            "white-box on 1000 test images (the card); *audited*: `advshield.audit` (version quick: APGD-CE+DLR "
            f"20 steps, Square 200 queries) on the first {args.audit_n} test images, as in the `defenses` section. "
            "Goal: clean ≥ 85 % with audited ≥ 70 %. *training*: the card's wall time, on 2 cores shared with other "
            "runs (the TRADES run also sat paused for about 10 minutes): not a speed measurement. Neither lever "
            "reaches both numbers: TRADES β = 2 buys 5 points of clean accuracy with 3 points of audited robustness, "
            "on the frontier PGD-AT is on; both runs were still improving at their last epoch, so longer training "
            "(TRADES β 3–4, 12+ epochs, timed alone against the hour's budget) is the next lever, not tried yet.", "",
            markdown_table(["lever", "training flags", "clean", "PGD-10", "audited robust (95 % CI)", "goal",
                            "training"], rows) if rows else "Nothing measured yet.", ""]
    update_section("at-levers", "\n".join(body), RESULTS)
    print("\n".join(body))


if __name__ == "__main__":
    main()
