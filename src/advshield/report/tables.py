"""Readable Markdown reports of grid results."""
from __future__ import annotations

import math
from typing import Any, Sequence

from ..eval.results import GridResults


def _fmt(v: Any, pct: bool = False) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{100 * v:.1f}%" if pct else f"{v:.3f}"
    return str(v)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], numeric: bool = True) -> str:
    """A GitHub-flavoured Markdown table; first column left-aligned, the others right-aligned when ``numeric``."""
    rest = "---:" if numeric else ":---"
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join([":---"] + [rest] * (len(headers) - 1)) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def worst_case_tables(res: GridResults, worst: dict, targets: list[str], defenses: list[str]) -> list[str]:
    """The headline (adaptive where measured) and the transfer-only worst case, side by side per defense."""
    def cell(d: str, t: str) -> str:
        w = worst[(d, t)]
        a, tr = w["adaptive_worst_case_accuracy"], w["transfer_worst_case_accuracy"]
        return f"**{_fmt(a)}** / {_fmt(tr)}" if a is not None else f"– / {_fmt(tr)}"

    adaptive = res.meta.get("adaptive") or []
    how = (f"adaptive attacks: {', '.join(res.meta.get('adaptive_attacks') or [])} through each defense "
           f"({', '.join(adaptive)}; EOT {res.meta.get('eot', 1)} and worst of {res.meta.get('draws', 1)} draws for "
           "randomized defenses)") if adaptive else "no adaptive attack was run (`--adaptive full,bpda` runs them)"
    lines = ["## Worst case over all attacks and sources", "",
             "Each cell: **adaptive** / transfer. *Adaptive*: the attacker also attacks the defended model itself "
             f"({how}); for defense `none` the white-box attacks. *Transfer*: the attacker ignores the defense "
             "(defense-unaware) — never the number to trust for a defense. `–`: not measured.", "",
             markdown_table(["defense"] + targets, [[d] + [cell(d, t) for t in targets] for d in defenses]), ""]
    notes = res.meta.get("notes") or []
    return lines + ([f"- {n}" for n in notes] + [""] if notes else [])


def grid_report(res: GridResults, title: str = "advshield evaluation", notes: Sequence[str] = ()) -> str:
    """Clean accuracy, robust accuracy per attack × source × target for each defense, worst case, details."""
    rows = res.rows()
    worst = {(r["defense"], r["target"]): r for r in res.worst_case()}
    targets = list(res.base_pred)
    defenses = list(dict.fromkeys(d for d, _ in res.clean_pred))
    pairs = list(dict.fromkeys((r["attack"], r["source"]) for r in rows))
    n = res.meta.get("n", len(res.labels))
    out = [f"# {title}", "",
           f"{n} images, seed {res.meta.get('seed')}, device {res.meta.get('device')}, "
           f"{res.meta.get('elapsed_s')} s.", ""]
    out += [f"- {line}" for line in notes]
    out += ["- **Robust accuracy**: top-1 of the (defended) target on the adversarial images.",
            "- **ASR** (attack success rate): among the images the defended target classifies correctly when "
            "clean, the fraction the attack makes wrong.",
            "- **Fooling rate**: fraction of images whose prediction changes.",
            "- **Restoration accuracy** (Borkar et al.): (defended clean + defended adversarial accuracy) / "
            "(2 × undefended clean accuracy).",
            "- Cells marked `*` are white-box (the source is the target; `adaptive-full`/`adaptive-bpda`: crafted "
            "through the defense with full gradients / BPDA, EOT for randomized defenses); the others are black-box "
            "transfer.", ""]
    out += ["## Clean accuracy", "",
            markdown_table(["defense"] + targets,
                           [[d] + [_fmt(worst[(d, t)]["clean_accuracy"]) for t in targets]
                            for d in defenses]), ""]
    index = {(r["attack"], r["source"], r["defense"], r["target"]): r for r in rows}
    for d in defenses:
        out += [f"## Robust accuracy (ASR) — defense `{d}`", ""]
        table = []
        for a, s in pairs:
            cells = []
            if not any((a, s, d, t) in index for t in targets):
                continue
            for t in targets:
                r = index.get((a, s, d, t))
                if r is None:
                    cells.append("–")
                    continue
                star = "*" if s == t or s.startswith("adaptive-") else ""
                cells.append(f"{_fmt(r['robust_accuracy'])}{star} ({_fmt(r['attack_success_rate'], pct=True)})")
            table.append([f"{a} ← {s}"] + cells)
        out += [markdown_table(["attack ← source"] + targets, table), ""]
    out += worst_case_tables(res, worst, targets, defenses)
    out += ["## All metrics", "",
            markdown_table(["attack", "source", "defense", "target", "setting", "clean", "robust", "ASR",
                            "fooling", "restoration"],
                           [[r["attack"], r["source"], r["defense"], r["target"], r["setting"],
                             _fmt(r["clean_accuracy"]), _fmt(r["robust_accuracy"]),
                             _fmt(r["attack_success_rate"], True), _fmt(r["fooling_rate"], True),
                             _fmt(r["restoration_accuracy"])] for r in rows]), ""]
    out += ["## Attacks", ""] + [f"- `{a}`: {', '.join(sorted(set(v.values())))}" for a, v in res.attack_info.items()]
    return "\n".join(out) + "\n"


def ordered_defenses(res: GridResults) -> list[str]:
    """The grid's defenses, ``none`` (the undefended reference) first, the others in run order."""
    names = list(dict.fromkeys(d for d, _ in res.clean_pred))
    return (["none"] if "none" in names else []) + [d for d in names if d != "none"]


def summary_table(res: GridResults) -> str:
    """The terminal summary: one row per defense (``none`` first), per target "clean → headline worst case" in %,
    the headline being the adaptive worst case where measured (marked ``*`` when only the transfer one is)."""
    worst = {(r["defense"], r["target"]): r for r in res.worst_case()}
    targets = list(res.base_pred)
    defenses = ordered_defenses(res)

    def cell(d: str, t: str) -> str:
        w = worst[(d, t)]
        star = "" if w["adaptive_worst_case_accuracy"] is not None else "*"
        return f"{100 * w['clean_accuracy']:.1f} → {100 * w['worst_case_accuracy']:.1f}{star}"

    table = markdown_table(["defense"] + targets, [[d] + [cell(d, t) for t in targets] for d in defenses])
    adaptive = res.meta.get("adaptive") or []
    key = ("clean → worst case (%), adaptive: " + ", ".join(adaptive) if adaptive else
           "clean → worst case (%), transfer only")
    note = "; * = defense-unaware only (no adaptive attack reached it)" if any(
        worst[k]["adaptive_worst_case_accuracy"] is None for k in worst if k[0] != "none") else ""
    return f"{key}{note}\n{table}"
