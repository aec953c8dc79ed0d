"""Small inline SVG charts for the HTML report: a heatmap with its colour scale and a line plot. Pure strings, no
JavaScript and no external references; values are fractions in [0,1] shown as percentages."""
from __future__ import annotations

from html import escape
from typing import Sequence

# viridis at 0, 0.25, 0.5, 0.75, 1 (the colour scale stated under every heatmap)
VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39")


def colour(v: float) -> str:
    """Viridis colour of ``v`` in [0,1] (clamped) as ``#rrggbb``; NaN → light grey."""
    if v != v:
        return "#dddddd"
    v = min(1.0, max(0.0, v)) * (len(VIRIDIS) - 1)
    i = min(int(v), len(VIRIDIS) - 2)
    f = v - i
    rgb = [round(a + (b - a) * f) for a, b in zip(VIRIDIS[i], VIRIDIS[i + 1])]
    return "#" + "".join(f"{c:02x}" for c in rgb)


def _text_colour(v: float) -> str:
    return "#000" if v == v and v > 0.6 else "#fff"


def heatmap(values: Sequence[Sequence[float]], rows: Sequence[str], cols: Sequence[str], title: str = "",
            marked: set[tuple[int, int]] | None = None) -> str:
    """An SVG heatmap of ``values`` (rows × cols fractions, NaN for not measured) with the percentage in each
    cell, row/column labels and a 0–100 % colour bar; cells in ``marked`` get a black frame."""
    cw, ch = 96, 30
    lw = min(260, 12 + 7 * max((len(r) for r in rows), default=4))
    top = 46
    w = lw + cw * len(cols) + 70
    h = top + ch * len(rows) + 10
    parts = [f'<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
             f'role="img" aria-label="{escape(title)}" font-family="sans-serif" font-size="12">']
    for j, c in enumerate(cols):
        parts.append(f'<text x="{lw + cw * j + cw / 2}" y="{top - 8}" text-anchor="middle">{escape(_short(c, 14))}'
                     f'<title>{escape(c)}</title></text>')
    for i, r in enumerate(rows):
        y = top + ch * i
        parts.append(f'<text x="{lw - 6}" y="{y + ch / 2 + 4}" text-anchor="end">{escape(_short(r, 36))}'
                     f'<title>{escape(r)}</title></text>')
        for j, _ in enumerate(cols):
            v = values[i][j]
            x = lw + cw * j
            frame = ' stroke="#000" stroke-width="2"' if marked and (i, j) in marked else ' stroke="#fff"'
            parts.append(f'<rect x="{x}" y="{y}" width="{cw}" height="{ch}" fill="{colour(v)}"{frame}/>')
            label = "–" if v != v else f"{100 * v:.1f}"
            parts.append(f'<text x="{x + cw / 2}" y="{y + ch / 2 + 4}" text-anchor="middle" '
                         f'fill="{_text_colour(v)}">{label}</text>')
    bx = lw + cw * len(cols) + 16
    bh = max(ch * len(rows), 60)
    for k in range(20):
        v = 1 - k / 19
        parts.append(f'<rect x="{bx}" y="{top + bh * k / 20:.1f}" width="14" height="{bh / 20 + 0.5:.1f}" '
                     f'fill="{colour(v)}"/>')
    parts.append(f'<text x="{bx + 18}" y="{top + 9}">100%</text>')
    parts.append(f'<text x="{bx + 18}" y="{top + bh}">0%</text>')
    parts.append("</svg>")
    return "".join(parts)


def _short(s: str, n: int = 11) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def line_plot(series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, title: str = "") -> str:
    """An SVG line plot: one line with markers per series (x, y) with y a fraction shown 0–100 %, x axis from the
    smallest to the largest x, a legend on the right."""
    w, h, left, right, top, bottom = 560, 300, 52, 170, 16, 44
    xs = sorted({x for pts in series.values() for x, _ in pts})
    x0, x1 = (xs[0], xs[-1]) if xs else (0.0, 1.0)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    pw, ph = w - left - right, h - top - bottom
    px = lambda x: left + (x - x0) / (x1 - x0) * pw  # noqa: E731
    py = lambda y: top + (1 - y) * ph  # noqa: E731
    parts = [f'<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
             f'aria-label="{escape(title)}" font-family="sans-serif" font-size="12">',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#888"/>']
    for k in range(0, 101, 20):
        y = py(k / 100)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#e4e4e4"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{k}%</text>')
    for x in xs:
        parts.append(f'<text x="{px(x):.1f}" y="{top + ph + 16}" text-anchor="middle">{x:g}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{h - 8}" text-anchor="middle">{escape(xlabel)}</text>')
    parts.append(f'<text x="14" y="{top + ph / 2}" text-anchor="middle" transform="rotate(-90 14 {top + ph / 2})">'
                 f'{escape(ylabel)}</text>')
    for k, (name, pts) in enumerate(series.items()):
        c = PALETTE[k % len(PALETTE)]
        pts = sorted((x, y) for x, y in pts if y == y)
        if pts:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="2"/>')
            parts += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{c}"><title>{escape(name)}: '
                      f'{100 * y:.1f}% at {x:g}</title></circle>' for x, y in pts]
        ly = top + 14 * k + 6
        parts.append(f'<line x1="{w - right + 10}" y1="{ly}" x2="{w - right + 28}" y2="{ly}" stroke="{c}" '
                     f'stroke-width="3"/>')
        parts.append(f'<text x="{w - right + 32}" y="{ly + 4}">{escape(_short(name, 18))}</text>')
    parts.append("</svg>")
    return "".join(parts)
