"""``edgefleet models ...``: the model registry and the controller's compression jobs."""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path
from typing import Any

import typer
from rich.tree import Tree

from edgefleet.cloud.cli.client import ApiError, ControllerClient, client_from_env
from edgefleet.cloud.cli.options import JSON, TOKEN, URL
from edgefleet.cloud.cli.output import console, print_fields, print_json, print_table, short
from edgefleet.cloud.vocabulary import FINAL_JOB_STATES, DataSource
from edgefleet.compression.modes import Mode
from edgefleet.protocol.errors import ConfigError, TransportError
from edgefleet.protocol.vocabulary import Reason, Runtime

models_app = typer.Typer(no_args_is_help=True, help="Model registry: versions, lineage, recipes, compression jobs.")


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")


@models_app.command("create")
def models_create(name: str, description: str = typer.Option("", help="free text"),
                  url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Register a model name."""
    with client_from_env(url, token) as c:
        model = c.post("/api/v1/models", {"name": name, "description": description})
    print_json(model) if json_out else console.print(f"model {model['name']} created")


@models_app.command("upload")
def models_upload(name: str, version: str, model_file: Path = typer.Argument(..., help=".onnx or .tflite file"),
                  parent: str = typer.Option(None, "--parent", help="the version it was trained from"),
                  lineage: str = typer.Option(None, "--lineage", help='where it came from, a JSON object, e.g. '
                                                                      '\'{"incident": "inc-7", "captures": [3, 4]}\''),
                  url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Add a source version (as trained) of a model and upload its file."""
    fmt = {".onnx": "onnx", ".tflite": "tflite"}.get(model_file.suffix)
    if fmt is None:
        raise ConfigError("the model file must end in .onnx or .tflite", where=str(model_file))
    data = _read(model_file)
    body: dict[str, Any] = {"version": version, "kind": "source", "format": fmt, "parent": parent}
    if lineage is not None:
        try:
            body["lineage"] = json.loads(lineage)
        except ValueError as exc:
            raise ConfigError(f"not valid JSON: {exc}", where="--lineage") from None
    with client_from_env(url, token) as c:
        c.post(f"/api/v1/models/{name}/versions", body)
        result = c.request("PUT", f"/api/v1/models/{name}/versions/{version}/artifact", content=data,
                           headers={"Content-Type": "application/octet-stream"})
    print_json(result) if json_out else console.print(
        f"{name} {version} ({fmt}, {len(data)} bytes) uploaded, sha256 {short(result.get('artifact_digest'), 16)}")


@models_app.command("dataset")
def models_dataset(name: str, npz: Path = typer.Argument(..., help=".npz with x (inputs) and optional y (labels)"),
                   url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Upload the calibration/evaluation set the model's compression jobs use (data=dataset)."""
    with client_from_env(url, token) as c:
        result = c.request("PUT", f"/api/v1/models/{name}/dataset", content=_read(npz),
                           headers={"Content-Type": "application/octet-stream"})
    print_json(result) if json_out else print_fields(result)


@models_app.command("download")
def models_download(name: str, version: str,
                    out: Path = typer.Option(None, "--out", help="file to write (default NAME-VERSION.FORMAT)"),
                    url: str = URL, token: str = TOKEN) -> None:
    """Download the model file of a version (e.g. the parent an external pipeline retrains)."""
    with client_from_env(url, token) as c:
        row = c.get(f"/api/v1/models/{name}/versions/{version}")
        dest = out or Path(f"{name}-{version}.{row['format']}")
        size = c.download(f"/api/v1/models/{name}/versions/{version}/artifact", dest)
    console.print(f"{name} {version} -> {dest} ({size} bytes)", highlight=False)


@models_app.command("dataset-download")
def models_dataset_download(name: str, out: Path = typer.Option(None, "--out", help="file to write "
                                                                                  "(default NAME-dataset.npz)"),
                            url: str = URL, token: str = TOKEN) -> None:
    """Download the model's reference dataset (the .npz of 'edgefleet models dataset': x, optional y)."""
    dest = out or Path(f"{name}-dataset.npz")
    with client_from_env(url, token) as c:
        size = c.download(f"/api/v1/models/{name}/dataset/download", dest)
    console.print(f"dataset of {name} -> {dest} ({size} bytes)", highlight=False)


@models_app.command("build")
def models_build(name: str, version: str,
                 recipe: Path = typer.Option(..., "--recipe", help="bundle recipe (TOML): [bundle], [target]..."),
                 bundle_version: str = typer.Option(None, "--bundle-version", help="overrides [bundle] version"),
                 build: int = typer.Option(None, "--build", help="overrides [bundle] build (must grow)"),
                 data: DataSource = typer.Option(DataSource.DATASET, help="samples for the drift profile and smoke "
                                                                          "test"),
                 url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Build, sign and register a bundle of a version on the controller (its signing key: docs/security.md)."""
    try:
        document = tomllib.loads(_read(recipe).decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not valid TOML: {exc}", where=str(recipe)) from None
    body = {k: v for k, v in document.items() if k != "training"}   # the controller packs the version's file
    body["bundle"] = {k: v for k, v in body.get("bundle", {}).items() if k != "model"}
    body["bundle"].update({k: v for k, v in (("version", bundle_version), ("build", build)) if v is not None})
    with client_from_env(url, token) as c:
        bundle = c.post(f"/api/v1/models/{name}/versions/{version}/bundles", {**body, "data": data})
    print_json(bundle) if json_out else console.print(
        f"bundle {bundle['name']} {bundle['version']}+{bundle['build']} {short(bundle['digest'], 16)} built from "
        f"{name} {version}", highlight=False)


@models_app.command("recipe")
def models_recipe(name: str,
                  set_file: Path = typer.Option(None, "--set", help="store this recipe (TOML, or .json): [training], "
                                                                     "[compression] and the bundle tables"),
                  url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Show a model's recipe (the retraining job's entry point and limits, compression, bundle), or
    store one with --set (docs/retraining.md)."""
    with client_from_env(url, token) as c:
        if set_file is None:
            result = c.get(f"/api/v1/models/{name}/recipe")
        else:
            media = "application/json" if set_file.suffix == ".json" else "application/toml"
            try:
                result = c.request("PUT", f"/api/v1/models/{name}/recipe", content=_read(set_file),
                                   headers={"Content-Type": media})
            except ApiError as exc:
                if exc.code != Reason.INVALID_RECIPE:
                    raise
                raise ConfigError(f"the recipe is not valid: {exc.message.split(': ', 1)[-1]}",
                                  where=f"{set_file}: {exc.where}", hint=exc.hint) from None
    if json_out or set_file is None:
        return print_json(result)
    training = result["recipe"].get("training") or {}
    entry = training.get("entry_point") or " ".join(training.get("command") or []) or "-"
    print_fields({"model": name, "tables": ", ".join(sorted(result["recipe"])), "entry point": entry,
                  "auto": training.get("auto", False), "stored": f"by {result['updated_by']}"})


@models_app.command("compress")
def models_compress(
    name: str, version: str,
    variant: str = typer.Option(..., help="version string of the compressed variant, e.g. 1.0.0-int8"),
    runtime: Runtime = typer.Option(Runtime.ONNX, help="target runtime"),
    recipe: Path = typer.Option(None, help="take the settings from this recipe's [compression] table"),
    mode: Mode = typer.Option(None, help="compression mode (overrides the recipe's)"),
    data: DataSource = typer.Option(DataSource.DIGITS, help="digits: the bundled sample set; dataset: the one "
                                                              "uploaded with 'edgefleet models dataset'"),
    wait: bool = typer.Option(False, "--wait", help="wait until the job has finished"),
    url: str = URL, token: str = TOKEN, json_out: bool = JSON,
) -> None:
    """Compress a model version on the controller; success registers the variant with its lineage."""
    config: dict[str, Any] = {}
    if recipe is not None:
        from edgefleet.compression import load_compression_recipe

        config = load_compression_recipe(recipe).model_dump(mode="json")
    if mode is not None:
        config["mode"] = mode
    with client_from_env(url, token) as c:
        job = c.post(f"/api/v1/models/{name}/versions/{version}/compress",
                     {"variant": variant, "runtime": runtime, "config": config, "data": data})
        if wait:
            with console.status(f"compression job {job['id']} running", spinner="dots"):
                job = _wait_for_job(c, job["id"])
    if json_out:
        return print_json(job)
    _print_job(job)


def _wait_for_job(c: ControllerClient, job_id: int, timeout_s: float = 1800.0,
                  poll_s: float = 0.5) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        job = c.get(f"/api/v1/compression-jobs/{job_id}")
        if job["state"] in FINAL_JOB_STATES:
            return dict(job)
        if time.monotonic() > deadline:
            raise TransportError(f"compression job {job_id} not finished after {timeout_s:.0f}s", code=Reason.TIMEOUT,
                                 where="models compress --wait")
        time.sleep(poll_s)


def _print_job(job: dict[str, Any]) -> None:
    report = job.get("report") or {}
    fields = {"job": job["id"], "state": job["state"],
              "source": f"{job['model_name']} {job['source_version']}", "variant": job["variant"],
              "runtime": job["runtime"], "mode": job["config"].get("mode")}
    if report:
        size, acc, gate = report.get("size", {}), report.get("accuracy"), report.get("gate", {})
        fields["size"] = f"{size.get('original_bytes')} -> {size.get('compressed_bytes')} bytes"
        if acc:
            fields["accuracy"] = f"{100 * acc['original']:.2f}% -> {100 * acc['compressed']:.2f}%"
        fields["gate"] = f"{'PASS' if gate.get('passed') else 'FAIL'}: {gate.get('detail', '')}"
    if job.get("error_code"):
        fields["error"] = f"{job['error_code']}: {job.get('error_message') or ''}"
    print_fields(fields)


@models_app.command("jobs")
def models_jobs(name: str = typer.Option(None, "--model", help="only this model's jobs"),
                url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Compression jobs, newest first."""
    with client_from_env(url, token) as c:
        jobs = c.get("/api/v1/compression-jobs", model=name)
    if json_out:
        return print_json(jobs)
    print_table(None, ["job", "model", "source", "variant", "runtime", "mode", "state", "error"],
                [(j["id"], j["model_name"], j["source_version"], j["variant"], j["runtime"], j["config"].get("mode"),
                  j["state"], j.get("error_code") or "") for j in jobs])


@models_app.command("list")
def models_list(url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Registered models."""
    with client_from_env(url, token) as c:
        models = c.get("/api/v1/models")
    if json_out:
        return print_json(models)
    print_table(None, ["model", "description"], [(m["name"], m.get("description", "")) for m in models])


@models_app.command("show")
def models_show(name: str, url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """A model's lineage: source versions, their compressed variants, and the bundles built from each."""
    with client_from_env(url, token) as c:
        model = c.get(f"/api/v1/models/{name}")
    if json_out:
        return print_json(model)
    tree = Tree(f"[bold]{model['name']}[/]")
    for node in model["lineage"]:
        _add_node(tree, node)
    console.print(tree)


def _add_node(parent: Tree, node: dict[str, Any]) -> None:
    branch = parent.add(f"{node['version']} [dim]({node['kind']}, {node['format']}, "
                        f"{short(node.get('artifact_digest')) or 'no file'})[/]")
    for b in node["bundles"]:
        branch.add(f"bundle {b['name']} {b['version']}+{b['build']} [dim]{short(b['digest'])}[/]")
    for child in node["children"]:
        _add_node(branch, child)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror}", where=str(path)) from None
