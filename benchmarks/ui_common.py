"""What the UI benchmarks share: a real controller app on SQLite (no MQTT) with a fleet bulk-inserted into
it, and a client signed in as the admin (Starlette's TestClient: routing, queries, Jinja, response)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import insert
from sqlmodel import Session

from edgefleet.cloud.app import create_app
from edgefleet.cloud.settings import ControllerSettings
from edgefleet.cloud.store.tables import Device, TelemetryRecord
from edgefleet.cloud.ui import csrf

ADMIN = "eft_bench-admin-0123456789abcdef"


class NoTransport:
    connected = True

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def publish(self, topic: str, payload: bytes) -> bool:
        return True


def insert_fleet(session: Session, n: int, now: float, *, tags: Callable[[int], list[str]],
                 update_state: Callable[[int], str] = lambda i: "committed", enrolled_ago_s: float = 86400.0) -> None:
    """``n`` devices ``dev-00000``... (two bundle versions, a third offline) and a judged drift window for a
    tenth of them (alarm, warn, ok in turn)."""
    session.execute(insert(Device), [
        {"id": f"dev-{i:05d}", "tags": tags(i), "online": i % 3 != 0, "update_state": update_state(i),
         "last_seen": now - i,
         "installed": {"name": "animals", "version": "1.3.0" if i % 4 == 0 else "1.2.0", "build": 1,
                       "digest": "a" * 64, "runtime": "onnx"},
         "enrolled_at": now - enrolled_ago_s, "mqtt_password_hash": "", "message_key": "", "runtimes": ["onnx"],
         "last_sequence": 0, "enrolled_by": "", "broker_disable_pending": False} for i in range(n)])
    session.execute(insert(TelemetryRecord), [
        {"msg_id": f"w{i}", "device_id": f"dev-{i:05d}", "window_seq": 1, "window_start": now - 120,
         "window_end": now - 60, "drift_level": ("alarm", "warn", "ok")[i % 3], "drift_psi": 0.3 - 0.1 * (i % 3),
         "received_at": now - 60, "requests": 100, "batches": 100, "samples": 100, "errors": 0, "labelled": 0,
         "correct": 0, "latency_bounds": [], "latency_counts": [], "predictions": {}, "confusion": {}, "raw": ""}
        for i in range(0, n, 10)])


@contextmanager
def signed_in(data_dir: Path, seed: Callable[[Session, float], None]) -> Iterator[tuple[TestClient, Any, float]]:
    """``(client, app, now)``: a controller in ``data_dir``, ``seed(session, now)`` committed, the admin signed in."""
    settings = ControllerSettings(data_dir=data_dir, broker_url="mqtt://127.0.0.1:1", admin_token=ADMIN)
    app = create_app(settings, transport_factory=lambda url, on_message: NoTransport(),
                     reconcile_in_background=False)
    with TestClient(app, follow_redirects=False) as client:
        now = time.time()
        with app.state.controller.session() as session:
            seed(session, now)
        client.get("/ui/login")
        client.post("/ui/login", data={"token": ADMIN, "next": "/",
                                       "csrf_token": client.cookies.get(csrf.LOGIN_COOKIE, "")})
        yield client, app, now
