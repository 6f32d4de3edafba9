"""Server-side SVG charts of the console's history: no JavaScript chart library to ship, pin
or audit, and the page's CSP can forbid inline styles (only presentation attributes here)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT = 640, 220
#: plot area inside the chart (left, top, right, bottom margins)
_L, _T, _R, _B = 56, 14, 150, 28
#: status colours: present green, not found amber, null grey, expired red
STATUS_COLOURS = {
    "PRESENT": "#2e7d32",
    "NOT_FOUND": "#f9a825",
    "NULL_VALUE": "#9e9e9e",
    "OUTSIDE_MAX_AGE": "#c62828",
}
_LINE_COLOURS = ("#1565c0", "#6a1b9a", "#00838f", "#ef6c00", "#5d4037", "#ad1457", "#558b2f")


def _frame(title: str, body: list[str], legend: Sequence[tuple[str, str]]) -> str:
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
        *body,
    ]
    for i, (name, colour) in enumerate(legend):
        y = _T + 6 + i * 18
        x = WIDTH - _R + 12
        out.append(f'<rect x="{x}" y="{y}" width="12" height="12" fill="{colour}"/>')
        out.append(
            f'<text x="{x + 18}" y="{y + 10}" font-size="11" font-family="sans-serif" '
            f'fill="#222">{escape(name)}</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


def _axes(y_labels: Sequence[tuple[float, str]], t0: float | None, t1: float | None) -> list[str]:
    """Axes, horizontal grid lines at ``y_labels`` (fraction of the height, text) and the
    time span under the plot."""
    x0, x1, y0, y1 = _L, WIDTH - _R, _T, HEIGHT - _B
    out = [
        f'<line x1="{x0}" y1="{y1}" x2="{x1}" y2="{y1}" stroke="#444" stroke-width="1"/>',
        f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#444" stroke-width="1"/>',
    ]
    for frac, text in y_labels:
        y = y1 - frac * (y1 - y0)
        out.append(
            f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#e0e0e0" '
            'stroke-width="1"/>'
        )
        out.append(
            f'<text x="{x0 - 4}" y="{y + 4:.1f}" font-size="10" font-family="sans-serif" '
            f'text-anchor="end" fill="#444">{escape(text)}</text>'
        )
    if t0 is not None and t1 is not None:
        for x, t, anchor in ((x0, t0, "start"), (x1, t1, "end")):
            stamp = time.strftime("%H:%M:%S", time.gmtime(t))
            out.append(
                f'<text x="{x}" y="{HEIGHT - 8}" font-size="10" font-family="sans-serif" '
                f'text-anchor="{anchor}" fill="#444">{stamp} UTC</text>'
            )
    return out


def _empty(title: str, message: str) -> str:
    body = [
        f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" font-size="13" font-family="sans-serif" '
        f'text-anchor="middle" fill="#666">{escape(message)}</text>'
    ]
    return _frame(title, body, ())


def quality_chart(
    title: str, statuses: Sequence[str], series: Sequence[tuple[float, Sequence[int]]]
) -> str:
    """Share of each status per sample interval, as stacked columns (100 % = the values
    served in that interval); intervals without a value served are left blank."""
    if not any(sum(v) for _, v in series):
        return _empty(title, "no value of this view served in the kept history yet")
    x0, x1, y0, y1 = _L, WIDTH - _R, _T, HEIGHT - _B
    step = (x1 - x0) / max(len(series), 1)
    body = _axes(
        [(f, f"{int(f * 100)} %") for f in (0.0, 0.25, 0.5, 0.75, 1.0)],
        series[0][0],
        series[-1][0],
    )
    for i, (at, values) in enumerate(series):
        total = sum(values)
        if total == 0:
            continue
        y = float(y1)
        x = x0 + i * step
        for name, n in zip(statuses, values, strict=True):
            if n == 0:
                continue
            h = (y1 - y0) * n / total
            y -= h
            stamp = time.strftime("%H:%M:%S", time.gmtime(at))
            body.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(step - 1, 1):.1f}" height="{h:.1f}" '
                f'fill="{STATUS_COLOURS.get(name, "#000")}" data-status="{name}">'
                f"<title>{stamp}: {name} {n} of {total} ({100 * n / total:.1f} %)</title></rect>"
            )
    legend = [(s, STATUS_COLOURS.get(s, "#000")) for s in statuses]
    return _frame(title, body, legend)


def _nice_max(v: float) -> float:
    """The smallest of 1, 2, 2.5, 5, 10 times a power of ten at or above ``v``."""
    if v <= 0:
        return 1.0
    mag = 10.0 ** math.floor(math.log10(v))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if v <= m * mag * (1 + 1e-9))


def line_chart(
    title: str,
    unit: str,
    times: Sequence[float],
    lines: Sequence[tuple[str, Sequence[float | None]]],
) -> str:
    """Lines over the sample times (None: no value in that interval, a gap in the line)."""
    values = [v for _, ys in lines for v in ys if v is not None]
    if not times or not values:
        return _empty(title, "no request in the kept history yet")
    x0, x1, y0, y1 = _L, WIDTH - _R, _T, HEIGHT - _B
    top = _nice_max(max(values))
    body = _axes(
        [(f, f"{top * f:.3g} {unit}") for f in (0.0, 0.5, 1.0)],
        times[0],
        times[-1],
    )
    span = max(len(times) - 1, 1)
    legend = []
    for k, (name, ys) in enumerate(lines):
        colour = _LINE_COLOURS[k % len(_LINE_COLOURS)]
        legend.append((name, colour))
        segment: list[str] = []
        segments: list[list[str]] = [segment]
        for i, v in enumerate(ys):
            if v is None:
                segment = []
                segments.append(segment)
                continue
            x = x0 + (x1 - x0) * i / span
            y = y1 - (y1 - y0) * v / top
            segment.append(f"{x:.1f},{y:.1f}")
        for seg in segments:
            if len(seg) == 1:
                cx, cy = seg[0].split(",")
                body.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{colour}"/>')
            elif seg:
                body.append(
                    f'<polyline points="{" ".join(seg)}" fill="none" stroke="{colour}" '
                    f'stroke-width="2" data-series="{escape(name)}"/>'
                )
    return _frame(title, body, legend)
