"""One strict decoder (protocol/messages.py ``decode``) for agent and controller: UTF-8 only, no type
coercion, the documented invariants enforced; and, property-based (hypothesis), whatever the bytes,
a decode either returns a valid message or raises MessageError -- nothing else escapes."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.protocol import messages as m
from edgefleet.protocol.errors import MessageError

from protocolkit import message_examples as _examples

KINDS = list(m.MESSAGE_TYPES)


def as_json(kind: str) -> dict:
    return json.loads(m.encode(_examples()[kind]))


def refused(kind: str, obj: dict | bytes, match: str | None = None) -> MessageError:
    payload = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    with pytest.raises(MessageError, match=match) as err:
        m.decode(kind, payload)
    return err.value


def test_utf16_and_utf32_payloads_are_refused():
    text = json.dumps(as_json("state"))
    for encoding in ("utf-16", "utf-16-le", "utf-32"):
        refused("state", text.encode(encoding), "not JSON")
    refused("state", b"\xef\xbb\xbf" + text.encode(), "not JSON")   # a UTF-8 byte-order mark too
    assert m.decode("state", text.encode("utf-8")).status == "online"


@pytest.mark.parametrize(("kind", "path", "value"), [
    ("telemetry", ["window_seq"], "3"),
    ("telemetry", ["requests"], "10"),
    ("telemetry", ["requests"], 10.0),
    ("telemetry", ["requests"], True),
    ("telemetry", ["window_end"], "70"),
    ("status", ["final"], "yes"),
    ("status", ["final"], 1),
    ("status", ["sequence"], "5"),
    ("hello", ["free_disk_bytes"], "10"),
    ("hello", ["runtimes"], "onnx"),
    ("state", ["status"], 1),
    ("cmd", ["order", "signed", "bundle_size"], "100"),
    ("cmd", ["order", "signed", "sequence"], 1.0),
])
def test_no_type_is_coerced(kind, path, value):
    obj = as_json(kind)
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    refused(kind, obj, "invalid")


@pytest.mark.parametrize(("change", "why"), [
    (lambda o: o["latency_ms"].update(counts=[1, 2]), "a histogram of 2 bounds has 3 counts, not 2"),
    (lambda o: o["latency_ms"].update(bounds=[5.0, 1.0]), "bounds must increase strictly"),
    (lambda o: o["latency_ms"].update(counts=[3, -1, 0]), "greater than or equal to 0"),
    (lambda o: o.update(requests=-4), "greater than or equal to 0"),
    (lambda o: o.update(requests=1, errors=2), "errors (2) exceed requests (1)"),
    (lambda o: o.update(window_end=5.0), "window_end (5.0) is before window_start (10.0)"),
    (lambda o: o.update(features=[[1, -2]]), "greater than or equal to 0"),
    (lambda o: o.update(predictions={"a": -1}), "greater than or equal to 0"),
    (lambda o: o["drift"].update(level="alarmed"), "drift.level"),
])
def test_the_documented_invariants_of_a_window_are_enforced(change, why):
    obj = as_json("telemetry")
    change(obj)
    err = refused("telemetry", obj)
    assert why in err.message or why in (err.where or ""), (err.message, err.where)


@pytest.mark.parametrize("kind", KINDS)
def test_enum_values_are_still_read_as_their_members(kind):
    back = m.decode(kind, m.encode(_examples()[kind]))
    assert back == _examples()[kind].model_copy(update={"msg_id": back.msg_id, "sent_at": back.sent_at})


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children,
                                                                                      max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), payload=st.binary(max_size=300))
def test_any_bytes_decode_or_raise_message_error(kind, payload):
    with contextlib.suppress(MessageError):
        m.decode(kind, payload)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), data=st.data())
def test_a_valid_message_with_any_field_replaced_decodes_valid_or_is_refused(kind, data):
    """Each field of a valid message replaced by arbitrary JSON: refused with a MessageError, or a
    message that survives its own encoding unchanged (no half-valid state gets through)."""
    obj = as_json(kind)
    key = data.draw(st.sampled_from(sorted(obj)))
    obj[key] = data.draw(JSON)
    try:
        back = m.decode(kind, json.dumps(obj).encode())
    except MessageError:
        return
    assert m.decode(kind, m.encode(back)) == back


@settings(max_examples=200, deadline=None)
@given(bounds=st.lists(st.floats(min_value=0, max_value=1e6), max_size=8),
       counts=st.lists(st.integers(min_value=-3, max_value=10**6), max_size=10))
def test_histograms_decode_only_in_their_documented_shape(bounds, counts):
    obj = as_json("telemetry")
    obj["latency_ms"] = {"bounds": bounds, "counts": counts}
    valid = (len(counts) == len(bounds) + 1 and all(c >= 0 for c in counts)
             and all(b > a for a, b in zip(bounds, bounds[1:], strict=False)))
    try:
        back = m.decode("telemetry", json.dumps(obj).encode())
    except MessageError:
        assert not valid
        return
    assert valid and back.latency_ms.counts == counts
