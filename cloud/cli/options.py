"""Options shared by the commands that talk to a controller."""

from __future__ import annotations

import typer

URL = typer.Option(None, "--url", envvar="EDGEFLEET_URL", help="controller URL")
TOKEN = typer.Option(None, "--token", envvar="EDGEFLEET_TOKEN", help="API token")
JSON = typer.Option(False, "--json", help="machine-readable output")
PASSPHRASE = typer.Option(None, envvar="EDGEFLEET_KEY_PASSPHRASE", help="passphrase of the private key")
