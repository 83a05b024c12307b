"""Ground truth from the application: prediction ids, the feedback journal, labels counted per
window, and the local ``/v1/feedback`` endpoint (in process; tests/integration has the real agent)."""

from __future__ import annotations

import gc
import json
import weakref

import numpy as np
import pytest
from test_agent_server import call

from edgefleet.agent.feedback import FeedbackError, FeedbackJournal
from edgefleet.agent.inference import Predictor, Served, load_model
from edgefleet.agent.server import InferenceServer
from edgefleet.agent.stats import WindowStats
from edgefleet.protocol.bundle import bundle_digest, verify_bundle
from edgefleet.protocol.messages import MAX_LABEL_CHARS, Histogram, TelemetryWindow, decode, encode


class Clock:
    def __init__(self) -> None:
        self.t = 1_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def install(keys, clock):
    predictor = Predictor(clock=clock)

    def do(seed: int = 0, labels=("a", "b", "c")) -> Predictor:
        data = keys.bundle(seed=seed, build=seed + 1, **{"bundle": {"name": "tiny", "version": "1.0.0",
                                                                   "build": seed + 1, "runtime": "onnx",
                                                                   "labels": list(labels)}})
        predictor.activate(load_model(verify_bundle(data, trusted=keys.trusted_release), digest=bundle_digest(data),
                                      slot="a", window_start=clock()))
        return predictor
    return do


def journal_for(predictor: Predictor, clock, **kw) -> FeedbackJournal:
    journal = FeedbackJournal(predictor, window_s=kw.get("window_s", 60.0), max_samples=kw.get("max_samples", 100),
                              clock=clock)
    predictor.add_listener(journal.remember)
    return journal


X = np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)


def test_labels_are_counted_in_the_window_with_their_confusion_cells(install, clock):
    predictor = install()
    journal = journal_for(predictor, clock)
    p = predictor.predict({"x": X})
    predicted = p.outputs["probs"].argmax(axis=1)
    truth = [int(predicted[0]), int(predicted[1]), int((predicted[2] + 1) % 3), "abc"[int(predicted[3])]]
    accepted = journal.label(p.prediction_id, truth)
    assert (accepted.labelled, accepted.correct) == (4, 3)
    feedback = predictor.flush()[0][1].feedback
    assert feedback is not None and (feedback.labelled, feedback.correct) == (4, 3)
    names = "abc"
    wrong_true, wrong_pred = names[int((predicted[2] + 1) % 3)], names[int(predicted[2])]
    assert feedback.confusion[wrong_true][wrong_pred] >= 1
    assert sum(c for row in feedback.confusion.values() for c in row.values()) == 4
    assert predictor.flush()[0][1].feedback is None          # the next window starts empty


@pytest.mark.parametrize(("labels", "where"), [
    ([0, 1, 2], "labels"),              # three labels for four samples
    ([0, 1, 2, "3"], "labels[3]"),      # "3" is not 3
    ([0, 1, 2, 7], "labels[3]"),        # no class 7
    ([0, 1, 2, "zebra"], "labels[3]"),  # not one of the bundle's labels
    ([0, 1, 2, True], "labels[3]"),
    ("0123", "labels"),
])
def test_bad_labels_are_refused_and_change_nothing(install, clock, labels, where):
    predictor = install()
    journal = journal_for(predictor, clock)
    p = predictor.predict({"x": X})
    with pytest.raises(FeedbackError) as info:
        journal.label(p.prediction_id, labels)
    assert info.value.status == 400 and info.value.where == where
    assert journal.label(p.prediction_id, [0, 0, 0, 0]).labelled == 4   # still labellable once


def test_unknown_expired_twice_and_replaced_predictions(install, clock):
    predictor = install()
    journal = journal_for(predictor, clock, window_s=60)
    with pytest.raises(FeedbackError, match="no prediction") as info:
        journal.label("nope", [0])
    assert (info.value.status, info.value.code) == (404, "unknown_prediction")
    p = predictor.predict({"x": X})
    journal.label(p.prediction_id, [0, 0, 0, 0])
    with pytest.raises(FeedbackError) as info:
        journal.label(p.prediction_id, [0, 0, 0, 0])
    assert (info.value.status, info.value.code) == (409, "already_labelled")
    old = predictor.predict({"x": X})
    clock.t += 61
    with pytest.raises(FeedbackError) as info:
        journal.label(old.prediction_id, [0, 0, 0, 0])
    assert info.value.status == 404
    before = predictor.predict({"x": X})
    install(seed=1)                      # another bundle serves now
    with pytest.raises(FeedbackError) as info:
        journal.label(before.prediction_id, [0, 0, 0, 0])
    assert (info.value.status, info.value.code) == (410, "bundle_replaced")


def test_memory_is_bounded_oldest_first_out(install, clock):
    predictor = install()
    journal = journal_for(predictor, clock, max_samples=40)
    ids = [predictor.predict({"x": X}).prediction_id for _ in range(100)]   # 400 samples served
    assert journal.samples <= 40 and len(journal) == 10
    with pytest.raises(FeedbackError):
        journal.label(ids[0], [0, 0, 0, 0])
    assert journal.label(ids[-1], [0, 0, 0, 0]).labelled == 4


def test_a_failing_listener_never_fails_a_request_or_a_label(install, clock):
    predictor = install()
    journal = journal_for(predictor, clock)
    seen = []
    predictor.add_listener(lambda served: 1 / 0)
    journal.listeners += [lambda pid, labels: 1 / 0, lambda pid, labels: seen.append((pid, labels.tolist()))]
    p = predictor.predict({"x": X})
    assert journal.label(p.prediction_id, [2, 1, 0, 0]).labelled == 4
    assert seen == [(p.prediction_id, [2, 1, 0, 0])]


def test_the_endpoint_answers_with_ids_and_takes_labels(keys, install, clock):
    predictor = install()
    journal = journal_for(predictor, clock)
    server = InferenceServer(("127.0.0.1", 0), predictor, dict, max_request_bytes=1 << 20, feedback=journal)
    server.start()
    base = f"http://127.0.0.1:{server.address[1]}"
    try:
        status, _, body = call(base, "/v1/predict", json.dumps({"inputs": {"x": X.tolist()}}).encode())
        pid = json.loads(body)["prediction_id"]
        assert status == 200 and len(pid) == 32
        labelled = json.dumps({"prediction_id": pid, "labels": [0, 1, 2, 0]}).encode()
        status, _, body = call(base, "/v1/feedback", labelled)
        assert status == 200 and json.loads(body)["labelled"] == 4
        for payload, want in (({"prediction_id": pid, "labels": [0, 1, 2, 0]}, (409, "already_labelled")),
                              ({"prediction_id": "x" * 32, "labels": [0]}, (404, "unknown_prediction")),
                              ({"prediction_id": 5, "labels": [0]}, (400, "bad_input")),
                              ({"labels": [0]}, (400, "bad_input"))):
            status, _, body = call(base, "/v1/feedback", json.dumps(payload).encode())
            assert (status, json.loads(body)["error"]["code"]) == want
        status, _, body = call(base, "/v1/feedback", b"{not json")
        assert status == 400
    finally:
        server.stop()


def window_of(stats: WindowStats) -> TelemetryWindow:
    """The summary as the agent sends it, through encode and decode (so the wire rules hold)."""
    s = stats.flush(2.0)
    msg = TelemetryWindow(device_id="d1", window_seq=1, window_start=s.start, window_end=s.end,
                          latency_ms=Histogram(bounds=[1.0], counts=[0, 0]), feedback=s.feedback)
    decoded = decode("telemetry", encode(msg))
    assert isinstance(decoded, TelemetryWindow)
    return decoded


def test_window_stats_count_labels_into_cells_and_start_over_each_window():
    stats = WindowStats(profile=None, labels=["cat", "dog"], output_name=None, start=0.0)
    assert stats.label(np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 0])) == 3
    assert stats.label(np.array([5]), np.array([5])) == 1          # a class the bundle has no label for
    fb = window_of(stats).feedback
    assert fb is not None and (fb.labelled, fb.correct) == (6, 4)
    assert fb.confusion == {"cat": {"cat": 1, "dog": 1}, "dog": {"dog": 2, "cat": 1}, "5": {"5": 1}}
    assert window_of(stats).feedback is None                        # nothing labelled in the next window


def test_window_stats_past_the_cell_limit_keep_the_counts_and_cut_long_names():
    many = WindowStats(profile=None, labels=None, output_name=None, start=0.0)
    truth = np.repeat(np.arange(25), 25)
    predicted = np.tile(np.arange(25), 25)                          # 625 cells > MAX_CONFUSION_CELLS
    assert many.label(truth, predicted) == 25
    fb = window_of(many).feedback
    assert fb is not None and (fb.labelled, fb.correct, fb.confusion) == (625, 25, {})
    long = WindowStats(profile=None, labels=["x" * 100, "y" * 100], output_name=None, start=0.0)
    long.label(np.array([0, 1]), np.array([0, 0]))
    fb = window_of(long).feedback
    assert fb is not None and fb.confusion == {"x" * MAX_LABEL_CHARS: {"x" * MAX_LABEL_CHARS: 1},
                                               "y" * MAX_LABEL_CHARS: {"x" * MAX_LABEL_CHARS: 1}}


def test_the_journal_keeps_predicted_classes_not_the_request(install, clock):
    predictor = install()
    journal = FeedbackJournal(predictor, window_s=60.0, max_samples=100, clock=clock)
    inputs = np.zeros((2, 4), np.float32)
    served = Served("p1", clock(), predictor.model.installed.digest, {"x": inputs}, np.asarray([1, 0]))
    journal.remember(served)
    alive = weakref.ref(inputs)
    del served, inputs
    gc.collect()
    assert alive() is None                                   # a request's inputs are not held until labelled
    assert journal.label("p1", [1, 1]).correct == 1          # the classes it predicted (1, 0) were kept
