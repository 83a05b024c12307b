"""``edgefleet incidents ...``: drift incidents (docs/incidents.md): list them, show one with the drift
windows behind it, close one (operator token) with a reason."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import typer

from edgefleet.cloud.cli.client import API_PREFIX, client_from_env
from edgefleet.cloud.cli.options import JSON, TOKEN, URL
from edgefleet.cloud.cli.output import ago, console, num, print_fields, print_json, print_table, short
from edgefleet.cloud.vocabulary import CohortKind, IncidentState

incidents_app = typer.Typer(no_args_is_help=True, help="Drift incidents: a cohort at alarm for K windows in a row.")
SHOWN_WINDOWS = 20


def register(app: typer.Typer) -> None:
    app.add_typer(incidents_app, name="incidents")


@incidents_app.command("list")
def incidents_list(state: IncidentState = typer.Option(None, help="only incidents in this state"),
                   device: str = typer.Option(None, "--device", help="only incidents that involve this device"),
                   bundle: str = typer.Option(None, help="only incidents of this bundle (digest or prefix)"),
                   url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Drift incidents, newest first."""
    with client_from_env(url, token) as c:
        rows = c.get(f"{API_PREFIX}/incidents", state=state, device_id=device, bundle=bundle)
    if json_out:
        return print_json(rows)
    print_table(None, ["incident", "state", "cohort", "bundle", "windows", "peak psi", "opened", "closed"],
                [(i["id"], i["state"], cohort(i), bundle_label(i), i["windows"], num(i["peak_psi"]),
                  ago(i["opened_at"]), ago(i["closed_at"]) if i["closed_at"] else "-") for i in rows])


@incidents_app.command("show")
def incidents_show(incident_id: str, url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """One incident: its cohort, times, devices and the drift windows behind it."""
    with client_from_env(url, token) as c:
        incident = c.get(f"{API_PREFIX}/incidents/{incident_id}")
    print_json(incident) if json_out else _print(incident)


@incidents_app.command("close")
def incidents_close(incident_id: str, reason: str = typer.Option(..., help="why (kept in the incident and the "
                                                                            "audit log)"),
                    url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Close an open incident before its cooldown; K new alarm windows open a new one."""
    with client_from_env(url, token) as c:
        incident = c.post(f"{API_PREFIX}/incidents/{incident_id}/close", {"reason": reason})
    print_json(incident) if json_out else _print(incident)


def cohort(incident: dict[str, Any]) -> str:
    """``cam-1`` (a device cohort) or ``tag:site-a``."""
    key = incident["cohort_key"]
    return key if incident["cohort_kind"] == CohortKind.DEVICE else f"tag:{key}"


def bundle_label(incident: dict[str, Any]) -> str:
    name = incident["bundle_name"] or short(incident["bundle_digest"])
    return f"{name} {incident['bundle_version']}" if incident["bundle_version"] else name


def _time(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts else "-"


def _print(incident: dict[str, Any]) -> None:
    rule = incident["rule"]
    print_fields({
        "incident": incident["id"], "state": incident["state"] + (f" ({incident['reason']})" if incident["reason"]
                                                                  else ""),
        "cohort": cohort(incident), "bundle": f"{bundle_label(incident)} ({short(incident['bundle_digest'])})",
        "model": incident["model_name"] or "-", "devices": ", ".join(incident["devices"]) or "-",
        "first alarm": _time(incident["first_alarm_at"]), "opened": _time(incident["opened_at"]),
        "last alarm": _time(incident["last_alarm_at"]), "closed": _time(incident["closed_at"]),
        "windows": f"{incident['windows']} at alarm, peak psi {num(incident['peak_psi'])}",
        "rule": f"{rule['windows']} windows in a row at alarm with >= {rule['min_samples']} samples"
                + (f" on >= {rule['min_devices']} devices" if incident["cohort_kind"] == CohortKind.TAG else "")
                + f"; closes {rule['cooldown_s']:g} s after the last alarm window"}
        | ({"rollouts": ", ".join(f"{r['id']} ({r['bundle_label']}, {r['state']})" for r in incident["rollouts"])}
           if incident.get("rollouts") else {}))
    windows = incident["evidence"][-SHOWN_WINDOWS:]
    if not windows:
        return
    console.print(f"\nlatest {len(windows)} of {len(incident['evidence'])} drift windows:", highlight=False)
    print_table(None, ["window end", "device", "level", "psi", "samples"],
                [(_time(w["window_end"]), w["device_id"], w["drift_level"] or "-", num(w["drift_psi"]),
                  "-" if w["drift_samples"] is None else w["drift_samples"]) for w in windows])
