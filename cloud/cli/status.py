"""``edgefleet status``: is the controller up, and what is it (version, broker, keys, fleet size)?
``--wait`` polls until it answers, for scripts that start a controller and then use it."""

from __future__ import annotations

import time
from typing import Any

import typer

from edgefleet.cloud.cli.client import JSON as JSONBody
from edgefleet.cloud.cli.client import client_from_env
from edgefleet.cloud.cli.options import JSON, TOKEN, URL
from edgefleet.cloud.cli.output import print_fields, print_json, short
from edgefleet.protocol.errors import EdgeFleetError, TransportError
from edgefleet.protocol.vocabulary import Reason


def register(app: typer.Typer) -> None:
    app.command("status")(status)


def status(wait: float = typer.Option(0.0, min=0.0, help="keep trying this many seconds until it answers"),
           url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """The controller's health, version, broker and trusted keys, and how many devices are online."""
    deadline = time.monotonic() + wait
    with client_from_env(url, token) as c:
        while True:
            try:
                health = c.get("/healthz")
                break
            except TransportError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.25)
        info: JSONBody = {}
        devices: JSONBody = []
        try:   # health needs no token; the rest does
            info = c.get("/api/v1/info")
            devices = c.get("/api/v1/devices")
        except EdgeFleetError as exc:
            if exc.code != Reason.UNAUTHENTICATED:
                raise
    online = sum(1 for d in devices if d.get("online"))
    if json_out:
        return print_json({"url": c.url, "health": health, "info": info, "devices": len(devices), "online": online})
    fields: dict[str, Any] = {"controller": c.url, "health": f"{health['status']} (database {health['database']}, "
                                             f"MQTT {health['mqtt']})"}
    if info:
        fields |= {"version": info["version"], "broker": info["broker_url"] or "-",
                   "controller key": short(str(info["controller_key_id"]), 16),
                   "release keys": ", ".join(short(k, 16) for k in info["release_key_ids"]) or "none",
                   "devices": f"{len(devices)} enrolled, {online} online"}
    else:
        fields["access"] = "no valid API token: set --token or EDGEFLEET_TOKEN for more"
    print_fields(fields)
