"""``edgefleet devices ...``: enrolled devices, enrollment tokens and tags."""

from __future__ import annotations

import typer

from edgefleet.cloud.cli.client import client_from_env
from edgefleet.cloud.cli.options import JSON, TOKEN, URL
from edgefleet.cloud.cli.output import (
    accuracy,
    ago,
    console,
    drift_levels,
    installed_label,
    ms,
    num,
    print_fields,
    print_json,
    print_table,
)

devices_app = typer.Typer(no_args_is_help=True, help="Enrolled devices.")


def register(app: typer.Typer) -> None:
    app.add_typer(devices_app, name="devices")


@devices_app.command("list")
def devices_list(tag: str = typer.Option(None, help="only devices with this tag"),
                 online: bool = typer.Option(None, "--online/--offline", help="filter by state"),
                 url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """List devices."""
    with client_from_env(url, token) as c:
        rows = c.get("/api/v1/devices", tag=tag, online=None if online is None else str(online).lower())
    if json_out:
        return print_json(rows)
    print_table(None, ["device", "online", "installed", "state", "hw class", "tags", "last seen"],
                [(d["id"], "yes" if d["online"] else "no", installed_label(d.get("installed")),
                  d.get("update_state") or "-", d.get("hardware_class") or "-", ",".join(d.get("tags", [])),
                  ago(d.get("last_seen"))) for d in rows])


@devices_app.command("show")
def devices_show(device_id: str, url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """One device: facts, installed bundle, recent deployments and telemetry."""
    with client_from_env(url, token) as c:
        d = c.get(f"/api/v1/devices/{device_id}")
        targets = c.get(f"/api/v1/devices/{device_id}/deployments", limit=5)
        summary = c.get("/api/v1/telemetry/summary", group_by="device", key=device_id).get(device_id)
    if json_out:
        return print_json({"device": d, "deployments": targets, "telemetry": summary})
    print_fields({"device": d["id"], "online": "yes" if d["online"] else "no", "last seen": ago(d.get("last_seen")),
                  "installed": installed_label(d.get("installed")), "update state": d.get("update_state"),
                  "arch / os": f"{d.get('arch')} / {d.get('os')}", "runtimes": ", ".join(d.get("runtimes", [])),
                  "agent": d.get("agent_version"), "hardware class": d.get("hardware_class"),
                  "tags": ", ".join(d.get("tags", []))})
    if summary:
        lat = summary["latency_ms"]
        print_fields({"requests": summary["requests"], "errors": summary["errors"],
                      "latency p50/p95": f"{ms(lat['p50'])} / {ms(lat['p95'])}",
                      "drift": f"{drift_levels(summary)} (max PSI {num(summary['drift'].get('psi_max'))})",
                      "accuracy": accuracy(summary)})
    if targets:
        print_table("recent deployments", ["deployment", "state", "outcome", "reason"],
                    [(t["deployment_id"], t["state"], t.get("outcome") or "-", t.get("reason") or "")
                     for t in targets])


@devices_app.command("enroll")
def devices_enroll(device_id: str = typer.Option(None, help="pin the token to this device id"),
                   tag: list[str] = typer.Option([], "--tag", help="tags the device gets (repeatable)"),
                   ttl: float = typer.Option(86400.0, help="token lifetime in seconds"),
                   url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Create a one-time enrollment token for a new device."""
    with client_from_env(url, token) as c:
        created = c.post("/api/v1/enrollment-tokens", {"device_id": device_id, "tags": tag, "ttl_s": ttl})
        controller = c.url
    if json_out:
        return print_json(created)
    console.print(f"enrollment token (shown once): [bold]{created['token']}[/]", highlight=False)
    console.print(f"on the device: edgefleet-agent enroll --controller {controller} --token {created['token']} "
                  f"--state-dir /var/lib/edgefleet", highlight=False, soft_wrap=True)


@devices_app.command("tag")
def devices_tag(device_id: str, add: list[str] = typer.Option([], "--add"),
                remove: list[str] = typer.Option([], "--remove"),
                url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Add or remove tags."""
    with client_from_env(url, token) as c:
        d = c.get(f"/api/v1/devices/{device_id}")
        tags = sorted((set(d["tags"]) | set(add)) - set(remove))
        d = c.patch(f"/api/v1/devices/{device_id}", {"tags": tags})
    print_json(d) if json_out else console.print(f"{device_id}: tags {', '.join(d['tags']) or '-'}")


@devices_app.command("rotate-broker-password")
def devices_rotate_broker_password(device_id: str, url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Give a device a new MQTT password (admin), shown once; the old one stops working."""
    with client_from_env(url, token) as c:
        rotated = c.post(f"/api/v1/devices/{device_id}/broker-password")
    if json_out:
        return print_json(rotated)
    console.print(f"new MQTT password of {device_id} (shown once): [bold]{rotated['mqtt_password']}[/]",
                  highlight=False)
    console.print(f"on the device: set password = \"{rotated['mqtt_password']}\" in agent.toml and restart "
                  "edgefleet-agent", highlight=False, soft_wrap=True)
    if not rotated["broker_updated"]:
        console.print("the broker is not managed by the controller: re-export its password file "
                      "(GET /api/v1/broker/passwd) and reload it", highlight=False, soft_wrap=True)
