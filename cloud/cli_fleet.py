"""``edgefleet devices|deploy|deployments|telemetry``: fleet commands over the REST API."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgefleet.cloud.cli_output import console, print_fields, print_json, print_table, short
from edgefleet.cloud.client import ControllerClient, client_from_env
from edgefleet.protocol.errors import ConfigError, TransportError

URL = typer.Option(None, "--url", envvar="EDGEFLEET_URL", help="controller URL")
TOKEN = typer.Option(None, "--token", envvar="EDGEFLEET_TOKEN", help="API token")
JSON = typer.Option(False, "--json", help="machine-readable output")

devices_app = typer.Typer(no_args_is_help=True, help="Enrolled devices.")
deployments_app = typer.Typer(no_args_is_help=True, help="Deployments and their per-device progress.")


def register(app: typer.Typer) -> None:
    app.add_typer(devices_app, name="devices")
    app.add_typer(deployments_app, name="deployments")
    app.command("deploy")(deploy)
    app.command("telemetry")(telemetry)


def ago(ts: float | None) -> str:
    if not ts:
        return "never"
    delta = max(0.0, time.time() - ts)
    if delta < 120:
        return f"{delta:.0f}s ago"
    if delta < 7200:
        return f"{delta / 60:.0f}m ago"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def installed_label(installed: dict[str, Any] | None) -> str:
    if not installed:
        return "-"
    return f"{installed.get('name')} {installed.get('version')}+{installed.get('build')}"


# ------------------------------------------------------------------------------------ devices

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
    print_fields({"device": d["id"], "online": d["online"], "last seen": ago(d.get("last_seen")),
                  "installed": installed_label(d.get("installed")), "update state": d.get("update_state"),
                  "arch / os": f"{d.get('arch')} / {d.get('os')}", "runtimes": ", ".join(d.get("runtimes", [])),
                  "agent": d.get("agent_version"), "hardware class": d.get("hardware_class"),
                  "tags": ", ".join(d.get("tags", []))})
    if summary:
        lat = summary["latency_ms"]
        print_fields({"requests": summary["requests"], "errors": summary["errors"],
                      "latency p50/p95": f"{_ms(lat['p50'])} / {_ms(lat['p95'])}",
                      "drift": f"{drift_levels(summary)} (max PSI {_num(summary['drift'].get('psi_max'))})"})
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


# ------------------------------------------------------------------------------------ deployments

def _resolve_bundle(c: ControllerClient, ref: str) -> str:
    """A digest (prefix) or ``name:version``/``name`` (newest build) -> full digest."""
    if ":" in ref or not all(ch in "0123456789abcdef" for ch in ref) or len(ref) < 8:
        name, _, version = ref.partition(":")
        bundles = [b for b in c.get("/api/v1/bundles", name=name) if not version or b["version"] == version]
        if not bundles:
            raise ConfigError(f"no bundle named {ref!r} on the controller", where="BUNDLE",
                              hint="edgefleet bundle list")
        return max(bundles, key=lambda b: (b["build"], b["uploaded_at"]))["digest"]
    return ref


def deploy(bundle: str = typer.Argument(..., help="bundle digest (prefix), NAME or NAME:VERSION"),
           device: list[str] = typer.Option([], "--device", "-d", help="target device (repeatable)"),
           tag: str = typer.Option(None, "--tag", help="every device with this tag"),
           all_devices: bool = typer.Option(False, "--all", help="every compatible device"),
           note: str = typer.Option("", help="free text kept with the deployment"),
           timeout: float = typer.Option(None, help="seconds before a silent device counts as failed"),
           wait: bool = typer.Option(False, "--wait", help="follow progress until every device is final"),
           url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Deploy a bundle to devices, a tag or the whole fleet (one signed order per device)."""
    if sum([bool(device), tag is not None, all_devices]) != 1:
        raise ConfigError("choose exactly one of --device, --tag, --all", where="deploy")
    with client_from_env(url, token) as c:
        body = {"bundle": _resolve_bundle(c, bundle), "note": note, "timeout_s": timeout,
                "device_ids": device or None, "tag": tag, "all": all_devices}
        dep = c.post("/api/v1/deployments", body)
        if wait:
            dep = follow_deployment(c, dep["id"], quiet=json_out)
    if json_out:
        return print_json(dep)
    if not wait:
        console.print(f"deployment [bold]{dep['id']}[/] created for {len(dep['targets'])} device(s)"
                      + (f", {len(dep['skipped'])} skipped" if dep.get("skipped") else ""))
    _print_deployment(dep)


def follow_deployment(c: ControllerClient, deployment_id: str, *, quiet: bool = False,
                      poll_s: float = 1.0, timeout_s: float | None = None) -> dict[str, Any]:
    """Poll until every target of the deployment is final; show a progress bar unless quiet."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[states]}"), TimeElapsedColumn(), console=console,
                  disable=quiet, transient=True) as progress:
        task = progress.add_task(f"deployment {deployment_id}", total=None, states="")
        while True:
            dep = c.get(f"/api/v1/deployments/{deployment_id}")
            targets = dep["targets"]
            states: dict[str, int] = {}
            for t in targets:
                label = t["outcome"] or t["state"]
                states[label] = states.get(label, 0) + 1
            done = sum(1 for t in targets if t["final"])
            progress.update(task, total=len(targets), completed=done,
                            states=" ".join(f"{k}={v}" for k, v in sorted(states.items())))
            if done == len(targets):
                return dep
            if deadline is not None and time.monotonic() > deadline:
                raise TransportError(f"deployment {deployment_id} not finished after {timeout_s:.0f}s",
                                     code="timeout", where="deploy --wait")
            time.sleep(poll_s)


def _print_deployment(dep: dict[str, Any]) -> None:
    print_fields({"deployment": dep["id"], "status": dep["status"],
                  "bundle": f"{dep['bundle']['name']} {dep['bundle']['version']}+{dep['bundle']['build']} "
                            f"({short(dep['bundle_digest'])})" if dep.get("bundle") else short(dep["bundle_digest"]),
                  "progress": " ".join(f"{k}={v}" for k, v in sorted(dep.get("progress", {}).items()))})
    print_table(None, ["device", "state", "outcome", "reason", "bytes"],
                [(t["device_id"], t["state"], t.get("outcome") or "-", t.get("reason") or "",
                  f"{t.get('bytes_done') or 0}/{t.get('bytes_total') or '?'}") for t in dep.get("targets", [])])
    for s in dep.get("skipped", []):
        console.print(f"skipped {s.get('device_id')}: {s.get('reason')}", highlight=False)


@deployments_app.command("list")
def deployments_list(status: str = typer.Option(None, help="active, succeeded, failed, partial, cancelled"),
                     limit: int = typer.Option(50, min=1, max=1000),
                     url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """List deployments, newest first."""
    with client_from_env(url, token) as c:
        rows = c.get("/api/v1/deployments", status=status, limit=limit)
    if json_out:
        return print_json(rows)
    print_table(None, ["deployment", "status", "bundle", "selector", "progress", "created"],
                [(d["id"], d["status"], short(d["bundle_digest"]),
                  ",".join(f"{k}={v}" for k, v in d["selector"].items()),
                  " ".join(f"{k}={v}" for k, v in sorted(d.get("progress", {}).items())), ago(d["created_at"]))
                 for d in rows])


@deployments_app.command("show")
def deployments_show(deployment_id: str, wait: bool = typer.Option(False, "--wait"),
                     url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """One deployment with per-device progress."""
    with client_from_env(url, token) as c:
        dep = follow_deployment(c, deployment_id, quiet=json_out) if wait else \
            c.get(f"/api/v1/deployments/{deployment_id}")
    print_json(dep) if json_out else _print_deployment(dep)


@deployments_app.command("cancel")
def deployments_cancel(deployment_id: str, url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Cancel: devices not finished get a signed cancel order."""
    with client_from_env(url, token) as c:
        dep = c.post(f"/api/v1/deployments/{deployment_id}/cancel")
    print_json(dep) if json_out else _print_deployment(dep)


# ------------------------------------------------------------------------------------ telemetry

def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} ms"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def telemetry(group_by: str = typer.Option("device", "--by", help="device, bundle, model_version or tag"),
              key: str = typer.Option(None, help="only this device id / digest / model@version / tag"),
              since: float = typer.Option(None, help="only windows after this Unix time"),
              url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Inference statistics and drift, aggregated per device, bundle, model version or tag."""
    with client_from_env(url, token) as c:
        data = c.get("/api/v1/telemetry/summary", group_by=group_by, key=key, since=since)
    if json_out:
        return print_json(data)
    print_table(None, [group_by, "windows", "requests", "samples", "errors", "p50", "p95", "max PSI",
                       "drift windows"],
                [(short(k) if group_by == "bundle" else k, s["windows"], s["requests"], s["samples"], s["errors"],
                  _ms(s["latency_ms"]["p50"]), _ms(s["latency_ms"]["p95"]), _num(s["drift"].get("psi_max")),
                  drift_levels(s)) for k, s in data.items()])


def drift_levels(summary: dict[str, Any]) -> str:
    """How many windows were judged at each drift level, worst first (``few``: too few samples)."""
    levels = summary["drift"].get("levels", {})
    names = {"alarm": "alarm", "warn": "warn", "ok": "ok", "insufficient": "few"}
    return ", ".join(f"{names[k]} {levels[k]}" for k in names if levels.get(k)) or "-"
