"""``edgefleet simulate``: a fleet of simulated devices against a real controller and broker (real
MQTT connections, each with its own credentials and message key; real HTTP Range downloads). A live
summary goes to stderr while it runs, the final report as JSON to stdout (docs/operations.md,
"Simulating a fleet"). It speaks to the controller only over HTTP and MQTT, like the devices it plays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from edgefleet.cloud.cli.options import TOKEN, URL
from edgefleet.cloud.cli.output import err_console, print_json


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate)


def simulate(
    devices: int = typer.Option(100, "--devices", help="how many simulated devices"),
    url: str = URL,
    token: str = TOKEN,
    broker_url: str = typer.Option(None, "--broker-url", help="broker the devices connect to (default: the one the "
                                                              "controller announces at enrollment)"),
    state_file: Path = typer.Option(None, "--state-file", help="credentials kept between runs (default: "
                                                               ".edgefleet/simulate/<prefix>.json)"),
    duration: float = typer.Option(60.0, "--duration", min=0, help="seconds to run once every device is connected"),
    prefix: str = typer.Option("sim", "--prefix", help="device ids are <prefix>-<n> (and their MQTT client ids)"),
    heartbeat_s: float = typer.Option(None, "--heartbeat-s", help="heartbeat period [30]"),
    telemetry_s: float = typer.Option(None, "--telemetry-s", help="telemetry window period [60]"),
    drift_fraction: float = typer.Option(None, "--drift-fraction", help="share of devices whose inputs drift [0]"),
    drift_magnitude: float = typer.Option(None, "--drift-magnitude", help="drift in standard deviations [0.5]"),
    install_failure_rate: float = typer.Option(None, "--install-failure-rate",
                                               help="probability that an install fails [0]"),
    download_mode: str = typer.Option(None, "--download-mode", help="verify (full bundle check) | hash [verify]"),
    verify_fraction: float = typer.Option(None, "--verify-fraction",
                                          help="in verify mode, share of devices that verify fully [1]"),
    latency_s: float = typer.Option(None, "--latency-s", help="delay before each update step [0]"),
    churn_per_min: float = typer.Option(None, "--churn-per-min",
                                        help="connection drops per device per minute (each comes back) [0]"),
    reconnect_after_s: float = typer.Option(None, "--reconnect-after-s",
                                            help="seconds a dropped device stays away [2]"),
    storm_after_s: float = typer.Option(None, "--storm-after-s",
                                        help="drop every connection at once after this many seconds, then reconnect"),
    connect_rate: float = typer.Option(None, "--connect-rate", help="new connections per second [500]"),
    seed: int = typer.Option(None, "--seed", help="random seed [0]"),
    quiet: bool = typer.Option(False, "--quiet", help="no live summary, only the final JSON report"),
) -> None:
    """Run N simulated devices for --duration seconds and print the report as JSON."""
    import asyncio

    from edgefleet.cloud.cli.client import resolve_endpoint
    from edgefleet.cloud.simulate.run import knobs_from
    from edgefleet.cloud.simulate.run import simulate as run

    knobs = knobs_from({"devices": devices, "device_prefix": prefix, "heartbeat_s": heartbeat_s,
                        "telemetry_s": telemetry_s, "drift_fraction": drift_fraction,
                        "drift_magnitude": drift_magnitude, "install_failure_rate": install_failure_rate,
                        "download_mode": download_mode, "verify_fraction": verify_fraction, "latency_s": latency_s,
                        "churn_per_min": churn_per_min, "reconnect_after_s": reconnect_after_s,
                        "storm_after_s": storm_after_s, "connect_rate": connect_rate, "seed": seed})
    base, api_token = resolve_endpoint(url, token)
    path = state_file or Path(".edgefleet") / "simulate" / f"{knobs.device_prefix}.json"
    live = None if quiet else _Live()
    try:
        report = asyncio.run(run(knobs, url=base, token=api_token, state_path=path, broker_url=broker_url,
                                 duration_s=duration, tick=live.update if live else None))
    finally:
        if live:
            live.stop()
    print_json(report)


class _Live:
    """The rich live summary on stderr."""

    def __init__(self) -> None:
        from rich.live import Live

        self.live = Live(console=err_console, refresh_per_second=2, transient=True)
        self.live.start()

    def update(self, stage: str, snap: dict[str, Any]) -> None:
        from rich.table import Table

        table = Table(title=f"edgefleet simulate: {stage}", show_header=False)
        if stage == "enrolling":
            table.add_row("enrolled", str(snap["enrolled"]))
        else:
            counts, rollout = snap["counts"], snap["rollout"]
            table.add_row("online / devices", f"{snap['online']} / {snap['devices']}")
            table.add_row("phases", ", ".join(f"{k} {v}" for k, v in sorted(snap["phases"].items())))
            table.add_row("sent", ", ".join(f"{k.removeprefix('sent_')} {v}" for k, v in sorted(counts.items())
                                            if k.startswith("sent_")))
            table.add_row("connects / drops", f"{counts.get('connects', 0)} / {counts.get('disconnects', 0)}")
            table.add_row("orders / finals", f"{rollout['orders']} / {rollout['finals']} {rollout['outcomes']}")
            if snap["errors"]:
                table.add_row("errors", "; ".join(f"{k} x{v}" for k, v in snap["errors"].items()))
        self.live.update(table)

    def stop(self) -> None:
        self.live.stop()
