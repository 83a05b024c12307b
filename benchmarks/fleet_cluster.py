"""What ``benchmarks/fleet.py`` needs to run several controllers: a PostgreSQL database of its own, a
round-robin TCP balancer in front of the controllers (their ``public_url``), the CPU and RSS of a
process with its children from /proc, and who holds a lease. Benchmarks do not import from tests/."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

from edgefleet.cloud.ports import free_port

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
PG_HOST, PG_PORT = "127.0.0.1", 5432


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A database of its own on 127.0.0.1:5432 (trust auth, user postgres or root), dropped afterwards;
    its SQLAlchemy URL. No other database is touched."""
    import psycopg

    errors, conn, user = [], None, ""
    for user in ("postgres", "root"):
        try:
            conn = psycopg.connect(host=PG_HOST, port=PG_PORT, dbname="postgres", user=user, autocommit=True,
                                   connect_timeout=3)
            break
        except psycopg.OperationalError as exc:
            errors.append(f"{user}: {exc}".strip())
    if conn is None:
        raise SystemExit(f"PostgreSQL not reachable on {PG_HOST}:{PG_PORT} ({'; '.join(errors)}): "
                         "start it, or give --database-url a reachable server")
    name = f"edgefleet_bench_{uuid.uuid4().hex[:12]}"
    conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{user}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


def lease(database_url: str, name: str) -> tuple[str, int, float]:
    """(holder, generation, expires_at) of lease ``name``, or ("", 0, 0.0) when nobody holds it."""
    import psycopg

    conninfo = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo, connect_timeout=5) as conn:
        row = conn.execute("SELECT holder, generation, expires_at FROM leases WHERE name = %s", (name,)).fetchone()
    return (str(row[0]), int(row[1]), float(row[2])) if row else ("", 0, 0.0)


def holder_pid(holder: str) -> int | None:
    """The pid in a lease holder (``host:pid:random``, services/leases.py::instance_name)."""
    parts = holder.split(":")
    return int(parts[-2]) if len(parts) >= 3 and parts[-2].isdigit() else None


def family(pid: int) -> list[int]:
    """The process and its descendants (a controller's decode workers are child processes)."""
    out, todo = [], [pid]
    while todo:
        p_ = todo.pop()
        out.append(p_)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p_}/task").iterdir():
                with contextlib.suppress(OSError):
                    todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def cpu_s(pid: int, *, children: bool = False) -> float:
    """User + system CPU seconds of a process, with its descendants if asked (0 for a process gone)."""
    total = 0.0
    for p_ in family(pid) if children else [pid]:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p_}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def rss_mb(pid: int, *, children: bool = False) -> float:
    total = 0.0
    for p_ in family(pid) if children else [pid]:
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{p_}/statm").read_text().split()[1]) * PAGE / 1e6
    return total


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class Balancer:
    """Round-robin TCP balancer on ``127.0.0.1:<port>``, as an operator's haproxy would be: each new
    connection goes to the next upstream that accepts it, so a dead controller is passed over."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.upstreams: list[int] = []
        self._next = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port), backlog=1024)
        threading.Thread(target=self._accept, name="balancer", daemon=True).start()

    def _connect(self) -> socket.socket | None:
        with self._lock:
            ports, start = list(self.upstreams), self._next
            self._next += 1
        for i in range(len(ports)):
            try:
                upstream = socket.create_connection(("127.0.0.1", ports[(start + i) % len(ports)]), timeout=2)
            except OSError:
                continue
            upstream.settimeout(None)
            return upstream
        return None

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = self._connect()
        if upstream is None:
            client.close()
            return
        threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
        _pipe(client, upstream)

    def close(self) -> None:
        self._listener.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    for s in (src, dst):
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()

