"""The ``edgefleet`` command line (typer + rich) for engineers.

Local commands (keys, bundle build/sign/verify/inspect, compress, demo, serve) need no
controller. Fleet commands talk to the controller's REST API; its URL and token come from
``--url``/``--token``, the environment (``EDGEFLEET_URL``, ``EDGEFLEET_TOKEN``) or the file
named by ``EDGEFLEET_CLI_CONFIG`` (default ``~/.config/edgefleet/cli.toml``).
Every error is one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import logging
import sys

import click
import typer

from edgefleet.cloud import cli_bundles, cli_fleet, cli_models
from edgefleet.cloud.cli_output import err_console
from edgefleet.protocol.errors import EdgeFleetError

app = typer.Typer(name="edgefleet", no_args_is_help=True, pretty_exceptions_enable=False,
                  add_completion=False,
                  help="EdgeFleet: compress, sign and roll out ML models to edge devices.")

cli_bundles.register(app)
cli_fleet.register(app)
cli_models.register(app)


@app.command()
def serve(
    host: str = typer.Option(None, help="listen address (default from settings: 127.0.0.1)"),
    port: int = typer.Option(None, help="listen port (default from settings: 8080)"),
    data_dir: str = typer.Option(None, help="data directory (SQLite, bundles, keys)"),
    broker_url: str = typer.Option(None, help="mqtt://host:port; empty starts the embedded broker"),
    release_key: list[str] = typer.Option([], "--release-key",
                                          help="release public key (PEM) trusted to sign bundles (repeatable)"),
) -> None:
    """Run the controller (REST API, web UI, MQTT bridge; embedded broker unless --broker-url).
    Every option can also come from EDGEFLEET_* environment variables (docs/operations.md)."""
    from edgefleet.cloud.server import serve_forever
    from edgefleet.cloud.settings import ControllerSettings

    overrides = {k: v for k, v in {"listen_host": host, "listen_port": port, "data_dir": data_dir,
                                   "broker_url": broker_url, "release_key_paths": release_key or None}.items()
                 if v is not None}
    serve_forever(ControllerSettings(**overrides))


@app.command()
def demo(
    devices: int = typer.Option(4, min=2, max=16, help="how many agent processes to start"),
    keep_running: bool = typer.Option(False, "--keep-running", help="keep everything up for the UI"),
    data_dir: str = typer.Option(None, help="where to keep state (default: a fresh temporary directory)"),
    port: int = typer.Option(0, help="controller port (0 = a free port)"),
    broker_url: str = typer.Option(None, help="use this broker (e.g. mqtt://127.0.0.1:1883) instead of the "
                                              "embedded one"),
) -> None:
    """The whole loop on one machine: train, compress, bundle, enroll, deploy, serve, detect drift."""
    from edgefleet.cloud.demo import run_demo

    raise typer.Exit(run_demo(devices=devices, keep_running=keep_running, data_dir=data_dir, port=port,
                              broker_url=broker_url))


def _register_compression() -> None:
    try:
        from edgefleet.compression.cli import register
    except ImportError as exc:  # compression extras missing: keep the rest of the CLI usable
        logging.getLogger(__name__).debug("compress command unavailable: %s", exc)
        return
    register(app)


_register_compression()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        rc = app(args=argv, prog_name="edgefleet", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        err_console.print("aborted")
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except EdgeFleetError as exc:
        err_console.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2 if exc.code in {"bad_config", "bad_input"} else 1
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        err_console.print(f"[red]error:[/] {exc.strerror or exc}"
                          f"{': ' + str(exc.filename) if getattr(exc, 'filename', None) else ''}",
                          highlight=False, soft_wrap=True)
        return 1
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
