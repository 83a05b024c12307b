"""Live updates and fleet trends at fleet scale: what an open page costs the controller every few seconds now
(``GET /ui/live.json``, the fingerprint of the fleet) against what it cost before (re-rendering the overview
every 10 s), both measured in the same run on the same fleet; the trends page over 24 hours and 7 days; and
one fleet snapshot (the reconciler's share of the history, every 5 minutes).

The fleet: 10 000 devices (bulk-inserted: two bundle versions, three tags, a judged drift window for a tenth
of them), 7 days of history: 20 000 online/offline transitions and a snapshot every 5 minutes (2 016). Pages are
fetched through the app (Starlette's TestClient, signed in as the admin): routing, queries, Jinja, response.

    python benchmarks/ui_trends.py [--devices 10000] [--repeat 9]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).parent))
from ui_common import insert_fleet, signed_in  # noqa: E402

from edgefleet.cloud.services import fleet_history  # noqa: E402
from edgefleet.cloud.store.tables import DeviceTransition, FleetSnapshot  # noqa: E402

TAGS = ("north", "south", "gpu")
WEEK = 7 * 86400.0


def seed(n: int):
    def into(session, now: float) -> None:
        insert_fleet(session, n, now, tags=lambda i: [TAGS[i % 2]] + (["gpu"] if i % 10 == 0 else []),
                     enrolled_ago_s=WEEK)
        session.execute(insert(DeviceTransition), [
            {"device_id": f"dev-{(7 * k) % n:05d}", "at": now - WEEK + k * WEEK / 20_000, "online": k % 2 == 1,
             "cause": "heartbeat_timeout" if k % 2 == 0 else "heard"} for k in range(20_000)])
        rows = []
        for s in range(2016):
            at = now - WEEK + s * 300.0
            rows += [{"at": at, "metric": "devices", "key": "total", "value": n},
                     {"at": at, "metric": "version", "key": "animals 1.2.0", "value": n - s},
                     {"at": at, "metric": "version", "key": "animals 1.3.0", "value": s}]
            rows += [{"at": at, "metric": "drift", "key": f"{tag}\t{level}", "value": (s + len(tag)) % 50}
                     for tag in TAGS for level in ("devices", "ok", "warn", "alarm")]
        session.execute(insert(FleetSnapshot), rows)
    return into


def median_ms(client: TestClient, path: str, repeat: int) -> float:
    assert client.get(path).status_code == 200, path            # warm up (templates, statement cache)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(path)
        times.append(time.perf_counter() - started)
        assert response.status_code == 200, path
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root, signed_in(Path(root), seed(args.devices)) as (client, app, now):
        live = median_ms(client, "/ui/live.json", args.repeat)
        device = median_ms(client, "/ui/live.json?device=dev-00042", args.repeat)
        overview = median_ms(client, "/", args.repeat)
        day = median_ms(client, "/ui/trends?range=24h", args.repeat)
        week = median_ms(client, "/ui/trends?range=7d", args.repeat)
        started = time.perf_counter()
        with app.state.controller.session() as session:
            rows = fleet_history.snapshot(session, now=now, drift_span_s=3600.0)
        snap = (time.perf_counter() - started) * 1000
    print(f"{args.devices} devices, 20 000 transitions and 2 016 snapshots over 7 days; medians of {args.repeat}")
    print(f"  poll now:    GET /ui/live.json               {live:8.1f} ms")
    print(f"               GET /ui/live.json?device=...    {device:8.1f} ms")
    print(f"  poll before: GET / (the overview re-rendered) {overview:7.1f} ms  = {overview / live:.0f}x the poll now")
    print(f"  trends:      GET /ui/trends?range=24h        {day:8.1f} ms")
    print(f"               GET /ui/trends?range=7d         {week:8.1f} ms  ({week / overview:.2f}x the overview)")
    print(f"  one fleet snapshot (reconciler, every 5 min)  {snap:7.1f} ms  ({rows} rows)")


if __name__ == "__main__":
    main()
