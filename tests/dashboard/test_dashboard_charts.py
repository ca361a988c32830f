"""The SVG charts: tick values, thinning and coordinates checked against values worked
out by hand; labels escaped; empty and broken data drawn as a message, not an error."""

from __future__ import annotations

import math
import re

import pytest

from selftrain.dashboard.charts import (MARGIN_BOTTOM, MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, Marker, Series,
                                        bar_chart, format_time, line_chart, nice_ticks, thin)


def polylines(svg: str) -> list[list[tuple[float, float]]]:
    return [[tuple(map(float, p.split(","))) for p in points.split()]
            for points in re.findall(r'<polyline points="([^"]*)"', svg)]


def test_nice_ticks_match_hand_computed_values():
    # range 0.83 -> nice 1.0; step nice(1.0 / 4 = 0.25, rounded) = 0.2; 0.83 rounds up to 1.0
    assert nice_ticks(0, 0.83) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    # range 94 -> nice 100; step nice(25, rounded) = 20; from floor(3 / 20) * 20 = 0 to 100
    assert nice_ticks(3, 97) == [0, 20, 40, 60, 80, 100]
    # one value, 5: a window 4.5..5.5 (±10%); step 0.2; from 4.4 (floor) to 5.6 (ceil)
    assert nice_ticks(5, 5) == [4.4, 4.6, 4.8, 5.0, 5.2, 5.4, 5.6]
    assert nice_ticks(97, 3) == nice_ticks(3, 97)
    with pytest.raises(ValueError):
        nice_ticks(0, math.inf)


def test_thin_keeps_ends_and_strides_evenly():
    assert thin(list(range(10)), 4) == [0, 3, 6, 9]  # stride (10 - 1) / 3 = 3
    assert thin([1, 2, 3], 10) == [1, 2, 3]


def test_line_chart_maps_data_to_the_plot_corners():
    svg = line_chart([Series("loss", [(0, 0.0), (10, 1.0)])], title="t", width=640, height=240)
    # plot 572 x 168 px inside the margins; y ticks 0..1, so (0, 0) is bottom left and (10, 1) top right
    assert polylines(svg) == [[(MARGIN_LEFT, 240 - MARGIN_BOTTOM), (640 - MARGIN_RIGHT, MARGIN_TOP)]]
    assert svg.count("<circle") == 2 and "loss: 1 at 10" in svg


def test_line_chart_skips_missing_values_and_thins_long_runs():
    svg = line_chart([Series("s", [(0, 1.0), (1, None), (2, float("nan")), (3, 2.0)])], title="t")
    assert [len(line) for line in polylines(svg)] == [2]
    long = line_chart([Series("loss", [(step, 1 / step) for step in range(1, 10_001)])], title="t", width=640)
    [line] = polylines(long)
    assert len(line) == 640 - MARGIN_LEFT - MARGIN_RIGHT and "<circle" not in long
    assert line[0][0] == MARGIN_LEFT and line[-1][0] == 640 - MARGIN_RIGHT  # first and last step kept


def test_labels_are_escaped_and_markers_drawn():
    svg = line_chart([Series("<script>alert(1)</script>", [(1, 1.0), (2, 2.0)])], title="a & b",
                     markers=[Marker(1.5, 'spike "x"')])
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "a &amp; b" in svg
    assert svg.count('class="marker"') == 1 and "spike &quot;x&quot;" in svg


def test_empty_data_says_so():
    for svg in (line_chart([], title="t"), line_chart([Series("s", [(1, None)])], title="t", empty="Nothing."),
                bar_chart([], [], title="t"), bar_chart(["a"], [("n", [None])], title="t")):
        assert "<polyline" not in svg and "<rect x=" not in svg and 'class="chart-empty"' in svg
    assert "Nothing." in line_chart([Series("s", [(1, None)])], title="t", empty="Nothing.")


def test_bar_heights_are_proportional_to_the_top_tick():
    svg = bar_chart(["mon", "tue"], [("interactions", [1, 3])], title="t", width=640, height=220)
    # ticks 0..3 (step 1), plot height 220 - 28 - 44 = 148 px: 3 -> 148 px, 1 -> 49.3 px
    heights = [float(h) for h in re.findall(r'<rect [^>]*height="([\d.]+)"[^>]*class="bar"', svg)]
    assert heights == [49.3, 148.0]
    assert "interactions, tue: 3" in svg


def test_time_labels_fit_the_span():
    assert format_time(0, 60) == "00:00:00"
    assert format_time(86400, 86400) == "01-02 00:00"
    assert format_time(86400, 30 * 86400) == "01-02"
    assert format_time(86400, 400 * 86400) == "1970-01-02"
