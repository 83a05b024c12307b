"""Parts the fault tests break on purpose, each started by the test itself and removed after it: a
Mosquitto of its own (config and persistence file in a tmp dir) that can be restarted with or without
its store, a PostgreSQL instance of its own (``initdb`` into a tmp dir, ``pg_ctl`` start/stop; the
machine's shared PostgreSQL is never touched), a network namespace with a veth pair and a shaped link
for a device behind a slow, lossy connection, a TCP relay that drops connections part-way, and a small
file system (tmpfs) for a device whose disk fills up.

A part the machine lacks (no ``initdb``, not root for ``ip netns``/``mount``) -> ``missing_part``: the
test skips locally and FAILS under ``CI=true``."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from testkit import MOSQUITTO_BIN, free_port, missing_part, port_open, wait_until


def _run(*args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({done.returncode}): {(done.stderr or done.stdout)[-2000:]}")
    return done


# --------------------------------------------------------------------------- Mosquitto


class Mosquitto:
    """A Mosquitto of the test's own on a free port, listening on 127.0.0.1 and any ``extra_hosts``, with
    persistence in ``workdir`` (``mosquitto.db``); :meth:`restart` with ``keep_store=False`` deletes the
    store between stop and start, as a broker that lost its disk (or never had persistence) comes back."""

    def __init__(self, workdir: Path, *, extra_hosts: tuple[str, ...] = ()) -> None:
        if not Path(MOSQUITTO_BIN).exists():
            missing_part("mosquitto binary not found (apt-get install mosquitto)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = free_port()
        self.store = workdir / "mosquitto.db"
        self.log_path = workdir / "mosquitto.log"
        self.conf = workdir / "mosquitto.conf"
        listeners = "".join(f"listener {self.port} {host}\n" for host in ("127.0.0.1", *extra_hosts))
        self.conf.write_text(f"per_listener_settings false\n{listeners}allow_anonymous true\npersistence true\n"
                             f"persistence_location {workdir}/\nautosave_interval 1\nmax_queued_messages 100000\n"
                             # as root, mosquitto drops to its own user, which cannot write here
                             + ("user root\n" if os.geteuid() == 0 else ""))
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def url_on(self, host: str) -> str:
        return f"mqtt://{host}:{self.port}"

    def start(self) -> Mosquitto:
        with open(self.log_path, "ab") as log:   # the child keeps its own descriptor
            self.proc = subprocess.Popen([MOSQUITTO_BIN, "-c", str(self.conf)], stdout=log, stderr=log)
        end = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port, 0.2):
            if self.proc.poll() is not None or time.monotonic() > end:
                raise AssertionError(f"private mosquitto did not start:\n{self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()   # SIGTERM: mosquitto writes its store on the way out
            self.proc.wait(10)
        self.proc = None

    def restart(self, *, keep_store: bool, down_s: float = 1.0) -> None:
        self.stop()
        if not keep_store:
            self.store.unlink(missing_ok=True)
        time.sleep(down_s)   # an outage the clients notice (their reconnects fail meanwhile)
        self.start()
        self.restarts += 1


# --------------------------------------------------------------------------- PostgreSQL


def _postgres_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[-3])
                   if Path(p).parts[-3].isdigit() else 0)
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path:
        return on_path
    missing_part(f"PostgreSQL's {name} not found (apt-get install postgresql)")


class PrivatePostgres:
    """A PostgreSQL server of the test's own: ``initdb`` into a fresh directory, ``pg_ctl start`` on a
    free loopback port with its socket in that directory, trust authentication. As root it runs as the
    ``postgres`` user (initdb refuses root), in a directory that user owns."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="edgefleet-pg-"))
        self.data, self.log_path = self.root / "data", self.root / "postgres.log"
        self._as: list[str] = []
        if os.geteuid() == 0:
            try:
                import pwd
                account = pwd.getpwnam("postgres")
            except KeyError:
                missing_part("running as root and there is no 'postgres' user to run a private PostgreSQL as")
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._as = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups", "--"]

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return _run(*self._as, self.pg_ctl, "-D", str(self.data), *args, timeout=timeout)

    def init(self) -> PrivatePostgres:
        _run(*self._as, self.initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
             "--no-sync", timeout=120)
        return self

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._ctl("-o", options, "-l", str(self.log_path), "-w", "-t", "60", "start", timeout=90)

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "-t", "60", "stop", timeout=90)

    def running(self) -> bool:
        return self._ctl("status", timeout=30).returncode == 0 if self.data.exists() else False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def remove(self) -> None:
        if self.data.exists():
            _run(*self._as, self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)


# --------------------------------------------------------------------------- a device behind a bad link


@dataclass
class LinkNamespace:
    """A network namespace joined to this one by a veth pair (``host_ip`` here, ``device_ip`` inside),
    each end shaped by :meth:`shape`. Commands run inside with :attr:`exec_prefix`."""

    name: str = field(default_factory=lambda: f"ef{uuid.uuid4().hex[:8]}")
    subnet: int = field(default_factory=lambda: 16 + int(uuid.uuid4().hex[:4], 16) % 200)
    shaping: str = "none"

    @property
    def host_if(self) -> str:
        return f"{self.name}h"

    @property
    def device_if(self) -> str:
        return f"{self.name}d"

    @property
    def host_ip(self) -> str:
        return f"10.231.{self.subnet}.1"

    @property
    def device_ip(self) -> str:
        return f"10.231.{self.subnet}.2"

    @property
    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def create(self) -> LinkNamespace:
        if not shutil.which("ip"):
            missing_part("iproute2's ip not found (apt-get install iproute2)")
        made = _run("ip", "netns", "add", self.name, check=False)
        if made.returncode != 0:
            missing_part(f"cannot create a network namespace (needs root): {made.stderr.strip()}")
        inside = self.exec_prefix
        for cmd in (["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.device_if],
                    ["ip", "link", "set", self.device_if, "netns", self.name],
                    ["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if],
                    ["ip", "link", "set", self.host_if, "up"],
                    [*inside, "ip", "addr", "add", f"{self.device_ip}/30", "dev", self.device_if],
                    [*inside, "ip", "link", "set", self.device_if, "up"],
                    [*inside, "ip", "link", "set", "lo", "up"]):
            _run(*cmd)
        return self

    def shape(self, *, loss_percent: float, delay_ms: int, rate_kbit: int) -> str:
        """Where the kernel has netem: the device's end drops ``loss_percent`` of what it sends (requests,
        ACKs, MQTT publishes) and both ends delay by ``delay_ms``; the controller's end limits the rate.
        (Loss on the data direction too would make a few MB take minutes at that delay: TCP's throughput
        falls with the square root of the loss rate.) Where the kernel lacks netem (``sch_netem`` not built),
        an HTB rate limit on both ends -- the slow part only. The drops that force resuming come from
        :class:`DroppingRelay` either way. Returns what was applied (for the test's messages)."""
        device_end = (self.exec_prefix, self.device_if, ["loss", f"{loss_percent}%", "delay", f"{delay_ms}ms"])
        host_end = ([], self.host_if, ["delay", f"{delay_ms}ms", "rate", f"{rate_kbit}kbit"])
        tried = [_run(*prefix, "tc", "qdisc", "add", "dev", dev, "root", "netem", *args, check=False)
                 for prefix, dev, args in (device_end, host_end)]
        if all(t.returncode == 0 for t in tried):
            self.shaping = (f"netem: device sends with loss {loss_percent}% delay {delay_ms}ms; controller side "
                            f"delay {delay_ms}ms rate {rate_kbit}kbit")
            return self.shaping
        for prefix, dev, _ in (device_end, host_end):
            _run(*prefix, "tc", "qdisc", "del", "dev", dev, "root", check=False)
            _run(*prefix, "tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10")
            _run(*prefix, "tc", "class", "add", "dev", dev, "parent", "1:", "classid", "1:10", "htb", "rate",
                 f"{rate_kbit}kbit")
        reason = next(t.stderr.strip() for t in tried if t.returncode != 0)
        self.shaping = f"htb rate {rate_kbit}kbit both ways (no netem here: {reason})"
        return self.shaping

    def delete(self) -> None:
        _run("ip", "netns", "del", self.name, check=False)
        _run("ip", "link", "del", self.host_if, check=False)   # normally gone with the namespace


class DroppingRelay:
    """A TCP relay on ``listen`` to ``target`` that drops every connection once it has carried
    ``drop_after`` bytes towards the client (as a radio link or a NAT that loses a flow does), and
    records the HTTP request line and ``Range`` header of each connection's first request."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], *, drop_after: int) -> None:
        self.listen, self.target, self.drop_after = listen, target, drop_after
        self.requests: list[dict[str, str | None]] = []
        self.drops = 0
        self._server = socket.create_server(listen, reuse_port=False)
        self._server.settimeout(0.2)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._serve, name="relay", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.listen[0]}:{self.listen[1]}"

    def start(self) -> DroppingRelay:
        self._accept.start()
        return self

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._pipe, args=(client,), daemon=True)
            t.start()
            self._threads.append(t)

    def _pipe(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        first = threading.Event()

        def up() -> None:
            try:
                while chunk := client.recv(65536):
                    if not first.is_set():
                        first.set()
                        self._note(chunk)
                    upstream.sendall(chunk)
            except OSError:
                pass
            finally:
                _shut(upstream)

        threading.Thread(target=up, daemon=True).start()
        carried = 0
        try:
            while not self._stop.is_set():
                chunk = upstream.recv(65536)
                if not chunk:
                    break
                room = self.drop_after - carried
                if len(chunk) >= room:
                    client.sendall(chunk[:room])
                    self.drops += 1
                    break
                client.sendall(chunk)
                carried += len(chunk)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):   # shutdown first: it wakes the other direction's recv at once
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _note(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        ranges = [ln.split(b":", 1)[1].strip().decode() for ln in lines[1:] if ln.lower().startswith(b"range:")]
        self.requests.append({"line": lines[0].decode(errors="replace"), "range": ranges[0] if ranges else None})

    def stop(self) -> None:
        self._stop.set()
        self._server.close()
        self._accept.join(5)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)


# --------------------------------------------------------------------------- a small disk


class SmallDisk:
    """A tmpfs of ``size_bytes`` mounted on ``path`` (root only; :func:`missing_part` otherwise)."""

    def __init__(self, path: Path, size_bytes: int) -> None:
        self.path, self.size = path, size_bytes

    def mount(self) -> SmallDisk:
        self.path.mkdir(parents=True, exist_ok=True)
        done = _run("mount", "-t", "tmpfs", "-o", f"size={self.size},mode=0700", "tmpfs", str(self.path), check=False)
        if done.returncode != 0:
            missing_part(f"cannot mount a small tmpfs for the device's disk (needs root): {done.stderr.strip()}")
        return self

    def free(self) -> int:
        return shutil.disk_usage(self.path).free

    def unmount(self) -> None:
        wait_until(lambda: _run("umount", str(self.path), check=False).returncode == 0
                   or not os.path.ismount(self.path), what=f"{self.path} unmounted", timeout=20, poll_s=0.5)


# --------------------------------------------------------------------------- real agents


class Devices:
    """Real ``edgefleet-agent`` processes enrolled over REST, each optionally run behind a command prefix
    (``ip netns exec NAME``), with their local endpoint (stats, inference) at hand."""

    def __init__(self, base: Path, *, token: str) -> None:
        self.base, self.token = base, token
        self.dirs: dict[str, Path] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def enroll(self, url: str, device_id: str, *, tags: tuple[str, ...] = (), settings: dict[str, object] | None = None,
               prefix: tuple[str, ...] = ()) -> Path:
        from edgefleet.cloud.cli.client import ControllerClient
        with ControllerClient(url, self.token) as api:
            secret = api.post("/api/v1/enrollment-tokens", {"device_id": device_id, "tags": list(tags)})["token"]
        state_dir = self.base / "devices" / device_id
        sets = [a for k, v in (settings or {}).items() for a in ("--set", f"{k}={v}")]
        done = subprocess.run([*prefix, sys.executable, "-m", "edgefleet.agent.daemon", "enroll", "--controller", url,
                               "--token", secret, "--state-dir", str(state_dir), *sets],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        self.dirs[device_id] = state_dir
        return state_dir

    def run(self, device_id: str, *, prefix: tuple[str, ...] = (), wait: bool = True) -> None:
        state_dir = self.dirs[device_id]
        (state_dir / "inference.addr").unlink(missing_ok=True)
        with open(state_dir / "agent.log", "ab") as log:   # the child keeps its own descriptor
            self.procs[device_id] = subprocess.Popen(
                [*prefix, sys.executable, "-m", "edgefleet.agent.daemon", "--config", str(state_dir / "agent.toml"),
                 "--log-level", "DEBUG"], stdout=log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready(device_id)

    def wait_ready(self, device_id: str) -> None:
        wait_until(lambda: (self.dirs[device_id] / "inference.addr").exists() or self._dead(device_id),
                   what=f"agent {device_id} ready", timeout=60)

    def _dead(self, device_id: str) -> bool:
        if self.procs[device_id].poll() is not None:
            raise AssertionError(f"agent {device_id} exited:\n{self.log(device_id)[-3000:]}")
        return False

    def log(self, device_id: str) -> str:
        return (self.dirs[device_id] / "agent.log").read_text(errors="replace")

    def local(self, device_id: str, path: str, body: dict | None = None, *, prefix: tuple[str, ...] = ()) -> dict:
        """GET (or POST ``body`` to) the agent's local endpoint."""
        import json
        import urllib.request
        addr = (self.dirs[device_id] / "inference.addr").read_text().strip()
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://{addr}{path}", data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def stats(self, device_id: str) -> dict:
        return self.local(device_id, "/v1/stats")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
