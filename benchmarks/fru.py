"""FRU tables (Borkar et al. 2020, Tables 2, 4, 5) on Fashion-MNIST: restoration accuracy of the shipped FRU
models against universal perturbations they were and were not trained on.

For each FRU model (its card names the frozen ``base``), perturbations are fitted on the *base* network, on
Fashion-MNIST test images that are never evaluated (test[5000:5000+fit]; the FRU training pool came from the
training split), and added to the evaluated images test[:n]:

(a) seen attack type: ``--uaps`` held-out UAPs (seeds 100, 101, …) at the training strength eps;
(b) stronger: UAPs at 1.5×, 2×, 2.5× eps (the FRUs only ever saw eps);
(c) unseen types: sPGD, FFF, GAP at eps;
(d) baselines: no defense, and the input-transform defenses (JPEG, bit depth, median, TVM, R&P) on the base;
(e) white-box line: a UAP fitted through the FRU model itself.

Restoration accuracy = (defended clean top-1 + defended perturbed top-1) / (2 · base clean top-1); everything
through :class:`advshield.eval.engine.Engine` with ``perturbations`` and ``baselines``. Fitted perturbations are
cached under ``--cache`` (.npy + the settings they were fitted with) so a re-run only evaluates.

Run: .venv/bin/python benchmarks/fru.py  (writes the `fru` section of docs/RESULTS.md)
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch
from _results import RESULTS, fit_cached, machine, update_section
from torch import nn

from advshield.data import load_dataset
from advshield.data.tensors import to_float
from advshield.defenses.base import Identity, build_defense
from advshield.eval.engine import Engine
from advshield.models import load_model
from advshield.report.tables import markdown_table
from advshield.utils import seed_everything

DEFENSE_LABELS = {"none": "no defense", "jpeg": "JPEG", "bit-depth": "bit depth", "median": "median",
                  "tvm": "TVM", "resize-pad": "R&P"}
GOALS = {"seen": 0.97, "unseen": 0.93, "2x": 0.90, "clean_points": 1.0}
# Borkar et al. 2020 (seed 001): restoration accuracy of their FRUs, trained on UAP only
PAPER_LINE = ("- Paper (Borkar et al., Tables 4–5, ImageNet): unseen attacks CaffeNet FFF 0.941, NAG 0.840, "
              "S.Fool 0.914; ResNet-152 GAP 0.922, G-UAP 0.914, sPGD 0.976; stronger UAPs on CaffeNet (trained at "
              "strength 10) 1.5× 0.952, 2× 0.896, 2.5× 0.854. The ≥ 0.93 goal for every unseen attack asks for more "
              "than the paper reports for GAP (0.922).")

ADAPTIVE_NOTE = ("*Adaptive case:* the `whitebox` section audits the FRU models as classifiers (APGD, Square) and "
                 "fits UAP, sPGD, FFF and GAP through the FRU model (benchmarks/whitebox.py).")


def r3(v: float) -> str:
    return "–" if v != v else f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="zoo:fmnist-vgg-fru,zoo:fmnist-resnet-fru",
                    help="FRU models (cards name a base)")
    ap.add_argument("--n", type=int, default=2000, help="evaluated test images test[:n] (n ≤ 5000)")
    ap.add_argument("--fit-images", type=int, default=500, help="test[5000:5000+k] the attacker fits on")
    ap.add_argument("--uaps", type=int, default=3, help="held-out UAPs at the training strength")
    ap.add_argument("--eps", type=float, default=25.5, help="training strength, 0-255 units (L∞)")
    ap.add_argument("--strengths", default="1.5,2,2.5", help="multiples of eps for the stronger UAPs")
    ap.add_argument("--unseen", default="spgd,fff,gap", help="unseen universal attacks")
    ap.add_argument("--defenses", default="jpeg,bit-depth,median,tvm,resize-pad", help="input-transform baselines")
    ap.add_argument("--max-passes", type=int, default=3,
                    help="UAP passes over the fit images at most (it also stops at 80%% fooling)")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--cache", default=".cache/fru-bench", help="folder for the fitted perturbations")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--section", default="fru",
                    help="RESULTS.md section to write (default fru; e.g. fru-variants for recipe experiments)")
    ap.add_argument("--title", default="FRU: universal perturbations and selective feature regeneration",
                    help="section heading")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    if args.n > 5000:
        sys.exit("benchmarks/fru.py: --n must be at most 5000 (test[5000:] is where perturbations are fitted)")
    t_start = time.time()
    test = load_dataset("fashion-mnist", "test", args.data_root)
    data = test.subset(args.n)
    fit_x = to_float(test.images[5000 : 5000 + args.fit_images])
    eps = args.eps / 255
    strengths = [float(s) for s in args.strengths.split(",") if s]
    unseen = [u for u in args.unseen.split(",") if u]
    transforms = [d for d in args.defenses.split(",") if d]
    cache = Path(args.cache)
    sections, goal_lines = [], []
    for spec in args.models.split(","):
        fru = load_model(spec)
        card = fru.card
        base_name = card["base"]
        base = load_model(f"zoo:{base_name}")
        name = card["name"]
        print(f"{name} (base {base_name})")

        def fit(method: str, model_name: str, model: nn.Module, e: float, seed: int) -> torch.Tensor:
            key = {"model": model_name, "method": method, "eps": e, "eps_255": round(e * 255, 2), "seed": seed,
                   "fit_images": args.fit_images, "data": "fashion-mnist test[5000:]"}
            if method == "uap":
                key["max_passes"] = args.max_passes
            return fit_cached(cache, key, model, fit_x)

        groups: dict[str, list[str]] = {"seen": [], "stronger": [], "unseen": [], "white-box": []}
        perts: dict[str, torch.Tensor] = {}
        for i in range(args.uaps):
            perts[f"UAP #{i + 1}"] = fit("uap", base_name, base, eps, 100 + i)
            groups["seen"].append(f"UAP #{i + 1}")
        for s in strengths:
            perts[f"UAP {s:g}×"] = fit("uap", base_name, base, eps * s, 200 + int(10 * s))
            groups["stronger"].append(f"UAP {s:g}×")
        for u in unseen:
            perts[u] = fit(u, base_name, base, eps, 300)
            groups["unseen"].append(u)
        perts["UAP on the FRU model"] = fit("uap", name, fru, eps, 400)
        groups["white-box"].append("UAP on the FRU model")
        defenses = {"none": Identity(), **{d: build_defense(d, args.seed) for d in transforms}}
        engine = Engine(targets={base_name: base, name: fru}, attacks={}, defenses=defenses, perturbations=perts,
                        baselines={name: base}, seed=args.seed)
        res = engine.run(data.batches(250), total=-(-len(data) // 250))
        rows = {(r["attack"], r["defense"], r["target"]): r for r in res.rows()}
        columns = [("none", base_name, "no defense"), ("none", name, "FRU")] + [
            (d, base_name, DEFENSE_LABELS.get(d, d)) for d in transforms]
        some = next(iter(perts))
        clean = ["clean top-1", "–", "–"] + [
            f"{rows[(some, d, t)]['clean_accuracy']:.3f}" for d, t, _ in columns]
        body = [clean]
        for group, names in groups.items():
            for p in names:
                fooling = float(rows[(p, "none", base_name)]["fooling_rate"])
                body.append([p, group, f"{fooling:.3f}"] + [r3(rows[(p, d, t)]["restoration_accuracy"])
                                                              for d, t, _ in columns])
        table = markdown_table(["perturbation", "kind", "fooling rate on base", *(c[2] for c in columns)], body)
        fit_s = card["training"].get("pool_fit_time_s", 0)
        sections.append(
            f"### {name} (base `{base_name}`)\n\n"
            f"Trained with `{card.get('command', '')}` — {card['training']['pool_size']} UAPs in the pool, "
            f"{card['training']['steps']} steps; training time {card['training']['train_time_s']:.0f} s + pool "
            f"{fit_s:.0f} s = {card['training']['total_time_s']:.0f} s "
            f"({card['training']['total_time_s'] / 60:.1f} min).\n\n"
            f"Restoration accuracy per defense (first row: clean top-1). "
            f"FRU parameters: {card['parameters']['fru']:,}; "
            f"layers: {', '.join(card['arch_args']['layers'])}.\n\n{table}")

        def ra(p: str) -> float:
            return float(rows[(p, "none", name)]["restoration_accuracy"])

        seen = sum(ra(p) for p in groups["seen"]) / max(1, len(groups["seen"]))
        clean_pts = 100 * (rows[(some, "none", base_name)]["clean_accuracy"]
                           - rows[(some, "none", name)]["clean_accuracy"])
        two = [p for p in groups["stronger"] if p.startswith("UAP 2×")]
        unseen_ra = {p: ra(p) for p in groups["unseen"]}
        met = lambda ok: "met" if ok else "not met"  # noqa: E731
        goal_lines += [
            f"- {name}: held-out UAPs restoration {seen:.3f} (goal ≥ {GOALS['seen']}: {met(seen >= GOALS['seen'])}); "
            + "unseen " + ", ".join(f"{p} {v:.3f}" for p, v in unseen_ra.items())
            + f" (goal ≥ {GOALS['unseen']}: {met(all(v >= GOALS['unseen'] for v in unseen_ra.values()))}); "
            + (f"2× strength {ra(two[0]):.3f} (goal ≥ {GOALS['2x']}: {met(ra(two[0]) >= GOALS['2x'])}); "
               if two else "")
            + f"clean cost {clean_pts:+.1f} points "
              f"(goal ≤ {GOALS['clean_points']}: {met(clean_pts <= GOALS['clean_points'])}); "
            + f"training {card['training']['total_time_s'] / 60:.1f} min (goal ≤ 30: "
            + f"{met(card['training']['total_time_s'] <= 1800)})."]
    command = "python benchmarks/fru.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    body = "\n".join([
        f"## {args.title} (Fashion-MNIST, first {args.n} test images)",
        "", f"Command: `{command.strip()}`", f"Machine: {machine()}",
        f"Total time: {time.time() - t_start:.0f} s. Perturbations (L∞, eps {args.eps:g}/255 unless scaled) fitted "
        f"on test[5000:{5000 + args.fit_images}] (UAP: at most {args.max_passes} passes or 80 % fooling) "
        "against the base network (gray-box: the attacker knows the base, "
        "not the FRUs), except the white-box line (fitted through the FRU model). Restoration accuracy = (defended "
        "clean + defended perturbed top-1) / (2 × base clean top-1); 'no defense' is the base itself. Input "
        "transforms at their registry defaults, in front of the base.", "",
        *([ADAPTIVE_NOTE, ""] if args.section == "fru" else []),
        "### Goals (issue 5)", "", *goal_lines, PAPER_LINE, "", *sections])
    update_section(args.section, body, Path(args.results))
    print(body)


if __name__ == "__main__":
    main()
