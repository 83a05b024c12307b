"""``edgefleet webhook ...``: HTTP receivers of the controller's events (docs/webhooks.md), admin
token: add one (its signing secret is shown once), list, remove, its deliveries, ping it."""

from __future__ import annotations

import time
from typing import Any

import typer

from edgefleet.cloud.cli.client import client_from_env
from edgefleet.cloud.cli.options import JSON, TOKEN, URL
from edgefleet.cloud.cli.output import ago, console, print_json, print_table
from edgefleet.cloud.vocabulary import DeliveryState

webhook_app = typer.Typer(no_args_is_help=True, help="Webhooks: HTTP receivers of rollout events, signed and retried.")


def register(app: typer.Typer) -> None:
    app.add_typer(webhook_app, name="webhook")


@webhook_app.command("add")
def webhook_add(url_: str = typer.Argument(..., metavar="URL", help="http(s) URL the events are POSTed to"),
                event: list[str] = typer.Option([], "--event", help="an event to send (repeatable; default: all)"),
                description: str = typer.Option("", help="what the receiver is"),
                url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Register a webhook; prints its signing secret (shown once)."""
    with client_from_env(url, token) as c:
        created = c.post("/api/v1/webhooks", {"url": url_, "events": event or ["*"], "description": description})
    if json_out:
        return print_json(created)
    console.print(f"webhook {created['id']} -> {created['url']} ({', '.join(created['events'])})", highlight=False)
    console.print(f"signing secret (shown once): [bold]{created['secret']}[/]", highlight=False)


@webhook_app.command("list")
def webhook_list(url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """List webhooks."""
    with client_from_env(url, token) as c:
        rows = c.get("/api/v1/webhooks")
    if json_out:
        return print_json(rows)
    print_table(None, ["id", "url", "events", "description", "created"],
                [(w["id"], w["url"], ", ".join(w["events"]), w["description"], ago(w["created_at"])) for w in rows])


@webhook_app.command("remove")
def webhook_remove(webhook_id: int, url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Remove a webhook and its deliveries."""
    with client_from_env(url, token) as c:
        c.request("DELETE", f"/api/v1/webhooks/{webhook_id}")
    print_json({"removed": webhook_id}) if json_out else console.print(f"webhook {webhook_id} removed")


@webhook_app.command("deliveries")
def webhook_deliveries(webhook_id: int, limit: int = typer.Option(20, min=1, max=1000, help="how many, newest first"),
                       url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """A webhook's latest deliveries: state, attempts, the last answer."""
    with client_from_env(url, token) as c:
        rows = c.get(f"/api/v1/webhooks/{webhook_id}/deliveries", limit=limit)
    if json_out:
        return print_json(rows)
    print_table(None, ["delivery", "event", "state", "attempts", "last answer", "next try", "created"],
                [(d["id"], d["event"], d["state"], d["attempts"], d.get("last_error") or d.get("last_status") or "-",
                  _next_try(d), ago(d["created_at"])) for d in rows])


@webhook_app.command("ping")
def webhook_ping(webhook_id: int, url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Send a test event to a webhook (follow it with 'deliveries')."""
    with client_from_env(url, token) as c:
        delivery = c.post(f"/api/v1/webhooks/{webhook_id}/ping")
    if json_out:
        return print_json(delivery)
    console.print(f"ping queued as delivery {delivery['id']}; see: edgefleet webhook deliveries {webhook_id}",
                  highlight=False)


def _next_try(delivery: dict[str, Any]) -> str:
    if delivery["state"] != DeliveryState.PENDING:
        return "-"
    return f"in {max(0.0, delivery['next_attempt_at'] - time.time()):.0f}s"
