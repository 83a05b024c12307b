"""The ``feedback`` of a telemetry window on the wire: strict integers and consistent counts (cells
sum to ``labelled``, the diagonal to ``correct``), or the whole window is refused."""

from __future__ import annotations

import json

import pytest

from edgefleet.protocol.messages import MAX_CONFUSION_CELLS, Feedback, MessageError, TelemetryWindow, decode, encode


def window(**feedback) -> bytes:
    return json.dumps({"schema_version": 1, "type": "telemetry", "device_id": "d1", "window_seq": 1,
                       "window_start": 0.0, "window_end": 1.0, "latency_ms": {"bounds": [1.0], "counts": [0, 0]},
                       "feedback": feedback}).encode()


def square(n: int) -> dict[str, dict[str, int]]:
    return {f"t{i}": {f"p{j}": 1 for j in range(n)} for i in range(n)}


@pytest.mark.parametrize(("feedback", "problem"), [
    ({"labelled": 3, "correct": 4}, "exceeds labelled"),
    ({"labelled": 3, "correct": 2, "confusion": {"a": {"a": 2}}}, "sum to 2"),
    ({"labelled": 3, "correct": 2, "confusion": {"a": {"a": 1, "b": 2}}}, "diagonal sums to 1"),
    ({"labelled": 0, "correct": 0, "confusion": {"a": {"a": 1}}}, "sum to 1"),
    ({"labelled": "3", "correct": 2}, "labelled"),           # "3" is not 3
    ({"labelled": 3.0, "correct": 2}, "labelled"),
    ({"labelled": True, "correct": 0}, "labelled"),
    ({"labelled": 3, "correct": -1}, "correct"),
    ({"labelled": 2, "correct": 1, "confusion": {"a": {"a": 1, "b": 0}}}, "confusion"),   # only non-zero cells
    ({"labelled": 2, "correct": 1, "confusion": {"a": {"a": "1", "b": 1}}}, "confusion"),
    ({"labelled": 2, "correct": 2, "confusion": {"x" * 65: {"x" * 65: 2}}}, "confusion"),
    ({"labelled": 21 * 21, "correct": 0, "confusion": square(21)}, f"at most {MAX_CONFUSION_CELLS}"),
    ({"correct": 0}, "labelled"),
])
def test_windows_with_inconsistent_feedback_are_refused(feedback, problem):
    with pytest.raises(MessageError, match=problem) as info:
        decode("telemetry", window(**feedback))
    assert info.value.where.startswith("telemetry.feedback")


def test_feedback_round_trips_in_a_window():
    msg = decode("telemetry", window(labelled=3, correct=2, confusion={"a": {"a": 2, "b": 1}}))
    assert isinstance(msg, TelemetryWindow) and msg.feedback == Feedback(labelled=3, correct=2,
                                                                        confusion={"a": {"a": 2, "b": 1}})
    assert decode("telemetry", encode(msg)).feedback.accuracy == pytest.approx(2 / 3)


def test_counts_without_a_table_and_an_empty_count_are_accepted():
    big = decode("telemetry", window(labelled=10_000, correct=9_000)).feedback   # past the cell limit: no table
    assert big is not None and big.confusion == {} and big.accuracy == pytest.approx(0.9)
    none = decode("telemetry", window(labelled=0, correct=0)).feedback
    assert none is not None and none.accuracy is None
    assert decode("telemetry", window(labelled=400, correct=0, confusion=square(20))).feedback.labelled == 400


def test_a_window_without_feedback_and_unknown_fields_inside_it_survive():
    payload = json.loads(window(labelled=1, correct=1, confusion={"a": {"a": 1}}, top_k=[1]))
    msg = decode("telemetry", json.dumps(payload).encode())
    assert json.loads(encode(msg))["feedback"]["top_k"] == [1]
    del payload["feedback"]
    assert decode("telemetry", json.dumps(payload).encode()).feedback is None
