"""The benchmark's two charts, drawn on `specdec.bench.png.Canvas`.

- `speedup_chart`: grouped bars, one group per task (and overall), one bar per method, the AR
  baseline as a dashed line at 1.0, whiskers for the min-max range across runs;
- `histogram_chart`: one panel per method, the share of steps that accepted 0, 1, 2 ... draft
  tokens.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from specdec.bench.png import LINE_HEIGHT, Canvas, Color, text_width

PALETTE: tuple[Color, ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
BLACK: Color = (0, 0, 0)
INK: Color = (40, 40, 40)
GRID: Color = (225, 225, 225)
MUTED: Color = (110, 110, 110)


def color_of(index: int) -> Color:
    return PALETTE[index % len(PALETTE)]


def nice_step(span: float, max_ticks: int = 8) -> float:
    """A round tick step (1, 2, 2.5 or 5 times a power of ten) giving at most `max_ticks` ticks."""
    if span <= 0:
        return 1.0
    raw = span / max_ticks
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if factor * power >= raw:
            return factor * power
    return 10 * power


def _tick_label(value: float, step: float) -> str:
    """A tick value with as many decimals as the step needs (0.25 -> 2, 0.5 -> 1, 2 -> 0)."""
    decimals = 0
    while decimals < 6 and abs(step * 10 ** decimals - round(step * 10 ** decimals)) > 1e-9:
        decimals += 1
    return f"{value:.{decimals}f}"


def _legend(canvas: Canvas | None, entries: Sequence[tuple[str, Color | None]], left: int, top: int,
            width: int, scale: int = 2) -> int:
    """Lay out (and draw, when `canvas` is given) legend entries in rows; returns the bottom y.
    An entry without a colour is the dashed reference line."""
    x, y = left, top
    swatch = 6 * scale
    row_height = LINE_HEIGHT * scale
    for label, color in entries:
        mark = swatch if color is not None else 3 * swatch
        item = mark + 6 + text_width(label, scale) + 18
        if x > left and x + item > left + width:
            x, y = left, y + row_height
        if canvas is not None:
            if color is None:
                middle = y + scale + swatch // 2
                canvas.line(x, middle, x + mark, middle, BLACK, dash=4)
            else:
                canvas.rect(x, y + scale, x + swatch, y + scale + swatch, color)
            canvas.text(x + mark + 6, y, label, INK, scale)
        x += item
    return y + row_height


def speedup_chart(groups: Sequence[str], series: Sequence[tuple[str, Color]],
                  values: dict[tuple[int, int], tuple[float, float, float] | None],
                  path: str | Path, title: str, baseline: str) -> Path:
    """Grouped bars of speedup.

    :param groups: x-axis groups (tasks, then "overall").
    :param series: (method label, colour) per bar in a group.
    :param values: (group index, series index) -> (mean, min, max) across runs, or None.
    """
    scale = 2
    bar, gap = 30, 30
    group_width = max(len(series) * bar + gap, max((text_width(g, scale) for g in groups), default=0) + 16)
    left, right, plot_height = 70, 24, 340
    plot_width = max(len(groups), 1) * group_width
    width = max(left + plot_width + right, text_width(title, scale) + 40, 640)
    plot_width = width - left - right  # groups share any width the title or the minimum adds
    group_width = plot_width / max(len(groups), 1)
    entries = [*series, (f"{baseline} = 1.0", None)]
    legend_bottom = _legend(None, entries, left, 44, width - left - right)
    top = legend_bottom + 34
    height = top + plot_height + 56
    canvas = Canvas(width, height)
    canvas.text(width / 2, 12, title, BLACK, scale, align="center")
    _legend(canvas, entries, left, 44, width - left - right)

    highest = max([1.0] + [value[2] for value in values.values() if value])
    step = nice_step(highest * 1.15, 7)
    y_max = step * math.ceil(highest * 1.15 / step)
    bottom = top + plot_height

    def y_of(value: float) -> float:
        return bottom - value / y_max * plot_height

    tick = 0.0
    while tick <= y_max + 1e-9:
        y = round(y_of(tick))
        canvas.rect(left, y, left + plot_width, y + 1, GRID)
        canvas.text(left - 8, y - 7, _tick_label(tick, step), INK, scale, align="right")
        tick += step
    canvas.text(8, top - 26, "speedup (x)", MUTED, 1)

    for g, group in enumerate(groups):
        origin = left + g * group_width + (group_width - len(series) * bar) / 2
        for s, (_, color) in enumerate(series):
            value = values.get((g, s))
            if value is None:
                continue
            mean, low, high = value
            x0 = round(origin + s * bar) + 2
            x1 = round(origin + (s + 1) * bar) - 2
            canvas.rect(x0, y_of(mean), x1, bottom, color)
            label_y = y_of(mean)
            if high > low:
                centre = (x0 + x1) // 2
                canvas.rect(centre, y_of(high), centre + 1, y_of(low) + 1, BLACK)
                canvas.rect(centre - 4, y_of(high), centre + 5, y_of(high) + 1, BLACK)
                canvas.rect(centre - 4, y_of(low), centre + 5, y_of(low) + 1, BLACK)
                label_y = min(label_y, y_of(high))
            canvas.text((x0 + x1) / 2, label_y - 12, f"{mean:.2f}", INK, 1, align="center")
        canvas.text(left + g * group_width + group_width / 2, bottom + 12, group, INK, scale, align="center")

    reference = round(y_of(1.0))
    canvas.line(left, reference, left + plot_width, reference, BLACK, dash=6)
    canvas.rect(left, top, left + 1, bottom + 1, BLACK)
    canvas.rect(left, bottom, left + plot_width, bottom + 1, BLACK)
    return canvas.save(path)


def histogram_chart(panels: Sequence[tuple[str, Color, Sequence[int], float | None]],
                    path: str | Path, title: str) -> Path:
    """One panel per method: the share of steps that accepted n draft tokens, n = 0, 1, 2 ...

    :param panels: (method label, colour, histogram counts, mean accepted tokens or None).
    """
    scale = 2
    panel_width, panel_height = 420, 250
    columns = 1 if len(panels) <= 1 else 2
    rows = max(1, math.ceil(len(panels) / columns))
    width = max(columns * panel_width + 20, text_width(title, scale) + 40)
    height = 50 + rows * panel_height + 10
    canvas = Canvas(width, height)
    canvas.text(width / 2, 12, title, BLACK, scale, align="center")
    for index, (label, color, counts, mean_accepted) in enumerate(panels):
        x = 10 + (index % columns) * panel_width
        y = 50 + (index // columns) * panel_height
        _histogram_panel(canvas, x, y, panel_width, panel_height, label, color, counts, mean_accepted)
    return canvas.save(path)


def _histogram_panel(canvas: Canvas, x: int, y: int, width: int, height: int, label: str, color: Color,
                     counts: Sequence[int], mean_accepted: float | None) -> None:
    total = sum(counts)
    canvas.text(x + 50, y, label, BLACK, 2)
    detail = f"{total} steps"
    if mean_accepted is not None:
        detail += f", mean accepted tokens {mean_accepted:.2f}"
    canvas.text(x + 50, y + 22, detail, MUTED, 1)
    left, top = x + 50, y + 44
    plot_width, plot_height = width - 70, height - 44 - 44
    bottom = top + plot_height
    bins = max(len(counts), 2)
    shares = [count / total if total else 0.0 for count in counts]
    step = nice_step(max(shares + [0.05]) * 100, 5)
    y_max = step * math.ceil(max(shares + [0.05]) * 100 / step)
    tick = 0.0
    while tick <= y_max + 1e-9:
        ty = round(bottom - tick / y_max * plot_height)
        canvas.rect(left, ty, left + plot_width, ty + 1, GRID)
        canvas.text(left - 6, ty - 3, f"{tick:g}%", INK, 1, align="right")
        tick += step
    pitch = plot_width / bins
    every = max(1, math.ceil(bins * 14 / plot_width))  # keep bin labels from overlapping
    for n in range(bins):
        share = shares[n] if n < len(shares) else 0.0
        x0, x1 = left + n * pitch + max(1, pitch * 0.12), left + (n + 1) * pitch - max(1, pitch * 0.12)
        canvas.rect(x0, bottom - share * 100 / y_max * plot_height, x1, bottom, color)
        if n % every == 0:
            canvas.text((x0 + x1) / 2, bottom + 6, str(n), INK, 1, align="center")
    canvas.rect(left, top, left + 1, bottom + 1, BLACK)
    canvas.rect(left, bottom, left + plot_width, bottom + 1, BLACK)
    canvas.text(left + plot_width / 2, bottom + 20, "accepted draft tokens in a step", MUTED, 1, align="center")
