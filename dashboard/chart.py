"""The throughput chart as SVG geometry, computed here and drawn by a template: no chart library,
no script. Lines: jobs queued, succeeded and failed per minute over the last hour; each minute
has a hover title with its numbers."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

WIDTH, HEIGHT = 760, 200
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 12, 26
SERIES = (("in", "queued"), ("success", "succeeded"), ("failed", "failed"))


@dataclass
class Chart:
    width: int = WIDTH
    height: int = HEIGHT
    lines: list[dict[str, str]] = field(default_factory=list)
    x_ticks: list[dict[str, Any]] = field(default_factory=list)
    y_ticks: list[dict[str, Any]] = field(default_factory=list)
    columns: list[dict[str, Any]] = field(default_factory=list)
    total: dict[str, int] = field(default_factory=dict)
    plot: dict[str, float] = field(default_factory=dict)


def nice_ceiling(value: float) -> int:
    """1, 2, 5, 10, 20, 50... at or above value (at least 5, so an idle chart has a scale)."""
    value = max(value, 5)
    magnitude = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * magnitude >= value:
            return int(step * magnitude)
    return int(10 * magnitude)


def throughput_chart(series: list[dict[str, Any]], now: float | None = None) -> Chart:
    chart = Chart()
    if not series:
        return chart
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    chart.plot = {"x": LEFT, "y": TOP, "w": plot_w, "h": plot_h}
    top = nice_ceiling(max(max(row[key] for key, _ in SERIES) for row in series))
    step = plot_w / max(len(series) - 1, 1)

    def x(index: int) -> float:
        return round(LEFT + index * step, 1)

    def y(value: float) -> float:
        return round(TOP + plot_h - value / top * plot_h, 1)

    for key, label in SERIES:
        points = " ".join(f"{x(i)},{y(row[key])}" for i, row in enumerate(series))
        chart.lines.append({"key": key, "label": label, "points": points})
        chart.total[key] = sum(row[key] for row in series)
    for fraction in (0, 0.5, 1):
        chart.y_ticks.append({"y": y(top * fraction), "label": f"{top * fraction:g}"})
    now = time.time() if now is None else now
    count = len(series)
    for i in range(count - 1, -1, -10):
        minutes_ago = count - 1 - i
        chart.x_ticks.append({"x": x(i), "label": "now" if minutes_ago == 0 else f"-{minutes_ago}m"})
    for i, row in enumerate(series):
        stamp = time.strftime("%H:%M", time.gmtime(row["t"]))
        chart.columns.append({
            "x": round(x(i) - step / 2, 1), "w": round(step, 1),
            "title": f"{stamp} UTC: {row['in']} queued, {row['success']} succeeded, {row['failed']} failed, "
                     f"{row['other']} other",
        })
    return chart
