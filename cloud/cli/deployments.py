"""``edgefleet deploy`` and ``edgefleet deployments ...``: signed rollouts and their per-device progress."""

from __future__ import annotations

import time
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgefleet.cloud.cli.client import ControllerClient, client_from_env
from edgefleet.cloud.cli.options import JSON, TOKEN, URL
from edgefleet.cloud.cli.output import ago, console, print_fields, print_json, print_table, short
from edgefleet.cloud.vocabulary import DeploymentStatus
from edgefleet.protocol.errors import ConfigError, TransportError
from edgefleet.protocol.vocabulary import Reason

deployments_app = typer.Typer(no_args_is_help=True, help="Deployments and their per-device progress.")


def register(app: typer.Typer) -> None:
    app.add_typer(deployments_app, name="deployments")
    app.command("deploy")(deploy)


def resolve_bundle(c: ControllerClient, ref: str) -> str:
    """A digest (prefix) or ``name:version``/``name`` (newest build) -> full digest."""
    if ":" in ref or not all(ch in "0123456789abcdef" for ch in ref) or len(ref) < 8:
        name, _, version = ref.partition(":")
        bundles = [b for b in c.get("/api/v1/bundles", name=name) if not version or b["version"] == version]
        if not bundles:
            raise ConfigError(f"no bundle named {ref!r} on the controller", where="BUNDLE",
                              hint="edgefleet bundle list")
        return str(max(bundles, key=lambda b: (b["build"], b["uploaded_at"]))["digest"])
    return ref


def deploy(bundle: str = typer.Argument(..., help="bundle digest (prefix), NAME or NAME:VERSION"),
           device: list[str] = typer.Option([], "--device", "-d", help="target device (repeatable)"),
           tag: str = typer.Option(None, "--tag", help="every device with this tag"),
           all_devices: bool = typer.Option(False, "--all", help="every compatible device"),
           note: str = typer.Option("", help="free text kept with the deployment"),
           timeout: float = typer.Option(None, help="seconds before a silent device counts as failed"),
           health_inferences: int = typer.Option(None, min=0, max=100_000,
                                                 help="after the smoke test, wait for up to this many live "
                                                      "inferences before committing (0: none; default: the "
                                                      "device's own setting, 10)"),
           health_timeout: int = typer.Option(None, min=0, max=86_400,
                                              help="...for at most this many seconds (default: the device's, 60)"),
           wait: bool = typer.Option(False, "--wait", help="follow progress until every device is final"),
           url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Deploy a bundle to devices, a tag or the whole fleet (one signed order per device).

    A device commits the new model after its smoke test passes and, within the health window, its
    first live inferences raise no error; a device without traffic waits out the window (set it with
    --health-inferences / --health-timeout)."""
    if sum([bool(device), tag is not None, all_devices]) != 1:
        raise ConfigError("choose exactly one of --device, --tag, --all", where="deploy")
    health = None
    if health_inferences is not None or health_timeout is not None:
        health = {"inferences": 10 if health_inferences is None else health_inferences,
                  "timeout_s": 60 if health_timeout is None else health_timeout}
    with client_from_env(url, token) as c:
        body = {"bundle": resolve_bundle(c, bundle), "note": note, "timeout_s": timeout,
                "device_ids": device or None, "tag": tag, "all": all_devices, "health_check": health}
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
        told: set[tuple[str, str]] = set()
        while True:
            dep = c.get(f"/api/v1/deployments/{deployment_id}")
            targets = dep["targets"]
            for t in targets:   # say once what each device is waiting for (e.g. its health window)
                if not quiet and not t["final"] and t.get("detail") and (t["device_id"], t["state"]) not in told:
                    told.add((t["device_id"], t["state"]))
                    progress.console.print(f"{t['device_id']}: {t['detail']}", highlight=False, markup=False)
            states: dict[str, int] = {}
            for t in targets:
                label = t["outcome"] or t["state"]
                states[label] = states.get(label, 0) + 1
            done = sum(1 for t in targets if t["final"])
            progress.update(task, total=len(targets), completed=done,
                            states=" ".join(f"{k}={v}" for k, v in sorted(states.items())))
            if done == len(targets):
                return dict(dep)
            if deadline is not None and time.monotonic() > deadline:
                raise TransportError(f"deployment {deployment_id} not finished after {timeout_s:.0f}s",
                                     code=Reason.TIMEOUT, where="deploy --wait")
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
def deployments_list(status: DeploymentStatus = typer.Option(None, help="only deployments with this status"),
                     limit: int = typer.Option(50, min=1, max=1000),
                     url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """List deployments, newest first."""
    with client_from_env(url, token) as c:
        rows = c.get("/api/v1/deployments", status=status, limit=limit)
    if json_out:
        return print_json(rows)
    print_table(None, ["deployment", "status", "bundle", "target", "progress", "created"],
                [(d["id"], d["status"], d.get("bundle_label") or short(d["bundle_digest"]), d.get("target", ""),
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
