"""Server-side SVG charts: no script, no network, no inline styles (colours come from classes
in dashboards.css). Each chart is drawn beside a table that holds the same figures."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape


@dataclass
class Bar:
    label: str
    value: int
    css: str = ""
    href: str | None = None


def _nice_max(value: float) -> int:
    """A round axis maximum at or above value: 1, 2, 5, 10, 20, 50..."""
    if value <= 0:
        return 1
    exponent = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * exponent:
            return int(step * exponent)
    return int(10 * exponent)


def _fmt(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


def hbars(bars: Sequence[Bar], title: str, *, scale_max: int | None = None, chart_id: str = "") -> Markup:
    """Horizontal bars, one per row, labelled on the left and valued on the right."""
    width, label_w, value_w, row_h, pad = 520, 190, 56, 30, 6
    plot_w = width - label_w - value_w
    height = row_h * max(1, len(bars)) + pad
    top = max((b.value for b in bars), default=0)
    maximum = scale_max or top or 1
    out = [f'<svg class="chart hbars" viewBox="0 0 {width} {height}" role="img" '
           f'aria-labelledby="{chart_id}-title" xmlns="http://www.w3.org/2000/svg">',
           f'<title id="{chart_id}-title">{escape(title)}</title>']
    for i, bar in enumerate(bars):
        y = pad + i * row_h
        w = 0 if maximum == 0 else plot_w * bar.value / maximum
        out.append(f'<text class="label" x="{label_w - 8}" y="{y + 18}" text-anchor="end">{escape(bar.label)}</text>')
        rect = (f'<rect class="bar {escape(bar.css)}" x="{label_w}" y="{y + 3}" width="{_fmt(max(w, 0.5 if bar.value else 0))}" '
                f'height="{row_h - 8}"><title>{escape(bar.label)}: {bar.value}</title></rect>')
        out.append(f'<a href="{escape(bar.href)}">{rect}</a>' if bar.href else rect)
        out.append(f'<text class="value" x="{_fmt(label_w + w + 6)}" y="{y + 18}">{bar.value}</text>')
    out.append("</svg>")
    return Markup("".join(out))


@dataclass
class Series:
    key: str
    label: str
    css: str


def columns(categories: Sequence[str], series: Sequence[Series], values: Sequence[Sequence[int]], title: str,
            *, chart_id: str = "") -> Markup:
    """Grouped columns: one group per category (e.g. a month), one column per series.
    `values[i][j]` is category i, series j."""
    width, height, left, bottom, top_pad, right = 720, 260, 44, 34, 12, 8
    plot_w, plot_h = width - left - right, height - bottom - top_pad
    n = max(1, len(categories))
    group_w = plot_w / n
    inner = group_w * 0.8
    col_w = inner / max(1, len(series))
    maximum = _nice_max(max((v for row in values for v in row), default=0))
    out = [f'<svg class="chart columns" viewBox="0 0 {width} {height}" role="img" '
           f'aria-labelledby="{chart_id}-title" xmlns="http://www.w3.org/2000/svg">',
           f'<title id="{chart_id}-title">{escape(title)}</title>']
    for k in range(5):
        tick = maximum * k / 4
        y = top_pad + plot_h - plot_h * k / 4
        out.append(f'<line class="grid" x1="{left}" x2="{width - right}" y1="{_fmt(y)}" y2="{_fmt(y)}"/>')
        out.append(f'<text class="axis" x="{left - 6}" y="{_fmt(y + 4)}" text-anchor="end">{_fmt(tick)}</text>')
    label_every = max(1, math.ceil(n / 12))
    for i, category in enumerate(categories):
        x0 = left + i * group_w + (group_w - inner) / 2
        for j, s in enumerate(series):
            value = values[i][j]
            h = plot_h * value / maximum
            x = x0 + j * col_w
            out.append(f'<rect class="bar {escape(s.css)}" x="{_fmt(x)}" y="{_fmt(top_pad + plot_h - h)}" '
                       f'width="{_fmt(max(col_w - 1, 1))}" height="{_fmt(h)}">'
                       f'<title>{escape(category)} {escape(s.label)}: {value}</title></rect>')
        if i % label_every == 0:
            out.append(f'<text class="axis" x="{_fmt(left + i * group_w + group_w / 2)}" y="{height - bottom + 16}" '
                       f'text-anchor="middle">{escape(category)}</text>')
    out.append(f'<line class="baseline" x1="{left}" x2="{width - right}" y1="{top_pad + plot_h}" '
               f'y2="{top_pad + plot_h}"/>')
    out.append("</svg>")
    return Markup("".join(out))
