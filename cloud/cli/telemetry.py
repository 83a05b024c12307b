"""``edgefleet telemetry``: inference statistics and drift, aggregated."""

from __future__ import annotations

import typer

from edgefleet.cloud.cli.client import client_from_env
from edgefleet.cloud.cli.options import JSON, TOKEN, URL
from edgefleet.cloud.cli.output import drift_levels, ms, num, print_json, print_table, short
from edgefleet.cloud.vocabulary import TelemetryGroup


def register(app: typer.Typer) -> None:
    app.command("telemetry")(telemetry)


def telemetry(group_by: TelemetryGroup = typer.Option(TelemetryGroup.DEVICE, "--by", help="what to aggregate by"),
              key: str = typer.Option(None, help="only this device id / digest / model@version / tag"),
              since: float = typer.Option(None, help="only windows after this Unix time"),
              url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Inference statistics, drift and accuracy (where labels come back), aggregated per device, bundle,
    model version or tag."""
    with client_from_env(url, token) as c:
        data = c.get("/api/v1/telemetry/summary", group_by=group_by, key=key, since=since)
    if json_out:
        return print_json(data)
    print_table(None, [group_by, "windows", "requests", "samples", "errors", "p50", "p95", "max PSI",
                       "drift windows"],
                [(short(k) if group_by == TelemetryGroup.BUNDLE else k, s["windows"], s["requests"], s["samples"],
                  s["errors"], ms(s["latency_ms"]["p50"]), ms(s["latency_ms"]["p95"]), num(s["drift"].get("psi_max")),
                  drift_levels(s)) for k, s in data.items()])
    labelled = {k: s["feedback"] for k, s in data.items() if s.get("feedback", {}).get("labelled")}
    if labelled:   # a table of its own: the one above already fills 80 columns
        print_table("labels given back (POST /v1/feedback on the devices)",
                    [group_by, "labelled", "correct", "accuracy"],
                    [(short(k) if group_by == TelemetryGroup.BUNDLE else k, f["labelled"], f["correct"],
                      f"{100 * f['accuracy']:.1f}%") for k, f in labelled.items()])
