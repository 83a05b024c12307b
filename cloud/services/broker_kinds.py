"""What each MQTT broker lacks, and the checks that turn a lack into a precise error instead of a
device that silently never gets through.

The protocol needs QoS 1, retained messages on exact topics, the last will and persistent sessions;
every broker below has those (docs/operations.md §3, "Other and clustered brokers", says how each
was tested). What differs:

* MQTT 5 and shared subscriptions -- only several controllers splitting ingest need them
  (``shared_subscription_group``); RabbitMQ 3.10, NATS 2.9 and the embedded broker speak MQTT 3.1.1.
* ``.`` and spaces in a topic level -- NATS 2.9 closes the connection of a client that publishes or
  subscribes to such a topic; RabbitMQ 3.10 maps a ``.`` to a level separator (``a/b.c`` arrives as
  ``a/b/c``). Device ids may contain ``.`` (protocol/topics.py), so with those brokers the controller
  refuses such ids at enrollment and such a topic prefix at start.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgefleet.cloud.vocabulary import BrokerKind
from edgefleet.protocol.errors import ConfigError, InvalidRequestError


@dataclass(frozen=True)
class BrokerTraits:
    name: str
    shared_subscriptions: bool
    """MQTT 5 with ``$share/<group>/...`` subscriptions."""
    any_topic_characters: bool
    """``.`` and spaces in a topic level arrive as sent."""


EMBEDDED = BrokerTraits("the embedded broker (MQTT 3.1.1)", shared_subscriptions=False, any_topic_characters=True)
TRAITS: dict[BrokerKind | None, BrokerTraits] = {
    None: BrokerTraits("the broker", shared_subscriptions=True, any_topic_characters=True),
    BrokerKind.MOSQUITTO: BrokerTraits("Mosquitto", shared_subscriptions=True, any_topic_characters=True),
    BrokerKind.RABBITMQ: BrokerTraits("RabbitMQ's MQTT plugin (MQTT 3.1.1 before RabbitMQ 3.13)",
                                      shared_subscriptions=False, any_topic_characters=False),
    BrokerKind.NATS: BrokerTraits("NATS's MQTT interface (MQTT 3.1.1, QoS 0/1)", shared_subscriptions=False,
                                  any_topic_characters=False),
    BrokerKind.EMQX: BrokerTraits("EMQX", shared_subscriptions=True, any_topic_characters=True),
    BrokerKind.HIVEMQ: BrokerTraits("HiveMQ", shared_subscriptions=True, any_topic_characters=True),
    BrokerKind.VERNEMQ: BrokerTraits("VerneMQ", shared_subscriptions=True, any_topic_characters=True),
}
"""``None``: ``broker_kind`` unset, a broker assumed to have everything (Mosquitto does)."""

UNSAFE_TOPIC_CHARACTERS = (".", " ")


def traits(kind: BrokerKind | None, *, embedded: bool) -> BrokerTraits:
    return EMBEDDED if embedded else TRAITS[kind]


def check_settings(kind: BrokerKind | None, *, embedded: bool, topic_prefix: str, shared_group: str | None) -> None:
    """Refuse a configuration the broker cannot carry (:class:`ConfigError` naming the setting)."""
    t = traits(kind, embedded=embedded)
    if shared_group and not t.shared_subscriptions:
        raise ConfigError(f"shared_subscription_group = {shared_group!r} needs MQTT 5 shared subscriptions, which "
                          f"{t.name} does not have", where="shared_subscription_group",
                          hint="leave it unset (one controller takes the ingest) or use a broker with MQTT 5 "
                               "(Mosquitto, EMQX, HiveMQ, VerneMQ; docs/operations.md §3)")
    bad = [c for c in UNSAFE_TOPIC_CHARACTERS if c in topic_prefix]
    if bad and not t.any_topic_characters:
        raise ConfigError(f"topic prefix {topic_prefix!r} contains {bad[0]!r}, which {t.name} does not carry in a "
                          "topic", where="topic_prefix", hint="use letters, digits, '-', '_' and '/' only")


def check_device_id(kind: BrokerKind | None, device_id: str, *, embedded: bool) -> None:
    """Refuse a device id the broker would not carry in a topic (:class:`InvalidRequestError`)."""
    t = traits(kind, embedded=embedded)
    bad = [c for c in UNSAFE_TOPIC_CHARACTERS if c in device_id]
    if bad and not t.any_topic_characters:
        raise InvalidRequestError(f"device id {device_id!r} contains {bad[0]!r}, which {t.name} does not carry in "
                                  "a topic (broker_kind)", where="device_id",
                                  hint="choose an id of letters, digits, '-' and '_' only")
