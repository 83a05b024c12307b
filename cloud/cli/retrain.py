"""``edgefleet retrain MODEL``: retrain a model on the controller (docs/retraining.md) — its recipe's
entry point on the reference data and the captured samples, then register, compress and bundle the
result; ``--wait`` prints each phase as it finishes and exits 0 (succeeded), 1 (failed) or 3 (the
accuracy gate refused the compressed model). ``status ID`` and ``list`` follow jobs."""

from __future__ import annotations

import time
from typing import Any

import typer
from rich.text import Text

from edgefleet.cloud.cli.client import API_PREFIX, ControllerClient, client_from_env
from edgefleet.cloud.cli.options import JSON, TOKEN, URL
from edgefleet.cloud.cli.output import ago, console, print_json, print_table, short
from edgefleet.cloud.vocabulary import FINAL_RETRAIN_STATES, RetrainPhase, RetrainState
from edgefleet.protocol.errors import AccuracyGateError, EdgeFleetError, TransportError
from edgefleet.protocol.vocabulary import Reason

START = "start"


class _ModelFirst(typer.core.TyperGroup):
    """``edgefleet retrain MODEL ...`` means ``edgefleet retrain start MODEL ...`` (a model named like a
    command is retrained with ``start``)."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = [START, *args]
        return super().resolve_command(ctx, args)


retrain_app = typer.Typer(cls=_ModelFirst, no_args_is_help=True, subcommand_metavar="MODEL | COMMAND [ARGS]...",
                          help="Retrain a model with its recipe's entry point (edgefleet retrain MODEL), "
                               "then compress and bundle it; follow the jobs.")


def register(app: typer.Typer) -> None:
    app.add_typer(retrain_app, name="retrain")


@retrain_app.command(START)
def retrain_start(
    model: str = typer.Argument(..., help="the registry model"),
    incident: str = typer.Option(None, "--incident", help="the incident this answers (kept in the lineage)"),
    parent: str = typer.Option(None, "--parent", help="the version to retrain (default: the newest source version)"),
    note: str = typer.Option("", "--note", help="why, for the record"),
    wait: bool = typer.Option(False, "--wait", help="print the phases as they finish; exit 1 if the job fails, "
                                                    "3 if the accuracy gate refuses"),
    timeout_s: float = typer.Option(7200.0, "--timeout", help="with --wait: give up after this many seconds"),
    url: str = URL, token: str = TOKEN, json_out: bool = JSON,
) -> None:
    """Retrain MODEL: queue the job (edgefleet retrain MODEL is short for this)."""
    with client_from_env(url, token) as c:
        job = c.post(f"{API_PREFIX}/models/{model}/retrain", {"incident_id": incident, "parent": parent, "note": note})
        if not wait:
            return print_json(job) if json_out else _print_job(job)
        if not json_out:
            console.print(f"retraining job {job['id']}: {model} {job['parent_version']} queued", highlight=False)
        job = wait_for_job(c, job["id"], timeout_s=timeout_s, on_phase=None if json_out else _print_phase)
    print_json(job) if json_out else _print_job(job)
    raise_for_failure(job)


def wait_for_job(c: ControllerClient, job_id: int, *, timeout_s: float, poll_s: float = 0.5,
                 on_phase: Any = None) -> dict[str, Any]:
    """Poll the job until it is final; ``on_phase(phase, seconds)`` for every phase that finished."""
    deadline = time.monotonic() + timeout_s
    shown: set[str] = set()
    while True:
        job = dict(c.get(f"{API_PREFIX}/retraining-jobs/{job_id}"))
        for phase in RetrainPhase:   # in order
            if phase in job["timings"] and phase not in shown and on_phase is not None:
                on_phase(phase, job["timings"][phase], job)
            if phase in job["timings"]:
                shown.add(phase)
        if job["state"] in FINAL_RETRAIN_STATES:
            return job
        if time.monotonic() > deadline:
            raise TransportError(f"retraining job {job_id} not finished after {timeout_s:.0f}s", code=Reason.TIMEOUT,
                                 where="retrain --wait", hint=f"follow it with: edgefleet retrain status {job_id}")
        pause(poll_s)


def pause(seconds: float) -> None:
    """Between two polls of ``--wait`` (tests run the worker here instead)."""
    time.sleep(seconds)


def _print_phase(phase: str, seconds: float, job: dict[str, Any]) -> None:
    failed = job["state"] == RetrainState.FAILED and job["phase"] == phase
    console.print(f"  {phase:<8} {seconds:8.2f} s  {'failed' if failed else 'done'}", highlight=False)


def raise_for_failure(job: dict[str, Any]) -> None:
    """A failed job as the error the CLI exits with (3 for a gate refusal, 1 otherwise)."""
    if job["state"] != RetrainState.FAILED:
        return
    message = f"retraining job {job['id']} failed in phase {job['phase']}: {job['error_message']}"
    if job["error_code"] == Reason.ACCURACY_GATE_FAILED:
        raise AccuracyGateError(message)
    raise EdgeFleetError(message, code=job["error_code"])


def _print_job(job: dict[str, Any]) -> None:
    timings = job.get("timings") or {}
    fields: dict[str, Any] = {
        "job": job["id"], "state": job["state"] + (f" ({job['phase']})" if job.get("phase") else ""),
        "model": f"{job['model_name']} {job['parent_version']}", "incident": job.get("incident_id") or "-",
        "new version": job.get("result_version") or "-", "compressed": job.get("compressed_version") or "-",
        "bundle": short(job.get("bundle_digest"), 16) or "-",
        "phases": ", ".join(f"{p} {timings[p]:.2f} s" for p in RetrainPhase if p in timings) or "-",
    }
    captured = (job.get("datasets") or {}).get("captured")
    if captured:
        fields["captured"] = f"{captured['samples']} samples ({captured['labelled']} labelled) from " \
                             f"{len(captured['ids'])} dataset(s)"
    gate = (job.get("report") or {}).get("gate")
    if gate:
        fields["gate"] = f"{'PASS' if gate.get('passed') else 'FAIL'}: {gate.get('detail', '')}"
    if job.get("error_code"):
        fields["error"] = f"{job['error_code']}: {job.get('error_message') or ''}"
    width = max(len(k) for k in fields)
    for key, value in fields.items():   # as Text: error messages hold "[training]" and "module:function"
        console.print(Text.assemble((key.ljust(width), "bold"), "  ", str(value)))


@retrain_app.command("status")
def retrain_status(job_id: int = typer.Argument(..., help="retraining job id"), log: bool = typer.Option(
                       False, "--log", help="also print the tail of the entry point's output"),
                   url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """One retraining job: state, phase timings, what it registered, why it failed."""
    with client_from_env(url, token) as c:
        job = c.get(f"{API_PREFIX}/retraining-jobs/{job_id}")
    if json_out:
        return print_json(job)
    _print_job(job)
    if log and job.get("log_tail"):
        console.print(Text(job["log_tail"]))


@retrain_app.command("list")
def retrain_list(model: str = typer.Option(None, "--model", help="only this model's jobs"),
                 state: RetrainState = typer.Option(None, "--state", help="only jobs in this state"),
                 url: str = URL, token: str = TOKEN, json_out: bool = JSON) -> None:
    """Retraining jobs, newest first."""
    with client_from_env(url, token) as c:
        jobs = c.get(f"{API_PREFIX}/retraining-jobs", model=model, state=state)
    if json_out:
        return print_json(jobs)
    print_table(None, ["job", "model", "version", "incident", "state", "phase", "bundle", "created"],
                [(j["id"], j["model_name"], f"{j['parent_version']} > {j['result_version'] or '-'}",
                  j["incident_id"] or "-", j["state"], j["phase"] or "-", short(j["bundle_digest"], 8) or "-",
                  ago(j["created_at"])) for j in jobs])
