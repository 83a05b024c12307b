"""``edgefleet experiment ...``: A/B experiments between two bundles (docs/experiments.md): split a
cohort for a duration, read the results table (B - A per metric with an always-valid confidence
interval and p-value), stop, or promote the winner to a rollout of the rest."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Group
from rich.table import Table
from rich.text import Text

from edgefleet.cloud.cli.client import ApiError, client_from_env
from edgefleet.cloud.cli.deployments import resolve_bundle
from edgefleet.cloud.cli.options import JSON, TOKEN, URL
from edgefleet.cloud.cli.output import console, print_json, print_table
from edgefleet.cloud.cli.rollouts import policy_refused, read_policy

experiment_app = typer.Typer(no_args_is_help=True, help="A/B experiments between two bundles: create, list, show "
                                                        "the results, stop, promote the winner.")
VERDICTS = {"b_better": ("B better", "green"), "b_worse": ("B worse", "red"),
            "no_difference_yet": ("no difference yet", "yellow"), "too_few_windows": ("too few windows", "dim"),
            "inconsistent": ("inconsistent data", "magenta")}
"""The API's verdicts as people read them (lower is better for every metric)."""
OPTION_OF = {"body.split_percent": "--split", "body.cohort_size": "--cohort", "body.duration_s": "--duration",
             "body.alpha": "--alpha", "body.min_windows": "--min-windows", "body.name": "--name", "body.arm": "--arm"}
"""The option behind a field the controller names in an error."""
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def register(app: typer.Typer) -> None:
    app.add_typer(experiment_app, name="experiment")


def parse_duration(text: str) -> float:
    """Seconds from ``3600``, ``90s``, ``30m``, ``1h``, ``2d`` or a sum such as ``1h30m``."""
    value = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds = float(value)
    elif re.fullmatch(r"(\d+(\.\d+)?[smhd])+", value):
        seconds = sum(float(n) * UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([smhd])", value))
    else:
        raise typer.BadParameter(f"{text!r} is not a duration (e.g. 3600, 90s, 30m, 1h, 2d)")
    if seconds <= 0:
        raise typer.BadParameter("the duration must be more than zero")
    return seconds


def _duration(value: str) -> str:
    parse_duration(value)   # a usage error at once, before any request
    return value


def _named_option(exc: ApiError) -> ApiError:
    if exc.where:
        exc.where = OPTION_OF.get(exc.where, exc.where)
    return exc


@experiment_app.command("create")
def experiment_create(
    bundle_a: str = typer.Argument(..., help="bundle A, the control: digest (prefix), NAME or NAME:VERSION"),
    bundle_b: str = typer.Argument(..., help="bundle B, the treatment"),
    tag: list[str] = typer.Option([], "--tag", help="devices with this tag (repeatable: all of them)"),
    device: list[str] = typer.Option([], "--device", "-d", help="only these devices (repeatable)"),
    exclude_tag: list[str] = typer.Option([], "--exclude-tag", help="leave out devices with this tag"),
    exclude_device: list[str] = typer.Option([], "--exclude-device", help="leave out this device"),
    split: float = typer.Option(50.0, "--split", help="percent of the cohort on B"),
    cohort: int = typer.Option(None, "--cohort", help="at most this many of the matching devices take part "
                                                      "(default: all)"),
    duration: str = typer.Option("24h", "--duration", callback=_duration,
                                 help="how long it runs: 3600, 90s, 30m, 1h, 2d"),
    alpha: float = typer.Option(0.05, "--alpha", help="the test's false-alarm rate (confidence 1 - alpha)"),
    min_windows: int = typer.Option(20, "--min-windows", help="telemetry windows per arm before any verdict"),
    name: str = typer.Option("", "--name", help="what to call it (default: 'A vs B')"),
    url: str = URL, token: str = TOKEN, json_out: bool = JSON,
) -> None:
    """Split the matching devices between bundle A and bundle B for a while and compare them."""
    body: dict[str, Any] = {
        "name": name, "split_percent": split, "cohort_size": cohort, "duration_s": parse_duration(duration),
        "alpha": alpha, "min_windows": min_windows,
        "selector": {"tags": tag, "device_ids": device, "exclude_tags": exclude_tag,
                     "exclude_device_ids": exclude_device}}
    with client_from_env(url, token) as c:
        body["bundle_a"], body["bundle_b"] = resolve_bundle(c, bundle_a), resolve_bundle(c, bundle_b)
        try:
            ex = c.post("/api/v1/experiments", body)
        except ApiError as exc:
            raise _named_option(exc) from None
    print_json(ex) if json_out else _print(ex)


@experiment_app.command("list")
def experiment_list(state: str = typer.Option(None, help="only experiments in this state"),
                    url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Experiments, newest first."""
    with client_from_env(url, token) as c:
        rows = c.get("/api/v1/experiments", state=state)
    if json_out:
        return print_json(rows)
    print_table(None, ["experiment", "state", "name", "A", "B", "split", "devices", "ends"],
                [(e["id"], e["state"], e["name"], e["bundle_a_label"], e["bundle_b_label"],
                  f"{100 - e['split_percent']:g}/{e['split_percent']:g}",
                  f"{sum(e['devices']['a'].values())}/{sum(e['devices']['b'].values())}", _time(e["ends_at"]))
                 for e in rows])


@experiment_app.command("show")
def experiment_show(experiment_id: str, url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """One experiment: its arms and the results so far (per metric A, B, B - A, confidence interval, p)."""
    with client_from_env(url, token) as c:
        ex = c.get(f"/api/v1/experiments/{experiment_id}")
    print_json(ex) if json_out else _print(ex)


@experiment_app.command("stop")
def experiment_stop(experiment_id: str, reason: str = typer.Option("", help="why (kept in the audit log)"),
                    url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """End it without a winner: devices keep the bundle they run; orders still out are cancelled."""
    with client_from_env(url, token) as c:
        ex = c.post(f"/api/v1/experiments/{experiment_id}/stop", {"reason": reason})
    print_json(ex) if json_out else _print(ex)


@experiment_app.command("promote")
def experiment_promote(
    experiment_id: str,
    arm: str = typer.Option(..., "--arm", help="the winner: a or b"),
    template: str = typer.Option(None, help="the rollout's named policy (see `edgefleet rollout templates`; "
                                           "default canary-half-rest)"),
    policy: Path = typer.Option(None, help="the rollout's policy TOML instead (docs/rollouts.md)"),
    reason: str = typer.Option("", help="why (kept in the audit log)"),
    url: str = URL, token: str = TOKEN, json_out: bool = JSON,
) -> None:
    """Roll the winner's bundle out to the experiment's selector (devices already on it are skipped)."""
    body = {"arm": arm.lower(), "template": template, "policy": read_policy(policy), "reason": reason}
    with client_from_env(url, token) as c:
        try:
            ex = c.post(f"/api/v1/experiments/{experiment_id}/promote", body)
        except ApiError as exc:
            refused = policy_refused(exc, policy)
            raise (_named_option(refused) if isinstance(refused, ApiError) else refused) from None
    if json_out:
        return print_json(ex)
    _print(ex)
    console.print(f"\nthe rollout of arm {arm.upper()}'s bundle: edgefleet rollout show {ex['rollout_id']}",
                  highlight=False)


def _print(ex: dict[str, Any]) -> None:
    console.print(view(ex))


def view(ex: dict[str, Any]) -> Group:
    """The experiment as people read it: a header, the arms, and (with results) the results table."""
    head = Table.grid(padding=(0, 2))
    rows = [("experiment", ex["id"]), ("name", ex["name"]),
            ("state", ex["state"] + (f" ({ex['reason']})" if ex["reason"] else "")),
            ("A (control)", f"{ex['bundle_a_label']}  {_counts(ex['devices']['a'])}"),
            ("B (treatment)", f"{ex['bundle_b_label']}  {_counts(ex['devices']['b'])}"),
            ("target", ex["target"] + (f"; {ex['skipped']} device(s) skipped" if ex["skipped"] else "")),
            ("time", f"{_time(ex['started_at'])} to " + (f"{_time(ex['finished_at'])}" if ex["finished_at"]
                                                          else f"{_time(ex['ends_at'])} (planned)"))]
    if ex["rollout_id"]:
        rows.append(("rollout", f"{ex['rollout_id']} (arm {str(ex['promoted_arm']).upper()})"))
    for label, value in rows:
        head.add_row(Text(label, style="bold"), Text(str(value)))
    parts: list[Any] = [head]
    if "results" in ex:
        parts += [Text(""), results_table(ex["results"]), _footer(ex["results"])]
    return Group(*parts)


def results_table(results: dict[str, Any]) -> Table:
    """metric, A, B, B - A, the confidence interval, p, verdict; numbers of a row at one precision."""
    table = Table(box=None, padding=(0, 1), collapse_padding=True, pad_edge=False, header_style="bold")
    for column in ("metric", "A", "B", "B - A", f"{100 * (1 - results['alpha']):g}% CI", "p", "verdict"):
        table.add_column(column, justify="left" if column in ("metric", "verdict") else "right", no_wrap=True)
    for m in results["metrics"]:
        word, style = VERDICTS.get(m["verdict"], (m["verdict"], ""))
        digits = _decimals(m["mean_a"], m["mean_b"])
        interval = "-" if m["lower"] is None or m["upper"] is None else \
            f"[{_num(m['lower'], digits)}, {_num(m['upper'], digits)}]"
        table.add_row(m["metric"], _num(m["mean_a"], digits), _num(m["mean_b"], digits),
                      _num(m["difference"], digits, sign=True), interval, f"{m['p_value']:.2g}",
                      Text(word, style=style))
    return table


def _footer(results: dict[str, Any]) -> Text:
    windows = max(results["metrics"], key=lambda m: m["windows_a"] + m["windows_b"])
    p = results["predictions"]
    lines = [f"\nwindows: A {windows['windows_a']}, B {windows['windows_b']} (a verdict needs "
             f"{results['min_windows']} per arm; the test is valid at every look)"]
    if p["js"] is None:
        lines.append(f"predictions: not compared yet (A {p['predictions_a']}, B {p['predictions_b']})")
    else:
        lines.append(f"predictions: Jensen-Shannon {p['js']:.4f} between the arms (A {p['predictions_a']}, "
                     f"B {p['predictions_b']} predictions)")
    return Text("\n".join(lines))


def _decimals(*means: float | None) -> int:
    """Decimals that give the larger mean three significant digits (at most 6)."""
    scale = max((abs(v) for v in means if v), default=0.0)
    return 3 if scale == 0 else min(6, max(0, 2 - math.floor(math.log10(scale))))


def _num(value: float | None, digits: int, *, sign: bool = False) -> str:
    if value is None:
        return "-"
    value = 0.0 if round(value, digits) == 0 else value   # never "-0.000"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _counts(counts: dict[str, int]) -> str:
    total = sum(counts.values())
    return f"{total} device(s): " + " ".join(f"{k}={v}" for k, v in sorted(counts.items())) if total else "no device"


def _time(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")
