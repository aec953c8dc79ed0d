"""The `eot-rule` section of docs/RESULTS.md: how much APGD's EOT rule changes an audit of a randomized defense.

Rule 1 (before commit 5441e3f): with EOT, a sample left APGD at the first point that fooled one draw of a step.
Rule 2 (now): it keeps ascending until a point fools every draw of a step; the latest point fooling the largest share
is returned. This script re-audits cells of the `defenses` section (their rule-1 documents are read from
benchmarks/results/defenses) with the current code and the same settings (first 200 test images, version quick,
EOT 20, worst of 10 draws, seed 0, blocks of 50), and tabulates both.

Cells are stored under ``--cache`` (committed: benchmarks/results/eot-rule); blocks resume from .cache/eot-rule-audit.
On 2+ cores: ``torchrun --standalone --nproc_per_node K benchmarks/eot_rule.py --threads 1`` shards each audit's
blocks over K processes (rank 0 stores the cells and writes the section).

Run: .venv/bin/python benchmarks/eot_rule.py [--cells diffpure@fmnist-lenet-at,nrp-dynamic@fmnist-lenet]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from _results import RESULTS, audit_cached, machine, pct, update_section

import advshield
from advshield import distributed
from advshield.data import load_dataset
from advshield.eval.audit import EOT_RULE

ROOT = Path(__file__).resolve().parent
OLD = ROOT / "results" / "defenses"
BLOCKS = ROOT.parent / ".cache" / "eot-rule-audit"
SETTINGS = {"n": 200, "eps_255": 25.5, "version": "quick", "eot": 20, "draws": 10, "seed": 0}


def old_cell(defense: str, model: str) -> dict | None:
    """The `defenses` section's document of (defense, model) with :data:`SETTINGS` (rule 1), or None."""
    for f in sorted(OLD.glob(f"{defense}@{model}-*.json")):
        doc = json.loads(f.read_text())
        if doc.get("model") == model and all(doc.get(k) == v for k, v in SETTINGS.items()):
            return doc
    return None


def new_cell(args: argparse.Namespace, defense: str, model: str, x: torch.Tensor, y: torch.Tensor) -> dict | None:
    """The cell audited with the current code (cached; computed unless ``--render-only``)."""
    def run() -> advshield.AuditResult:
        print(f"audit {defense} × {model} (rule {EOT_RULE})", flush=True)
        return advshield.audit(advshield.load_model(f"zoo:{model}"), defense, x, y, SETTINGS["eps_255"] / 255,
                               version=SETTINGS["version"], eot=SETTINGS["eot"], draws=SETTINGS["draws"],
                               seed=SETTINGS["seed"], batch_size=50, resume_dir=BLOCKS)

    settings = {"defense": defense, "model": model, **SETTINGS, "eot_rule": EOT_RULE}
    return audit_cached(args.cache, f"{defense}@{model}", settings, None if args.render_only else run)


def mode(doc: dict, prefix: str) -> float | None:
    return next((v for k, v in doc["per_attack"].items() if k.startswith(prefix)), None)


def render(rows: list[tuple[str, str, dict | None, dict | None]], command: str) -> str:
    lines = ["## APGD's EOT rule: the same audits before and after", "", f"Command: `{command}`",
             f"Machine: {machine()}", "",
             "`advshield.audit` of randomized defenses on the first 200 Fashion-MNIST test images, L∞ eps 25.5/255, "
             "version `quick`, EOT 20, worst of 10 draws, seed 0, blocks of 50 — the `defenses` section's settings. "
             "*Rule 1* (before commit 5441e3f): with EOT, a sample left APGD at the first point that fooled one draw "
             "of a step (the `defenses` section's cells). *Rule 2* (now): it keeps ascending until a point fools "
             "every draw, and the latest point fooling the largest share of a step's draws is returned. Accuracies "
             "in %; lower is a stronger attack.", "",
             "| defense | model | rule | clean | full gradient | BPDA | Square | **robust** (95 % CI) | "
             "majority of draws | time |", "|:---|:---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for d, m, old, new in rows:
        for rule, doc in (("1", old), ("2", new)):
            if doc is None:
                lines.append(f"| {d} | {m} | {rule} | not measured yet |  |  |  |  |  |  |")
                continue
            lo, hi = doc["ci95"]
            k = doc.get("processes", 1)
            lines.append(f"| {d} | {m} | {rule} | {pct(doc['clean_accuracy'])} | {pct(mode(doc, 'full'))} | "
                         f"{pct(mode(doc, 'BPDA'))} | {pct(mode(doc, 'Square'))} | **{pct(doc['robust_accuracy'])}**"
                         f" ({pct(lo)}–{pct(hi)}) | {pct(doc['robust_accuracy_majority'])} | {doc['seconds']:.0f} s"
                         f"{f' ({k} processes)' if k > 1 else ''} |")
    done = [(d, m, o, n) for d, m, o, n in rows if o is not None and n is not None]
    if done:
        def change(o: dict, n: dict) -> str:
            lo, hi = o["ci95"]
            inside = lo <= n["robust_accuracy"] <= hi
            return (f"robust {100 * (n['robust_accuracy'] - o['robust_accuracy']):+.1f} points ("
                    f"{'inside' if inside else 'outside'} rule 1's 95 % interval), majority of draws "
                    f"{100 * (n['robust_accuracy_majority'] - o['robust_accuracy_majority']):+.1f} points")
        lines += ["", "Change from rule 1 to rule 2 (negative: the attack got stronger): "
                  + "; ".join(f"{d} × {m}: {change(o, n)}" for d, m, o, n in done) + "."]
    lines += ["", "Times: rule 1 as recorded in the `defenses` section (2 cores, at times shared); rule 2 as run here "
              "(a time marked *(K processes)* is the wall time over K torchrun processes of one thread each)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", default="diffpure@fmnist-lenet-at,nrp-dynamic@fmnist-lenet",
                   help="DEFENSE@MODEL cells of the defenses section to re-audit (comma-separated)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default=str(ROOT / "results" / "eot-rule"))
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--render-only", action="store_true", help="write the section from the cached cells only")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    distributed.init("cpu")
    x, y = next(load_dataset("fashion-mnist", "test").subset(SETTINGS["n"]).batches(SETTINGS["n"]))
    cells = [c.split("@", 1) for c in args.cells.split(",")]
    command = f".venv/bin/python benchmarks/eot_rule.py --cells {args.cells} --threads {args.threads}"
    rows: list[tuple[str, str, dict | None, dict | None]] = []
    for d, m in cells:
        rows.append((d, m, old_cell(d, m), new_cell(args, d, m, x, y)))
        if distributed.is_main():
            update_section("eot-rule", render(rows + [(d2, m2, old_cell(d2, m2), None) for d2, m2 in
                                                      cells[len(rows):]], command), args.results)
    print(f"wrote the eot-rule section of {args.results}")


if __name__ == "__main__":
    main()
