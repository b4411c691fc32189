"""Inline SVG charts for the report: no plotting library, no network, text escaped.

Each function returns an `<svg>` string sized by a viewBox (it scales with the page). Colours are
assigned per variant in a fixed order so a variant has the same colour in every chart.
"""

from __future__ import annotations

from html import escape

PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974",
           "#64b5cd")


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _axis_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    step = (hi - lo) / n
    return [lo + i * step for i in range(n + 1)]


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points not dominated by another (lower latency and higher success is better)."""
    front = []
    for i, (x, y) in enumerate(points):
        if not any((x2 <= x and y2 >= y) and (x2 < x or y2 > y) for j, (x2, y2) in enumerate(points) if j != i):
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def scatter_pareto(points: list[dict], x_label: str, y_label: str, width: int = 640, height: int = 360,
                   x_line: float | None = None, x_line_label: str = "") -> str:
    """points: {label, x, y, lo, hi, colour}; y in [0, 1] with an error bar lo..hi; x >= 0. `x_line`:
    a dashed vertical line (a latency budget) labelled `x_line_label`."""
    if not points:
        return "<p class='muted'>No variant has both a latency and a success rate.</p>"
    ml, mr, mt, mb = 60, 20, 20, 50
    w, h = width - ml - mr, height - mt - mb
    xmax = max([p["x"] for p in points] + ([x_line] if x_line else [])) * 1.15 or 1.0

    def sx(x: float) -> float:
        return ml + w * x / xmax

    def sy(y: float) -> float:
        return mt + h * (1 - y)

    out = [f"<svg viewBox='0 0 {width} {height}' class='chart' role='img' aria-label='{escape(y_label)} vs "
           f"{escape(x_label)}'>"]
    for t in _axis_ticks(0, 1, 5):
        out.append(f"<line x1='{ml}' x2='{ml + w}' y1='{sy(t):.1f}' y2='{sy(t):.1f}' class='grid'/>"
                   f"<text x='{ml - 6}' y='{sy(t) + 4:.1f}' text-anchor='end'>{t:.0%}</text>")
    for t in _axis_ticks(0, xmax, 5):
        out.append(f"<text x='{sx(t):.1f}' y='{mt + h + 18}' text-anchor='middle'>{t:.3g}</text>")
    out.append(f"<line x1='{ml}' x2='{ml + w}' y1='{mt + h}' y2='{mt + h}' class='axis'/>"
               f"<line x1='{ml}' x2='{ml}' y1='{mt}' y2='{mt + h}' class='axis'/>")
    out.append(f"<text x='{ml + w / 2}' y='{height - 8}' text-anchor='middle'>{escape(x_label)}</text>"
               f"<text transform='translate(14,{mt + h / 2}) rotate(-90)' text-anchor='middle'>{escape(y_label)}</text>")
    if x_line:
        out.append(f"<line x1='{sx(x_line):.1f}' x2='{sx(x_line):.1f}' y1='{mt}' y2='{mt + h}' class='budget' "
                   f"stroke='#b00' stroke-dasharray='5,4'/><text x='{sx(x_line) + 4:.1f}' y='{mt + 12}' "
                   f"class='label'>{escape(x_line_label)}</text>")
    front = pareto_front([(p["x"], p["y"]) for p in points])
    if len(front) > 1:
        path = " ".join(f"{sx(points[i]['x']):.1f},{sy(points[i]['y']):.1f}" for i in front)
        out.append(f"<polyline points='{path}' class='front'/>")
    for i, p in enumerate(points):
        x, y = sx(p["x"]), sy(p["y"])
        if p.get("lo") is not None and p.get("hi") is not None:
            out.append(f"<line x1='{x:.1f}' x2='{x:.1f}' y1='{sy(p['lo']):.1f}' y2='{sy(p['hi']):.1f}' "
                       f"stroke='{p['colour']}' stroke-width='2'/>")
        ring = " class='onfront'" if i in front else ""
        out.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='6' fill='{p['colour']}'{ring}>"
                   f"<title>{escape(p['label'])}: {p['y']:.1%} at {p['x']:.3g}</title></circle>"
                   f"<text x='{x + 9:.1f}' y='{y - 8:.1f}' class='label'>{escape(p['label'])}</text>")
    out.append("</svg>")
    return "".join(out)


def grouped_bars(categories: list[str], series: list[dict], width: int = 760, height: int = 320) -> str:
    """Vertical grouped bars of fractions in [0, 1]: series = {label, colour, values: [..per category..]}."""
    if not categories or not series:
        return "<p class='muted'>No per-task results.</p>"
    ml, mr, mt, mb = 50, 10, 24, 90
    w, h = width - ml - mr, height - mt - mb
    group = w / len(categories)
    bar = max(2.0, (group * 0.8) / len(series))
    out = [f"<svg viewBox='0 0 {width} {height}' class='chart' role='img' aria-label='per-task success'>"]
    for t in _axis_ticks(0, 1, 4):
        y = mt + h * (1 - t)
        out.append(f"<line x1='{ml}' x2='{ml + w}' y1='{y:.1f}' y2='{y:.1f}' class='grid'/>"
                   f"<text x='{ml - 6}' y='{y + 4:.1f}' text-anchor='end'>{t:.0%}</text>")
    for ci, cat in enumerate(categories):
        x0 = ml + ci * group + group * 0.1
        for si, s in enumerate(series):
            v = s["values"][ci]
            if v is None:
                continue
            bh = h * v
            out.append(f"<rect x='{x0 + si * bar:.1f}' y='{mt + h - bh:.1f}' width='{bar - 1:.1f}' height='{bh:.1f}' "
                       f"fill='{s['colour']}'><title>{escape(s['label'])} / {escape(cat)}: {v:.0%}</title></rect>")
        cx = ml + ci * group + group / 2
        out.append(f"<text transform='translate({cx:.1f},{mt + h + 10}) rotate(35)' class='tick'>{escape(cat)}</text>")
    out.append(_legend(series, ml, 4))
    out.append("</svg>")
    return "".join(out)


def stacked_bars(rows: list[dict], parts: list[str], width: int = 760, row_h: int = 26) -> str:
    """Horizontal stacked bars: rows = {label, values: {part: ms}}; one colour per part."""
    rows = [r for r in rows if sum(r["values"].get(p, 0.0) for p in parts) > 0]
    if not rows:
        return "<p class='muted'>No per-component timings.</p>"
    ml, mr, mt = 200, 70, 30
    height = mt + row_h * len(rows) + 30
    w = width - ml - mr
    total_max = max(sum(r["values"].get(p, 0.0) for p in parts) for r in rows) or 1.0
    out = [f"<svg viewBox='0 0 {width} {height}' class='chart' role='img' aria-label='latency per component'>"]
    out.append(_legend([{"label": p, "colour": colour(i + 3)} for i, p in enumerate(parts)], 10, 4))
    for ri, r in enumerate(rows):
        y = mt + ri * row_h
        out.append(f"<text x='{ml - 8}' y='{y + row_h * 0.65:.1f}' text-anchor='end'>{escape(r['label'])}</text>")
        x = float(ml)
        for pi, p in enumerate(parts):
            v = r["values"].get(p, 0.0)
            if v <= 0:
                continue
            bw = w * v / total_max
            out.append(f"<rect x='{x:.1f}' y='{y + 3}' width='{bw:.1f}' height='{row_h - 6}' fill='{colour(pi + 3)}'>"
                       f"<title>{escape(r['label'])} / {escape(p)}: {v:.3g} ms</title></rect>")
            x += bw
        total = sum(r["values"].get(p, 0.0) for p in parts)
        out.append(f"<text x='{x + 4:.1f}' y='{y + row_h * 0.65:.1f}'>{total:.3g} ms</text>")
    out.append("</svg>")
    return "".join(out)


def _legend(series: list[dict], x: float, y: float) -> str:
    out, cx = [], x
    for s in series:
        out.append(f"<rect x='{cx:.1f}' y='{y}' width='10' height='10' fill='{s['colour']}'/>"
                   f"<text x='{cx + 14:.1f}' y='{y + 9}' class='legend'>{escape(s['label'])}</text>")
        cx += 24 + 7 * len(s["label"])
    return "".join(out)
