"""The device list page (/ui/devices) at fleet scale: the time to render one page (50 rows) for a fleet of
10 000 devices against the same page for 100 devices, measured in the same run (the ratio is the result;
the list filters, sorts and pages in SQL, so the ratio should stay near 1, not near 100).

Each fleet is a real controller app on SQLite (its own temp dir), the devices bulk-inserted with a judged
drift window each for a tenth of them; pages are fetched through the app (Starlette's TestClient, signed
in as the admin), so routing, the query, Jinja and the response are all in the time.

    python benchmarks/ui_device_list.py [--small 100] [--large 10000] [--repeat 15]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import insert

from edgefleet.cloud.app import create_app
from edgefleet.cloud.settings import ControllerSettings
from edgefleet.cloud.store.tables import Device, TelemetryRecord
from edgefleet.cloud.ui import csrf

ADMIN = "eft_bench-admin-0123456789abcdef"
PAGES = {
    "first page": "/ui/devices",
    "tag filter, by last seen": "/ui/devices?tag=north&sort=last_seen&dir=desc",
    "drift alarm filter": "/ui/devices?drift=alarm",
    "sorted by drift, page 3": "/ui/devices?sort=drift&dir=desc&page=3",
    "id search": "/ui/devices?q=7",
}


class NoTransport:
    connected = True

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def publish(self, topic: str, payload: bytes) -> bool:
        return True


def seed(app, n: int, now: float) -> None:
    with app.state.controller.session() as session:
        session.execute(insert(Device), [
            {"id": f"dev-{i:05d}", "tags": ["north" if i % 2 else "south"] + (["gpu"] if i % 10 == 0 else []),
             "online": i % 3 != 0, "update_state": "failed" if i % 25 == 0 else "committed", "last_seen": now - i,
             "installed": {"name": "animals", "version": "1.3.0" if i % 4 == 0 else "1.2.0", "build": 1,
                           "digest": "a" * 64, "runtime": "onnx"},
             "enrolled_at": now - 86400, "mqtt_password_hash": "", "message_key": "", "runtimes": ["onnx"],
             "last_sequence": 0, "enrolled_by": "", "broker_disable_pending": False} for i in range(n)])
        session.execute(insert(TelemetryRecord), [
            {"msg_id": f"w{i}", "device_id": f"dev-{i:05d}", "window_seq": 1, "window_start": now - 120,
             "window_end": now - 60, "drift_level": ("alarm", "warn", "ok")[i % 3], "drift_psi": 0.3 - 0.1 * (i % 3),
             "received_at": now - 60, "requests": 100, "batches": 100, "samples": 100, "errors": 0, "labelled": 0,
             "correct": 0, "latency_bounds": [], "latency_counts": [], "predictions": {}, "confusion": {}, "raw": ""}
            for i in range(0, n, 10)])
        session.commit()


@contextmanager
def fleet_client(n: int, root: Path) -> Iterator[TestClient]:
    """A signed-in client of a controller holding ``n`` devices."""
    settings = ControllerSettings(data_dir=root / f"fleet-{n}", broker_url="mqtt://127.0.0.1:1", admin_token=ADMIN)
    app = create_app(settings, transport_factory=lambda url, on_message: NoTransport(),
                     reconcile_in_background=False)
    with TestClient(app, follow_redirects=False) as client:
        seed(app, n, time.time())
        client.get("/ui/login")
        client.post("/ui/login", data={"token": ADMIN, "next": "/",
                                       "csrf_token": client.cookies.get(csrf.LOGIN_COOKIE, "")})
        yield client


def timed_get(client: TestClient, path: str) -> float:
    started = time.perf_counter()
    response = client.get(path)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, (path, response.status_code)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, fleet_client(args.small, Path(tmp)) as small, \
            fleet_client(args.large, Path(tmp)) as large:
        print(f"/ui/devices, median of {args.repeat} renders (50 rows a page), the two fleets taking turns")
        print(f"{'page':<28}{args.small:>10}{args.large:>10}   ratio")
        for name, path in PAGES.items():
            timed_get(small, path), timed_get(large, path)          # warm up (templates, statement cache)
            times: dict[str, list[float]] = {"small": [], "large": []}
            for _ in range(args.repeat):            # interleaved: a busy machine slows both alike
                times["small"].append(timed_get(small, path))
                times["large"].append(timed_get(large, path))
            a, b = statistics.median(times["small"]), statistics.median(times["large"])
            print(f"{name:<28}{a * 1000:>8.1f}ms{b * 1000:>8.1f}ms{b / a:>7.2f}x")


if __name__ == "__main__":
    main()
