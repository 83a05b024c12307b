"""The manual Mosquitto setup of docs/operations.md §3, as documented: a private Mosquitto with the
controller's exported ``password_file`` and the ``acl_file`` taken verbatim from the docs. A device
reads and writes only its own topics (another device's orders, hello and telemetry never reach anyone),
the controller reads device topics and writes orders, and a decommissioned device drops out of the
next export and can no longer connect."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from dynseckit import Client

from edgefleet.protocol.messages import Hello, encode
from edgefleet.protocol.topics import DEFAULT_PREFIX, DEVICE_KINDS, cmd, device_topic, hello

from controllerkit import controller_settings, enroll, running_controller
from testkit import MOSQUITTO_BIN, free_port, missing_part, wait_until

pytestmark = pytest.mark.integration

CONTROLLER_USER = "edgefleet-controller"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def documented_acl() -> str:
    """The ``conf`` block after "`/etc/mosquitto/edgefleet.acl` confines" in docs/operations.md."""
    text = DOCS.read_text()
    match = re.search(r"`/etc/mosquitto/edgefleet\.acl` confines.*?```conf\n(.*?)```", text, re.S)
    assert match, "the ACL file is no longer in docs/operations.md"
    return match.group(1)


class FileMosquitto:
    """Mosquitto on a free loopback port with ``password_file`` + ``acl_file`` and no anonymous access;
    :meth:`reload` is the documented SIGHUP after a new export."""

    def __init__(self, workdir: Path, controller_password: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.controller_passwd = workdir / "controller.passwd"
        subprocess.run([shutil.which("mosquitto_passwd") or "mosquitto_passwd", "-b", "-c",
                        str(self.controller_passwd), CONTROLLER_USER, controller_password],
                       check=True, capture_output=True, timeout=30)
        self.passwd = workdir / "passwd"
        self.passwd.write_text(self.controller_passwd.read_text())
        self.acl = workdir / "edgefleet.acl"
        self.acl.write_text(documented_acl())
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(f"per_listener_settings false\nlistener {self.port} 127.0.0.1\nallow_anonymous false\n"
                             f"password_file {self.passwd}\nacl_file {self.acl}\n"
                             + ("user root\n" if os.geteuid() == 0 else ""))
        self.log = workdir / "mosquitto.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO_BIN, "-c", str(self.conf)], stdout=log, stderr=log)

    def url(self, user: str, password: str) -> str:
        return f"mqtt://{user}:{password}@127.0.0.1:{self.port}"

    def export(self, passwd_export: str) -> None:
        """The documented cron job: controller user + the controller's export, then SIGHUP."""
        self.passwd.write_text(self.controller_passwd.read_text() + passwd_export)
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def broker(tmp_path):
    if not Path(MOSQUITTO_BIN).is_file() or not shutil.which("mosquitto_passwd"):
        message = "mosquitto and mosquitto_passwd are needed (apt-get install mosquitto mosquitto-clients)"
        missing_part(message)
    password = secrets.token_urlsafe(12)
    b = FileMosquitto(tmp_path / "mosquitto", password)
    b.controller_password = password
    wait_until(lambda: _connects(b, CONTROLLER_USER, password) or b.proc.poll() is not None, "mosquitto up",
               timeout=15)
    assert b.proc.poll() is None, b.log.read_text()[-2000:]
    yield b
    b.stop()


def _connects(broker: FileMosquitto, user: str, password: str) -> bool:
    try:
        client = Client(broker, username=user, password=password, client_id=f"probe-{secrets.token_hex(3)}")
    except (OSError, AssertionError, TimeoutError):
        return False
    ok = client.accepted
    client.close()
    return ok


def _device(broker: FileMosquitto, creds: dict) -> Client:
    return Client(broker, username=creds["mqtt_username"], password=creds["mqtt_password"],
                  client_id=creds["device_id"])


def _hello(creds: dict, topic: str, *, about: str | None = None) -> bytes:
    message = Hello(device_id=about or creds["device_id"], agent_version="9.9.9", arch="forged" if about else "x86_64",
                    os="linux", runtimes=["onnx"])
    return creds["key"].seal(topic, encode(message))


def test_the_documented_acl_confines_each_device_to_its_own_topics(tmp_path, broker, release_key):
    prefix = DEFAULT_PREFIX                        # the documented ACL names the default prefix literally
    settings = controller_settings(tmp_path, broker_url=broker.url(CONTROLLER_USER, broker.controller_password),
                                   prefix=prefix, release_pub=release_key.public_path)
    with running_controller(settings) as (client, controller):
        a, b = enroll(client, "cam-a"), enroll(client, "cam-b")
        export = client.get("/api/v1/broker/passwd")
        assert export.status_code == 200 and "cam-a:" in export.text and "cam-b:" in export.text
        broker.export(export.text)
        wait_until(lambda: _connects(broker, "cam-a", a["mqtt_password"]), "cam-a's password loaded", timeout=15)

        # the controller's user sees device topics as the controller does, but not orders
        observer = Client(broker, username=CONTROLLER_USER, password=broker.controller_password,
                          client_id="observer")
        for kind in DEVICE_KINDS:
            observer.subscribe(f"{prefix}/devices/+/{kind}")
        dev_a, dev_b = _device(broker, a), _device(broker, b)
        assert dev_a.accepted and dev_b.accepted
        dev_a.subscribe(cmd("cam-a", prefix))
        dev_b.subscribe(cmd("cam-b", prefix))
        dev_a.subscribe(f"{prefix}/#")             # may be granted by SUBACK; the ACL filters what it gets

        # cam-a speaks as cam-b on every topic kind and sends orders to cam-b: the broker drops it all
        for kind in DEVICE_KINDS:
            topic = device_topic("cam-b", kind, prefix)
            dev_a.publish(topic, _hello(a, topic, about="cam-b"))
        dev_a.publish(cmd("cam-b", prefix), b"forged order for cam-b")
        own = hello("cam-a", prefix)
        dev_a.publish(own, _hello(a, own))
        controller.publish(cmd("cam-b", prefix), b"order for cam-b")
        controller.publish(cmd("cam-a", prefix), b"order for cam-a")

        wait_until(lambda: client.get("/api/v1/devices/cam-a").json()["arch"] == "x86_64", "cam-a's hello stored")
        wait_until(lambda: dev_b.received(cmd("cam-b", prefix)), "cam-b's order delivered")
        wait_until(lambda: dev_a.received(cmd("cam-a", prefix)), "cam-a's order delivered")
        wait_until(lambda: observer.received(own), "cam-a's hello routed to the controller's user")
        assert dev_b.received(cmd("cam-b", prefix)) == [b"order for cam-b"]
        assert [t for t, _ in dev_a.messages if "/cam-b/" in t] == []          # nothing of cam-b's reached cam-a
        assert [t for t, _ in observer.messages if "/cam-b/" in t] == []
        victim = client.get("/api/v1/devices/cam-b").json()
        assert victim["online"] is False and victim["arch"] is None

        # decommissioned: out of the next export, and the broker refuses it after the reload
        assert client.post("/api/v1/devices/cam-b/decommission").status_code == 200
        export = client.get("/api/v1/broker/passwd").text
        assert "cam-b:" not in export and "cam-a:" in export
        dev_b.close()
        broker.export(export)
        wait_until(lambda: not _connects(broker, "cam-b", b["mqtt_password"]), "cam-b refused", timeout=15)
        assert _connects(broker, "cam-a", a["mqtt_password"])
        for c in (observer, dev_a):
            c.close()
