"""Mosquitto's dynamic-security plugin, driven by the controller as the plugin's admin client.

The plugin takes JSON commands on ``$CONTROL/dynamic-security/v1`` and answers on
``$CONTROL/dynamic-security/v1/response`` (https://mosquitto.org/documentation/dynamic-security/).
:class:`DynsecClient` sends a batch of commands over a short MQTT connection of its own and waits
for every answer (matched by ``correlationData``) with a timeout; :class:`DynsecIdentity` keeps
on the broker what EdgeFleet's identities need (docs/operations.md §3):

* one client per device: user name = client id = device id (the agent connects with its device id
  as client id), the password handed out at enrollment, and one role of its own,
  ``edgefleet-device-<id>``, with literal topics (the 2.0 plugin substitutes no ``%c``/``%u``):
  publish its own ``hello|state|telemetry|events|status``, subscribe to and receive its own
  ``cmd``, ``ack`` and ``state`` -- nothing else;
* the controller's role ``edgefleet-controller``: subscribe to the device kinds of every device
  (exactly the filters the MQTT bridge subscribes with, ``$share/...`` ones included), receive
  them, publish ``cmd`` and ``ack`` -- nothing else.

Every failure is a :class:`TransportError` naming the command and the broker's error text.
"""

from __future__ import annotations

import json
import logging
import secrets
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgefleet.protocol.brokers import BrokerAddress, parse_broker_url
from edgefleet.protocol.errors import ConfigError, TransportError
from edgefleet.protocol.topics import CONTROLLER_KINDS, DEVICE_KINDS, controller_subscriptions, device_topic

log = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"

PUBLISH_SEND = "publishClientSend"
PUBLISH_RECEIVE = "publishClientReceive"
SUBSCRIBE_LITERAL = "subscribeLiteral"

CONTROLLER_ROLE = "edgefleet-controller"
DEVICE_ROLE_PREFIX = "edgefleet-device-"
DEVICE_SUBSCRIBES = ("cmd", "ack", "state")
"""What a device may subscribe to and receive: its orders, delivery acknowledgements, its own retained state."""

CLIENT_NOT_FOUND = "Client not found"
ROLE_NOT_FOUND = "Role not found"
"""The plugin's error texts for an object that does not exist (the 2.0 series)."""

Command = dict[str, Any]
Answer = dict[str, Any]

ADMIN_HINT = ("check that the broker loads the dynamic-security plugin (plugin .../mosquitto_dynamic_security.so "
              "and plugin_opt_config_file in mosquitto.conf) and that the user of broker_admin_url has the "
              "plugin's admin role (mosquitto_ctrl dynsec init)")


class DynsecCommandError(TransportError):
    """The plugin answered a command with an error; ``command`` and ``broker_error`` say which and what."""

    def __init__(self, message: str, *, command: str, broker_error: str, where: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, where=where, hint=hint)
        self.command = command
        self.broker_error = broker_error


@dataclass(frozen=True)
class Acl:
    """One ACL of a role, as the plugin holds it."""

    acltype: str
    topic: str
    allow: bool = True
    priority: int = 0

    @property
    def key(self) -> tuple[str, str]:
        """What the plugin identifies an ACL of a role by."""
        return self.acltype, self.topic

    def as_json(self) -> dict[str, Any]:
        return {"acltype": self.acltype, "topic": self.topic, "allow": self.allow, "priority": self.priority}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Acl:
        return cls(acltype=str(data.get("acltype")), topic=str(data.get("topic")), allow=bool(data.get("allow")),
                   priority=int(data.get("priority") or 0))


def device_role(device_id: str) -> str:
    return f"{DEVICE_ROLE_PREFIX}{device_id}"


def device_acls(device_id: str, prefix: str) -> list[Acl]:
    """Exactly what one device may do, as literal topics of its own subtree."""
    acls = [Acl(PUBLISH_SEND, device_topic(device_id, kind, prefix)) for kind in DEVICE_KINDS]
    for kind in DEVICE_SUBSCRIBES:
        topic = device_topic(device_id, kind, prefix)
        acls += [Acl(SUBSCRIBE_LITERAL, topic), Acl(PUBLISH_RECEIVE, topic)]
    return acls


def controller_acls(prefix: str, shared_group: str | None = None) -> list[Acl]:
    """Exactly what the controller's MQTT bridge does: subscribe to (and receive) the device kinds of
    every device, publish orders (``cmd``). The plugin checks a shared subscription as its whole
    ``$share/<group>/...`` string, so those are listed as the bridge subscribes."""
    acls = [Acl(SUBSCRIBE_LITERAL, f) for f in controller_subscriptions(prefix, shared_group)]
    acls += [Acl(PUBLISH_RECEIVE, f"{prefix}/devices/+/{kind}") for kind in DEVICE_KINDS]
    acls += [Acl(PUBLISH_SEND, f"{prefix}/devices/+/{kind}") for kind in CONTROLLER_KINDS]
    return acls


class DynsecClient:
    """Sends command batches to the plugin as its admin client: one MQTT connection per
    :meth:`session` (each batch in it waits for all its answers, at most ``timeout_s``)."""

    def __init__(self, *, url: str, timeout_s: float = 10.0, where: str = "broker_admin_url",
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.address: BrokerAddress = parse_broker_url(url, where=where)
        if not self.address.username:
            raise ConfigError("the dynamic-security admin needs a user name and password", where=where,
                              hint="mqtt://<admin user>:<password>@host:port, the user made by mosquitto_ctrl "
                                   "dynsec init")
        self.timeout_s = timeout_s
        self.where = where
        self._monotonic = monotonic

    @contextmanager
    def session(self) -> Iterator[DynsecSession]:
        session = DynsecSession(self)
        try:
            session.open()
            yield session
        finally:
            session.close()

    def run(self, commands: Sequence[Command]) -> list[Answer]:
        """One batch on a connection of its own; answers in order, errors unchecked."""
        with self.session() as session:
            return session.run(commands)

    def call(self, commands: Sequence[Command]) -> list[Answer]:
        """Like :meth:`run`, raising :class:`DynsecCommandError` on the first answer with an error."""
        with self.session() as session:
            return session.call(commands)


class DynsecSession:
    """One admin connection to the broker (paho-mqtt, driven from the caller's thread)."""

    def __init__(self, owner: DynsecClient) -> None:
        self.owner = owner
        address = owner.address
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edgefleet-dynsec-{secrets.token_hex(6)}",
                                  protocol=mqtt.MQTTv311)
        self.client.username_pw_set(address.username, address.password)
        if address.tls:
            self.client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        self._connack: ReasonCode | None = None
        self._suback: ReasonCode | None = None
        self._answers: dict[str, Answer] = {}
        self._open = False
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    # paho callbacks (inside client.loop(), on the caller's thread)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags, reason_code: ReasonCode,
                    properties: Properties | None) -> None:
        self._connack = reason_code

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode],
                      properties: Properties | None) -> None:
        self._suback = reason_codes[0]

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(message.payload)
            responses = body.get("responses", []) if isinstance(body, dict) else []
        except ValueError:
            log.warning("unreadable answer on %s ignored", message.topic)
            return
        for answer in responses:
            if isinstance(answer, dict) and isinstance(answer.get("correlationData"), str):
                self._answers[answer["correlationData"]] = answer

    # the connection

    def open(self) -> None:
        address, where = self.owner.address, self.owner.where
        try:
            self.client.connect(address.host, address.port, keepalive=30)
        except (OSError, ValueError) as exc:
            raise TransportError(f"cannot reach the broker at {address.public_url} as the dynamic-security admin: "
                                 f"{exc}", where=where, hint="is the broker up and broker_admin_url right?") from None
        self._open = True
        self._pump(lambda: self._connack is not None, "the broker's answer to the admin client's CONNECT")
        assert self._connack is not None
        if self._connack.is_failure:
            raise TransportError(f"the broker refused the dynamic-security admin {address.username!r}: "
                                 f"{self._connack}", where=where,
                                 hint="check the user and password in broker_admin_url (the client made by "
                                      "mosquitto_ctrl dynsec init)")
        self.client.subscribe(RESPONSE_TOPIC, qos=0)
        self._pump(lambda: self._suback is not None, f"the broker's answer to subscribing {RESPONSE_TOPIC}")
        assert self._suback is not None
        if self._suback.is_failure:
            raise TransportError(f"{address.username!r} may not subscribe to {RESPONSE_TOPIC}: {self._suback}",
                                 where=where, hint=ADMIN_HINT)

    def close(self) -> None:
        if self._open:
            self.client.disconnect()
            self.client.loop(timeout=0.01)   # hand the DISCONNECT to the socket
            self._open = False

    def run(self, commands: Sequence[Command]) -> list[Answer]:
        """Send ``commands`` as one message and wait for an answer to each; answers in order."""
        if not commands:
            return []
        ids = [f"edgefleet-{secrets.token_hex(8)}" for _ in commands]
        batch = [dict(command, correlationData=cid) for command, cid in zip(commands, ids, strict=True)]
        # QoS 0 both ways: every command waits for its answer anyway, and with QoS 1 the broker's PUBACK
        # before the answer costs ~40 ms a batch (Nagle against delayed ACKs on the broker's socket)
        info = self.client.publish(CONTROL_TOPIC, json.dumps({"commands": batch}), qos=0)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise TransportError(f"could not send {commands[0]['command']} to the broker: "
                                 f"{mqtt.error_string(info.rc)}", where=self.owner.where)

        def first_unanswered() -> str:
            command = next(c for c, cid in zip(commands, ids, strict=True) if cid not in self._answers)
            return f"{command['command']}{_subject(command)}"

        self._pump(lambda: all(cid in self._answers for cid in ids), lambda: f"the plugin's answer to "
                   f"{first_unanswered()}", hint=ADMIN_HINT)
        return [self._answers.pop(cid) for cid in ids]

    def call(self, commands: Sequence[Command]) -> list[Answer]:
        answers = self.run(commands)
        for command, answer in zip(commands, answers, strict=True):
            check(command, answer, where=self.owner.where)
        return answers

    def _pump(self, done: Callable[[], bool], what: str | Callable[[], str], hint: str | None = None) -> None:
        deadline = self.owner._monotonic() + self.owner.timeout_s
        while not done():
            if self.owner._monotonic() > deadline:
                waited = what() if callable(what) else what
                raise TransportError(f"no {waited} within {self.owner.timeout_s:g} s", where=self.owner.where,
                                     hint=hint)
            rc = self.client.loop(timeout=0.05)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._open = False
                raise TransportError(f"the broker closed the dynamic-security admin connection: "
                                     f"{mqtt.error_string(rc)}", where=self.owner.where, hint=ADMIN_HINT)


def _subject(command: Command) -> str:
    for key in ("username", "rolename", "groupname"):
        if key in command:
            return f" {command[key]!r}"
    return ""


def check(command: Command, answer: Answer, *, where: str = "broker_admin_url") -> Answer:
    """``answer`` if it carries no error, else :class:`DynsecCommandError` naming the command."""
    error = answer.get("error")
    if error:
        name = str(command.get("command"))
        raise DynsecCommandError(f"the dynamic-security plugin refused {name}{_subject(command)}: {error}",
                                 command=name, broker_error=str(error), where=where)
    return answer


def role_changes(rolename: str, wanted: Sequence[Acl], answer: Answer) -> list[Command]:
    """Commands that make role ``rolename`` hold exactly ``wanted``, given the answer to its ``getRole``."""
    if answer.get("error") == ROLE_NOT_FOUND:
        return [{"command": "createRole", "rolename": rolename, "acls": [a.as_json() for a in wanted]}]
    check({"command": "getRole", "rolename": rolename}, answer)
    held = {a.key: a for a in (Acl.from_json(x) for x in answer.get("data", {}).get("role", {}).get("acls", []))}
    want = {a.key: a for a in wanted}
    commands: list[Command] = []
    for key, acl in held.items():
        if want.get(key) != acl:
            commands.append({"command": "removeRoleACL", "rolename": rolename, "acltype": acl.acltype,
                             "topic": acl.topic})
    for key, acl in want.items():
        if held.get(key) != acl:
            commands.append({"command": "addRoleACL", "rolename": rolename} | acl.as_json())
    return commands


def _get_client(username: str) -> Command:
    return {"command": "getClient", "username": username}


def _get_role(rolename: str) -> Command:
    return {"command": "getRole", "rolename": rolename}


class DynsecIdentity:
    """The broker identities of a fleet, kept in the dynamic-security plugin
    (:class:`edgefleet.cloud.services.broker_identity.BrokerIdentity`)."""

    def __init__(self, client: DynsecClient, *, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def provision_device(self, device_id: str, password: str) -> None:
        """Create or update the device's client and role: this password (connections made with the
        previous one are dropped by the plugin), its device id as client id, exactly its own role,
        enabled."""
        role = device_role(device_id)
        with self.client.session() as s:
            client_answer, role_answer = s.run([_get_client(device_id), _get_role(role)])
            commands = role_changes(role, device_acls(device_id, self.prefix), role_answer)
            if client_answer.get("error") == CLIENT_NOT_FOUND:
                commands.append({"command": "createClient", "username": device_id, "password": password,
                                 "clientid": device_id, "roles": [{"rolename": role}]})
            else:
                held = check(_get_client(device_id), client_answer)["data"]["client"]
                commands += _device_client_changes(device_id, password, role, held)
            s.call(commands)
        log.info("dynamic security: client and role %s provisioned for device %s", role, device_id)

    def disable_device(self, device_id: str) -> None:
        """Disable the device's client (the plugin disconnects it and refuses it from then on)."""
        command = {"command": "disableClient", "username": device_id}
        (answer,) = self.client.run([command])
        if answer.get("error") == CLIENT_NOT_FOUND:
            log.info("dynamic security: device %s has no client to disable", device_id)
            return
        check(command, answer, where=self.client.where)
        log.info("dynamic security: client of device %s disabled", device_id)

    def ensure_controller(self, *, username: str, password: str | None, shared_group: str | None = None) -> None:
        """Make the role :data:`CONTROLLER_ROLE` hold exactly what the controller needs and give it to
        the controller's user (created with ``password`` if the plugin has no such client; an
        existing client keeps its password and its other roles)."""
        with self.client.session() as s:
            client_answer, role_answer, defaults = s.run([_get_client(username), _get_role(CONTROLLER_ROLE),
                                                          {"command": "getDefaultACLAccess"}])
            commands = role_changes(CONTROLLER_ROLE, controller_acls(self.prefix, shared_group), role_answer)
            if client_answer.get("error") == CLIENT_NOT_FOUND:
                if not password:
                    raise ConfigError(f"the broker has no client {username!r} and broker_url gives no password "
                                      "to create it with", where="broker_url",
                                      hint="mqtt://<controller user>:<password>@host:port")
                commands.append({"command": "createClient", "username": username, "password": password,
                                 "roles": [{"rolename": CONTROLLER_ROLE}]})
            else:
                held = check(_get_client(username), client_answer)["data"]["client"]
                if CONTROLLER_ROLE not in _roles(held):
                    commands.append({"command": "addClientRole", "username": username, "rolename": CONTROLLER_ROLE})
                if held.get("disabled"):
                    log.warning("dynamic security: the controller's client %r is disabled; the controller cannot "
                                "connect until it is enabled (mosquitto_ctrl dynsec enableClient)", username)
            s.call(commands)
        for acl in defaults.get("data", {}).get("acls", []):
            if acl.get("acltype") in (PUBLISH_SEND, "subscribe") and acl.get("allow"):
                log.warning("dynamic security: the broker's default ACL access allows %s to every client: devices "
                            "are not confined to their own topics (mosquitto_ctrl dynsec setDefaultACLAccess %s "
                            "deny)", acl["acltype"], acl["acltype"])
        log.info("dynamic security: role %s ready for the controller's user %r", CONTROLLER_ROLE, username)


def _roles(client: dict[str, Any]) -> list[str]:
    return [str(r.get("rolename")) for r in client.get("roles", [])]


def _device_client_changes(device_id: str, password: str, role: str, held: dict[str, Any]) -> list[Command]:
    commands: list[Command] = [{"command": "setClientPassword", "username": device_id, "password": password}]
    if held.get("clientid") != device_id:
        commands.append({"command": "setClientId", "username": device_id, "clientid": device_id})
    roles = _roles(held)
    commands += [{"command": "removeClientRole", "username": device_id, "rolename": r} for r in roles if r != role]
    if role not in roles:
        commands.append({"command": "addClientRole", "username": device_id, "rolename": role})
    commands += [{"command": "removeGroupClient", "groupname": g.get("groupname"), "username": device_id}
                 for g in held.get("groups", [])]
    if held.get("disabled"):
        commands.append({"command": "enableClient", "username": device_id})
    return commands
