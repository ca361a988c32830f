"""Charts drawn on the server as SVG: no JavaScript, no CDN, readable offline and in tests.

Pure functions from numbers to an SVG string. Every label is escaped; every point and
bar carries a <title>, which browsers show as a tooltip. Lines with more points than
the chart has pixels are thinned first (`thin`), so a 10,000-step loss curve costs a
few kilobytes, not a megabyte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from html import escape

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04")
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 52, 16, 28, 44


@dataclass(frozen=True)
class Series:
    name: str
    points: list[tuple[float, float | None]]  # (x, y); points whose y is None or NaN are left out
    labels: list[str] = field(default_factory=list)  # optional per-point tooltip, same length as points


@dataclass(frozen=True)
class Marker:
    """A vertical line at `x` (an alert at a training step, say)."""

    x: float
    label: str


def _nice(x: float, round_: bool) -> float:
    exponent = math.floor(math.log10(x))
    fraction = x / 10 ** exponent
    if round_:
        nice = 1 if fraction < 1.5 else 2 if fraction < 3 else 5 if fraction < 7 else 10
    else:
        nice = 1 if fraction <= 1 else 2 if fraction <= 2 else 5 if fraction <= 5 else 10
    return nice * 10 ** exponent


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values whose span covers [low, high], about `count` of them
    (Heckbert, "Nice numbers for graph labels", Graphics Gems, 1990)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("tick bounds must be finite numbers")
    if high < low:
        low, high = high, low
    if high == low:  # one value: a unit-wide window around it
        pad = abs(low) * 0.1 or 1.0
        low, high = low - pad, high + pad
    step = _nice(_nice(high - low, False) / max(count - 1, 1), True)
    start, stop = math.floor(low / step) * step, math.ceil(high / step) * step
    digits = max(0, -math.floor(math.log10(step))) + 1
    return [round(start + i * step, digits) for i in range(round((stop - start) / step) + 1)]


def thin(points: list, max_points: int) -> list:
    """At most `max_points` of `points`, evenly strided, always keeping the first and last."""
    if max_points < 2 or len(points) <= max_points:
        return list(points)
    stride = (len(points) - 1) / (max_points - 1)
    return [points[round(i * stride)] for i in range(max_points)]


def format_number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 10_000 or abs(value) < 0.001:
        return f"{value:.2g}"
    return f"{value:.4g}"


def format_time(seconds: float, span: float) -> str:
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    if span < 600:
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%m-%d %H:%M" if span < 2 * 86400 else "%Y-%m-%d" if span > 300 * 86400 else "%m-%d")


def _finite(s: Series) -> Series:
    labels = s.labels or [""] * len(s.points)
    kept = [(p, label) for p, label in zip(s.points, labels)
            if p[1] is not None and math.isfinite(p[0]) and math.isfinite(p[1])]
    return Series(s.name, [p for p, _ in kept], [label for _, label in kept])


def _frame(width: int, height: int, title: str) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}" role="img" aria-label="{escape(title)}">',
            f"<title>{escape(title)}</title>",
            f'<text x="{MARGIN_LEFT}" y="16" class="chart-title">{escape(title)}</text>']


def _empty(width: int, height: int, title: str, message: str) -> str:
    return "".join(_frame(width, height, title)) + (
        f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle" class="chart-empty">'
        f"{escape(message)}</text></svg>")


def _y_axis(ticks: list[float], sy, width: int, fmt) -> list[str]:
    out = []
    for t in ticks:
        y = sy(t)
        out.append(f'<line x1="{MARGIN_LEFT}" x2="{width - MARGIN_RIGHT}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{MARGIN_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">'
                   f"{escape(fmt(t))}</text>")
    return out


def _legend(names: list[str | None], width: int, height: int) -> list[str]:
    """Coloured names along the bottom; a None keeps its colour's place but shows nothing."""
    out, x = [], MARGIN_LEFT
    for i, name in enumerate(names):
        if name is None:
            continue
        color = PALETTE[i % len(PALETTE)]
        out.append(f'<rect x="{x}" y="{height - 14}" width="10" height="10" fill="{color}"/>')
        out.append(f'<text x="{x + 14}" y="{height - 5}" class="legend">{escape(name)}</text>')
        x += 24 + 7 * len(name)
        if x > width - 60:
            break
    return out


def line_chart(series: list[Series], *, title: str, width: int = 640, height: int = 240,
               time_axis: bool = False, markers: list[Marker] = (), y_min: float | None = None,
               y_max: float | None = None, y_format=format_number, empty: str = "No data yet.") -> str:
    """Lines over a shared x axis (numbers, or unix seconds when `time_axis`); y bounds
    default to the data's, widened to round ticks."""
    plot_w = width - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = height - MARGIN_TOP - MARGIN_BOTTOM
    cleaned = [_finite(s) for s in series]
    xs = [x for s in cleaned for x, _ in s.points] + [m.x for m in markers]
    ys = [y for s in cleaned for _, y in s.points]
    if not ys:
        return _empty(width, height, title, empty)
    ticks = nice_ticks(min(ys) if y_min is None else min(y_min, *ys),
                       max(ys) if y_max is None else max(y_max, *ys))
    y0, y1 = ticks[0], ticks[-1]
    x0, x1 = min(xs), max(xs)

    def sx(x: float) -> float:
        return MARGIN_LEFT + (plot_w / 2 if x1 == x0 else (x - x0) / (x1 - x0) * plot_w)

    def sy(y: float) -> float:
        return MARGIN_TOP + plot_h - (y - y0) / ((y1 - y0) or 1) * plot_h

    out = _frame(width, height, title) + _y_axis(ticks, sy, width, y_format)
    span = x1 - x0
    if time_axis:
        x_ticks = [x0] if span == 0 else [x0 + span * i / 4 for i in range(5)]
    else:  # steps and iterations: round numbers inside the data's range
        x_ticks = [t for t in nice_ticks(x0, x1) if x0 <= t <= x1] or [x0]
    shown = set()
    for x in x_ticks:
        label = format_time(x, span) if time_axis else format_number(x)
        if label in shown:  # a span of seconds gives equal time labels: show each once
            continue
        shown.add(label)
        anchor = "start" if x == x0 and span else "end" if x == x1 and span else "middle"
        out.append(f'<text x="{sx(x):.1f}" y="{MARGIN_TOP + plot_h + 16}" text-anchor="{anchor}" '
                   f'class="tick">{escape(label)}</text>')
    for m in markers:
        x = sx(m.x)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{MARGIN_TOP}" y2="{MARGIN_TOP + plot_h}" '
                   f'class="marker"><title>{escape(m.label)}</title></line>')
        out.append(f'<path d="M{x - 5:.1f},{MARGIN_TOP - 2} h10 l-5,7 z" class="marker-head">'
                   f"<title>{escape(m.label)}</title></path>")
    for i, s in enumerate(cleaned):
        color = PALETTE[i % len(PALETTE)]
        kept = thin(list(zip(s.points, s.labels)), plot_w)
        if not kept:
            continue
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for (x, y), _ in kept)
        out.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2" '
                   f'class="line" data-series="{escape(s.name)}"/>')
        if len(kept) <= 120:
            for (x, y), label in kept:
                where = format_time(x, span) if time_axis else format_number(x)
                tip = f"{s.name}: {y_format(y)} at {where}" + (f" ({label})" if label else "")
                out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}">'
                           f"<title>{escape(tip)}</title></circle>")
    out += _legend([s.name if s.points else None for s in cleaned], width, height)
    return "".join(out) + "</svg>"


def bar_chart(labels: list[str], series: list[tuple[str, list[float]]], *, title: str, width: int = 640,
              height: int = 220, y_format=format_number, empty: str = "No data yet.") -> str:
    """Grouped bars: one group per label, one bar per series in each group."""
    plot_w = width - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = height - MARGIN_TOP - MARGIN_BOTTOM
    values = [v for _, vs in series for v in vs if v is not None]
    if not labels or not values:
        return _empty(width, height, title, empty)
    ticks = nice_ticks(0, max(max(values), 1))
    top = ticks[-1]

    def sy(y: float) -> float:
        return MARGIN_TOP + plot_h - y / top * plot_h

    out = _frame(width, height, title) + _y_axis(ticks, sy, width, y_format)
    group = plot_w / len(labels)
    bar = min(group * 0.8 / max(len(series), 1), 40)  # a few categories: bars, not slabs
    pad = (group - bar * max(len(series), 1)) / 2
    every = max(1, math.ceil(len(labels) / max(plot_w // 48, 1)))  # labels ~48 px apart at most
    for g, label in enumerate(labels):
        left = MARGIN_LEFT + g * group + pad
        for i, (name, vs) in enumerate(series):
            value = vs[g] if g < len(vs) and vs[g] is not None else 0
            y = sy(value)
            out.append(f'<rect x="{left + i * bar:.1f}" y="{y:.1f}" width="{max(bar - 1, 1):.1f}" '
                       f'height="{MARGIN_TOP + plot_h - y:.1f}" fill="{PALETTE[i % len(PALETTE)]}" class="bar">'
                       f"<title>{escape(f'{name}, {label}: {y_format(value)}')}</title></rect>")
        if g % every == 0:
            out.append(f'<text x="{MARGIN_LEFT + (g + 0.5) * group:.1f}" y="{MARGIN_TOP + plot_h + 16}" '
                       f'text-anchor="middle" class="tick">{escape(label)}</text>')
    out += _legend([name for name, _ in series], width, height)
    return "".join(out) + "</svg>"
