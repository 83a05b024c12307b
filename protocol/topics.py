"""MQTT topic names: the only place topic strings are built or parsed.

Every device has its own subtree ``{prefix}/devices/{device_id}/{kind}`` so a broker ACL can
confine a device to it (see docs/security.md). Devices publish ``hello``, ``state``,
``telemetry``, ``events`` and ``status``; the controller publishes signed orders on ``cmd`` and
signed delivery acknowledgements on ``ack`` (docs/protocol.md "Delivery acknowledgements").
"""

from __future__ import annotations

import re

from edgefleet.protocol.errors import MessageError

DEFAULT_PREFIX = "edgefleet/v1"

DEVICE_KINDS = ("hello", "state", "telemetry", "events", "status")
"""Kinds a device publishes (and the controller ingests)."""
CONTROLLER_KINDS = ("cmd", "ack")
"""Kinds the controller publishes to a device."""
KINDS = DEVICE_KINDS + CONTROLLER_KINDS

_DEVICE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def validate_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is safe in a topic, a file name and a URL; else raise."""
    if not isinstance(device_id, str) or not _DEVICE_ID.match(device_id) or device_id in {".", ".."}:
        raise MessageError(
            f"invalid device id {device_id!r}",
            where="device_id",
            hint="use 1-64 characters of A-Z a-z 0-9 _ . -",
        )
    return device_id


def device_topic(device_id: str, kind: str, prefix: str = DEFAULT_PREFIX) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown topic kind {kind!r}")
    return f"{prefix}/devices/{validate_device_id(device_id)}/{kind}"


def hello(device_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    return device_topic(device_id, "hello", prefix)


def state(device_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    return device_topic(device_id, "state", prefix)


def telemetry(device_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    return device_topic(device_id, "telemetry", prefix)


def events(device_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    return device_topic(device_id, "events", prefix)


def status(device_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    return device_topic(device_id, "status", prefix)


def cmd(device_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    return device_topic(device_id, "cmd", prefix)


def ack(device_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    return device_topic(device_id, "ack", prefix)


def controller_subscriptions(prefix: str = DEFAULT_PREFIX, shared_group: str | None = None) -> list[str]:
    """Topic filters the controller subscribes to; with ``shared_group`` as MQTT 5 shared
    subscriptions (``$share/<group>/...``) so several controller replicas split the ingest."""
    filters = [f"{prefix}/devices/+/{kind}" for kind in DEVICE_KINDS]
    if shared_group:
        filters = [f"$share/{shared_group}/{f}" for f in filters]
    return filters


def parse_device_topic(topic: str, prefix: str = DEFAULT_PREFIX) -> tuple[str, str]:
    """Split ``{prefix}/devices/{device_id}/{kind}`` into ``(device_id, kind)``."""
    head = f"{prefix}/devices/"
    if not topic.startswith(head):
        raise MessageError(f"topic {topic!r} is not under {head!r}", where="topic")
    rest = topic[len(head):].split("/")
    if len(rest) != 2 or rest[1] not in KINDS:
        raise MessageError(f"topic {topic!r} is not a device topic", where="topic",
                           hint=f"expected {head}<device_id>/<{'|'.join(KINDS)}>")
    return validate_device_id(rest[0]), rest[1]
