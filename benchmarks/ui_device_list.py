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
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).parent))
from ui_common import insert_fleet, signed_in  # noqa: E402

PAGES = {
    "first page": "/ui/devices",
    "tag filter, by last seen": "/ui/devices?tag=north&sort=last_seen&dir=desc",
    "drift alarm filter": "/ui/devices?drift=alarm",
    "sorted by drift, page 3": "/ui/devices?sort=drift&dir=desc&page=3",
    "id search": "/ui/devices?q=7",
}


@contextmanager
def fleet_client(n: int, root: Path) -> Iterator[TestClient]:
    """A signed-in client of a controller holding ``n`` devices."""
    def seed(session, now: float) -> None:
        insert_fleet(session, n, now, tags=lambda i: ["north" if i % 2 else "south"] + (["gpu"] if i % 10 == 0 else []),
                     update_state=lambda i: "failed" if i % 25 == 0 else "committed")
    with signed_in(root / f"fleet-{n}", seed) as (client, _, _):
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
