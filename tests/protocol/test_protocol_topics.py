import pytest

from edgefleet.protocol import topics
from edgefleet.protocol.errors import MessageError


@pytest.mark.parametrize("fn,kind", [(topics.hello, "hello"), (topics.state, "state"),
                                     (topics.telemetry, "telemetry"), (topics.events, "events"),
                                     (topics.status, "status"), (topics.cmd, "cmd")])
def test_build_and_parse_round_trip(fn, kind):
    topic = fn("dev-01.a_b")
    assert topic == f"edgefleet/v1/devices/dev-01.a_b/{kind}"
    assert topics.parse_device_topic(topic) == ("dev-01.a_b", kind)


def test_custom_prefix():
    topic = topics.state("d1", prefix="test/xyz")
    assert topic == "test/xyz/devices/d1/state"
    assert topics.parse_device_topic(topic, prefix="test/xyz") == ("d1", "state")
    with pytest.raises(MessageError):
        topics.parse_device_topic(topic)  # default prefix does not match


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a+b", "#", "a b", "x" * 65, "dév", "a\x00"])
def test_invalid_device_ids_refused(bad):
    with pytest.raises(MessageError) as ei:
        topics.validate_device_id(bad)
    assert ei.value.where == "device_id"
    with pytest.raises(MessageError):
        topics.cmd(bad)


def test_device_id_limits():
    assert topics.validate_device_id("x" * 64) == "x" * 64
    with pytest.raises(MessageError):
        topics.validate_device_id(None)  # type: ignore[arg-type]


def test_unknown_kind_is_a_programming_error():
    with pytest.raises(ValueError):
        topics.device_topic("d1", "secrets")


@pytest.mark.parametrize("topic", [
    "edgefleet/v1/devices/d1",                 # no kind
    "edgefleet/v1/devices/d1/state/extra",     # too deep
    "edgefleet/v1/devices/d1/unknown",         # unknown kind
    "edgefleet/v1/devices/+/state",            # wildcard is not a device id
    "edgefleet/v1/devices//state",             # empty id
    "edgefleet/v1/devices/../state",           # dot-dot id
    "other/v1/devices/d1/state",               # wrong prefix
    "edgefleet/v1/devices",
])
def test_parse_refuses_non_device_topics(topic):
    with pytest.raises(MessageError):
        topics.parse_device_topic(topic)


def test_controller_subscriptions_cover_device_kinds_only():
    subs = topics.controller_subscriptions()
    assert subs == [f"edgefleet/v1/devices/+/{k}" for k in topics.DEVICE_KINDS]
    assert not any(s.endswith("/cmd") for s in subs)  # the controller never ingests its own orders


def test_shared_subscriptions():
    subs = topics.controller_subscriptions(shared_group="controllers")
    assert subs == [f"$share/controllers/edgefleet/v1/devices/+/{k}" for k in topics.DEVICE_KINDS]
    # the filter after the $share/<group>/ prefix matches a real device topic level by level
    for sub, kind in zip(subs, topics.DEVICE_KINDS, strict=True):
        flt = sub.split("/", 2)[2].split("/")
        real = topics.device_topic("dev7", kind).split("/")
        assert len(flt) == len(real)
        assert all(f in ("+", r) for f, r in zip(flt, real, strict=True))
