"""Defense comparison on Fashion-MNIST at L∞ 0.1: the purifiers (NRP, NRP dynamic, AE, VAE, DiffPure) and the
adversarial-training baselines, measured the same way.

1. **transfer** (first ``--n`` test images): FGSM, PGD, MI-FGSM, DIM, DIM-TI and SSP crafted on each of fmnist-vgg,
   fmnist-resnet and fmnist-lenet (``for_budget`` paper defaults), plus DIM-TI on the equal-weight logit ensemble of
   two of them, against every defense in front of every target: the three, fmnist-smallcnn (which no purifier was
   trained with) and the AT models. Per target, each attack's number is the worst over the sources that are not
   (and do not contain) the target: black-box transfer. Randomized defenses are scored on one draw here.
2. **audit** (first ``--audit-n`` test images): :func:`advshield.audit` (full gradient where measured
   differentiable, BPDA, EOT and repeated draws where randomized, Square, transfer as contrast) for each purifier in
   front of fmnist-lenet and fmnist-vgg, for the AT models alone, and for DiffPure in front of the AT models.
3. **time**: forward time per image of each defense (no gradient, batches of 250).

Cells are cached under ``benchmarks/results/defenses`` (committed), and audits resume per block from
``.cache/defenses-audit``: a stopped run re-run with the same arguments continues; ``--render-only`` writes the
RESULTS section from the cache alone.

Run: .venv/bin/python benchmarks/defenses.py --threads 1
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from _results import (
    ATTACK_LABELS,
    RESULTS,
    audit_cached,
    eot_rule_note,
    keyed,
    machine,
    pct,
    run_engine,
    update_section,
)

import advshield
from advshield.attacks import hold_one_out
from advshield.data import load_dataset
from advshield.defenses import Identity, build_defense
from advshield.eval.blockcache import fingerprint
from advshield.eval.engine import Engine
from advshield.eval.grid import attack_factory
from advshield.models import load_models
from advshield.report.tables import markdown_table

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / "results" / "defenses"
BLOCKS = ROOT.parent / ".cache" / "defenses-audit"
SOURCES = ["fmnist-vgg", "fmnist-resnet", "fmnist-lenet"]
UNSEEN = "fmnist-smallcnn"
AT = ["fmnist-lenet-at", "fmnist-vgg-at"]
PURIFIERS = ["nrp", "nrp-dynamic", "ae", "vae", "diffpure"]
ATTACKS = ["fgsm", "pgd", "mifgsm", "mi-di", "mi-di-ti", "ssp"]
ENSEMBLE = "mi-di-ti"
LABELS = {**ATTACK_LABELS, "pgd": "PGD"}


def audit_cells() -> list[tuple[str, str]]:
    """(defense, model) audited: each purifier before fmnist-lenet / fmnist-vgg, the AT models, DiffPure + AT."""
    cells = [("none", m) for m in ("fmnist-lenet", "fmnist-vgg")]
    cells += [(d, m) for d in PURIFIERS for m in ("fmnist-lenet", "fmnist-vgg")]
    cells += [("none", m) for m in AT] + [("diffpure", m) for m in AT]
    return cells


def wanted(name: str, only: str | None) -> bool:
    return only is None or any(fnmatch.fnmatch(name, p.strip()) for p in only.split(","))


# -- transfer --------------------------------------------------------------------------------------------------------
def run_transfer(args: argparse.Namespace, settings: dict, compute: bool = True) -> dict:
    """Every (attack, source, defense, target) row of the transfer grid (cached as JSON). ``compute`` False (or
    ``--render-only``): the cached grid as it is, {} when there is none."""
    targets = [*SOURCES, UNSEEN, *AT]
    models = load_models([f"zoo:{m}" for m in targets])
    defenses = {"none": Identity(), **{d: build_defense(d, args.seed) for d in PURIFIERS}}
    settings = {**settings, "weights": fingerprint(list(models.values()), list(defenses.values()),
                                                   [repr(d) for d in defenses.values()])}
    key = json.dumps(settings, sort_keys=True)
    path = CACHE / "transfer.json"
    if path.is_file() and json.loads(path.read_text()).get("settings") == json.loads(key):
        return json.loads(path.read_text())
    if args.render_only or not compute:
        return json.loads(path.read_text()) if path.is_file() else {}  # as cached, even if the zoo moved since
    sources = {m: models[m] for m in SOURCES}
    data = load_dataset("fashion-mnist", "test").subset(args.n)
    eps = args.eps / 255
    common = dict(targets=models, defenses=defenses, seed=args.seed, cache_dir=ROOT.parent / ".cache" / "defenses")
    t0 = time.time()
    single = run_engine(Engine(sources=sources, attacks={a: attack_factory(a, eps, eps) for a in ATTACKS}, **common),
                        data, args.batch_size)
    ens = run_engine(Engine(sources=hold_one_out(sources), attacks={ENSEMBLE: attack_factory(ENSEMBLE, eps, eps)},
                            **common), data, args.batch_size)
    rows = [{k: r[k] for k in ("attack", "source", "defense", "target", "robust_accuracy", "clean_accuracy")}
            for r in keyed(single, ens).values()]
    doc = {"settings": json.loads(key), "rows": rows, "seconds": round(time.time() - t0, 1)}
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)
    return doc


def transfer_tables(doc: dict) -> tuple[list[str], dict]:
    """Markdown per target (rows: clean + attacks, worst over black-box sources; columns: defenses) and
    {(target, defense): (clean, worst transfer)}."""
    rows = doc["rows"]
    defenses = list(dict.fromkeys(r["defense"] for r in rows))
    targets = list(dict.fromkeys(r["target"] for r in rows))
    out, summary = [], {}
    for t in targets:
        black = [r for r in rows if r["target"] == t and t not in r["source"].split("+")]
        clean = {d: next(r["clean_accuracy"] for r in rows if r["target"] == t and r["defense"] == d)
                 for d in defenses}
        table = [["clean", *(pct(clean[d]) for d in defenses)]]
        worst: dict[str, float] = {}
        for a in dict.fromkeys(r["attack"] + ("+ens" if "+" in r["source"] else "") for r in black):
            ens = a.endswith("+ens")
            cells = []
            for d in defenses:
                v = min(r["robust_accuracy"] for r in black if r["defense"] == d
                        and r["attack"] == a.removesuffix("+ens") and ("+" in r["source"]) == ens)
                worst[d] = min(worst.get(d, 1.0), v)
                cells.append(pct(v))
            table.append([LABELS.get(a.removesuffix("+ens"), a) + (" (ensemble)" if ens else ""), *cells])
        table.append(["**worst**", *(f"**{pct(worst[d])}**" for d in defenses)])
        for d in defenses:
            summary[(t, d)] = (clean[d], worst[d])
        note = " (no purifier was trained with it)" if t == UNSEEN else " (adversarially trained)" if t in AT else ""
        out += [f"#### Target {t}{note}", "", markdown_table(["attack", *defenses], table), ""]
    return out, summary


def goal_lines(summary: dict) -> list[str]:
    lines = []
    for t in [*SOURCES, UNSEEN]:
        if (t, "diffpure") not in summary:
            continue
        c0 = summary[(t, "none")][0]
        c1, w = summary[(t, "diffpure")]
        ok = 100 * (c0 - c1) <= 3 and 100 * (c0 - w) <= 5
        lines.append(f"- DiffPure before {t}: clean cost {100 * (c0 - c1):.1f} points (goal ≤ 3), worst transfer "
                     f"{pct(w)} % vs clean {pct(c0)} % = {100 * (c0 - w):.1f} points below (goal ≤ 5): "
                     f"{'met' if ok else 'not met'}")
    return lines


# -- audit -----------------------------------------------------------------------------------------------------------
def run_audits(args: argparse.Namespace, compute: bool = True) -> dict[tuple[str, str], dict]:
    """{(defense, model): audit document} of the cells in the cache, running the wanted missing ones if ``compute``."""
    data = load_dataset("fashion-mnist", "test").subset(args.audit_n)
    x, y = next(data.batches(len(data)))
    eps = args.eps / 255
    out = {}
    for d, m in audit_cells():
        name = f"{d}@{m}"
        model = advshield.load_model(f"zoo:{m}")
        defense = None if d == "none" else build_defense(d, args.seed)
        settings = {"defense": d, "model": m, "n": args.audit_n, "eps_255": args.eps, "version": args.version,
                    "eot": args.eot, "draws": args.draws, "seed": args.seed,
                    "weights": fingerprint(model, defense, repr(defense))}  # a retrained model is a new cell
        run = None
        if compute and not args.render_only and wanted(name, args.only):
            def run(d=d, m=m, model=model):
                print(f"audit {d} + {m} ...", file=sys.stderr, flush=True)
                return advshield.audit(model, None if d == "none" else d, x, y, eps,
                                       version=args.version, eot=args.eot, draws=args.draws, seed=args.seed,
                                       batch_size=args.audit_batch, resume_dir=BLOCKS,
                                       log=lambda s: print(f"  {s}", file=sys.stderr, flush=True))
        doc = audit_cached(CACHE, name, settings, run)
        if doc is not None:
            out[(d, m)] = doc
    return out


def audit_table(cells: dict[tuple[str, str], dict]) -> str:
    head = ["defense", "model", "clean", "transfer", "full gradient", "BPDA", "Square", "robust (95 % CI)",
            "majority of draws", "flags", "time"]
    rows = []
    for (d, m), doc in cells.items():
        pa = doc["per_attack"]
        pick = lambda prefix: next((v for k, v in pa.items() if k.startswith(prefix)), None)  # noqa: E731
        lo, hi = doc["ci95"]
        t = doc["meta"].get("compute_s", doc["seconds"])
        rows.append([d, m, pct(pa["clean"]), pct(pick("transfer")), pct(pick(("full", "white-box"))),
                     pct(pick("BPDA")), pct(pick("Square")),
                     f"**{pct(doc['robust_accuracy'])}** ({pct(lo)}–{pct(hi)})", pct(doc["robust_accuracy_majority"]),
                     ", ".join(doc["flags"]) or "–", f"{t:.0f} s"])
    return markdown_table(head, rows)


def audit_goal_lines(cells: dict[tuple[str, str], dict]) -> list[str]:
    """The issue's goals on the audited numbers: AT ≥ 70 % robust with ≥ 85 % clean (full test set, from the card);
    the stretch goal, a purifier (or purifier + AT) above AT on the same architecture."""
    from advshield.models.zoo import zoo_cards

    clean = {c["name"]: c["metrics"]["clean_accuracy"] for c in zoo_cards() if c["kind"] == "classifier"}
    lines: list[str] = []
    above: list[bool] = []
    for at in AT:
        if ("none", at) not in cells:
            continue
        r = cells[("none", at)]["robust_accuracy"]
        ok = r >= 0.70 and clean[at] >= 0.85
        lines.append(f"- {at}: audited robust {pct(r)} % (goal ≥ 70), clean {pct(clean[at])} % on the full test set "
                     f"(goal ≥ 85): {'met' if ok else 'not met'}")
        plain = at.removesuffix("-at")
        best = max(((d, doc["robust_accuracy"]) for (d, m), doc in cells.items() if m == plain and d != "none"),
                   key=lambda t: t[1], default=None)
        if best:
            lines.append(f"  - best purifier before {plain}: {best[0]} at {pct(best[1])} % robust, "
                         f"{'above' if best[1] > r else 'below'} {at} alone")
        if ("diffpure", plain) in cells:
            r1 = cells[("diffpure", plain)]["robust_accuracy"]
            lines.append(f"  - DiffPure before {plain}: {pct(r1)} % audited robust, "
                         f"{'above' if r1 > r else 'below'} adversarial training ({at}: {pct(r)} %)")
        if ("diffpure", at) in cells:
            r2 = cells[("diffpure", at)]["robust_accuracy"]
            lines.append(f"  - DiffPure + {at}: {pct(r2)} % robust, {'above' if r2 > r else 'not above'} {at} alone")
            above.append(r2 > r)
        if best:
            above.append(best[1] > r)
    if above:
        lines.append(f"- stretch goal (a purifier, or purifier + AT, audited above the AT baseline on the same "
                     f"classifier): {'met' if any(above) else 'not met'}")
    return lines


# -- time --------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def defense_times(args: argparse.Namespace) -> dict[str, float]:
    """ms per image of each defense's forward pass (best of 3 on 250 test images)."""
    x = next(load_dataset("fashion-mnist", "test").subset(250).batches(250))[0]
    out = {}
    for d in PURIFIERS:
        defense = build_defense(d, args.seed)
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            defense(x)
            best = min(best, time.perf_counter() - t0)
        out[d] = 1000 * best / len(x)
    return out


def canonical_args(argv: list[str]) -> list[str]:
    """``argv`` without ``--parts`` / ``--only`` / ``--render-only``: the command that runs (or, cached, re-renders)
    every part, however the cells were split across runs."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in ("--parts", "--only"):
            skip = True
        elif not (a.startswith(("--parts=", "--only=")) or a == "--render-only"):
            out.append(a)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="transfer,audit,time")
    p.add_argument("--n", type=int, default=1000, help="transfer images (default 1000)")
    p.add_argument("--audit-n", type=int, default=200, help="audit images (default 200)")
    p.add_argument("--eps", type=float, default=25.5, help="L∞ budget, 0-255 (default 25.5 = 0.1)")
    p.add_argument("--version", default="quick", choices=["auto", "quick"])
    p.add_argument("--eot", type=int, default=20)
    p.add_argument("--draws", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--audit-batch", type=int, default=50, help="audit block size (the unit of resume)")
    p.add_argument("--only", default=None, help="audit cells DEFENSE@MODEL to run (fnmatch patterns, comma-separated)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--render-only", action="store_true", help="write the section from the cached cells only")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    command = "python benchmarks/defenses.py " + shlex.join(canonical_args(sys.argv[1:]))
    body = [f"## Defense comparison: purifiers and adversarial training (Fashion-MNIST, L∞ {args.eps:g}/255)", "",
            f"Command: `.venv/bin/{command}`", f"Machine: {machine()}", ""]
    times_path = CACHE / "times.json"
    if "time" in parts and not args.render_only:
        CACHE.mkdir(parents=True, exist_ok=True)
        times_path.write_text(json.dumps(defense_times(args), indent=1))
    times = json.loads(times_path.read_text()) if times_path.is_file() else {}
    doc = run_transfer(args, {"n": args.n, "eps_255": args.eps, "seed": args.seed}, "transfer" in parts)
    if doc:
        tables, summary = transfer_tables(doc)
        body += [f"### Transfer attacks (first {doc['settings']['n']} test images; {doc['seconds']:.0f} s)", "",
                 "Top-1 accuracy (%) of each target behind each defense (columns). Each attack row is the worst over "
                 "the black-box sources (every zoo source other than the target; DIM-TI (ensemble): the two-model "
                 "ensembles that leave the target out). Attacks at their `for_budget` paper defaults (FGSM one step; "
                 "PGD, MI-FGSM, DIM, DIM-TI 10 steps of eps/10; SSP 100 steps). Randomized defenses (NRP dynamic, "
                 "AE, DiffPure) are scored on one draw here; their adaptive numbers are in the audit table below, "
                 "which is the headline. Defense-unaware numbers: not a robustness claim.", "",
                 *goal_lines(summary), "", *tables]
        if times:
            body += ["Forward time per image (no gradient, batch 250, best of 3): "
                     + ", ".join(f"{d} {v:.2f} ms" for d, v in times.items()) + "; adversarially trained models "
                     "cost nothing beyond the classifier.", ""]
    cells = run_audits(args, "audit" in parts)
    missing = [f"{d}@{m}" for d, m in audit_cells() if (d, m) not in cells]
    if cells:
        body += [f"### Audit (first {args.audit_n} test images; the headline)", "",
                 f"`advshield.audit`, version `{args.version}` (APGD {100 if args.version == 'auto' else 20} steps, "
                 f"CE then DLR per mode; Square {1000 if args.version == 'auto' else 200} queries), EOT {args.eot} "
                 f"and worst of {args.draws} draws for randomized defenses (detected). *robust* counts a sample only "
                 "if it survives every threat model in every draw; *transfer* (APGD-CE on the undefended model) is "
                 "defense-unaware and shown as contrast only. *time*: compute seconds summed over blocks and the "
                 "sanity checks (2 cores, at times shared with other runs: a cost indication, not a benchmark).", "",
                 audit_table(cells), "", *audit_goal_lines(cells),
                 *eot_rule_note((f"{d} × {m}", c) for (d, m), c in cells.items()), ""]
    if missing:
        body += [f"Not measured yet: {', '.join(missing)}.", ""]
    update_section("defenses", "\n".join(body), args.results)
    print("\n".join(body))


if __name__ == "__main__":
    main()
