"""A private Mosquitto with the dynamic-security plugin, for the broker-identity tests: found at run
time (``mosquitto``, ``mosquitto_ctrl`` on the PATH, the plugin beside the broker's libraries or
named by ``MOSQUITTO_DYNSEC_PLUGIN``), initialised with ``mosquitto_ctrl dynsec init`` as an operator
would, on a free port under the test's own directory."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sysconfig
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from testkit import MOSQUITTO_BIN, free_port, wait_until

"""The broker binary (Debian installs it outside a user's PATH). Defined here, not taken from the
integration tests' conftest, so this kit imports cleanly from tests/ui too."""
PLUGIN = "mosquitto_dynamic_security.so"
ADMIN_USER = "edgefleet-admin"


def _ldconfig_dirs() -> list[Path]:
    """Directories the dynamic linker knows libmosquitto in (``ldconfig -p``)."""
    ldconfig = shutil.which("ldconfig")
    if not ldconfig:
        return []
    try:
        listing = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [Path(line.rsplit("=>", 1)[1].strip()).parent for line in listing.splitlines()
            if "libmosquitto" in line and "=>" in line]


def find_dynsec_plugin() -> Path | None:
    """The plugin's shared object: ``MOSQUITTO_DYNSEC_PLUGIN``, else searched in the library
    directories of the installed broker (its prefix's ``lib``, multiarch and ``mosquitto/`` subfolders,
    and where ``ldconfig`` finds libmosquitto)."""
    named = os.environ.get("MOSQUITTO_DYNSEC_PLUGIN")
    if named:
        return Path(named) if Path(named).is_file() else None
    dirs: list[Path] = []
    if Path(MOSQUITTO_BIN).is_file():
        prefix = Path(MOSQUITTO_BIN).resolve().parent.parent
        multiarch = sysconfig.get_config_var("MULTIARCH") or ""
        dirs += [prefix / "lib" / multiarch, prefix / "lib64", prefix / "lib"]
    dirs += _ldconfig_dirs()
    for directory in dirs:
        for candidate in (directory / PLUGIN, directory / "mosquitto" / PLUGIN):
            if candidate.is_file():
                return candidate
    return None


def missing_parts() -> str | None:
    """What this machine lacks to run the tests (``None``: nothing)."""
    if not Path(MOSQUITTO_BIN).is_file():
        return "mosquitto is not installed (apt-get install mosquitto)"
    if not shutil.which("mosquitto_ctrl"):
        return "mosquitto_ctrl is not installed (apt-get install mosquitto-clients)"
    if find_dynsec_plugin() is None:
        return f"{PLUGIN} not found (set MOSQUITTO_DYNSEC_PLUGIN to its path)"
    return None


class DynsecMosquitto:
    """Mosquitto on a free loopback port with the dynamic-security plugin, no anonymous access, and
    its configuration in ``workdir/dynamic-security.json`` (made by ``mosquitto_ctrl dynsec init``)."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = free_port()
        self.admin_password = secrets.token_urlsafe(12)
        self.config_file = workdir / "dynamic-security.json"
        subprocess.run([shutil.which("mosquitto_ctrl") or "mosquitto_ctrl", "dynsec", "init", str(self.config_file),
                        ADMIN_USER, self.admin_password], check=True, capture_output=True, timeout=30)
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous false\n"
                             f"plugin {find_dynsec_plugin()}\nplugin_opt_config_file {self.config_file}\n"
                             # as root, mosquitto drops to its own user, which cannot write here
                             + ("user root\n" if os.geteuid() == 0 else ""))
        self.log_path = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def admin_url(self) -> str:
        return f"mqtt://{ADMIN_USER}:{self.admin_password}@127.0.0.1:{self.port}"

    def url(self, username: str, password: str) -> str:
        return f"mqtt://{username}:{password}@127.0.0.1:{self.port}"

    def start(self) -> DynsecMosquitto:
        with open(self.log_path, "ab") as log:   # the child keeps its own descriptor
            self.proc = subprocess.Popen([MOSQUITTO_BIN, "-c", str(self.conf)], stdout=log, stderr=log)
        wait_until(lambda: self._listening() or self.proc.poll() is not None, "mosquitto listening", timeout=10)
        if self.proc.poll() is not None:
            raise RuntimeError(f"mosquitto did not start: {self.log_path.read_text()[-2000:]}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), 0.2).close()
            return True
        except OSError:
            return False


class Client:
    """A plain paho client (MQTT 3.1.1, like the agent) that records what happens to it: the
    CONNACK, each SUBACK, every message, a disconnect."""

    def __init__(self, broker: DynsecMosquitto, *, username: str, password: str, client_id: str) -> None:
        self.connack: str | None = None
        self.connected = threading.Event()
        self.refused = threading.Event()
        self.disconnected = threading.Event()
        self.subacks: dict[int, list[bool]] = {}
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(60, 60)      # one attempt is what a test looks at
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port, keepalive=10)
        self.client.loop_start()
        wait_until(lambda: self.connack is not None, "the broker's CONNACK", timeout=10)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connack = str(reason_code)
        (self.refused if reason_code.is_failure else self.connected).set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.disconnected.set()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self.subacks[mid] = [not rc.is_failure for rc in reason_codes]

    def _on_message(self, client, userdata, message) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload)))

    @property
    def accepted(self) -> bool:
        return self.connected.is_set() and not self.refused.is_set()

    def subscribe(self, topic: str) -> bool:
        """Whether the broker granted the subscription."""
        _, mid = self.client.subscribe(topic, qos=1)
        wait_until(lambda: mid in self.subacks, f"SUBACK for {topic}", timeout=10)
        return self.subacks[mid] == [True]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def received(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

