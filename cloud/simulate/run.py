"""One whole simulator run, as ``edgefleet simulate`` does it: enroll what the state file lacks, connect
the fleet, keep it running (with its storm, if asked) for ``duration_s``, stop it, return the report."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edgefleet.cloud.simulate.credentials import enroll_fleet, load_state, save_state
from edgefleet.cloud.simulate.fleet import Fleet, device_ids
from edgefleet.cloud.simulate.knobs import Knobs
from edgefleet.protocol.errors import ConfigError, first_problem


def knobs_from(values: dict[str, Any]) -> Knobs:
    """Typed knobs from command-line values, or a :class:`ConfigError` naming the knob."""
    try:
        return Knobs(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        loc, problem = first_problem(exc)
        raise ConfigError(f"invalid knob: {problem}", where=f"--{loc.replace('_', '-')}",
                          hint="edgefleet simulate --help lists the knobs and their ranges") from None


def http_client(url: str, *, connections: int, timeout: float = 60.0) -> Any:
    import httpx2 as httpx

    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits)


async def simulate(knobs: Knobs, *, url: str, token: str | None, state_path: Path, broker_url: str | None,
                   duration_s: float, tick: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    creds = load_state(state_path, url)
    t0 = time.monotonic()
    async with http_client(url, connections=max(knobs.enroll_concurrency, knobs.download_concurrency)) as http:
        ids = device_ids(knobs)
        if any(d not in creds.devices for d in ids):
            if not token:
                raise ConfigError("enrolling devices needs an operator's API token", where="--token",
                                  hint="pass --token or set EDGEFLEET_TOKEN")
            await enroll_fleet(http, creds, ids, token=token, tags=[knobs.device_prefix],
                               concurrency=knobs.enroll_concurrency, state_path=state_path,
                               progress=lambda n: tick and tick("enrolling", {"enrolled": n}))
        enrolled_s = time.monotonic() - t0
        fleet = Fleet(knobs, creds, http=http, broker_url=broker_url)
        try:
            await fleet.start()
            up_s = time.monotonic() - t0 - enrolled_s
            end = time.monotonic() + duration_s
            storm_at = time.monotonic() + knobs.storm_after_s if knobs.storm_after_s is not None else None
            while time.monotonic() < end:
                if storm_at is not None and time.monotonic() >= storm_at:
                    storm_at = None
                    await fleet.storm()
                if tick:
                    tick("running", fleet.snapshot())
                await asyncio.sleep(min(1.0, max(0.0, end - time.monotonic())))
            report = fleet.snapshot()
        finally:
            await fleet.stop()
            save_state(state_path, creds)
    report["enroll_s"] = round(enrolled_s, 2)
    report["connect_s"] = round(up_s, 2)
    report["knobs"] = knobs.model_dump(mode="json")
    return report
