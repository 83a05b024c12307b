"""The fast decode path (pydantic-core parsing and validating the bytes in one strict pass) accepts
only what the reference decoder accepts, with the same message: property-based over mutated
payloads of every kind, and by example for the numbers JSON parsers disagree on."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefleet.protocol import messages as m
from edgefleet.protocol.errors import MessageError

from protocolkit import message_examples as _examples

SINGLE_KINDS = [k for k in m.MESSAGE_TYPES if k not in m.VARIANTS]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


def _set(obj, path, value):
    if not path:
        return value
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return obj


def _outcome(fn, kind, payload):
    try:
        return "ok", fn(kind, payload).model_dump()
    except MessageError as exc:
        return "refused", exc.code


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(SINGLE_KINDS), data=st.data())
def test_fast_path_accepts_only_what_the_reference_accepts_and_means_the_same(kind, data):
    obj = json.loads(m.encode(_examples()[kind]))
    paths = list(_paths(obj))
    path = data.draw(st.sampled_from(paths))
    obj = _set(obj, path, data.draw(json_values))
    if data.draw(st.booleans()) and isinstance(obj, dict):
        obj[data.draw(st.text(min_size=1, max_size=6))] = data.draw(json_values)
    payload = json.dumps(obj).encode()
    fast = m.decode_fast(kind, payload)
    reference = _outcome(m.decode_reference, kind, payload)
    if fast is not None:
        assert reference == ("ok", fast.model_dump())
    assert _outcome(m.decode, kind, payload) == reference


@settings(max_examples=200, deadline=None)
@given(number=st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2 ** 80), 2 ** 80))
def test_numbers_parse_to_the_same_value_on_both_paths(number):
    obj = json.loads(m.encode(_examples()["state"]))
    obj["uptime_s"] = float(number)
    obj["extra_number"] = number
    payload = json.dumps(obj).encode()
    assert m.decode_fast("state", payload) is not None
    assert m.decode_fast("state", payload) == m.decode_reference("state", payload)


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1e0400",
                                    b"1" + b"0" * 250 + b"e99", b"1" + b"0" * 310 + b".5"])
@pytest.mark.parametrize("where", ["uptime_s", "unknown_field", "nested"])
def test_non_finite_numbers_are_refused_anywhere_even_in_unknown_fields(number, where):
    base = m.encode(_examples()["state"])
    if where == "uptime_s":
        payload = base.replace(b'"uptime_s":0.0', b'"uptime_s":' + number)
    elif where == "unknown_field":
        payload = base[:-1] + b',"later":' + number + b"}"
    else:
        payload = base[:-1] + b',"later":{"x":[1,' + number + b"]}}"
    assert number in payload
    assert m.decode_fast("state", payload) is None
    with pytest.raises(MessageError) as err:
        m.decode("state", payload)
    assert err.value.code == "malformed_message"


def test_a_huge_integer_means_the_same_on_both_paths():
    base = m.encode(_examples()["state"])
    huge = b"1" + b"0" * 310
    for payload in (base[:-1] + b',"later":' + huge + b"}", base.replace(b'"uptime_s":0.0', b'"uptime_s":' + huge)):
        fast = m.decode_fast("state", payload)
        reference = _outcome(m.decode_reference, "state", payload)
        assert fast is None or reference == ("ok", fast.model_dump())
        assert _outcome(m.decode, "state", payload) == reference
    assert m.decode("state", base[:-1] + b',"later":' + huge + b"}").later == 10 ** 310


def test_a_missing_or_other_schema_version_takes_the_reference_path_and_is_refused():
    obj = json.loads(m.encode(_examples()["telemetry"]))
    del obj["schema_version"]
    payload = json.dumps(obj).encode()
    assert m.decode_fast("telemetry", payload) is None
    with pytest.raises(MessageError) as err:
        m.decode("telemetry", payload)
    assert err.value.code == "unsupported_schema"


def test_a_string_that_only_looks_suspect_decodes_on_the_reference_path():
    obj = json.loads(m.encode(_examples()["events"]))
    obj["text"] = "NaN Infinity 1e400"
    msg = m.decode("events", json.dumps(obj).encode())
    assert msg.text == "NaN Infinity 1e400"


def test_the_fast_path_is_taken_for_a_plain_window():
    payload = m.encode(_examples()["telemetry"])
    fast = m.decode_fast("telemetry", payload)
    assert isinstance(fast, m.TelemetryWindow) and fast == m.decode_reference("telemetry", payload)
