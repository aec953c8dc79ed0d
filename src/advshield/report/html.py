"""One self-contained HTML page per result: :func:`grid_html` for an evaluation grid (``eval``, ``demo``) and
:func:`audit_html` for an audit. Images are inline PNG data URIs, charts inline SVG, CSS inline; no JavaScript, no
network, readable offline and printable.

Grid page, top to bottom: summary (per defense × target: clean, transfer worst case, adaptive worst case, each
with its threat model; marks for a clean cost above :data:`CLEAN_COST_MARK` or a flag), transfer heatmaps per
defense, robust accuracy versus eps, image grids (clean | adversarial | perturbation | defense output, with true
and predicted class names), universal perturbations, notes and flags, details (command, seed, versions, machine,
time) and every metric row."""
from __future__ import annotations

import base64
import io
from html import escape
from typing import Any, Sequence

import torch
from PIL import Image

from .. import __version__
from ..eval.results import GridResults
from .svg import heatmap, line_plot
from .tables import ordered_defenses

CLEAN_COST_MARK = 0.10  # a defense costing more clean accuracy than this (fraction) is marked
THUMB = 84  # CSS width of an example image (pixels; small images are scaled up without smoothing)

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1180px;
 color:#1b1b1b;line-height:1.45;padding:0 16px}
h1{font-size:1.6em;margin-bottom:.2em}h2{margin-top:1.8em;border-bottom:2px solid #e3e3e3;padding-bottom:.2em}
h3{margin-bottom:.3em}table{border-collapse:collapse;margin:.5em 0 1em}
th,td{border:1px solid #d8d8d8;padding:4px 8px;text-align:right;vertical-align:middle}
th{background:#f3f4f6}td.l,th.l{text-align:left}.sub{color:#555}.mark{color:#b00020;font-weight:600}
.headline{font-weight:700}.ok{color:#0a7d32}.bad{color:#b00020}.tm{font-size:.85em;color:#555}
.ex td,.ex th{text-align:center;font-size:.8em;padding:3px}
.ex img{width:84px;image-rendering:pixelated;image-rendering:crisp-edges;display:block;margin:0 auto 2px}
.flag{display:inline-block;background:#fde7ea;color:#8a0018;border-radius:4px;padding:0 6px;margin:1px}
.box{background:#f7f7f9;border:1px solid #e3e3e8;border-radius:6px;padding:8px 14px}
code{background:#f1f1f4;padding:0 3px;border-radius:3px}nav a{margin-right:12px}
@media print{body{max-width:none;margin:0}h2{page-break-before:auto}.ex{page-break-inside:avoid}nav{display:none}}
"""


def png_uri(img: torch.Tensor) -> str:
    """A C×H×W float image in [0,1] (C = 1 or 3) → ``data:image/png;base64,...``."""
    a = (img.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    if a.shape[0] == 1:
        pil = Image.fromarray(a[0].numpy(), mode="L")
    else:
        pil = Image.fromarray(a[:3].permute(1, 2, 0).contiguous().numpy(), mode="RGB")
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def perturbation_image(delta: torch.Tensor, eps: float) -> tuple[torch.Tensor, float]:
    """(image in [0,1], scale): 0.5 + scale·δ with scale = 0.5/eps so that ±eps spans black to white (mid-grey is
    no change); ``eps`` ≤ 0 falls back to the largest |δ|."""
    m = eps if eps > 0 else float(delta.abs().max())
    scale = 0.5 / m if m > 0 else 1.0
    return (0.5 + scale * delta).clamp(0, 1), scale


def _pct(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and v != v) else f"{100 * float(v):.1f}%"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], left: int | set[int] = 1, cls: str = "") -> str:
    """An HTML table; left-aligned: the first ``left`` columns (an int) or those indices (a set); cells are HTML
    already (escape text before)."""
    lcols = set(range(left)) if isinstance(left, int) else left
    head = "".join(f'<th class="l">{h}</th>' if i in lcols else f"<th>{h}</th>" for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="l">{c}</td>' if i in lcols else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f'<table{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}><tr>{head}</tr>{body}</table>'


def _page(title: str, sections: list[tuple[str, str, str]]) -> str:
    """The whole document: (anchor, heading, HTML body) per section, with a table of contents."""
    nav = "".join(f'<a href="#{a}">{escape(h)}</a>' for a, h, _ in sections)
    body = "".join(f'<section id="{a}"><h2>{escape(h)}</h2>{b}</section>' for a, h, b in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>'
            f'<body><h1>{escape(title)}</h1><nav>{nav}</nav>{body}</body></html>\n')


def _name(classes: Sequence[str] | None, k: int) -> str:
    return escape(classes[k]) if classes and 0 <= k < len(classes) else str(k)


# -- grid --------------------------------------------------------------------------------------------------------

def defense_marks(res: GridResults, worst: dict[tuple[str, str], dict]) -> dict[tuple[str, str], list[str]]:
    """(defense, target) → marks: clean cost above :data:`CLEAN_COST_MARK`, headline only defense-unaware, no
    useful gradient (masking suspected), randomized."""
    meta, out = res.meta, {}
    y = res.labels
    for (d, t), w in worst.items():
        marks = []
        base = float((res.base_pred[t] == y).float().mean()) if t in res.base_pred and len(y) else float("nan")
        if d != "none" and base == base and base - w["clean_accuracy"] > CLEAN_COST_MARK + 1e-9:
            marks.append(f"clean cost {100 * (base - w['clean_accuracy']):.1f} points")
        if d != "none" and w["adaptive_worst_case_accuracy"] is None:
            marks.append("defense-unaware only")
        if d in (meta.get("non_differentiable_defenses") or []):
            marks.append("no useful gradient (BPDA used)")
        if d in (meta.get("randomized_defenses") or []):
            marks.append(f"randomized (worst of {meta.get('draws', 1)} draws)")
        out[(d, t)] = marks
    return out


def _summary(res: GridResults, worst: dict, targets: list[str], defenses: list[str]) -> str:
    marks = defense_marks(res, worst)
    adaptive = res.meta.get("adaptive") or []
    rows = []
    for d in defenses:
        for t in targets:
            w = worst[(d, t)]
            a = w["adaptive_worst_case_accuracy"]
            m = marks[(d, t)]
            serious = [x for x in m if not x.startswith("randomized")]
            rows.append([f"<code>{escape(d)}</code>", escape(t), _pct(w["clean_accuracy"]),
                         _pct(w["transfer_worst_case_accuracy"]) + '<div class="tm">transfer (defense-unaware)</div>',
                         (f'<span class="headline">{_pct(a)}</span><div class="tm">{escape(w["threat_model"])}</div>'
                          if a is not None else '<span class="mark">not measured</span>'),
                         " ".join(f'<span class="flag">{escape(x)}</span>' for x in m) if m else "–",
                         '<span class="mark">⚠</span>' if serious else ""])
    how = (f"Adaptive: {', '.join(res.meta.get('adaptive_attacks') or [])} crafted on each defended target itself "
           f"({', '.join(adaptive)}; EOT {res.meta.get('eot', 1)}, worst of {res.meta.get('draws', 1)} draws for "
           "randomized defenses). The <b>adaptive</b> worst case is the headline; the transfer worst case assumes an "
           "attacker who ignores the defense and is shown only to contrast.") if adaptive else (
        '<span class="mark">No adaptive attack was run</span> (<code>--adaptive full,bpda</code> runs them): every '
        "number here assumes an attacker who ignores the defense.")
    n = res.meta.get("n", len(res.labels))
    eps = res.meta.get("eps_255")
    return (f'<p class="box">{n} images of <code>{escape(str(res.meta.get("dataset", "?")))}</code>, L∞ eps '
            f"{eps}/255. Worst case = a sample counts only if it survives every attack from every source. {how} "
            f"⚠ marks a defense that costs more than {100 * CLEAN_COST_MARK:.0f} points of clean accuracy or whose "
            "headline is defense-unaware or gradient-masked.</p>"
            + _table(["defense", "target", "clean", "transfer worst case", "adaptive worst case (headline)", "marks",
                      ""], rows, left={0, 1, 5}))


def transfer_matrix(res: GridResults, defense: str) -> tuple[list[str], list[str], list[list[float]]]:
    """(sources, targets, values): per source × target the accuracy of ``defense`` + target on the samples that
    survive every transfer attack from that source (worst over attacks; NaN when not run)."""
    y = res.labels
    targets = list(res.base_pred)
    sources = list(dict.fromkeys(s for (_, s, d, _) in res.adv_pred if d == defense and not
                                 (s.startswith("adaptive-") or s == "universal")))
    vals = []
    for s in sources:
        row = []
        for t in targets:
            hits = [p == y for (a, s2, d, t2), p in res.adv_pred.items() if (s2, d, t2) == (s, defense, t)]
            if not hits or not len(y):
                row.append(float("nan"))
                continue
            ok = res.clean_pred[(defense, t)] == y
            for h in hits:
                ok &= h
            row.append(float(ok.float().mean()))
        vals.append(row)
    return sources, targets, vals


def _heatmaps(res: GridResults, defenses: list[str]) -> str:
    out = ['<p class="sub">Rows: the model the attacks were crafted on; columns: the defended target. Each cell: '
           "robust accuracy (%) of defense + target on the samples that survive <i>every</i> transfer attack from "
           "that source (worst over attacks). Colour scale: viridis, 0 % (dark purple) to 100 % (yellow). Framed "
           "cells: source = target (white-box on the bare model; defense-unaware behind a defense).</p>"]
    for d in defenses:
        sources, targets, vals = transfer_matrix(res, d)
        if not sources:
            continue
        marked = {(i, j) for i, s in enumerate(sources) for j, t in enumerate(targets) if s == t}
        out.append(f"<h3>defense <code>{escape(d)}</code></h3>"
                   + heatmap(vals, sources, targets, f"transfer matrix, defense {d}", marked))
    return "".join(out) if len(out) > 1 else "<p>No transfer attack was run.</p>"


def _eps_curves(res: GridResults, defenses: list[str], targets: list[str]) -> str:
    sweep = res.meta.get("eps_sweep") or []
    if len(sweep) < 2:
        return ("<p>Not measured: run <code>advshield eval ... --eps-sweep 8,16,25.5,32</code> (budgets in 0-255 "
                "units) to add robust accuracy versus eps.</p>")
    out = ['<p class="sub">Worst-case robust accuracy (the headline: adaptive where measured, else transfer) at '
           "each L∞ budget, one line per defense.</p>"]
    for t in targets:
        series: dict[str, list[tuple[float, float]]] = {}
        for point in sweep:
            for w in point["worst_case"]:
                if w["target"] == t and w["defense"] in defenses:
                    v = w["worst_case_accuracy"]
                    series.setdefault(w["defense"], []).append((point["eps_255"], float("nan") if v is None else v))
        out.append(f"<h3>target {escape(t)}</h3>" + line_plot(series, "L∞ eps (0-255 units)",
                                                                "robust accuracy", f"robust accuracy vs eps, {t}"))
    return "".join(out)


def _pick_source(res: GridResults, attack: str, target: str) -> str | None:
    """The source whose adversarial examples the grid shows for ``attack``: another model than ``target`` when
    there is one (transfer), else the target itself."""
    sources = [k.split("/", 2)[2] for k in res.examples if k.startswith(f"adv/{attack}/")
               and not k.split("/", 2)[2].startswith("adaptive-")]
    others = [s for s in sources if s != target]
    return (others or sources or [None])[0]


def _cell(img: torch.Tensor, caption: str, cls: str = "") -> str:
    return f'<td><img src="{png_uri(img)}" alt="{escape(caption)}"><span class="{cls}">{caption}</span></td>'


def _ok(pred: int | None, truth: int) -> str:
    return "" if pred is None else ("ok" if pred == truth else "bad")


def _cell_table(heads: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An image table: header cells are HTML text, row cells complete ``<td>`` elements."""
    head = "".join(f"<th>{h}</th>" for h in heads)
    return f'<table class="ex"><tr>{head}</tr>' + "".join("<tr>" + "".join(r) + "</tr>" for r in rows) + "</table>"


def _pred(res: GridResults, key: tuple[str, str, str, str], i: int) -> int | None:
    p = res.adv_pred.get(key)
    return None if p is None else int(p[i])


def _image_grids(res: GridResults, defenses: list[str], targets: list[str]) -> str:
    ex = res.examples
    if "index" not in ex or "clean" not in ex:
        return "<p>No example images were kept (<code>examples</code> = 0).</p>"
    classes = res.meta.get("classes")
    eps = float(res.meta.get("eps", 0) or 0)
    t = targets[0]
    idx = [int(i) for i in ex["index"]]
    y = res.labels
    out = [f'<p class="sub">{len(idx)} fixed samples (seeded choice from the first batch). Predictions are those of '
           f"target <b>{escape(t)}</b>: green = correct, red = wrong. Perturbation: 0.5 + s·(adversarial − clean), "
           "mid-grey = unchanged, black/white = −eps/+eps. Defense columns show the defense's output on the "
           "adversarial image (for a purifier: the purified image) and the defended prediction.</p>"]
    scale = perturbation_image(torch.zeros(1), eps)[1]
    shown = [d for d in defenses if d != "none"]
    for a in dict.fromkeys(k.split("/")[1] for k in ex if k.startswith("adv/")):
        s = _pick_source(res, a, t)
        if s is None:
            continue
        adv = ex[f"adv/{a}/{s}"]
        heads = ["sample", "clean", f"adversarial (undefended {escape(t)})", f"perturbation ×{scale:.1f}"] + [
            f"<code>{escape(d)}</code>" for d in shown]
        rows = []
        for r, i in enumerate(idx):
            truth = int(y[i])
            p = _pred(res, (a, s, "none", t), i)
            cells = [f"<td>#{i}</td>", _cell(ex["clean"][r], f"true: {_name(classes, truth)}"),
                     _cell(adv[r], "–" if p is None else _name(classes, p), _ok(p, truth)),
                     _cell(perturbation_image(adv[r] - ex["clean"][r], eps)[0], "δ")]
            for d in shown:
                img = ex.get(f"out/{d}/{a}/{s}")
                pd = _pred(res, (a, s, d, t), i)
                cells.append("<td>–</td>" if img is None else
                             _cell(img[r], "–" if pd is None else _name(classes, pd), _ok(pd, truth)))
            rows.append(cells)
        out.append(f"<h3>{escape(a)} crafted on {escape(s)}</h3>" + _cell_table(heads, rows))
    return "".join(out)


def _universal(res: GridResults, targets: list[str]) -> str:
    pert = {k.split("/", 1)[1]: v for k, v in res.examples.items() if k.startswith("universal/")}
    rows = [r for r in res.rows() if r["source"] == "universal"]
    if not rows:
        return ""
    eps = float(res.meta.get("eps", 0) or 0)
    imgs = "".join(f'<td><img src="{png_uri(perturbation_image(v, eps)[0])}" alt="{escape(k)}">{escape(k)}</td>'
                   for k, v in pert.items())
    table = _table(["perturbation", "defense", "target", "clean", "perturbed", "restoration accuracy"],
                   [[escape(r["attack"]), f"<code>{escape(r['defense'])}</code>", escape(r["target"]),
                     _pct(r["clean_accuracy"]), _pct(r["robust_accuracy"]), f"{r['restoration_accuracy']:.3f}"]
                    for r in rows], left=3)
    return ((f'<table class="ex"><tr>{imgs}</tr></table><p class="sub">Shown as 0.5 + δ·0.5/eps.</p>' if imgs
             else "") + "<p>Restoration accuracy (Borkar et al.) = (defended clean + defended perturbed top-1) / "
            "(2 × undefended clean top-1).</p>" + table)


def _details(res: GridResults, command: str | None) -> str:
    m = res.meta
    items = [("command", f"<code>{escape(command)}</code>" if command else "–"),
             ("seed", escape(str(m.get("seed")))), ("images", escape(str(m.get("n")))),
             ("advshield / torch / Python", escape(f"{__version__} / {m.get('torch', torch.__version__)} / "
                                                  f"{m.get('python', '?')}")),
             ("machine", escape(str(m.get("machine", "?")))), ("device", escape(str(m.get("device")))),
             ("time", f"{m.get('elapsed_s', '?')} s")]
    attacks = [[f"<code>{escape(a)}</code>", "<br>".join(escape(v) for v in sorted(set(info.values())))]
               for a, info in res.attack_info.items()]
    rows = [[escape(r["attack"]), escape(r["source"]), f"<code>{escape(r['defense'])}</code>", escape(r["target"]),
             escape(r["setting"]), _pct(r["clean_accuracy"]), _pct(r["robust_accuracy"]),
             _pct(r["attack_success_rate"]), _pct(r["fooling_rate"])] for r in res.rows()]
    return (_table(["", ""], [[f"<b>{k}</b>", v] for k, v in items], left=2)
            + "<h3>Attacks</h3>" + _table(["attack", "settings"], attacks, left=2)
            + "<h3>Every metric</h3>" + _table(["attack", "source", "defense", "target", "setting", "clean", "robust",
                                                "ASR", "fooling"], rows, left=5)
            + '<p class="sub">Per-sample predictions: <code>flags.safetensors</code>; metrics: '
              "<code>report.json</code>.</p>")


def grid_html(res: GridResults, title: str = "advshield evaluation", notes: Sequence[str] = (),
              command: str | None = None) -> str:
    """The self-contained HTML report of a grid run (see the module docstring)."""
    worst = {(r["defense"], r["target"]): r for r in res.worst_case()}
    targets = list(res.base_pred)
    defenses = ordered_defenses(res)
    note_items = [*notes, *(res.meta.get("notes") or [])]
    sections = [("summary", "Summary", _summary(res, worst, targets, defenses)),
                ("transfer", "Transfer matrices", _heatmaps(res, defenses)),
                ("eps", "Robust accuracy versus eps", _eps_curves(res, defenses, targets)),
                ("examples", "Adversarial examples", _image_grids(res, defenses, targets))]
    uni = _universal(res, targets)
    if uni:
        sections.append(("universal", "Universal perturbations", uni))
    sections.append(("notes", "Notes and flags", "<ul>" + "".join(f"<li>{escape(n)}</li>" for n in note_items)
                     + "</ul>" if note_items else "<p>None.</p>"))
    sections.append(("details", "Details", _details(res, command)))
    return _page(title, sections)


# -- audit -------------------------------------------------------------------------------------------------------

def audit_html(doc: dict[str, Any], title: str = "advshield audit", command: str | None = None,
               examples: dict[str, torch.Tensor] | None = None) -> str:
    """The HTML page of one audit (``doc``: :meth:`AuditResult.to_json`; ``examples``: optional "clean" and
    "adv/MODE" image batches with "index", "labels" and "pred/MODE" predictions)."""
    m = doc.get("meta", {})
    lo, hi = doc.get("ci95", [float("nan")] * 2)
    flags = doc.get("flags") or []
    head = (f'<p class="box">Defense <code>{escape(str(m.get("defense")))}</code> on '
            f'<code>{escape(str(m.get("model")))}</code>, {escape(str(m.get("norm")))} eps {m.get("eps_255")}/255, '
            f'n = {doc.get("n")}, version <code>{escape(str(m.get("version")))}</code>.<br>'
            f'<span class="headline">Robust accuracy {_pct(doc.get("robust_accuracy"))}</span> (95 % CI '
            f"{_pct(lo)}–{_pct(hi)}; a sample counts only if it survives every threat model"
            + (f" in each of {m.get('draws')} draws; majority vote {_pct(doc.get('robust_accuracy_majority'))}"
               if m.get("randomized") else "") + f"); clean {_pct(doc.get('clean_accuracy'))}.<br>Flags: "
            + (" ".join(f'<span class="flag">{escape(f)}</span>' for f in flags) if flags else "none") + "</p>")
    per = _table(["threat model", "accuracy"], [[escape(k), _pct(v)] for k, v in doc.get("per_attack", {}).items()])
    sections = [("summary", "Summary", head + per),
                ("notes", "Flags and notes", "<ul>" + "".join(f"<li>{escape(n)}</li>" for n in doc.get("notes", []))
                 + "</ul>" if doc.get("notes") else "<p>None.</p>")]
    if examples and "clean" in examples:
        sections.append(("examples", "Adversarial examples",
                         _audit_examples(examples, m, list(doc.get("per_attack", {})))))
    items = [("command", f"<code>{escape(command)}</code>" if command else "–")] + [
        (escape(str(k)), escape(str(v))) for k, v in m.items() if k not in ("notes",)]
    sections.append(("details", "Details", _table(["", ""], [[f"<b>{k}</b>", v] for k, v in items], left=2)))
    return _page(title, sections)


def _audit_examples(ex: dict[str, torch.Tensor], meta: dict, order: list[str]) -> str:
    """Per sample: the clean image, then per threat model (in ``order``) the adversarial image with the defended
    prediction and the amplified perturbation."""
    classes = meta.get("classes")
    eps = float(meta.get("eps", 0) or 0)
    stored = [k[len("adv/"):] for k in ex if k.startswith("adv/")]
    modes = [md for md in order if md in stored] + [md for md in stored if md not in order]
    rows = []
    for r, i in enumerate(ex["index"].tolist()):
        truth = int(ex["labels"][r])
        cells = [f"<td>#{i}</td>", _cell(ex["clean"][r], f"true: {_name(classes, truth)}")]
        for md in modes:
            p = int(ex[f"pred/{md}"][r])
            cells.append(_cell(ex[f"adv/{md}"][r], _name(classes, p), _ok(p, truth)))
            cells.append(_cell(perturbation_image(ex[f"adv/{md}"][r] - ex["clean"][r], eps)[0], "δ"))
        rows.append(cells)
    head = ('<tr><th rowspan="2">sample</th><th rowspan="2">clean</th>'
            + "".join(f'<th colspan="2">{escape(md)}</th>' for md in modes) + "</tr><tr>"
            + "<th>adversarial</th><th>δ</th>" * len(modes) + "</tr>")
    return ('<p class="sub">Adversarial image and perturbation (0.5 + δ·0.5/eps) per threat model; predictions of '
            'the defended model (one draw), green = correct.</p><table class="ex">' + head
            + "".join("<tr>" + "".join(r) + "</tr>" for r in rows) + "</table>")
