"""Chart geometry for the status page: series in, plain dicts of SVG coordinates out.

The `chart` macro in templates/_charts.html draws these as inline SVG (no script, no inline
style: colours come from classes in style.css, so the strict CSP and dark mode both hold) and
puts the same numbers in a table under the picture, for screen readers and images-off reading.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from typing import Any, Sequence

WIDTH, HEIGHT = 640, 200
LEFT, RIGHT, TOP, BOTTOM = 52, 10, 10, 24  # room for the axis labels


def nice_max(value: float) -> float:
    """The smallest 1, 2 or 5 x 10^n at or above `value` (an axis top that reads well)."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return float(step * power)
    return float(10 * power)


def short(value: float) -> str:
    """An axis label: 1200 -> 1.2k, 3000000 -> 3M."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.1f}".rstrip("0").rstrip(".") + suffix
    return f"{value:.1f}".rstrip("0").rstrip(".") if not float(value).is_integer() else str(int(value))


def cell(value: Any) -> str:
    """A table cell: whole numbers with thousands separators, others to one decimal (the page's
    `number` filter), made here once rather than per cell in the template."""
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def moment(epoch: float) -> dict[str, Any]:
    """A time cell: the parts of the page's `when()` <time> element (UTC as the fallback text,
    the epoch for app.js to rewrite into local time), made here once as plain strings. The
    template puts them in the element's markup and escapes them: per cell, `when()` built on
    Markup.format was ~70% of the accounts page's render with its ~1,500 time cells."""
    at = datetime.fromtimestamp(float(epoch), timezone.utc)
    return {"iso": at.isoformat(timespec="seconds").replace("+00:00", "Z"), "epoch": str(int(epoch)),
            "text": at.strftime("%Y-%m-%d %H:%M UTC")}


def hour_label(start: float) -> str:
    return time.strftime("%H:%M", time.localtime(start))


def day_label(start: float) -> str:
    return time.strftime("%a %d", time.localtime(start))


def tick_values(top: float) -> list[float]:
    """Round axis steps up to `top` (a `nice_max`, or a whole number up to 10): 50 -> 0 10 20 30
    40 50, 20 -> 0 5 10 15 20, 3 -> 0 1 2 3."""
    if float(top).is_integer() and top <= 10 and top not in (1.0, 10.0):
        return [float(i) for i in range(int(top) + 1)]
    lead = round(top / 10 ** math.floor(math.log10(top)))
    steps = {1: 5, 2: 4, 5: 5}.get(lead, 4)
    return [top * i / steps for i in range(steps + 1)]


def _frame(chart_id: str, title: str, desc: str, top: float, unit: str) -> dict[str, Any]:
    x0, x1, y0, y1 = LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM
    ticks = [{"y": round(y1 - (y1 - y0) * v / top, 1), "label": short(v) + unit} for v in tick_values(top)]
    return {"id": chart_id, "title": title, "desc": desc, "width": WIDTH, "height": HEIGHT,
            "x0": x0, "x1": x1, "y0": y0, "y1": y1, "yticks": ticks, "xticks": [], "bars": [], "paths": [], "dots": [],
            "markers": [], "limits": [], "legend": []}


def bars(chart_id: str, title: str, labels: Sequence[str], stacks: Sequence[tuple[str, str, Sequence[float]]],
         limit: tuple[str, float] | None = None, unit: str = "", ticks: Sequence[str] | None = None, every: int = 1,
         extra: Sequence[tuple[str, Sequence[Any]]] = ()) -> dict[str, Any]:
    """Stacked bars, one per label; `stacks` is (name, css class, one value per label).
    `limit` (name, value) draws a dashed line (e.g. a key's daily tokens); `ticks` are shorter
    axis labels (every `every`-th shown); `extra` (name, values) are more table columns."""
    sums = [sum(values[i] for _, _, values in stacks) for i in range(len(labels))]
    top = nice_max(max(sums + [limit[1] if limit else 0, 1]))
    shown = ", ".join(f"{name} {short(sum(values))}{unit}" for name, _, values in stacks)
    chart = _frame(chart_id, title, f"{title}: {shown}" + (f"; {limit[0]} {short(limit[1])}{unit}" if limit else "") + ".", top, unit)
    x0, x1, y1 = chart["x0"], chart["x1"], chart["y1"]
    slot = (x1 - x0) / max(1, len(labels))
    scale = (y1 - chart["y0"]) / top
    for i, label in enumerate(labels):
        base = y1
        over = limit is not None and sums[i] > limit[1]  # drawn in the alarm colour, and said so
        for name, cls, values in stacks:
            height = values[i] * scale
            if values[i]:
                chart["bars"].append({"x": round(x0 + i * slot + slot * 0.15, 1), "y": round(base - height, 1),
                                      "w": round(slot * 0.7, 1), "h": round(max(height, 0.5), 1), "cls": "c-bad" if over else cls,
                                      "tip": f"{label}: {short(values[i])}{unit} {name}" + (f", over the {limit[0]}" if over else "")})
            base -= height
        if i % every == 0:
            chart["xticks"].append({"x": round(x0 + (i + 0.5) * slot, 1), "label": (ticks or labels)[i]})
    if limit:
        chart["limits"].append({"y": round(y1 - limit[1] * scale, 1), "label": f"{limit[0]} {short(limit[1])}{unit}"})
    chart["legend"] = [{"cls": cls, "label": name} for name, cls, _ in stacks] + ([{"cls": "limit", "label": limit[0]}] if limit else [])
    total = len(stacks) > 1
    head = ["When"] + [name for name, _, _ in stacks] + (["Total"] if total else []) + [name for name, _ in extra]
    rows = [[label] + [cell(values[i]) for _, _, values in stacks] + ([cell(sums[i])] if total else [])
            + [cell(values[i]) for _, values in extra] for i, label in enumerate(labels)]
    chart["table"] = {"head": head, "rows": rows}
    return chart


def lines(chart_id: str, title: str, start: float, end: float,
          series: Sequence[tuple[str, str, Sequence[tuple[float, float | None]]]], markers: Sequence[tuple[float, str, str]] = (),
          top: float = 100.0, unit: str = "%", ticks: int = 7) -> dict[str, Any]:
    """Lines over time from `start` to `end`: series are (name, css class, [(time, value)]);
    a value None breaks the line (a reset, or no data). `markers` are (time, css class, label)
    vertical ticks. The table lists every point of every series."""
    chart = _frame(chart_id, title, "", top, unit)
    x0, x1, y0, y1 = chart["x0"], chart["x1"], chart["y0"], chart["y1"]
    span = max(1.0, end - start)

    def x(t: float) -> float:
        return round(x0 + (x1 - x0) * (min(max(t, start), end) - start) / span, 1)

    def y(v: float) -> float:
        return round(y1 - (y1 - y0) * min(max(v, 0.0), top) / top, 1)

    rows: list[list[Any]] = []
    for name, cls, points in series:
        segments: list[list[tuple[float, float]]] = [[]]
        for t, v in points:
            if v is None or t < start or t > end:  # a break: the line stops here and starts again after
                if segments[-1]:
                    segments.append([])
                continue
            segments[-1].append((x(t), y(v)))
            rows.append([t, name, cell(v)])
        drawn = [seg for seg in segments if len(seg) > 1]
        if drawn:
            chart["paths"].append({"cls": cls, "d": " ".join("M" + " L".join(f"{px},{py}" for px, py in seg) for seg in drawn)})
        chart["dots"] += [{"cls": cls, "cx": seg[0][0], "cy": seg[0][1]} for seg in segments if len(seg) == 1]  # a lone point
    for t, cls, label in markers:
        if start <= t <= end:
            chart["markers"].append({"x": x(t), "cls": cls, "tip": label})
            rows.append([t, label, cell(None)])
    for i in range(ticks):
        t = start + span * i / max(1, ticks - 1)
        chart["xticks"].append({"x": x(t), "label": day_label(t) if span > 2 * 86400 else hour_label(t)})
    chart["legend"] = [{"cls": cls, "label": name} for name, cls, _ in series] + \
                      [{"cls": cls, "label": label} for cls, label in sorted({(cls, label) for _, cls, label in markers})]
    described = "; ".join(f"{name} {short(last)}{unit} at the latest point" for name, _, pts in series
                          if (last := next((v for _, v in reversed(pts) if v is not None), None)) is not None)
    chart["desc"] = f"{title}. {described or 'no data'}" + (f"; {len(chart['markers'])} resets marked" if chart["markers"] else "") + "."
    rows.sort(key=lambda r: r[0])
    formatted: dict[float, dict[str, Any]] = {}  # the 5h and 7d lines share their snapshot times
    for row in rows:
        row[0] = formatted.get(row[0]) or formatted.setdefault(row[0], moment(row[0]))
    chart["table"] = {"head": ["Time", "Series", "Value"], "rows": rows, "times": True}
    return chart
