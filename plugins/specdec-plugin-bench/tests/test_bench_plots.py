"""The charts: what each figure shows (bars, error bars, lines), and valid PNGs in the method colours."""

import matplotlib.image
import pytest

from specdec_plugin_bench import plots


def colours_in(path):
    pixels = matplotlib.image.imread(path)[..., :3]  # [H, W, 3] floats in 0..1
    return {tuple(int(round(255 * channel)) for channel in pixel) for pixel in pixels.reshape(-1, 3)}


def error_bars(axes):
    return [container for container in axes.containers if type(container).__name__ == "ErrorbarContainer"]


def test_speedup_bars_have_error_bars_only_where_runs_differ(tmp_path):
    series = [("draft", plots.color_of(1)), ("hf-generate", plots.color_of(2))]
    values = {(0, 0): (1.5, 1.4, 1.6), (0, 1): (0.8, 0.8, 0.8), (1, 0): (1.2, 1.2, 1.2), (1, 1): None}
    figure = plots.speedup_figure(["QA", "Overall"], series, values, "Speedup", "ar")
    [axes] = figure.axes
    heights = sorted(round(patch.get_height(), 6) for patch in axes.patches)
    assert heights == [0.8, 1.2, 1.5]
    [bar_errors] = error_bars(axes)
    segments = bar_errors.lines[2][0].get_segments()
    assert [(round(s[0][1], 6), round(s[1][1], 6)) for s in segments] == [(1.4, 1.6)]
    assert [label.get_text() for label in axes.get_xticklabels()] == ["QA", "Overall"]
    assert "ar = 1.0" in [text.get_text() for text in axes.get_legend().get_texts()]
    path = plots.speedup_chart(["QA", "Overall"], series, values, tmp_path / "out" / "speedup.png", "Speedup", "ar")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {plots.color_of(1), plots.color_of(2)} <= colours_in(path)


def test_histograms_show_shares_per_method(tmp_path):
    panels = [("draft", plots.color_of(1), [3, 1, 0, 6], 2.4), ("hf-prompt-lookup", plots.color_of(3), [9, 1], 1.1),
              ("empty", plots.color_of(4), [], None)]
    figure = plots.histogram_figure(panels, "Accepted draft tokens per step")
    shown = [axes for axes in figure.axes if axes.get_visible()]
    assert len(shown) == 3
    assert [round(patch.get_height(), 6) for patch in shown[0].patches] == [30.0, 10.0, 0.0, 60.0]
    assert "mean accepted tokens 2.40" in shown[0].get_title()
    path = plots.histogram_chart(panels, tmp_path / "hist.png", "Accepted draft tokens per step")
    assert plots.color_of(3) in colours_in(path)


def test_throughput_has_one_line_per_pipeline_and_error_bars_for_repeated_runs(tmp_path):
    points = [("ar", 1, 20.0), ("ar", 4, 60.0), ("pld", 4, 90.0), ("pld", 1, 30.0), ("pld", 1, 34.0),
              ("ar", 2, 35.0)]
    figure = plots.throughput_figure(points)
    [axes] = figure.axes
    lines = {container.get_label(): container.lines[0] for container in error_bars(axes)}
    assert list(lines) == ["ar", "pld"]
    assert list(lines["ar"].get_xdata()) == [1, 2, 4] and list(lines["ar"].get_ydata()) == [20.0, 35.0, 60.0]
    assert list(lines["pld"].get_xdata()) == [1, 4] and list(lines["pld"].get_ydata()) == [32.0, 90.0]
    ar_bars, pld_bars = error_bars(axes)
    assert not ar_bars.has_yerr and pld_bars.has_yerr
    assert [(round(s[0][1], 6), round(s[1][1], 6)) for s in pld_bars.lines[2][0].get_segments()] == \
        [(30.0, 34.0), (90.0, 90.0)]
    assert axes.get_xlabel() == "batch size" and axes.get_ylabel() == "tokens/s"
    path = plots.throughput_chart(points, tmp_path / "throughput.png")
    assert plots.color_of(0) in colours_in(path) and plots.color_of(1) in colours_in(path)


@pytest.mark.parametrize("points", [[], [("ar", 0, 1.0)], [("ar", 1, -1.0)]])
def test_throughput_refuses_no_points_or_impossible_ones(points):
    with pytest.raises(ValueError):
        plots.throughput_figure(points)
