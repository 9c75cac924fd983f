"""The benchmark's charts, drawn with matplotlib (Agg, no display needed).

- `speedup_chart`: grouped bars, one group per task (and overall), one bar per method, the AR
  baseline as a dashed line at 1.0, error bars for the min-max range when several runs differ;
- `histogram_chart`: one panel per method, the share of steps that accepted 0, 1, 2 ... draft
  tokens;
- `throughput_chart`: tokens/s against batch size, one line per pipeline, error bars for the
  min-max range when a (pipeline, batch size) point was measured several times.

Each chart is a `*_figure` function that builds a `matplotlib.figure.Figure` from plain numbers
(tests inspect it) and a `*_chart` function that saves it as a PNG; a new chart follows the same
pattern. Figures are made without `pyplot`, so no global state or backend switch leaks into the
process that imports this module.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

Color = tuple[int, int, int]

#: matplotlib's "tab10" colours, as RGB bytes: a method keeps its colour across charts.
PALETTE: tuple[Color, ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
DPI = 100


def color_of(index: int) -> Color:
    return PALETTE[index % len(PALETTE)]


def _rgb(color: Color) -> tuple[float, float, float]:
    return tuple(channel / 255 for channel in color)


def save(figure: Figure, path: str | Path) -> Path:
    """Write `figure` as a PNG (creating the folder) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(figure)
    figure.savefig(path, format="png", dpi=DPI)
    return path


def _spread(low: float, mean: float, high: float) -> tuple[float, float]:
    """Error-bar lengths below and above the mean."""
    return mean - low, high - mean


# -- speedup by task ------------------------------------------------------------------------------

def speedup_figure(groups: Sequence[str], series: Sequence[tuple[str, Color]],
                   values: dict[tuple[int, int], tuple[float, float, float] | None],
                   title: str, baseline: str) -> Figure:
    """Grouped bars of speedup.

    :param groups: x-axis groups (tasks, then "overall").
    :param series: (method label, colour) per bar in a group.
    :param values: (group index, series index) -> (mean, min, max) across runs, or None.
    """
    figure = Figure(figsize=(max(6.4, 1.2 + 0.5 * len(groups) * max(len(series), 1) + 0.4 * len(groups)), 4.8),
                    layout="constrained")
    axes = figure.add_subplot()
    width = 0.8 / max(len(series), 1)
    for s, (label, color) in enumerate(series):
        points = [(g, values[(g, s)]) for g in range(len(groups)) if values.get((g, s))]
        if not points:
            continue
        xs = [g - 0.4 + width * (s + 0.5) for g, _ in points]
        means = [mean for _, (mean, _, _) in points]
        axes.bar(xs, means, width * 0.9, label=label, color=_rgb(color))
        varied = [(x, value) for x, (_, value) in zip(xs, points) if value[2] > value[1]]
        if varied:
            below, above = zip(*(_spread(low, mean, high) for _, (mean, low, high) in varied))
            axes.errorbar([x for x, _ in varied], [value[0] for _, value in varied], yerr=[below, above],
                          fmt="none", ecolor="black", capsize=3, linewidth=1)
        for x, (_, (mean, _, high)) in zip(xs, points):  # above the error bar, not under it
            axes.annotate(f"{mean:.2f}", (x, max(mean, high)), xytext=(0, 2), textcoords="offset points",
                          ha="center", va="bottom", fontsize=7)
    axes.axhline(1.0, color="black", linestyle="--", linewidth=1, label=f"{baseline} = 1.0")
    axes.set_xticks(range(len(groups)), groups)
    axes.set_ylabel(f"speedup over {baseline} (x)")
    axes.set_ylim(0, max([1.0] + [value[2] for value in values.values() if value]) * 1.2)
    axes.grid(axis="y", color="0.9")
    axes.set_axisbelow(True)
    axes.set_title(title)
    axes.legend(loc="upper left", fontsize=8, ncols=min(4, len(series) + 1))
    return figure


def speedup_chart(groups: Sequence[str], series: Sequence[tuple[str, Color]],
                  values: dict[tuple[int, int], tuple[float, float, float] | None],
                  path: str | Path, title: str, baseline: str) -> Path:
    """`speedup_figure`, saved as a PNG at `path`."""
    return save(speedup_figure(groups, series, values, title, baseline), path)


# -- accepted lengths -----------------------------------------------------------------------------

def histogram_figure(panels: Sequence[tuple[str, Color, Sequence[int], float | None]], title: str) -> Figure:
    """One panel per method: the share of steps (%) that accepted n draft tokens, n = 0, 1, 2 ...

    :param panels: (method label, colour, histogram counts, mean accepted tokens or None).
    """
    columns = 1 if len(panels) <= 1 else 2
    rows = max(1, -(-len(panels) // columns))
    figure = Figure(figsize=(5.2 * columns, 3.2 * rows), layout="constrained")
    figure.suptitle(title)
    grid = figure.subplots(rows, columns, squeeze=False)
    for index, axes in enumerate(grid.flat):
        if index >= len(panels):
            axes.set_visible(False)
            continue
        label, color, counts, mean_accepted = panels[index]
        total = sum(counts)
        shares = [100 * count / total if total else 0.0 for count in counts]
        axes.bar(range(len(shares)), shares, 0.8, color=_rgb(color))
        detail = f"{total} steps" + (f", mean accepted tokens {mean_accepted:.2f}"
                                     if mean_accepted is not None else "")
        axes.set_title(f"{label}\n{detail}", fontsize=9)
        axes.set_xlabel("accepted draft tokens in a step")
        axes.set_ylabel("share of steps (%)")
        axes.set_xlim(-0.6, max(len(shares), 2) - 0.4)
        axes.xaxis.get_major_locator().set_params(integer=True)
        axes.grid(axis="y", color="0.9")
        axes.set_axisbelow(True)
    return figure


def histogram_chart(panels: Sequence[tuple[str, Color, Sequence[int], float | None]],
                    path: str | Path, title: str) -> Path:
    """`histogram_figure`, saved as a PNG at `path`."""
    return save(histogram_figure(panels, title), path)


# -- throughput by batch size ---------------------------------------------------------------------

def throughput_figure(points: Sequence[tuple[str, int, float]],
                      title: str = "Throughput by batch size") -> Figure:
    """Tokens/s against batch size, one line per pipeline (in order of first appearance).

    :param points: (pipeline name, batch size, tokens/s) per measurement; several measurements
        of one (pipeline, batch size) are drawn as their mean with a min-max error bar.
    """
    if not points:
        raise ValueError("throughput_figure needs at least one (pipeline, batch size, tokens/s) point")
    runs: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for pipeline, batch_size, tokens_per_second in points:
        if batch_size < 1 or tokens_per_second < 0:
            raise ValueError(f"bad point ({pipeline!r}, {batch_size}, {tokens_per_second}): batch sizes "
                             f"are >= 1 and tokens/s >= 0")
        runs[pipeline][int(batch_size)].append(float(tokens_per_second))
    figure = Figure(figsize=(6.4, 4.4), layout="constrained")
    axes = figure.add_subplot()
    for index, (pipeline, by_size) in enumerate(runs.items()):
        sizes = sorted(by_size)
        means = [sum(by_size[size]) / len(by_size[size]) for size in sizes]
        spreads = [_spread(min(by_size[size]), mean, max(by_size[size])) for size, mean in zip(sizes, means)]
        several = any(len(by_size[size]) > 1 for size in sizes)
        axes.errorbar(sizes, means, yerr=list(zip(*spreads)) if several else None, label=pipeline,
                      color=_rgb(color_of(index)), marker="o", capsize=3 if several else 0)
    all_sizes = sorted({size for by_size in runs.values() for size in by_size})
    axes.set_xscale("log", base=2)
    axes.set_xticks(all_sizes, [str(size) for size in all_sizes])
    axes.minorticks_off()
    axes.set_xlabel("batch size")
    axes.set_ylabel("tokens/s")
    axes.set_ylim(bottom=0)
    axes.grid(color="0.9")
    axes.set_title(title)
    axes.legend(fontsize=8)
    return figure


def throughput_chart(points: Sequence[tuple[str, int, float]], path: str | Path,
                     title: str = "Throughput by batch size") -> Path:
    """`throughput_figure`, saved as a PNG at `path`."""
    return save(throughput_figure(points, title), path)
