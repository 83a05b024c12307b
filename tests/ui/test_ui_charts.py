"""The SVG chart builders: geometry, gaps, empty states and escaping (no browser needed)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from edgefleet.cloud.ui import charts

SVG = "{http://www.w3.org/2000/svg}"


def parse(markup) -> ET.Element:
    return ET.fromstring(str(markup).replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1))


def test_line_chart_draws_one_point_per_value_and_breaks_lines_at_gaps():
    pts = [(1000.0 + 60 * i, float(i)) for i in range(10)]
    pts[4] = (pts[4][0], None)
    svg = parse(charts.line_chart([charts.Series("p50", pts, "s1")], kind="latency", title="t", unit="ms"))
    assert svg.get("data-points") == "9"
    assert len(svg.findall(f".//{SVG}circle")) == 9
    assert len(svg.findall(f".//{SVG}polyline")) == 2          # the gap splits the line


def test_line_chart_points_stay_inside_the_plot():
    pts = [(1000.0 + 60 * i, v) for i, v in enumerate([7.9, 2.0, 5.5, 0.3])]
    svg = parse(charts.line_chart([charts.Series("p95", pts)], kind="latency", title="t", height=240))
    ys = [float(c.get("cy")) for c in svg.findall(f".//{SVG}circle")]
    top = min(float(line.get("y1")) for line in svg.findall(f".//{SVG}line") if line.get("class") == "grid")
    bottom = max(float(line.get("y1")) for line in svg.findall(f".//{SVG}line") if line.get("class") == "grid")
    assert all(top <= y <= bottom for y in ys)


def test_thresholds_and_band():
    pts = [(1000.0 + 60 * i, 0.05 * i) for i in range(8)]
    svg = str(charts.line_chart([charts.Series("PSI", pts, "s3")], kind="drift", title="t",
                                thresholds=[charts.Threshold(0.1, "warn 0.1", "warn"),
                                            charts.Threshold(0.25, "alarm 0.25", "alarm", band=True)]))
    assert svg.count('class="threshold') == 2
    assert 'class="band band-alarm"' in svg


def test_empty_charts_say_so():
    assert "no telemetry yet" in charts.line_chart([charts.Series("p50", [])], kind="latency", title="t")
    assert "chart-empty" in charts.bar_chart([], kind="predictions", title="t")
    assert "chart-empty" in charts.hbars([charts.Slice("a", 0)], kind="states", title="t")


def test_text_is_escaped_everywhere():
    evil = '<script>alert("x")</script>'
    outputs = [
        charts.line_chart([charts.Series(evil, [(1.0, 1.0), (2.0, 2.0)])], kind=evil, title=evil, unit=evil,
                          thresholds=[charts.Threshold(1.5, evil)]),
        charts.bar_chart([charts.Bar(evil, 3, 0.5)], kind="p", title=evil),
        charts.donut([charts.Slice(evil, 1)], kind="d", title=evil, center=evil, caption=evil),
        charts.stacked_bar([charts.Slice(evil, 1)], kind="s", title=evil),
        charts.hbars([charts.Slice(evil, 1)], kind="h", title=evil),
        charts.sparkline([1, 2, 3], kind="k", title=evil),
    ]
    for out in outputs:
        assert "<script>" not in str(out)
        parse(out)                                            # still well-formed XML


def test_bar_chart_shares_and_reference_markers():
    svg = parse(charts.bar_chart([charts.Bar("cat", 10, 0.2), charts.Bar("dog", 30, 0.8)], kind="p", title="t",
                                 percent_labels=True))
    bars = [b for b in svg.findall(f".//{SVG}rect") if "bar" in (b.get("class") or "").split()]
    assert len(bars) == 2
    assert float(bars[1].get("height")) == 3 * float(bars[0].get("height"))
    assert len([m for m in svg.findall(f".//{SVG}line") if m.get("class") == "ref-mark"]) == 2
    assert "75%" in ET.tostring(svg, encoding="unicode")


def test_donut_arcs_add_up():
    svg = parse(charts.donut([charts.Slice("on", 3, "st-ok"), charts.Slice("off", 1, "st-idle")], kind="fleet",
                             title="t", center="3/4"))
    arcs = [c for c in svg.findall(f".//{SVG}circle") if "arc" in (c.get("class") or "")]
    assert len(arcs) == 2
    lengths = [float(a.get("stroke-dasharray").split()[0]) for a in arcs]
    assert abs(lengths[0] / lengths[1] - 3) < 0.2
    assert charts.donut([], kind="fleet", title="t", center="0/0").count('class="arc') == 0


def test_nice_ticks_cover_the_range():
    for lo, hi in [(0, 8.4), (0, 0.503), (0, 1), (0, 123456), (2, 2), (0, 0.003)]:
        ticks = charts.nice_ticks(lo, hi)
        assert ticks[0] <= lo and ticks[-1] >= hi and len(ticks) >= 2
        steps = {round(b - a, 9) for a, b in zip(ticks, ticks[1:], strict=False)}
        assert len(steps) == 1


def test_time_axis_labels_are_utc_clock_times():
    pts = [(1_800_000_000.0 + 60 * i, 1.0) for i in range(30)]
    svg = str(charts.line_chart([charts.Series("p50", pts)], kind="latency", title="t"))
    labels = re.findall(r'<text class="tick" x="[\d.]+" y="\d+" text-anchor="middle">([^<]+)</text>', svg)
    assert labels and all(re.fullmatch(r"\d\d:\d\d", label) for label in labels)
