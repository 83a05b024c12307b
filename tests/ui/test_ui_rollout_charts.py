"""The rollout pages' charts without a browser: grouped bars, the canary and its limit per
telemetry window, the judged limit once the control cohort has moved on, and the evidence line."""

from __future__ import annotations

import math

import pytest

from edgefleet.cloud.services.rollouts.gates import WindowSample
from edgefleet.cloud.services.rollouts.policy import Gates
from edgefleet.cloud.ui import charts
from edgefleet.cloud.ui.rollouts import (
    LEFT_COHORT,
    evidence_text,
    label_order,
    per_window,
    predictions_chart,
    runtime_chart,
    window_length,
)

from .test_ui_charts import SVG, parse


def sample(device: str, end: float, *, canary: bool, p95: float | None = 2.0, errors: int = 0, requests: int = 100,
           psi: float | None = 0.02, predictions: dict[str, int] | None = None) -> WindowSample:
    return WindowSample(device_id=device, canary=canary, window_end=end, requests=requests, errors=errors,
                        p95_ms=p95, psi=psi, predictions=predictions or {})


def rects(svg, group: str) -> list:
    return [r for r in svg.findall(f".//{SVG}rect") if r.get("data-group") == group]


def test_grouped_bars_compare_shares_side_by_side():
    svg = parse(charts.grouped_bar_chart(["cat", "dog"], [charts.Group("canary", [10, 30], "s2"),
                                                          charts.Group("control", [100, 100], "s1")],
                                         kind="p", title="t"))
    canary, control = rects(svg, "canary"), rects(svg, "control")
    assert len(canary) == len(control) == 2 and svg.get("data-points") == "4"
    heights = [float(r.get("height")) for r in canary + control]
    assert heights[1] == pytest.approx(3 * heights[0], rel=0.02)       # 25% and 75% of the canary's total
    assert heights[2] == pytest.approx(heights[3])                     # 50% and 50%
    assert heights[2] == pytest.approx(2 * heights[0], rel=0.02)       # shares, not counts: 50% is twice 25%
    assert float(canary[0].get("x")) < float(control[0].get("x")) < float(canary[1].get("x"))   # side by side


def test_grouped_bars_skip_an_empty_group_and_say_when_nothing_is_there():
    svg = parse(charts.grouped_bar_chart(["a", "b"], [charts.Group("canary", [1, 1]), charts.Group("control", [0, 0])],
                                         kind="p", title="t"))
    assert len(rects(svg, "canary")) == 2 and rects(svg, "control") == []
    assert "control" in "".join(svg.itertext())                       # still in the legend
    assert "chart-empty" in charts.grouped_bar_chart(["a"], [charts.Group("x", [0])], kind="p", title="t")
    assert "chart-empty" in charts.grouped_bar_chart([], [charts.Group("x", [])], kind="p", title="t")


def test_grouped_bars_escape_their_text():
    evil = '<script>alert("x")</script>'
    out = charts.grouped_bar_chart([evil], [charts.Group(evil, [1])], kind=evil, title=evil)
    assert "<script>" not in str(out)
    parse(out)


def test_window_length_is_the_median_step_of_a_device():
    assert window_length([sample("a", t, canary=True) for t in (0, 60, 120, 300)]) == 60
    assert window_length([sample("a", 0, canary=True), sample("b", 7, canary=False)]) == 60   # one window each
    assert window_length([sample("a", t, canary=True) for t in (0, 10, 20)]
                         + [sample("b", t, canary=False) for t in (3, 13, 23)]) == 10


def test_per_window_gives_the_canary_mean_and_the_limit_of_each_window():
    samples = [sample("c", 100.0 + 60 * i, canary=True, p95=3.0 + i) for i in range(3)]
    samples += [sample(d, 95.0 + 60 * i + k, canary=False, p95=2.0 + k) for i in range(3)
                for k, d in enumerate(("x", "y"))]                     # control windows end a few s earlier
    canary, limit = per_window(samples, lambda s: s.p95_ms, ratio=1.5, margin=1.0)
    assert [v for _, v in canary] == [3.0, 4.0, 5.0]
    assert [v for _, v in limit] == [pytest.approx(1.5 * 2.5 + 1.0)] * 3   # ratio x mean(2, 3) + margin
    assert [t for t, _ in canary] == [t for t, _ in limit] == sorted({t for t, _ in canary})


def test_per_window_leaves_gaps_where_an_arm_has_no_value():
    samples = [sample("c", 60.0, canary=True, p95=None), sample("c", 120.0, canary=True, p95=math.nan),
               sample("c", 180.0, canary=True, p95=4.0), sample("x", 60.0, canary=False, p95=2.0),
               sample("x", 120.0, canary=False, p95=2.0)]
    canary, limit = per_window(samples, lambda s: s.p95_ms, ratio=1.0, margin=0.0)
    assert canary == [(60.0, None), (120.0, None), (180.0, 4.0)]
    assert limit == [(60.0, 2.0), (120.0, 2.0), (180.0, None)]


def test_runtime_chart_draws_canary_and_limit_per_window():
    samples = [sample("c", 60.0 * i, canary=True, errors=0) for i in range(1, 6)]
    samples += [sample("x", 60.0 * i, canary=False, errors=1) for i in range(1, 6)]
    chart, note = runtime_chart("error_rate", samples, {}, Gates(), stage="canary")
    svg = parse(chart)
    assert [p.get("class") for p in svg.findall(f".//{SVG}polyline")] == ["line s2", "line lim"] and note == ""
    assert svg.get("data-points") == "10"

    def heights(css: str) -> set[float]:
        return {float(c.get("cy")) for c in svg.findall(f".//{SVG}circle") if c.get("class") == f"pt {css}"}

    canary, limit = heights("s2"), heights("lim")
    assert len(canary) == len(limit) == 1 and canary.pop() > limit.pop()   # 0 lies below 2 x 0.01 + 0.01
    assert "limit: 2 × control + 0.01" in "".join(svg.itertext())            # the policy's default limit


def test_runtime_chart_without_control_windows_draws_the_judged_limit():
    samples = [sample("c", 60.0 * i, canary=True, errors=30) for i in range(1, 6)]
    evidence = {"ratio": 2.0, "margin": 0.01, "canary_mean": 0.3, "control_mean": 0.005}
    chart, note = runtime_chart("error_rate", samples, evidence, Gates(), stage="canary")
    svg = parse(chart)
    assert [p.get("class") for p in svg.findall(f".//{SVG}polyline")] == ["line s2"]
    thresholds = [line for line in svg.findall(f".//{SVG}line") if "threshold" in (line.get("class") or "")]
    assert len(thresholds) == 1 and note == LEFT_COHORT
    assert "= 0.02" in "".join(svg.itertext())                          # 2 x 0.005 + 0.01
    limit_y = float(thresholds[0].get("y1"))
    assert all(float(c.get("cy")) < limit_y for c in svg.findall(f".//{SVG}circle"))   # the canary is above it


def test_runtime_chart_without_windows_says_so():
    chart, note = runtime_chart("latency_p95", [], {}, Gates(), stage="canary")
    assert "no telemetry windows yet" in chart and note == ""


def test_predictions_chart_orders_labels_like_the_bundle_and_notes_a_missing_control():
    samples = [sample("c", 60.0, canary=True, predictions={"dog": 5, "cat": 5, "7": 1, "10": 1})]
    svg = parse(predictions_chart(samples + [sample("x", 60.0, canary=False, predictions={"cat": 4})], {},
                                  ["cat", "dog"], stage="canary")[0])
    labels = [t.text for t in svg.findall(f".//{SVG}text") if "bar-label" in (t.get("class") or "")]
    assert labels == ["cat", "dog", "7", "10"]
    assert len(rects(svg, "control")) == 4
    _, note = predictions_chart(samples, {"control_predictions": 900}, [], stage="canary")
    assert "900 control predictions" in note
    assert label_order(["b", "2", "a", "10"], ["a"]) == ["a", "2", "10", "b"]


@pytest.mark.parametrize(("gate", "evidence", "expected"), [
    ("install", {"executed": 4, "failed": 1, "failed_percent": 25.0, "limit_percent": 10.0},
     "4 executed, 1 failed (25%); at most 10% may fail"),
    ("predictions", {"canary_predictions": 300, "control_predictions": 900, "js": 0.0421, "limit": 0.1},
     "300 canary and 900 control predictions; Jensen-Shannon 0.042 (limit 0.1)"),
    ("latency_p95", {"canary_windows": 12, "control_windows": 84, "canary_mean": 4.9, "control_mean": 4.5,
                     "ratio": 1.5, "margin": 1.0, "lower": -3.0, "upper": -2.5, "p_value": 0.001, "alpha": 0.05},
     "12 canary and 84 control windows; canary mean 4.9, limit 1.5 × control 4.5 + 1 = 7.75; canary − limit within "
     "[-3, -2.5] (95% confidence), p = 0.001"),
    ("error_rate", {"canary_windows": 2, "control_windows": 0, "ratio": 2.0, "margin": 0.01},
     "2 canary and 0 control windows"),
])
def test_evidence_in_one_line(gate, evidence, expected):
    assert evidence_text(gate, evidence) == expected
