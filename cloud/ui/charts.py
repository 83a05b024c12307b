"""Charts for the web UI as inline SVG, rendered on the server (no JavaScript, no CDN).

Each function takes plain numbers and returns :class:`markupsafe.Markup` holding one ``<svg>``;
every piece of text in it is escaped here, so callers may pass device ids, labels or tags as
they are. Colours come from classes styled in ``static/ui.css`` (no inline styles, so the
UI's Content-Security-Policy needs no ``'unsafe-inline'``). Points carry a ``<title>`` so the
browser shows their value on hover.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from markupsafe import Markup, escape

Number = float | int


@dataclass
class Series:
    """One line: ``(x, y)`` points, oldest first; ``y`` ``None`` breaks the line."""

    name: str
    points: Sequence[tuple[float, float | None]]
    css: str = "s1"
    """Colour class (``s1``..``s6`` in ui.css)."""


@dataclass
class Threshold:
    """A horizontal reference line; ``band`` shades everything above it."""

    value: float
    label: str
    css: str = "warn"
    band: bool = False


@dataclass
class Slice:
    label: str
    value: Number
    css: str = "s1"


@dataclass
class Bar:
    label: str
    value: Number
    reference: float | None = None
    """Expected share (0..1) drawn as a marker over the bar, e.g. the bundle's reference profile."""
    extra: dict[str, str] = field(default_factory=dict)


def _f(v: float) -> str:
    """Compact coordinate text."""
    return f"{v:.1f}".rstrip("0").rstrip(".") if v != int(v) else str(int(v))


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering ``[lo, hi]`` (1, 2, 2.5, 5 x 10^n steps)."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, count - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = [round(start, 10)]
    while ticks[-1] < hi - step * 1e-9 and len(ticks) < 50:
        ticks.append(round(start + len(ticks) * step, 10))
    if len(ticks) == 1:
        ticks.append(round(start + step, 10))
    return ticks


def format_number(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.3g}M"
    if a >= 1e4:
        return f"{v / 1e3:.3g}k"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 1:
        return f"{v:.3g}"
    return f"{v:.2g}"


def _time_label(t: float, span: float) -> str:
    """A tick's UTC label, as short as the span allows: dates over two days; clock times below, where a tick
    at midnight is written as its date (so a 24-hour axis says which day starts)."""
    st = time.gmtime(t)
    if span > 2 * 86400:
        return time.strftime("%m-%d", st)
    if span > 600:
        return time.strftime("%m-%d" if (st.tm_hour, st.tm_min) == (0, 0) and span > 3 * 3600 else "%H:%M", st)
    return time.strftime("%H:%M:%S", st)


def _time_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    span = hi - lo
    if span <= 0:
        return [lo]
    steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
             172800, 604800]
    step = next((s for s in steps if span / s <= count), steps[-1])
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) // step) + 1)]


def _empty(width: int, height: int, text: str, kind: str) -> Markup:
    return Markup(
        f'<svg class="chart chart-empty" data-chart="{escape(kind)}" data-points="0" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(text)}"><rect class="frame" x="0.5" y="0.5" width="{width - 1}" '
        f'height="{height - 1}" rx="6"/><text class="empty" x="{width / 2}" y="{height / 2}" '
        f'text-anchor="middle">{escape(text)}</text></svg>')


@dataclass(frozen=True)
class _Plot:
    """The plotting area of a line chart and its scales (data -> SVG coordinates)."""

    left: float
    top: float
    width: float
    height: float
    x0: float
    x1: float
    y_lo: float
    y_hi: float

    def sx(self, x: float) -> float:
        return self.left + (x - self.x0) / (self.x1 - self.x0) * self.width

    def sy(self, y: float) -> float:
        return self.top + self.height - (y - self.y_lo) / (self.y_hi - self.y_lo) * self.height

    @property
    def right(self) -> float:
        return self.left + self.width

    @property
    def bottom(self) -> float:
        return self.top + self.height


def line_chart(series: Sequence[Series], *, kind: str, title: str, unit: str = "",
               thresholds: Sequence[Threshold] = (), width: int = 640, height: int = 240,
               y_min: float | None = 0.0, empty_text: str = "no telemetry yet",
               x_range: tuple[float, float] | None = None) -> Markup:
    """A time-series chart (x = Unix seconds, shown in UTC) with optional threshold lines/bands. The x axis
    spans the points, or ``x_range`` (a chosen time range: points outside it are left out)."""
    if x_range is not None:
        series = [Series(s.name, [(x, y) for x, y in s.points if x_range[0] <= x <= x_range[1]], s.css)
                  for s in series]
    pts = [(x, y) for s in series for x, y in s.points if y is not None and math.isfinite(y)]
    if not pts:
        return _empty(width, height, empty_text, kind)
    left, top, bottom = 52, 34, 28
    right = 16 if not thresholds else 12 + round(LABEL_CHAR_W * max(len(line) for t in thresholds
                                                                    for line in label_lines(t.label)))
    xs = [x for x, _ in pts]
    ys = [y for _, y in pts] + [t.value for t in thresholds]
    x0, x1 = (min(xs), max(xs)) if x_range is None else x_range
    if x1 == x0:
        x0, x1 = x0 - 30, x1 + 30
    lo = min(ys) if y_min is None else min(y_min, min(ys))
    hi = max(ys) * 1.08 if max(ys) > 0 else 1.0
    yt = nice_ticks(lo, hi)
    plot = _Plot(left, top, width - left - right, height - top - bottom, x0, x1, yt[0], yt[-1])
    out = [f'<svg class="chart chart-line" data-chart="{escape(kind)}" data-points="{len(pts)}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
           f'<title>{escape(title)}</title>']
    out += [f'<rect class="band band-{escape(t.css)}" x="{left}" y="{_f(top)}" width="{plot.width}" '
            f'height="{_f(plot.sy(t.value) - top)}"/>' for t in thresholds if t.band and t.value < plot.y_hi]
    out += _grid(plot, yt, height)
    if unit:
        out.append(f'<text class="unit" x="{left - 6}" y="{top - 12}" text-anchor="end">{escape(unit)}</text>')
    out += _threshold_lines(plot, thresholds)
    out += _legend(series, left)
    for s in series:
        out += _series_marks(plot, s, unit)
    out.append("</svg>")
    return Markup("".join(out))


def _grid(plot: _Plot, y_ticks: list[float], height: int) -> list[str]:
    out = []
    for v in y_ticks:
        y = plot.sy(v)
        out.append(f'<line class="grid" x1="{plot.left}" x2="{plot.right}" y1="{_f(y)}" y2="{_f(y)}"/>')
        out.append(f'<text class="tick" x="{plot.left - 6}" y="{_f(y + 4)}" text-anchor="end">'
                   f'{escape(format_number(v))}</text>')
    for tx in _time_ticks(plot.x0, plot.x1):
        x = plot.sx(tx)
        out.append(f'<line class="grid grid-x" x1="{_f(x)}" x2="{_f(x)}" y1="{plot.top}" y2="{plot.bottom}"/>')
        out.append(f'<text class="tick" x="{_f(x)}" y="{height - 9}" text-anchor="middle">'
                   f'{escape(_time_label(tx, plot.x1 - plot.x0))}</text>')
    out.append(f'<line class="axis" x1="{plot.left}" x2="{plot.right}" y1="{plot.bottom}" y2="{plot.bottom}"/>')
    return out


LABEL_CHAR_W = 6.2
"""Width of a character of a threshold label (11 px text), for the right margin that holds them."""
LABEL_LINE_H = 13.0
"""Height of a line of a threshold label; two labels keep at least this far apart."""
LABEL_LINE_CHARS = 16
"""A longer threshold label is wrapped at spaces into lines of about this many characters."""


def label_lines(text: str, width: int = LABEL_LINE_CHARS) -> list[str]:
    """``text`` wrapped at spaces, an operator (``= × + -``) kept with the word after it."""
    words: list[str] = []
    for word in text.split():
        if words and words[-1] in ("=", "×", "+", "-", "−"):
            words[-1] += " " + word
        else:
            words.append(word)
    lines: list[str] = []
    for word in words:
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines or [""]


def spread(ys: Sequence[float], heights: Sequence[float], *, lo: float, hi: float) -> list[float]:
    """Tops of labels wanted at ``ys`` (same order), ``heights`` tall: none overlapping, within
    ``[lo, hi]`` where there is room. Each is pushed down below the one above it, then, from the
    bottom up, pulled back above ``hi`` and above the one below it."""
    order = sorted(range(len(ys)), key=lambda i: ys[i])
    h = [heights[i] for i in order]
    tops: list[float] = []
    for k, i in enumerate(order):
        y = max(ys[i], lo)
        tops.append(max(y, tops[-1] + h[k - 1]) if tops else y)
    for k in range(len(tops) - 1, -1, -1):
        limit = hi - h[k] if k == len(tops) - 1 else tops[k + 1] - h[k]
        tops[k] = min(tops[k], limit)
    out = [0.0] * len(ys)
    for i, y in zip(order, tops, strict=True):
        out[i] = y
    return out


def _threshold_lines(plot: _Plot, thresholds: Sequence[Threshold]) -> list[str]:
    """Each threshold's line across the plot and its label in the right margin, beside the line's end:
    outside the plot, so no label covers the curve, and spread apart so two close thresholds stay readable."""
    shown = [t for t in thresholds if plot.y_lo <= t.value <= plot.y_hi]
    ys = [plot.sy(t.value) for t in shown]
    lines = [label_lines(t.label) for t in shown]
    heights = [LABEL_LINE_H * len(ls) for ls in lines]
    tops = spread([y - LABEL_LINE_H / 2 for y in ys], heights, lo=plot.top - LABEL_LINE_H / 2,
                  hi=plot.bottom + LABEL_LINE_H / 2)
    out = []
    x = _f(plot.right + 5)
    for t, y, top, ls in zip(shown, ys, tops, lines, strict=True):
        out.append(f'<line class="threshold th-{escape(t.css)}" x1="{plot.left}" x2="{plot.right}" '
                   f'y1="{_f(y)}" y2="{_f(y)}"/>')
        spans = "".join(f'<tspan x="{x}" dy="{_f(LABEL_LINE_H) if k else 0}">{escape(line)}</tspan>'
                        for k, line in enumerate(ls))
        out.append(f'<text class="th-label th-{escape(t.css)}" x="{x}" y="{_f(top + LABEL_LINE_H - 3)}" '
                   f'text-anchor="start" data-lines="{len(ls)}">{spans}</text>')
    return out


def _legend(series: Sequence[Series], left: float) -> list[str]:
    out, lx = [], left
    for s in series:
        out.append(f'<g class="legend"><rect class="sw {escape(s.css)}" x="{lx}" y="9" width="12" height="12" '
                   f'rx="3"/><text x="{lx + 17}" y="19">{escape(s.name)}</text></g>')
        lx += 30 + 7 * len(s.name)
    return out


def _series_marks(plot: _Plot, s: Series, unit: str) -> list[str]:
    """A polyline per run of finite points (a gap breaks the line) and a dot with a tooltip per point."""
    out = []
    segments: list[list[tuple[float, float]]] = [[]]
    for x, y in s.points:
        if y is None or not math.isfinite(y):
            if segments[-1]:
                segments.append([])
            continue
        segments[-1].append((plot.sx(x), plot.sy(y)))
    for seg in segments:
        if len(seg) > 1:
            d = " ".join(f"{_f(x)},{_f(y)}" for x, y in seg)
            out.append(f'<polyline class="line {escape(s.css)}" points="{d}"/>')
    r = 3 if len(s.points) <= 60 else 2
    for x, y in s.points:
        if y is None or not math.isfinite(y):
            continue
        label = f"{s.name}: {format_number(y)}{(' ' + unit) if unit else ''} at " \
                f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(x))}"
        out.append(f'<circle class="pt {escape(s.css)}" cx="{_f(plot.sx(x))}" cy="{_f(plot.sy(y))}" r="{r}">'
                   f'<title>{escape(label)}</title></circle>')
    return out


def donut(slices: Sequence[Slice], *, kind: str, title: str, center: str, caption: str = "",
          size: int = 180) -> Markup:
    """A ring of slices with a big number in the middle (e.g. devices online / offline)."""
    total = sum(s.value for s in slices)
    r, stroke = size / 2 - 14, 22
    c = size / 2
    circ = 2 * math.pi * r
    out = [f'<svg class="chart chart-donut" data-chart="{escape(kind)}" data-points="{len(slices)}" '
           f'viewBox="0 0 {size} {size}" role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>',
           f'<circle class="ring" cx="{c}" cy="{c}" r="{_f(r)}" stroke-width="{stroke}" fill="none"/>']
    offset = 0.0
    for s in slices:
        if total <= 0 or s.value <= 0:
            continue
        length = circ * s.value / total
        gap = 2.0 if len(slices) > 1 and s.value != total else 0.0
        out.append(f'<circle class="arc {escape(s.css)}" cx="{c}" cy="{c}" r="{_f(r)}" fill="none" '
                   f'stroke-width="{stroke}" stroke-dasharray="{_f(max(0.0, length - gap))} {_f(circ)}" '
                   f'stroke-dashoffset="{_f(-offset)}" transform="rotate(-90 {c} {c})">'
                   f'<title>{escape(s.label)}: {escape(format_number(s.value))}</title></circle>')
        offset += length
    out.append(f'<text class="donut-value" x="{c}" y="{c + 6}" text-anchor="middle">{escape(center)}</text>')
    if caption:
        out.append(f'<text class="donut-caption" x="{c}" y="{c + 26}" text-anchor="middle">{escape(caption)}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def bar_chart(bars: Sequence[Bar], *, kind: str, title: str, width: int = 640, height: int = 220,
              empty_text: str = "no predictions yet", show_share: bool = True, percent_labels: bool = False
              ) -> Markup:
    """Vertical bars with value labels; with ``reference`` shares, a marker shows the expected share.

    Bar heights are shares of the total (``show_share``) or raw values; ``percent_labels``
    writes shares instead of values above the bars."""
    if not bars or sum(b.value for b in bars) <= 0:
        return _empty(width, height, empty_text, kind)
    left, right, top, bottom = 44, 12, 30, 42
    pw, ph = width - left - right, height - top - bottom
    total = sum(b.value for b in bars)
    shares = [b.value / total for b in bars]
    refs = [b.reference for b in bars if b.reference is not None]
    hi = max(shares + refs) if show_share else max(b.value for b in bars)
    yt = nice_ticks(0.0, hi * 1.1)
    y_hi = yt[-1]
    slot = pw / len(bars)
    bw = min(48.0, slot * 0.66)

    def sy(v: float) -> float:
        return top + ph - v / y_hi * ph

    out = [f'<svg class="chart chart-bars" data-chart="{escape(kind)}" data-points="{len(bars)}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>']
    for v in yt:
        y = sy(v)
        text = f"{v * 100:.0f}%" if show_share else format_number(v)
        out.append(f'<line class="grid" x1="{left}" x2="{left + pw}" y1="{_f(y)}" y2="{_f(y)}"/>'
                   f'<text class="tick" x="{left - 6}" y="{_f(y + 4)}" text-anchor="end">{escape(text)}</text>')
    if refs:
        out.append(f'<g class="legend"><rect class="sw s1" x="{left}" y="8" width="12" height="12" rx="3"/>'
                   f'<text x="{left + 17}" y="18">live</text>'
                   f'<rect class="sw ref" x="{left + 60}" y="13" width="16" height="3"/>'
                   f'<text x="{left + 82}" y="18">reference profile</text></g>')
    label_every = max(1, math.ceil(len(bars) / (pw / 34)))
    for i, (b, share) in enumerate(zip(bars, shares, strict=True)):
        x = left + i * slot + (slot - bw) / 2
        v = share if show_share else b.value
        y = sy(v)
        tip = f"{b.label}: {format_number(b.value)} ({share * 100:.1f}%)"
        if b.reference is not None:
            tip += f", reference {b.reference * 100:.1f}%"
        out.append(f'<rect class="bar s1" x="{_f(x)}" y="{_f(y)}" width="{_f(bw)}" height="{_f(top + ph - y)}" '
                   f'rx="3"><title>{escape(tip)}</title></rect>')
        if bw >= 22:
            text = f"{share * 100:.0f}%" if percent_labels else format_number(b.value)
            out.append(f'<text class="bar-value" x="{_f(x + bw / 2)}" y="{_f(y - 5)}" text-anchor="middle">'
                       f'{escape(text)}</text>')
        if b.reference is not None:
            ry = sy(b.reference)
            out.append(f'<line class="ref-mark" x1="{_f(x - 4)}" x2="{_f(x + bw + 4)}" y1="{_f(ry)}" y2="{_f(ry)}"/>')
        if i % label_every == 0:
            label = b.label if len(b.label) <= 12 else b.label[:11] + "…"
            out.append(f'<text class="tick bar-label" x="{_f(x + bw / 2)}" y="{top + ph + 16}" '
                       f'text-anchor="middle">{escape(label)}</text>')
    out.append(f'<line class="axis" x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}"/></svg>')
    return Markup("".join(out))


def stacked_bar(slices: Sequence[Slice], *, kind: str, title: str, width: int = 320, height: int = 14) -> Markup:
    """One thin horizontal bar split by count (e.g. a deployment's targets per state)."""
    total = sum(s.value for s in slices)
    out = [f'<svg class="chart chart-stack" data-chart="{escape(kind)}" data-points="{len(slices)}" '
           f'viewBox="0 0 {width} {height}" preserveAspectRatio="none" role="img" aria-label="{escape(title)}">'
           f'<title>{escape(title)}</title><rect class="track" x="0" y="0" width="{width}" height="{height}" rx="4"/>']
    x = 0.0
    for s in slices:
        if total <= 0 or s.value <= 0:
            continue
        w = width * s.value / total
        out.append(f'<rect class="seg {escape(s.css)}" x="{_f(x)}" y="0" width="{_f(w)}" height="{height}">'
                   f'<title>{escape(s.label)}: {escape(format_number(s.value))}</title></rect>')
        x += w
    out.append("</svg>")
    return Markup("".join(out))


def hbars(slices: Sequence[Slice], *, kind: str, title: str, width: int = 420, row: int = 26) -> Markup:
    """Horizontal bars with labels on the left and counts on the right (e.g. devices per update state)."""
    items = [s for s in slices if s.value > 0]
    if not items:
        return _empty(width, 80, "nothing to show", kind)
    # ~6.5 px per character of the 11 px tick font, so long labels (bundle names) are not clipped
    label_w, value_w = min(width // 2, max(110, int(6.5 * max(len(s.label) for s in items)) + 12)), 40
    pw = width - label_w - value_w
    hi = max(s.value for s in items)
    height = row * len(items) + 8
    out = [f'<svg class="chart chart-hbars" data-chart="{escape(kind)}" data-points="{len(items)}" '
           f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="{escape(title)}"><title>{escape(title)}</title>']
    for i, s in enumerate(items):
        y = 4 + i * row
        w = max(2.0, pw * s.value / hi)
        out.append(f'<text class="tick hb-label" x="{label_w - 8}" y="{y + row / 2 + 4}" text-anchor="end">'
                   f'{escape(s.label)}</text>'
                   f'<rect class="bar {escape(s.css)}" x="{label_w}" y="{y + 4}" width="{_f(w)}" '
                   f'height="{row - 8}" rx="3">'
                   f'<title>{escape(s.label)}: {escape(format_number(s.value))}</title></rect>'
                   f'<text class="bar-value" x="{_f(label_w + w + 6)}" y="{y + row / 2 + 4}">'
                   f'{escape(format_number(s.value))}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def sparkline(values: Sequence[float | None], *, kind: str, title: str, width: int = 120, height: int = 28,
              css: str = "s1") -> Markup:
    """A tiny line without axes for table cells."""
    pts = [(i, v) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if len(pts) < 2:
        return Markup("")
    lo, hi = min(v for _, v in pts), max(v for _, v in pts)
    hi = hi if hi > lo else lo + 1
    n = max(1, len(values) - 1)
    d = " ".join(f"{_f(2 + i / n * (width - 4))},{_f(height - 3 - (v - lo) / (hi - lo) * (height - 6))}"
                 for i, v in pts)
    return Markup(f'<svg class="chart chart-spark" data-chart="{escape(kind)}" data-points="{len(pts)}" '
                  f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}"><title>{escape(title)}'
                  f'</title><polyline class="line {escape(css)}" points="{d}"/></svg>')


@dataclass
class Group:
    """One set of bars of a grouped bar chart, a value per label (e.g. a cohort's predictions per class)."""

    name: str
    values: Sequence[Number]
    css: str = "s1"


def grouped_bar_chart(labels: Sequence[str], groups: Sequence[Group], *, kind: str, title: str, width: int = 640,
                      height: int = 220, empty_text: str = "no predictions yet") -> Markup:
    """Bars side by side per label, one per group, each as its share of the group's total, so two
    distributions of different sizes compare directly (e.g. canary against control predictions)."""
    totals = [sum(g.values) for g in groups]
    if not labels or not any(t > 0 for t in totals):
        return _empty(width, height, empty_text, kind)
    left, right, top, bottom = 44, 12, 30, 42
    pw, ph = width - left - right, height - top - bottom
    shares = [[v / t if t > 0 else 0.0 for v in g.values] for g, t in zip(groups, totals, strict=True)]
    yt = nice_ticks(0.0, max(max(s) for s in shares) * 1.1)
    y_hi = yt[-1]
    slot = pw / len(labels)
    bw = min(32.0, slot * 0.8 / len(groups))

    def sy(v: float) -> float:
        return top + ph - v / y_hi * ph

    drawn = {(i, j) for i in range(len(labels)) for j, t in enumerate(totals) if t > 0}
    out = [f'<svg class="chart chart-bars chart-grouped" data-chart="{escape(kind)}" data-points="{len(drawn)}" '
           f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>']
    for v in yt:
        y = sy(v)
        out.append(f'<line class="grid" x1="{left}" x2="{left + pw}" y1="{_f(y)}" y2="{_f(y)}"/>'
                   f'<text class="tick" x="{left - 6}" y="{_f(y + 4)}" text-anchor="end">{v * 100:.0f}%</text>')
    out += _legend([Series(g.name, [], g.css) for g in groups], left)
    label_every = max(1, math.ceil(len(labels) / (pw / 34)))
    for i, label in enumerate(labels):
        x0 = left + i * slot + (slot - bw * len(groups)) / 2
        for j, g in enumerate(groups):
            if (i, j) not in drawn:
                continue
            x, y = x0 + j * bw, sy(shares[j][i])
            tip = f"{g.name} · {label}: {format_number(g.values[i])} ({shares[j][i] * 100:.1f}%)"
            out.append(f'<rect class="bar {escape(g.css)}" data-group="{escape(g.name)}" x="{_f(x + 1)}" '
                       f'y="{_f(y)}" width="{_f(max(1.0, bw - 2))}" height="{_f(top + ph - y)}" rx="2">'
                       f'<title>{escape(tip)}</title></rect>')
        if i % label_every == 0:
            text = label if len(label) <= 12 else label[:11] + "…"
            out.append(f'<text class="tick bar-label" x="{_f(left + i * slot + slot / 2)}" y="{top + ph + 16}" '
                       f'text-anchor="middle">{escape(text)}</text>')
    out.append(f'<line class="axis" x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}"/></svg>')
    return Markup("".join(out))
