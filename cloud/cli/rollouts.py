"""``edgefleet rollout ...``: staged rollouts (docs/rollouts.md): create one from a policy file,
follow it (``show --watch`` draws its stages and the gates' verdicts live), and act on it."""

from __future__ import annotations

import time
import tomllib
from pathlib import Path
from typing import Any

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from edgefleet.cloud.cli.client import ApiError, ControllerClient, client_from_env
from edgefleet.cloud.cli.deployments import resolve_bundle
from edgefleet.cloud.cli.options import JSON, TOKEN, URL
from edgefleet.cloud.cli.output import ago, console, print_json, print_table
from edgefleet.cloud.vocabulary import DeviceState, RolloutState
from edgefleet.protocol.errors import ConfigError, EdgeFleetError

rollout_app = typer.Typer(no_args_is_help=True, help="Staged rollouts: create, follow, approve, pause, resume, "
                                                     "promote, abort.")
FINAL = (RolloutState.SUCCEEDED, RolloutState.ABORTED, RolloutState.CANCELLED)
VERDICT_STYLE = {"pass": "green", "fail": "red", "inconclusive": "yellow"}


def register(app: typer.Typer) -> None:
    app.add_typer(rollout_app, name="rollout")


def read_policy(path: Path | None) -> dict[str, Any] | None:
    """A policy TOML file as the API's JSON (``None`` without a file; ``experiment promote`` reads it too)."""
    if path is None:
        return None
    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read the policy: {exc.strerror}", where=str(path)) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", where=str(path)) from None


def policy_refused(exc: ApiError, path: Path | None) -> EdgeFleetError:
    """The controller's refusal of a policy read from ``path`` as a :class:`ConfigError` naming the
    file and key (``canary.toml: stages.0.count``), so it exits 2 like any wrong configuration;
    any other refusal as it came."""
    if path is None or not (exc.where or "").startswith("body.policy"):
        return exc
    key = (exc.where or "").removeprefix("body.policy").lstrip(".") or "(top level)"
    message = exc.message.split(": ", 1)[-1]   # without "controller answered 422"
    return ConfigError(f"the policy is not valid: {message}", where=f"{path}: {key}", hint=exc.hint)


@rollout_app.command("create")
def rollout_create(
    bundle: str = typer.Argument(..., help="bundle digest (prefix), NAME or NAME:VERSION"),
    tag: list[str] = typer.Option([], "--tag", help="devices with this tag (repeatable: all of them)"),
    device: list[str] = typer.Option([], "--device", "-d", help="only these devices (repeatable)"),
    exclude_tag: list[str] = typer.Option([], "--exclude-tag", help="leave out devices with this tag"),
    exclude_device: list[str] = typer.Option([], "--exclude-device", help="leave out this device"),
    dynamic: bool = typer.Option(False, "--dynamic", help="devices that match later join the running rollout"),
    policy: Path = typer.Option(None, help="policy TOML (stages, pace, gates...; docs/rollouts.md)"),
    template: str = typer.Option(None, help="a named policy instead (see `edgefleet rollout templates`; "
                                           "default canary-half-rest, with --incident heal)"),
    incident: list[str] = typer.Option([], "--incident", help="a drift incident it brings back to health "
                                                              "(repeatable): its drifted devices first, judged "
                                                              "against themselves before the update"),
    note: str = typer.Option("", help="free text kept with the rollout"),
    watch: bool = typer.Option(False, "--watch", help="follow it until it ends"),
    url: str = URL, token: str = TOKEN, json_out: bool = JSON,
) -> None:
    """Roll a bundle out in stages, gated by what the model does on the devices that already have it.
    With --incident and no selector: to the devices on the incidents' bundle (docs/rollouts.md §4)."""
    body = {"selector": {"tags": tag, "device_ids": device, "exclude_tags": exclude_tag,
                         "exclude_device_ids": exclude_device, "dynamic": dynamic},
            "policy": read_policy(policy), "template": template, "note": note, "incidents": incident}
    with client_from_env(url, token) as c:
        body["bundle"] = resolve_bundle(c, bundle)
        try:
            ro = c.post("/api/v1/rollouts", body)
        except ApiError as exc:
            raise policy_refused(exc, policy) from None
        if watch and not json_out:
            ro = _watch(c, ro["id"])
    print_json(ro) if json_out else _print(ro)


@rollout_app.command("templates")
def rollout_templates(url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """The named policies a rollout can start from."""
    with client_from_env(url, token) as c:
        named = c.get("/api/v1/rollouts/templates")
    if json_out:
        return print_json(named)
    print_table(None, ["template", "stages", "summary"],
                [(name, " > ".join(s["name"] for s in t["policy"]["stages"]), t["summary"])
                 for name, t in named.items()])


@rollout_app.command("list")
def rollout_list(state: str = typer.Option(None, help="only rollouts in this state"),
                 url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Rollouts, newest first."""
    with client_from_env(url, token) as c:
        rows = c.get("/api/v1/rollouts", state=state)
    if json_out:
        return print_json(rows)
    print_table(None, ["rollout", "state", "bundle", "target", "stage", "devices", "created"],
                [(r["id"], r["state"], r["bundle_label"], r["target"],
                  f"{r['stage_index'] + 1}/{len(r['policy']['stages'])}", _counts(r["devices"]), ago(r["created_at"]))
                 for r in rows])


@rollout_app.command("show")
def rollout_show(rollout_id: str, watch: bool = typer.Option(False, "--watch", help="redraw until it ends"),
                 url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """One rollout: its stages, each stage's devices and gate verdicts."""
    with client_from_env(url, token) as c:
        ro = _watch(c, rollout_id) if watch and not json_out else c.get(f"/api/v1/rollouts/{rollout_id}")
    print_json(ro) if json_out else _print(ro)


ACTIONS = {
    "approve": "Let a rollout to protected devices start (someone other than its creator).",
    "pause": "Stop giving out orders until resumed.",
    "resume": "Carry on where it paused.",
    "promote": "Take the stage it paused in as passed and go on with the next.",
    "abort": "Stop, and roll every device that took the bundle back (as its policy says).",
    "cancel": "Stop giving out orders; devices that took the bundle keep it.",
}


def _action(name: str, doc: str) -> None:
    def command(rollout_id: str, reason: str = typer.Option("", help="why (kept in the audit log)"),
                url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
        with client_from_env(url, token) as c:
            ro = c.post(f"/api/v1/rollouts/{rollout_id}/{name}", {"reason": reason})
        print_json(ro) if json_out else _print(ro)

    command.__doc__ = doc
    rollout_app.command(name)(command)


for _name, _doc in ACTIONS.items():
    _action(_name, _doc)


def _watch(c: ControllerClient, rollout_id: str, poll_s: float = 2.0) -> dict[str, Any]:
    ro: dict[str, Any] = c.get(f"/api/v1/rollouts/{rollout_id}")
    with Live(_view(ro), console=console, refresh_per_second=4, transient=True) as live:
        while ro["state"] not in FINAL:
            time.sleep(poll_s)
            ro = c.get(f"/api/v1/rollouts/{rollout_id}")
            live.update(_view(ro))
    return ro


def _print(ro: dict[str, Any]) -> None:
    console.print(_view(ro))


def _view(ro: dict[str, Any]) -> Group:
    """The rollout as people read it: a header, one bar per stage, the gates of the current one."""
    head = Table.grid(padding=(0, 2))
    for label, value in (("rollout", ro["id"]), ("state", ro["state"] + (f" ({ro['reason']})" if ro["reason"]
                                                                          else "")),
                         ("bundle", ro["bundle_label"]), ("target", ro["target"]),
                         *([("incidents", ", ".join(ro["incidents"]))] if ro.get("incidents") else []),
                         ("devices", _counts(ro["devices"]))):
        head.add_row(Text(label, style="bold"), Text(str(value)))
    stages = Table(box=None, padding=(0, 1), show_header=True, header_style="bold")
    for column in ("stage", "state", "progress", "devices"):
        stages.add_column(column)
    for s in ro.get("stages", []):
        total = sum(s["devices"].values())
        done = sum(v for k, v in s["devices"].items() if k not in (DeviceState.QUEUED, DeviceState.IN_PROGRESS))
        stages.add_row(s["name"], s["state"], _bar(done, total), _counts(s["devices"]) or "-")
    parts: list[Any] = [head, Text(""), stages]
    current = next((s for s in ro.get("stages", []) if s["verdicts"] and s["index"] == ro["stage_index"]), None)
    if current is not None:
        parts.append(Text(f"\ngates of stage {current['name']}:", style="bold"))
        for v in current["verdicts"]:
            parts.append(Text.assemble((f"  {v['verdict']:<12}", VERDICT_STYLE.get(v["verdict"], "")),
                                       (f"{v['gate']:<12} ", "bold"), v["summary"]))
    return Group(*parts)


def _bar(done: int, total: int, width: int = 20) -> str:
    if not total:
        return "-"
    filled = round(width * done / total)
    return f"{'#' * filled}{'.' * (width - filled)} {done}/{total}"


def _counts(counts: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
