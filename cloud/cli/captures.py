"""``edgefleet captures ...``: samples devices captured and uploaded (operator token; docs/operations.md):
list them, download one as its ``.npz``, delete one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from edgefleet.cloud.cli.client import API_PREFIX, client_from_env
from edgefleet.cloud.cli.options import JSON, TOKEN, URL
from edgefleet.cloud.cli.output import ago, console, print_json, print_table, short

captures_app = typer.Typer(no_args_is_help=True,
                           help="Captured samples: inputs devices kept and uploaded (bundles with [capture]).")


def register(app: typer.Typer) -> None:
    app.add_typer(captures_app, name="captures")


@captures_app.command("list")
def captures_list(model: str | None = typer.Option(None, help="only datasets of this registry model's bundles"),
                  device: list[str] = typer.Option([], "--device", help="only this device (repeatable)"),
                  since: float | None = typer.Option(None, help="only datasets with samples from then on (Unix s)"),
                  url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """List captured datasets, oldest first."""
    with client_from_env(url, token) as c:
        rows = c.get(f"{API_PREFIX}/captures", model=model, device_id=device or None, since=since)
    if json_out:
        return print_json(rows)
    print_table(None, ["id", "device", "bundle", "model", "samples", "labelled", "bytes", "stored"],
                [(d["id"], d["device_id"], _bundle(d), d["model_name"] or "-", d["samples"], d["labelled"], d["size"],
                  ago(d["stored_at"])) for d in rows])


def _bundle(dataset: dict[str, Any]) -> str:
    name = dataset["bundle_name"] or short(dataset["bundle_digest"])
    return f"{name} {dataset['bundle_version']}" if dataset["bundle_version"] else name


@captures_app.command("download")
def captures_download(dataset_id: int,
                      out: Path | None = typer.Option(None, "--out", help="file to write (default capture-ID.npz)"),
                      url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Download a captured dataset as its .npz (input:<name> arrays, label -1 = unlabelled)."""
    dest = out or Path(f"capture-{dataset_id}.npz")
    with client_from_env(url, token) as c:
        size = c.download(f"{API_PREFIX}/captures/{dataset_id}/download", dest)
    if json_out:
        return print_json({"id": dataset_id, "path": str(dest), "bytes": size})
    console.print(f"captured dataset {dataset_id} -> {dest} ({size} bytes)", highlight=False)


@captures_app.command("delete")
def captures_delete(dataset_id: int, url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Delete a captured dataset and its file on the controller."""
    with client_from_env(url, token) as c:
        c.request("DELETE", f"{API_PREFIX}/captures/{dataset_id}")
    print_json({"deleted": dataset_id}) if json_out else console.print(f"captured dataset {dataset_id} deleted")
