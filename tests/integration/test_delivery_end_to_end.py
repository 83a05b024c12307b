"""End-to-end delivery with real processes (issue 12 item 7): a broker restarted WITHOUT its
persistence store comes back empty, the agent drains its backlog into it before the controller has
resubscribed -- and still every window is stored, exactly once, because the agent keeps each row
until the controller's signed acknowledgement names it and publishes it again when none comes.

A private Mosquitto (its store deleted between stop and start), the controller in this process
(real MQTT bridge, ingest, SQLite), a real agent process with a bundle installed and live traffic."""

from __future__ import annotations

import time

import pytest
from sqlmodel import Session, select

from edgefleet.agent.identity import registered_marker
from edgefleet.cloud.store.tables import TelemetryRecord
from edgefleet.protocol.keys import save_private_key

from agentkit.bundles import samples
from agentkit.harness import Harness
from controllerkit import controller_settings, enroll, running_controller
from testkit import wait_until

pytestmark = pytest.mark.integration

WINDOWS = 27


def _stored(controller, device_id: str) -> list[int]:
    with Session(controller.engine) as session:
        return sorted(session.exec(select(TelemetryRecord.window_seq).where(TelemetryRecord.device_id == device_id)))


def test_a_broker_restarted_empty_before_the_controller_resubscribes_loses_no_window(
        tmp_path, private_mosquitto, topic_prefix, release_key, controller_key, file_server, tiny_onnx):
    broker = private_mosquitto
    settings = controller_settings(tmp_path, broker_url=broker.broker.url, prefix=topic_prefix,
                                   release_pub=release_key.public_path, controller_key_path=controller_key.private_path)
    h = Harness(tmp_path, broker.broker, topic_prefix, release_key, controller_key, file_server, tiny_onnx)
    try:
        with running_controller(settings) as (client, controller):
            creds = enroll(client, h.device_id)
            key_file = tmp_path / "state" / "keys" / "device.key"
            save_private_key(creds["key"].key, key_file)       # the key the controller enrolled
            registered_marker(key_file).touch()
            agent = h.start(telemetry_interval_s=0.2, ack_timeout_s=1.5, ack_retry_cap_s=3.0)
            assert h.install(h.bundle())["outcome"] == "committed"

            def stats():
                return agent.get("/v1/stats")[1]

            def traffic():
                assert agent.predict({"x": samples(n=3).tolist()})[0] == 200

            traffic()
            wait_until(lambda: stats()["delivery"] == "end_to_end", what="the agent sees the controller's acks")
            wait_until(lambda: _stored(controller, h.device_id), what="a first window stored")
            wait_until(lambda: stats()["outbox_pending"] == 0, what="everything so far acknowledged")
            stored_before = _stored(controller, h.device_id)
            assert stored_before and len(stored_before) == len(set(stored_before))
        # the controller is gone; the broker goes down and loses its store (the controller's session with it)
        broker.stop()
        (broker.conf.parent / "mosquitto.db").unlink(missing_ok=True)
        wait_until(lambda: not stats()["connected"], what="agent notices the outage")
        first = stats()["telemetry_windows"]
        deadline = time.monotonic() + 60
        while stats()["telemetry_windows"] < first + WINDOWS and time.monotonic() < deadline:
            traffic()
            time.sleep(0.1)
        produced = stats()["telemetry_windows"]
        assert produced >= first + WINDOWS and stats()["outbox_pending"] >= WINDOWS
        broker.start()                                          # empty: nobody is subscribed
        wait_until(lambda: stats()["connected"] and stats()["outbox_resent"] >= WINDOWS,
                   what="the backlog published into the empty broker, unacknowledged, and published again",
                   timeout=60)
        assert stats()["outbox_pending"] >= WINDOWS             # still kept: no controller has them

        with running_controller(settings) as (client, controller):   # resubscribes, later
            wait_until(lambda: stats()["outbox_pending"] == 0
                       and len(_stored(controller, h.device_id)) >= stats()["telemetry_windows"],
                       what="the backlog acknowledged", timeout=90)
            total = stats()["telemetry_windows"]
            seqs = _stored(controller, h.device_id)
        assert seqs == list(range(total)), f"lost {sorted(set(range(total)) - set(seqs))}"   # once each, none lost
        assert stats()["acks_refused"] == 0
    finally:
        h.close()


def test_a_forged_acknowledgement_deletes_nothing(tmp_path, private_mosquitto, topic_prefix, release_key,
                                                 controller_key, make_key_pair, file_server, tiny_onnx):
    """An ack signed by another key (anyone who can publish on the device's ack topic) is refused:
    the rows stay until the real controller acknowledges them."""
    from edgefleet.protocol.acks import ack_messages

    h = Harness(tmp_path, private_mosquitto.broker, topic_prefix, release_key, controller_key, file_server, tiny_onnx,
                persistent_observer=True)
    try:
        agent = h.start(telemetry_interval_s=0.2, ack_timeout_s=60.0, delivery="auto")
        forger = make_key_pair("forger")
        # a first genuine ack switches the agent to end-to-end delivery (as a controller would)
        ((topic, genuine),) = ack_messages({h.device_id: ["nothing-yet"]}, key=controller_key.private,
                                           prefix=topic_prefix, issued_at=int(time.time()))
        h.observer.publish("ack", genuine)
        wait_until(lambda: agent.get("/v1/stats")[1]["delivery"] == "end_to_end", what="end to end")
        assert h.install(h.bundle())["outcome"] == "committed"    # status reports now wait in the outbox
        wait_until(lambda: agent.get("/v1/stats")[1]["outbox_pending"] > 0, what="rows waiting for an ack")
        pending = {m["msg_id"] for k, m, _, _ in h.observer.messages if k in ("status", "telemetry") and m}
        ((_, forged),) = ack_messages({h.device_id: sorted(pending)}, key=forger.private, prefix=topic_prefix,
                                      issued_at=int(time.time()))
        h.observer.publish("ack", forged)
        wait_until(lambda: agent.get("/v1/stats")[1]["acks_refused"] == 1, what="the forged ack refused")
        before = agent.get("/v1/stats")[1]["outbox_pending"]
        assert before > 0
        ((_, real),) = ack_messages({h.device_id: sorted(pending)}, key=controller_key.private, prefix=topic_prefix,
                                    issued_at=int(time.time()))
        h.observer.publish("ack", real)
        wait_until(lambda: agent.get("/v1/stats")[1]["outbox_pending"] < before, what="the genuine ack honoured")
    finally:
        h.close()
