"""The ``edgefleet`` app: every command group registered on one typer app, and the one error
policy of the CLI (:func:`run`).

Local commands (keys, bundle build/sign/verify/inspect, compress, demo, serve) need no
controller. Fleet commands talk to the controller's REST API; its URL and token come from
``--url``/``--token``, the environment (``EDGEFLEET_URL``, ``EDGEFLEET_TOKEN``) or the file
named by ``EDGEFLEET_CLI_CONFIG`` (default ``~/.config/edgefleet/cli.toml``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, cast

import typer

from edgefleet.cloud.cli import (
    bundles,
    captures,
    compress,
    db,
    deployments,
    devices,
    experiments,
    incidents,
    keys,
    models,
    retrain,
    rollouts,
    serve,
    simulate,
    status,
    telemetry,
    users,
    webhooks,
)
from edgefleet.cloud.cli.output import err_console
from edgefleet.protocol.errors import AccuracyGateError, ConfigError, EdgeFleetError

app = typer.Typer(name="edgefleet", no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="EdgeFleet: compress, sign and roll out ML models to edge devices.")

for group in (keys, bundles, compress, models, retrain, devices, deployments, rollouts, experiments, incidents,
              webhooks, telemetry, captures, users, status, serve, db, simulate):
    group.register(app)


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgefleet")
    except PackageNotFoundError:
        return "0+unknown"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"edgefleet {package_version()}")
        raise typer.Exit()


@app.callback()
def _root(version_: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                        help="print the version and exit")) -> None:
    """EdgeFleet: compress, sign and roll out ML models to edge devices."""


EXIT_USAGE = 2
"""Wrong command line or configuration: fix the call."""
EXIT_FAILED = 1
"""The command ran and failed (controller refused, transport, verification)."""
EXIT_GATE = 3
"""A compressed model was refused by its accuracy gate."""
EXIT_INTERRUPTED = 130


def exit_code(exc: EdgeFleetError) -> int:
    if isinstance(exc, AccuracyGateError):
        return EXIT_GATE
    return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILED


def command() -> typer.core.TyperGroup:
    """The click command tree of :data:`app`, with arguments named the conventional way in help and
    usage lines: ``Usage: edgefleet deploy [OPTIONS] BUNDLE`` (typer 0.29 writes ``{bundle}``)."""
    root = typer.main.get_command(app)
    pending: list[Any] = [root]
    while pending:
        node = pending.pop()
        for param in node.params:
            if isinstance(param, typer.core.TyperArgument) and param.metavar is None and param.name:
                param.metavar = param.name.upper()
                param._usage_display_name = _usage_name(param)  # type: ignore[method-assign]  # typer adds braces
        pending.extend(getattr(node, "commands", {}).values())
    return cast(typer.core.TyperGroup, root)


def _usage_name(param: typer.core.TyperArgument) -> Callable[[], str]:
    name = str(param.metavar)
    return lambda: (name if param.required else f"[{name}]") + ("..." if param.nargs != 1 else "")


def run(argv: list[str] | None = None) -> int:
    """Run one command. Every failure is one line on stderr and a non-zero exit code, never a
    traceback: usage errors exit 2 with the usage line, our errors as :func:`exit_code` says."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        rc = command().main(args=argv, prog_name="edgefleet", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("aborted", highlight=False)
        return EXIT_INTERRUPTED
    except typer.TyperException as exc:  # usage errors: unknown command, missing argument, bad value
        show = getattr(exc, "show", None)
        if callable(show):
            show()
        else:
            err_console.print(f"Error: {exc.format_message()}", highlight=False, markup=False)
        return exc.exit_code
    except EdgeFleetError as exc:
        err_console.print(f"error: {exc}", highlight=False, markup=False, emoji=False, soft_wrap=True)  # "x:train:y"
        return exit_code(exc)
    except OSError as exc:
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        err_console.print(f"error: {exc.strerror or exc}{where}", highlight=False, markup=False, soft_wrap=True)
        return EXIT_FAILED
    return rc if isinstance(rc, int) else 0
