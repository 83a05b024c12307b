import json

import pytest

from edgefleet.protocol import messages as m
from edgefleet.protocol.errors import MessageError

from protocolkit import message_examples as _examples  # noqa: E402


@pytest.mark.parametrize("kind", list(m.MESSAGE_TYPES))
def test_round_trip(kind):
    msg = _examples()[kind]
    back = m.decode(kind, m.encode(msg))
    assert type(back) is m.MESSAGE_TYPES[kind]
    assert back == msg
    assert back.msg_id == msg.msg_id and len(back.msg_id) == 32


@pytest.mark.parametrize("kind", list(m.MESSAGE_TYPES))
def test_unknown_fields_survive_round_trip(kind):
    obj = json.loads(m.encode(_examples()[kind]))
    obj["future_field"] = {"nested": [1, 2]}
    if kind == "cmd":
        obj["order"]["signed"]["future_signed_field"] = "kept"
    back = m.decode(kind, json.dumps(obj).encode())
    again = json.loads(m.encode(back))
    assert again["future_field"] == {"nested": [1, 2]}
    if kind == "cmd":
        assert again["order"]["signed"]["future_signed_field"] == "kept"


def test_msg_ids_are_unique_and_kept_on_retry():
    a, b = _examples()["status"], _examples()["status"]
    assert a.msg_id != b.msg_id
    retry = m.decode("status", m.encode(a))
    assert retry.msg_id == a.msg_id  # a retried publish carries the same id


@pytest.mark.parametrize("kind", list(m.MAX_PAYLOAD))
def test_size_limit(kind):
    limit = m.MAX_PAYLOAD[kind]
    obj = json.loads(m.encode(_examples()[kind]))
    obj["pad"] = ""
    base = len(json.dumps(obj).encode())
    obj["pad"] = "x" * (limit - base)
    at_limit = json.dumps(obj).encode()
    assert len(at_limit) == limit
    m.decode(kind, at_limit)  # exactly at the limit is fine
    obj["pad"] += "x"
    with pytest.raises(MessageError) as ei:
        m.decode(kind, json.dumps(obj).encode())
    assert ei.value.code == "payload_too_large" and ei.value.where == kind


@pytest.mark.parametrize("payload", [
    b"", b"{", b"not json", b"\xff\xfe\xfa", b"[1, 2]", b'"text"', b"null", b"42",
    b'{"schema_version": 1, "sent_at": NaN}', b'{"schema_version": 1, "x": Infinity}',
    b"[" * 5000 + b"]" * 5000,  # nesting deep enough to blow the parser's recursion limit
])
def test_malformed_json(payload):
    with pytest.raises(MessageError) as ei:
        m.decode("events", payload)
    assert ei.value.code == "malformed_message"
    assert ei.value.where == "events"


def test_deep_nesting_in_data_is_refused_not_crashing():
    payload = b'{"schema_version":1,"type":"event","device_id":"d","kind":"k","data":{"x":' + \
        b"[" * 3000 + b"]" * 3000 + b"}}"
    with pytest.raises(MessageError):
        m.decode("events", payload)


@pytest.mark.parametrize("version", [None, 0, 2, "1", True, 1.0, [1]])
def test_wrong_schema_version(version):
    obj = json.loads(m.encode(_examples()["state"]))
    if version is None:
        del obj["schema_version"]
    else:
        obj["schema_version"] = version
    with pytest.raises(MessageError) as ei:
        m.decode("state", json.dumps(obj).encode())
    assert ei.value.code == "unsupported_schema"
    assert ei.value.where == "state"


def test_wrong_type_names_the_field():
    obj = json.loads(m.encode(_examples()["status"]))
    obj["type"] = "hello"
    with pytest.raises(MessageError) as ei:
        m.decode("status", json.dumps(obj).encode())
    assert ei.value.where == "status.type"


@pytest.mark.parametrize("kind,mutate,where", [
    ("status", lambda o: o.pop("deployment_id"), "status.deployment_id"),
    ("status", lambda o: o.update(state="exploded"), "status.state"),
    ("status", lambda o: o.update(detail="x" * 2001), "status.detail"),
    ("state", lambda o: o.update(status="sleepy"), "state.status"),
    ("state", lambda o: o.update(device_id="a/b"), "state.device_id"),
    ("hello", lambda o: o.update(msg_id=""), "hello.msg_id"),
    ("hello", lambda o: o.update(msg_id="x" * 65), "hello.msg_id"),
    ("hello", lambda o: o["installed"].update(digest="XYZ"), "hello.installed.digest"),
    ("telemetry", lambda o: o.update(window_seq=-1), "telemetry.window_seq"),
    ("telemetry", lambda o: o.pop("latency_ms"), "telemetry.latency_ms"),
    ("events", lambda o: o.update(level="panic"), "events.level"),
    ("cmd", lambda o: o["order"].update(signatures=[]), "cmd.order.signatures"),
    ("cmd", lambda o: o["order"]["signed"].update(sequence=0), "cmd.order.signed.sequence"),
    ("cmd", lambda o: o["order"]["signed"].update(action="format_disk"), "cmd.order.signed.action"),
    ("cmd", lambda o: o["order"]["signed"].update(bundle_size=-1), "cmd.order.signed.bundle_size"),
])
def test_invalid_fields_name_where(kind, mutate, where):
    obj = json.loads(m.encode(_examples()[kind]))
    mutate(obj)
    with pytest.raises(MessageError) as ei:
        m.decode(kind, json.dumps(obj).encode())
    assert ei.value.where == where
    assert ei.value.code == "malformed_message"


def test_unknown_kind():
    with pytest.raises(MessageError) as ei:
        m.decode("secrets", b"{}")
    assert ei.value.where == "topic"


def test_too_many_signatures_refused():
    obj = json.loads(m.encode(_examples()["cmd"]))
    obj["order"]["signatures"] = obj["order"]["signatures"] * 9
    with pytest.raises(MessageError) as ei:
        m.decode("cmd", json.dumps(obj).encode())
    assert ei.value.where == "cmd.order.signatures"


def test_every_device_kind_has_a_model_and_limit():
    from edgefleet.protocol import topics
    assert set(m.MESSAGE_TYPES) == set(topics.KINDS) == set(m.MAX_PAYLOAD)


@pytest.mark.parametrize("number", [b"1e400", b"-1e400"])
def test_out_of_range_numbers_refused(number):
    payload = m.encode(_examples()["state"]).replace(b'"uptime_s":0.0', b'"uptime_s":' + number)
    assert number in payload
    with pytest.raises(MessageError):
        m.decode("state", payload)
