"""What ``benchmarks/fleet.py`` needs to run several controllers: a PostgreSQL database of its own, a
round-robin TCP balancer in front of the controllers (their ``public_url``), the CPU and RSS of a
process with its children from /proc, and who holds a lease. The database and the balancer are the test
kits' own (tests/testkit.py, tests/proxykit.py)."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from proxykit import Balancer  # noqa: E402

import testkit  # noqa: E402

__all__ = ["Balancer", "cpu_s", "holder_pid", "lease", "load_average", "postgres_database", "rss_mb"]

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def postgres_database() -> contextlib.AbstractContextManager[str]:
    """A database of its own on 127.0.0.1:5432 (``tests/testkit.py``), dropped afterwards; its SQLAlchemy URL."""
    def missing(why: str) -> NoReturn:
        raise SystemExit(f"{why}: start it, or give --database-url a reachable server")
    return testkit.postgres_database(missing)


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
