"""The `audit` section of docs/RESULTS.md: :func:`advshield.audit` of every shipped defense in front of every zoo
Fashion-MNIST classifier, with the threat models run, the flags raised and the time each audit took.

Each (defense, model) cell is cached as JSON under ``--cache`` (default .cache/audit) keyed by its settings, so a
stopped run resumes where it was and a re-run only re-renders the table.

Run: .venv/bin/python benchmarks/audit.py [--n 500] [--version auto] [--eot 20] [--draws 10] [--threads 2]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _results import RESULTS, audit_cached, eot_rule_note, machine, update_section

import advshield
from advshield.data import load_dataset
from advshield.registry import DEFENSES
from advshield.report.html import audit_html
from advshield.utils import write_text

MODELS = ("fmnist-lenet", "fmnist-vgg", "fmnist-resnet")


def settings(args: argparse.Namespace, defense: str, model: str) -> dict:
    """What one (defense, model) cell depends on: its cache key and the fields stored with it."""
    return {"defense": defense, "model": model, "n": args.n, "eps_255": args.eps, "version": args.version,
            "eot_setting": args.eot, "draws_setting": args.draws, "seed": args.seed}


def run_cell(args: argparse.Namespace, defense: str, model_name: str, x: torch.Tensor, y: torch.Tensor,
             only_cached: bool = False) -> dict | None:
    """The audit of one cell (cached); None when ``only_cached`` and it was never run."""
    def run() -> advshield.AuditResult:
        return advshield.audit(advshield.load_model(f"zoo:{model_name}"), None if defense == "none" else defense,
                               x, y, args.eps / 255, version=args.version, eot=args.eot, draws=args.draws,
                               seed=args.seed, batch_size=250)

    return audit_cached(args.cache, f"{model_name}-{defense}", settings(args, defense, model_name),
                        None if only_cached else run)


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def render(cells: list[dict], args: argparse.Namespace, command: str, missing: list[str]) -> str:
    lines = ["## Audit: every shipped defense under adaptive attack", "",
             f"Command: `{command}`", f"Machine: {machine()}", "",
             f"`advshield.audit` on the first {args.n} Fashion-MNIST test images, L∞ eps {args.eps}/255, version "
             f"`{args.version}` (APGD {'100' if args.version == 'auto' else '20'} steps CE then DLR, Square "
             f"{'1000' if args.version == 'auto' else '200'} queries), EOT {args.eot} and worst of {args.draws} draws "
             "for randomized defenses (detected). Accuracies in %; *robust* counts a sample only if it survives "
             "every threat model run (95 % Wilson interval in brackets). *transfer* is defense-unaware, shown to "
             "contrast; *full* is skipped where the defense has no usable gradient (flag `non-differentiable`).", "",
             "| defense | model | clean | transfer | full | BPDA | Square | robust (95 % CI) | flags | time |",
             "|:---|:---|---:|---:|---:|---:|---:|---:|:---|---:|"]
    for c in cells:
        pa = c["per_attack"]
        get = lambda prefix: next((v for k, v in pa.items() if k.startswith(prefix)), None)  # noqa: E731
        full = get("full") if c["defense"] != "none" else get("white-box")
        lo, hi = c["ci95"]
        lines.append(f"| {c['defense']} | {c['model']} | {pct(pa['clean'])} | {pct(get('transfer'))} | {pct(full)} | "
                     f"{pct(get('BPDA'))} | {pct(get('Square'))} | **{pct(c['robust_accuracy'])}** "
                     f"({pct(lo)}–{pct(hi)}) | {', '.join(c['flags']) or '–'} | {c['seconds']:.0f} s |")
    lines += eot_rule_note((f"{c['defense']} × {c['model']}", c) for c in cells)
    if missing:
        lines += ["", f"Not measured yet (the run was stopped; rerun the command to resume): {', '.join(missing)}."]
    if args.note:
        lines += ["", args.note]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--eps", type=float, default=25.5, help="L∞ budget in 0-255 units (default 25.5)")
    p.add_argument("--version", default="auto", choices=["auto", "quick"])
    p.add_argument("--eot", type=int, default=20)
    p.add_argument("--draws", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--defenses", default=",".join(DEFENSES.names()))
    p.add_argument("--cache", default=".cache/audit")
    p.add_argument("--render-only", action="store_true", help="write the section from the cached cells only")
    p.add_argument("--note", default="", help="a paragraph printed under the table (e.g. which code computed it)")
    p.add_argument("--results", type=Path, default=RESULTS, help="Markdown file to update (default docs/RESULTS.md)")
    p.add_argument("--html", default=None, metavar="DIR", help="also write DIR/MODEL-DEFENSE.html per audit cell")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    x, y = next(load_dataset("fashion-mnist", "test").subset(args.n).batches(args.n))
    command = (f".venv/bin/python benchmarks/audit.py --n {args.n} --version {args.version} --eot {args.eot} "
               f"--draws {args.draws} --threads {args.threads} --defenses {args.defenses} --models {args.models}")
    todo = [(d, m) for d in args.defenses.split(",") for m in args.models.split(",")]
    cells: list[dict] = []
    for d, m in todo:
        cell = run_cell(args, d, m, x, y, only_cached=args.render_only)
        if cell is not None:
            cells.append(cell)
            if args.html:
                Path(args.html).mkdir(parents=True, exist_ok=True)
                write_text(Path(args.html) / f"{m}-{d}.html",
                           audit_html(cell, f"advshield audit: {d} + zoo:{m}", command))
            print(f"{d} × {m}: robust {cells[-1]['robust_accuracy']:.3f} flags {cells[-1]['flags']} "
                  f"({cells[-1]['seconds']} s)", flush=True)
        done = {(c["defense"], c["model"]) for c in cells}
        missing = [f"{d2} × {m2}" for d2, m2 in todo if (d2, m2) not in done]
        # after every cell: a stop loses nothing
        update_section("audit", render(cells, args, command, missing), args.results)
    print(f"wrote the audit section of {args.results}")


if __name__ == "__main__":
    main()
