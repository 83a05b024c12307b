"""``edgefleet serve`` and ``edgefleet demo``: the two commands that start a controller themselves.
Everything heavy is imported when the command runs, not when the CLI starts."""

from __future__ import annotations

from typing import Any

import typer

from edgefleet.cloud.cli.native_logs import quiet_native_logs


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("demo")(demo)


def serve(
    host: str = typer.Option(None, help="listen address (default from settings: 127.0.0.1)"),
    port: int = typer.Option(None, help="listen port (default from settings: 8080)"),
    data_dir: str = typer.Option(None, help="data directory (SQLite, bundles, keys)"),
    broker_url: str = typer.Option(None, help="mqtt://host:port; empty starts the embedded broker"),
    release_key: list[str] = typer.Option([], "--release-key",
                                          help="release public key (PEM) trusted to sign bundles (repeatable)"),
    insecure_broker: bool = typer.Option(False, "--insecure-broker",
                                         help="let the embedded broker, which checks no credentials, listen beyond "
                                              "loopback (EDGEFLEET_EMBEDDED_BROKER_HOST)"),
) -> None:
    """Run the controller in the foreground until Ctrl-C (REST API, web UI, MQTT bridge; the
    embedded broker unless --broker-url). Every option can also come from EDGEFLEET_* environment
    variables (docs/operations.md)."""
    from edgefleet.cloud.server import serve_forever
    from edgefleet.cloud.settings import ControllerSettings

    overrides: dict[str, Any] = {k: v for k, v in {"listen_host": host, "listen_port": port, "data_dir": data_dir,
                                   "broker_url": broker_url, "release_key_paths": release_key or None,
                                   "insecure_broker": insecure_broker or None}.items()
                 if v is not None}
    serve_forever(ControllerSettings(**overrides))


def demo(
    devices: int = typer.Option(4, min=2, max=16, help="how many agent processes to start"),
    keep_running: bool = typer.Option(False, "--keep-running", help="keep everything up for the UI"),
    data_dir: str = typer.Option(None, help="where to keep state (default: a fresh temporary directory)"),
    port: int = typer.Option(8080, help="controller port (taken: a free one is used instead; 0 = a free port)"),
    broker_url: str = typer.Option(None, help="use this broker (e.g. mqtt://127.0.0.1:1883) instead of the "
                                              "embedded one"),
) -> None:
    """The whole loop on one machine: train, compress, bundle, enroll, deploy, serve, detect drift."""
    from edgefleet.cloud.cli.demo import run_demo

    with quiet_native_logs():
        rc = run_demo(devices=devices, keep_running=keep_running, data_dir=data_dir, port=port,
                      broker_url=broker_url)
    raise typer.Exit(rc)
