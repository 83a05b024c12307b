"""Telemetry windows and aggregates: merged-histogram percentiles, drift, groupings."""

from __future__ import annotations

import pytest

from edgefleet.cloud.cli import devices as cli_devices
from edgefleet.cloud.cli import main as cli
from edgefleet.cloud.cli import telemetry as cli_telemetry
from edgefleet.cloud.services.telemetry import latest_drift_verdicts
from edgefleet.protocol.messages import Feedback, Histogram, InstalledBundle, TelemetryWindow
from edgefleet.protocol.messages import histogram_quantile as percentile

from cloudkit import ADMIN, CliClient


def test_percentile_interpolates_inside_bins():
    assert percentile([1.0, 2.0, 4.0], [0, 10, 0, 0], 0.5) == pytest.approx(1.5)
    assert percentile([1.0, 2.0, 4.0], [10, 0, 0, 0], 0.95) == pytest.approx(0.95)
    assert percentile([1.0, 2.0, 4.0], [0, 0, 0, 5], 0.5) == 4.0     # overflow bin -> last bound
    assert percentile([1.0], [0, 0], 0.5) is None


@pytest.fixture
def installed(make_bundle, upload, client):
    client.post("/api/v1/models", json={"name": "clf"})
    client.post("/api/v1/models/clf/versions", json={"version": "1"})
    built = make_bundle(name="clf")
    upload_body = client.post("/api/v1/bundles", content=built.data, params={"model": "clf", "model_version": "1"})
    assert upload_body.status_code == 201, upload_body.text
    return InstalledBundle(name="clf", version="1.0.0", build=1, digest=built.digest, runtime="onnx", slot="a")


def test_aggregates_by_bundle_device_tag_and_model_version(client, fleet, installed, clock):
    fleet.add("a")
    fleet.add("b")
    client.patch("/api/v1/devices/a", json={"tags": ["north"]})
    fleet.telemetry("a", 1, counts=(10, 0, 0, 0), bundle=installed)
    clock.advance(60)
    fleet.telemetry("a", 2, counts=(10, 0, 0, 0), bundle=installed)
    fleet.telemetry("b", 1, counts=(0, 0, 20, 0), psi=0.4, level="alarm", bundle=installed)
    by_bundle = client.get("/api/v1/telemetry/summary", params={"group_by": "bundle"}).json()
    agg = by_bundle[installed.digest]
    assert agg["windows"] == 3 and agg["devices"] == 2 and agg["requests"] == 30
    assert agg["latency_ms"]["counts"] == [20, 0, 20, 0]
    assert agg["latency_ms"]["p50"] == pytest.approx(1.0) and 2.0 < agg["latency_ms"]["p95"] <= 5.0
    assert agg["drift"]["psi_max"] == pytest.approx(0.4) and agg["drift"]["levels"] == {"ok": 2, "alarm": 1}
    by_device = client.get("/api/v1/telemetry/summary", params={"group_by": "device"}).json()
    assert by_device["b"]["drift"]["latest_level"] == "alarm" and by_device["a"]["drift"]["latest_level"] == "ok"
    by_tag = client.get("/api/v1/telemetry/summary", params={"group_by": "tag", "key": "north"}).json()
    assert list(by_tag) == ["north"] and by_tag["north"]["windows"] == 2
    by_model = client.get("/api/v1/telemetry/summary", params={"group_by": "model_version"}).json()
    assert by_model["clf@1"]["windows"] == 3
    assert client.get("/api/v1/telemetry/summary", params={"group_by": "model_version", "key": "clf@1"}).json()
    series = client.get("/api/v1/devices/a/telemetry").json()
    assert [p["window_seq"] for p in series] == [1, 2] and series[0]["p50_ms"] == pytest.approx(0.5)


def test_windows_filters_and_bad_queries(client, fleet, installed, clock):
    fleet.add("f")
    fleet.telemetry("f", 1, bundle=installed)
    clock.advance(100)
    fleet.telemetry("f", 2)
    assert len(client.get("/api/v1/telemetry/windows", params={"bundle": installed.digest}).json()) == 1
    assert len(client.get("/api/v1/telemetry/windows", params={"since": clock() - 10}).json()) == 1
    assert client.get("/api/v1/telemetry/summary", params={"group_by": "nope"}).status_code == 422
    assert client.get("/api/v1/telemetry/windows", params={"limit": 0}).status_code == 422
    assert client.get("/api/v1/telemetry/windows", params={"since": "yesterday"}).status_code == 422
    assert client.get("/api/v1/devices/ghost/telemetry").status_code == 404


def test_latest_drift_verdict_is_not_hidden_by_quiet_windows(fleet, controller, clock):
    fleet.add("q")
    fleet.add("r")
    fleet.telemetry("q", 1, psi=0.6, level="alarm")
    clock.advance(2)
    fleet.telemetry("q", 2, psi=0.0, level="insufficient", requests=0)  # traffic stopped
    fleet.telemetry("r", 1, psi=0.01, level="ok")
    clock.advance(2)
    fleet.telemetry("r", 2, psi=0.02, level="ok")
    with controller.session() as session:
        verdicts = latest_drift_verdicts(session)
        assert {k: (v.drift_level, v.window_seq) for k, v in verdicts.items()} == {"q": ("alarm", 1),
                                                                                   "r": ("ok", 2)}
        assert set(latest_drift_verdicts(session, device_ids=["r"])) == {"r"}


def test_labels_in_windows_are_summed_into_accuracy_and_a_confusion_table(fleet, client, clock, capsys,
                                                                              monkeypatch):
    fleet.add("lab-1")
    fleet.add("quiet")
    for seq, (labelled, correct, cells) in enumerate([(4, 3, {"a": {"a": 3, "b": 1}}), (2, 2, {"b": {"b": 2}})]):
        fleet.send(TelemetryWindow(device_id="lab-1", window_seq=seq, window_start=clock() - 1, window_end=clock(),
                                   latency_ms=Histogram(bounds=[1.0], counts=[0, 0]),
                                   feedback=Feedback(labelled=labelled, correct=correct, confusion=cells)),
                   "telemetry")
    fleet.telemetry("quiet", 1)
    summary = client.get("/api/v1/telemetry/summary", params={"group_by": "device"}).json()
    assert summary["lab-1"]["feedback"] == {"labelled": 6, "correct": 5, "accuracy": 5 / 6,
                                            "confusion": {"a": {"a": 3, "b": 1}, "b": {"b": 2}}}
    assert summary["quiet"]["feedback"] == {"labelled": 0, "correct": 0, "accuracy": None, "confusion": {}}
    points = client.get("/api/v1/devices/lab-1/telemetry").json()
    assert [(p["labelled"], p["accuracy"]) for p in points] == [(4, 0.75), (2, 1.0)]

    for module in (cli_telemetry, cli_devices):
        monkeypatch.setattr(module, "client_from_env", lambda url, token: CliClient(client))
    capsys.readouterr()
    assert cli(["telemetry", "--by", "device"]) == 0
    out = capsys.readouterr().out
    labels_table = out[out.index("labels given back"):].splitlines()
    assert [line.split() for line in labels_table if line.startswith(" lab-1")] == [["lab-1", "6", "5", "83.3%"]]
    assert "quiet" not in "".join(labels_table) and "quiet" in out
    assert cli(["devices", "show", "lab-1"]) == 0
    assert "83.3% of 6" in capsys.readouterr().out

    client.get("/ui/login")   # the sign-in form's CSRF nonce (docs/security.md, "CSRF")
    client.post("/ui/login", data={"token": ADMIN, "next": "/", "csrf_token": client.cookies.get("edgefleet_login")})
    assert 'id="kpi-accuracy"' in client.get("/ui/devices/lab-1").text
    assert "5 of 6 labels right" in client.get("/ui/devices/lab-1").text
    assert 'id="kpi-accuracy"' not in client.get("/ui/devices/quiet").text
