"""Retraining jobs (docs/retraining.md): a model version and the samples its devices captured in, a
new source version, its compressed variant and a signed bundle out — run off the request path by
the controller's retraining worker, one job at a time per model.

A job is ``pending`` → ``running`` → ``succeeded`` | ``failed``; while running, ``phase`` says where:

* ``gather``   the model's reference dataset (services/datasets.py) and every captured dataset of the
               model (services/captures.py) into a fresh work directory, with the parent model file
               and ``request.json`` (:class:`~edgefleet.protocol.training.TrainingRequest`);
* ``train``    the recipe's ``[training]`` entry point in a subprocess with a time and memory limit
               (services/retraining_runner.py); its output must load and have the parent's inputs;
* ``register`` the result as the next source version (``1.0.0`` → ``1.0.1``) with its lineage
               (parent, incident, datasets, job);
* ``compress`` a compression job with the recipe's ``[compression]`` table and gate (the compression
               job code, run in this worker); a gate refusal fails the job with ``accuracy_gate_failed``
               and keeps the report — the trained version stays registered, no bundle is built;
* ``bundle``   a bundle of the compressed variant from the recipe's bundle tables (version = the new
               version, build = the next build of that bundle name), signed with what
               :attr:`Workshop.signer` gives (the delegated key, docs/security.md §6) and registered;
               for a job of an incident, the inputs its devices captured while at alarm (on its bundle,
               from the end of the first alarm window on) are a known regime of the
               bundle's reference profile (protocol/drift.py ``Regime``), so the healed devices do not
               drift against the data the model was retrained for, and the others still match the
               reference.

Claiming takes a row lock on the model, so two workers never run two jobs of one model. A job found
``running`` when a controller starts was interrupted (its subprocess died with the controller): it
fails with ``interrupted`` and is not re-run on its own — training is expensive and may be what
killed the controller; ``edgefleet retrain`` starts it again. The work directory (it holds copies of
captured device inputs) is deleted when the job ends, whatever the outcome.
"""

from __future__ import annotations

import copy
import io
import logging
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import update
from sqlmodel import Session, col, select

from edgefleet.cloud.services import (
    audit,
    bundle_builds,
    captures,
    compression_jobs,
    datasets,
    model_recipes,
    registry,
    trust,
)
from edgefleet.cloud.services.retraining_runner import TrainingFailed, run_training
from edgefleet.cloud.store.blobs import BlobStore
from edgefleet.cloud.store.engine import OpenSession
from edgefleet.cloud.store.tables import CompressionJob, Incident, Model, ModelVersion, RetrainingJob, row_id
from edgefleet.cloud.vocabulary import DataSource, JobState, ModelKind, RetrainPhase, RetrainState, TrainingFailure
from edgefleet.compression.config import CompressionConfig
from edgefleet.protocol.errors import AccuracyGateError, ConflictError, EdgeFleetError, NotFoundError
from edgefleet.protocol.files import atomic_write
from edgefleet.protocol.keys import TrustedKeys
from edgefleet.protocol.manifest import parse_semver
from edgefleet.protocol.runtimes import open_session
from edgefleet.protocol.training import REQUEST_FILE, TrainingRequest
from edgefleet.protocol.vocabulary import Reason, Runtime

log = logging.getLogger(__name__)

MAX_REGIME_SAMPLES = 2000
"""Captured inputs of an incident's devices counted into the new bundle's known regime (at most)."""

Signer = Callable[[Session], trust.BundleSigner]
"""Gives the key (and delegations document) a retraining job signs its bundle with."""


@dataclass(frozen=True)
class Workshop:
    """Everything a retraining job runs with; the controller builds one (``Controller.retraining``)."""

    open_session: OpenSession
    artifacts: BlobStore
    bundles: BlobStore
    captures: BlobStore
    work_root: Path
    """Work directories are made (and removed) under it, one per job."""
    signer: Signer
    """The one seam of signing: ``Controller.bundle_signer`` (the delegated key and its document)."""
    trusted: Callable[[Session], TrustedKeys]
    clock: Callable[[], float]
    max_dataset_bytes: int
    max_capture_bytes: int
    max_artifact_bytes: int
    max_bundle_bytes: int
    timer: Callable[[], float] = time.perf_counter
    """Measures the phases (durations, unlike ``clock``, which stamps rows)."""
    python: str = sys.executable
    stopping: threading.Event = field(default_factory=threading.Event)
    """Set when the controller stops: a running entry point is killed and its job fails ``interrupted``."""


# --------------------------------------------------------------------------- creating and listing

def create_job(session: Session, *, model_name: str, parent_version: str | None = None,
               incident_id: str | None = None, note: str = "", actor: str, now: float) -> RetrainingJob:
    """Queue a retraining job of ``parent_version`` (default: the newest source version with a model
    file). Checks now what the job needs: a recipe with ``[training]``, ``[compression]`` and the bundle
    tables, the parent's model file, the model's reference dataset."""
    _lock_model(session, model_name)
    model_recipes.retraining_recipe(session, model_name=model_name)
    parent = (registry.get_model_version(session, model_name=model_name, version=parent_version)
              if parent_version is not None else _newest_source(session, model_name))
    if parent.kind != ModelKind.SOURCE:
        raise ConflictError(f"{model_name}@{parent.version} is a {parent.kind} variant; retrain a source version",
                            where="parent", hint="name the version it was compressed from")
    if parent.artifact_digest is None:
        raise ConflictError(f"{model_name}@{parent.version} has no model file to retrain", where="parent",
                            hint=f"upload it first: PUT /api/v1/models/{model_name}/versions/{parent.version}/artifact")
    datasets.get_dataset(session, model_name=model_name)
    job = RetrainingJob(model_name=model_name, parent_version_id=row_id(parent), parent_version=parent.version,
                        incident_id=incident_id, note=note, created_at=now, created_by=actor)
    session.add(job)
    session.flush()
    audit.record(session, actor=actor, action="retraining_job.create", target=f"retraining_job:{job.id}",
                 details={"model": model_name, "parent": parent.version, "incident": incident_id}, now=now)
    log.info("retraining job %d: queued for %s@%s (incident %s)", job.id, model_name, parent.version, incident_id)
    return job


def retrain_on_incident(session: Session, *, incident_id: str, model_name: str, now: float) -> RetrainingJob | None:
    """Queue a retraining job for an incident that opened on a bundle of ``model_name`` — only when the
    model's recipe says ``[training] auto = true`` and no job for this incident exists yet (so calling
    it again, or from two places, creates one job). A model that cannot be retrained (no recipe
    tables, no dataset, no model file) gets no job; the reason is logged. The worker picks the job up
    within ``compression_poll_interval_s`` (``Controller.wake_jobs()`` starts it at once)."""
    try:
        recipe = model_recipes.find_recipe(session, model_name=model_name)
        if recipe is None or recipe.training is None or not recipe.training.auto:
            return None
        _lock_model(session, model_name)
        existing = session.exec(select(RetrainingJob.id).where(RetrainingJob.model_name == model_name,
                                                               RetrainingJob.incident_id == incident_id)).first()
        if existing is not None:
            return None
        return create_job(session, model_name=model_name, incident_id=incident_id,
                          note=f"incident {incident_id} opened", actor=f"incident:{incident_id}", now=now)
    except NotFoundError:   # not a registry model (the incident names the bundle)
        return None
    except EdgeFleetError as exc:
        log.warning("incident %s: model %s is not retrained automatically: %s", incident_id, model_name, exc)
        return None


def list_jobs(session: Session, *, model_name: str | None = None, state: RetrainState | None = None,
              limit: int = 100) -> list[RetrainingJob]:
    query = select(RetrainingJob).order_by(col(RetrainingJob.id).desc()).limit(limit)
    if model_name:
        query = query.where(RetrainingJob.model_name == model_name)
    if state:
        query = query.where(RetrainingJob.state == state)
    return list(session.exec(query))


def get_job(session: Session, *, job_id: int) -> RetrainingJob:
    job = session.get(RetrainingJob, job_id)
    if job is None:
        raise NotFoundError(f"no retraining job {job_id}", where="id")
    return job


def _lock_model(session: Session, model_name: str) -> Model:
    """The model's row, locked until the transaction ends (PostgreSQL; SQLite has one writer anyway)."""
    model = session.exec(select(Model).where(Model.name == model_name).with_for_update()).first()
    if model is None:
        raise NotFoundError(f"no model {model_name!r}", where="model")
    return model


def _newest_source(session: Session, model_name: str) -> ModelVersion:
    model = registry.get_model(session, name=model_name)
    row = session.exec(select(ModelVersion).where(ModelVersion.model_id == model.id,
                                                  ModelVersion.kind == ModelKind.SOURCE,
                                                  col(ModelVersion.artifact_digest).is_not(None))
                       .order_by(col(ModelVersion.id).desc())).first()
    if row is None:
        raise ConflictError(f"model {model_name!r} has no source version with a model file to retrain",
                            where="parent", hint="register and upload one (edgefleet models upload)")
    return row


def next_version(taken: set[str], parent: str) -> str:
    """The version a retrained model is registered under: the parent's next free patch version
    (``1.0.0`` → ``1.0.1``), or ``<parent>-retrain.N`` for a parent that is not a semantic version."""
    try:
        major, minor, patch = parse_semver(parent)
    except ValueError:
        n = 1
        while f"{parent}-retrain.{n}" in taken:
            n += 1
        return f"{parent}-retrain.{n}"
    patch += 1
    while f"{major}.{minor}.{patch}" in taken:
        patch += 1
    return f"{major}.{minor}.{patch}"


# --------------------------------------------------------------------------- running

def recover_interrupted(session: Session, *, now: float) -> list[int]:
    """Jobs left ``running`` by a controller that stopped: ``failed`` with ``interrupted`` (and the
    compression job one was running with them, so nobody re-runs it). Idempotent."""
    recovered = []
    for job in session.exec(select(RetrainingJob).where(RetrainingJob.state == RetrainState.RUNNING)):
        job.state, job.finished_at, job.error_code = RetrainState.FAILED, now, Reason.INTERRUPTED
        job.error_message = (f"the controller stopped during the {job.phase} phase; what earlier phases registered "
                             "stays (start it again with edgefleet retrain)")
        session.add(job)
        if job.compression_job_id is not None:
            compression = session.get(CompressionJob, job.compression_job_id)
            if compression is not None and compression.state == JobState.RUNNING:
                compression.state, compression.finished_at = JobState.FAILED, now
                compression.error_code = Reason.INTERRUPTED
                compression.error_message = f"its retraining job {job.id} was interrupted"
                session.add(compression)
        recovered.append(row_id(job))
        log.warning("retraining job %d was interrupted in phase %s: failed", job.id, job.phase)
    return recovered


def _claim(open_session: OpenSession, now: float) -> int | None:
    """Take the oldest pending job of a model that has no running job; ``None`` when there is none."""
    with open_session() as session:
        pending = list(session.exec(select(RetrainingJob.id, RetrainingJob.model_name)
                                    .where(RetrainingJob.state == RetrainState.PENDING)
                                    .order_by(col(RetrainingJob.id))))
    for job_id, model_name in pending:
        with open_session() as session:
            _lock_model(session, model_name)
            busy = session.exec(select(RetrainingJob.id).where(RetrainingJob.model_name == model_name,
                                                               RetrainingJob.state == RetrainState.RUNNING)).first()
            if busy is not None:
                continue
            claimed = session.exec(update(RetrainingJob)
                                   .where(col(RetrainingJob.id) == job_id,
                                          col(RetrainingJob.state) == RetrainState.PENDING)
                                   .values(state=RetrainState.RUNNING, phase=RetrainPhase.GATHER, started_at=now,
                                           attempts=RetrainingJob.attempts + 1))
            if claimed.rowcount == 1:
                return job_id
    return None


def run_next(ws: Workshop) -> int | None:
    """Run the oldest runnable job to a final state; return its id (``None``: nothing to run)."""
    job_id = _claim(ws.open_session, ws.clock())
    if job_id is None:
        return None
    _Run(ws, job_id).run()
    return job_id


@dataclass(frozen=True)
class _Plan:
    training: model_recipes.TrainingConfig
    compression: CompressionConfig
    bundle: dict[str, Any]
    parent: bytes
    parent_digest: str
    request: TrainingRequest
    request_path: Path
    regimes: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    """Known regimes for the bundle's reference profile: the inputs the incident's devices captured on
    its bundle from the end of its first alarm window on (what they served while drifting)."""


class _Run:
    """One job from its claim to its final state; each phase commits what it made before the next starts."""

    def __init__(self, ws: Workshop, job_id: int) -> None:
        self.ws, self.job_id = ws, job_id
        self.work = ws.work_root / f"job-{job_id}"
        self.timings: dict[str, float] = {}

    def run(self) -> None:
        log.info("retraining job %d: running", self.job_id)
        try:
            shutil.rmtree(self.work, ignore_errors=True)
            with self.phase(RetrainPhase.GATHER):
                plan = self.gather()
            with self.phase(RetrainPhase.TRAIN):
                model, tail = self.train(plan)
            with self.phase(RetrainPhase.REGISTER):
                version = self.register(plan, model, tail)
            with self.phase(RetrainPhase.COMPRESS):
                variant = self.compress(plan, version)
            with self.phase(RetrainPhase.BUNDLE):
                digest = self.bundle(plan, version, variant)
            self.finish(digest)
        except AccuracyGateError as exc:
            self.fail(exc, report=exc.report)
        except TrainingFailed as exc:
            self.fail(exc, log_tail=exc.log_tail)
        except EdgeFleetError as exc:
            self.fail(exc)
        except Exception as exc:  # a bug or a library failure must not leave the job running forever
            log.exception("retraining job %d crashed", self.job_id)
            self.fail(EdgeFleetError(f"{type(exc).__name__}: {exc}", code=Reason.INTERNAL_ERROR))
        finally:
            shutil.rmtree(self.work, ignore_errors=True)

    @contextmanager
    def session(self) -> Iterator[tuple[Session, RetrainingJob]]:
        with self.ws.open_session() as session:
            yield session, get_job(session, job_id=self.job_id)

    @contextmanager
    def phase(self, phase: RetrainPhase) -> Iterator[None]:
        with self.session() as (session, job):
            job.phase = phase
            session.add(job)
        start = self.ws.timer()
        try:
            yield
        finally:
            self.timings[phase] = round(self.ws.timer() - start, 4)
        with self.session() as (session, job):
            job.timings = dict(self.timings)
            session.add(job)
        log.info("retraining job %d: %s done in %.2f s", self.job_id, phase, self.timings[phase])

    # ---------------------------------------------------------------- the phases

    def gather(self) -> _Plan:
        ws = self.ws
        with self.session() as (session, job):
            training, compression, bundle = model_recipes.retraining_recipe(session, model_name=job.model_name)
            parent = session.get(ModelVersion, job.parent_version_id)
            if parent is None or parent.artifact_digest is None:
                raise ConflictError(f"{job.model_name}@{job.parent_version} has no model file any more", where="parent")
            reference = datasets.get_dataset(session, model_name=job.model_name)
            captured = captures.list_captured(session, model_name=job.model_name)
            incident = session.get(Incident, job.incident_id) if job.incident_id else None
            drifted = [d for d in captures.list_captured(session, model_name=job.model_name,
                                                          device_ids=incident.devices, since=incident.first_alarm_at)
                       if d.bundle_digest == incident.bundle_digest] if incident is not None else []
            drifting_since = incident.first_alarm_at if incident is not None else None
            model_name, parent_version, parent_format = job.model_name, parent.version, Runtime(parent.format)
            parent_digest, incident_id = parent.artifact_digest, job.incident_id
        x, y = datasets.parse_npz(ws.artifacts.open_path(reference.digest).read_bytes(),
                                  max_unpacked=ws.max_dataset_bytes)
        inputs, labels = captures.load_captured(ws.captures, captured, max_unpacked=ws.max_capture_bytes)
        regimes = {}
        if drifted:
            regime, served = captures.load_captured(ws.captures, drifted, max_unpacked=ws.max_capture_bytes,
                                                    since=drifting_since)
            if len(served):
                regimes[f"incident {incident_id}"] = _at_most(regime, MAX_REGIME_SAMPLES)
        parent_model = ws.artifacts.open_path(parent_digest).read_bytes()
        self.work.mkdir(parents=True)
        paths = {name: str((self.work / name).resolve()) for name in
                 ("reference.npz", "captured.npz", f"parent.{parent_format}", f"output.{parent_format}")}
        request = TrainingRequest(
            model=model_name, parent_version=parent_version, format=parent_format, job_id=self.job_id,
            incident_id=incident_id, reference_dataset=reference.digest,
            captured_datasets=[row_id(d) for d in captured], work_dir=str(self.work.resolve()),
            reference=paths["reference.npz"], captured=paths["captured.npz"],
            parent=paths[f"parent.{parent_format}"], output=paths[f"output.{parent_format}"])
        labelled_y = y if y is not None else np.full(len(x), -1, dtype=np.int64)
        atomic_write(request.reference, _npz(x=x, y=labelled_y))
        atomic_write(request.captured, _npz(label=labels, **{captures.INPUT_PREFIX + n: a for n, a in inputs.items()}))
        atomic_write(request.parent, parent_model)
        request_path = request.save(self.work / REQUEST_FILE)
        with self.session() as (session, job):
            job.datasets = {"reference": {"digest": reference.digest, "samples": len(x), "labelled": y is not None},
                            "captured": {"ids": request.captured_datasets, "samples": int(len(labels)),
                                         "labelled": int((labels >= 0).sum())}}
            session.add(job)
        return _Plan(training, compression, bundle, parent_model, parent_digest, request, request_path, regimes)

    def train(self, plan: _Plan) -> tuple[bytes, str]:
        entry = plan.training.entry()
        tail = run_training(entry, plan.request_path, timeout_s=plan.training.timeout_s,
                            memory_mb=plan.training.memory_mb, python=self.ws.python, stopping=self.ws.stopping)
        output = Path(plan.request.output)
        size = output.stat().st_size if output.exists() else 0
        if size == 0:
            raise TrainingFailed(f"{entry.describe()} ended without writing the model to {output.name}",
                                 code=TrainingFailure.NO_OUTPUT, log_tail=tail,
                                 hint="write the new model to request.output")
        if size > self.ws.max_artifact_bytes:
            raise TrainingFailed(f"{output.name} has {size} bytes, more than max_artifact_bytes "
                                 f"({self.ws.max_artifact_bytes})", code=TrainingFailure.BAD_OUTPUT, log_tail=tail)
        model = output.read_bytes()
        _check_output(model, plan.parent, Runtime(plan.request.format), name=output.name, log_tail=tail)
        return model, tail

    def register(self, plan: _Plan, model: bytes, tail: str) -> str:
        ws = self.ws
        with self.session() as (session, job):
            taken = {v.version for v in registry.list_model_versions(session, model_name=job.model_name)}
            version = next_version(taken, job.parent_version)
            lineage = {"parent": job.parent_version, "parent_digest": plan.parent_digest,
                       "incident": job.incident_id, "datasets": job.datasets, "job": self.job_id,
                       "entry_point": plan.training.entry().describe()}
            row = registry.create_model_version(session, model_name=job.model_name, version=version,
                                                kind=ModelKind.SOURCE, parent_version=job.parent_version,
                                                format=Runtime(plan.request.format), lineage=lineage,
                                                actor=job.created_by, now=ws.clock())
            registry.attach_artifact(session, model_name=job.model_name, version=version,
                                     incoming=ws.artifacts.put(model), store=ws.artifacts, actor=job.created_by,
                                     now=ws.clock())
            job.result_version_id, job.result_version, job.log_tail = row.id, version, tail
            session.add(job)
        log.info("retraining job %d: %s@%s registered (%d bytes)", self.job_id, plan.request.model, version, len(model))
        return version

    def compress(self, plan: _Plan, version: str) -> str:
        ws = self.ws
        variant = f"{version}-{plan.compression.mode.value.replace('_', '-')}"
        with self.session() as (session, job):
            compression = compression_jobs.create_job(
                session, model_name=job.model_name, version=version, variant=variant,
                runtime=Runtime(plan.bundle["bundle"]["runtime"]), config=plan.compression, data=DataSource.DATASET,
                actor=job.created_by, now=ws.clock())
            compression.state, compression.started_at, compression.attempts = JobState.RUNNING, ws.clock(), 1
            session.add(compression)
            job.compression_job_id = compression_id = row_id(compression)
            session.add(job)
        done = compression_jobs.run_job(compression_id, open_session=ws.open_session, store=ws.artifacts,
                                        clock=ws.clock, max_dataset_bytes=ws.max_dataset_bytes)
        with self.session() as (session, job):
            job.report = done.report
            if done.state == JobState.SUCCEEDED:
                job.compressed_version = variant
            session.add(job)
        if done.state != JobState.SUCCEEDED:
            message = f"compression job {compression_id}: {done.error_message}"
            if done.error_code == Reason.ACCURACY_GATE_FAILED:
                raise AccuracyGateError(message, report=done.report, where="compression",
                                        hint=f"{plan.request.model}@{version} stays registered; no bundle was built")
            raise EdgeFleetError(message, code=done.error_code or Reason.COMPRESSION_FAILED, where="compression")
        return variant

    def bundle(self, plan: _Plan, version: str, variant: str) -> str:
        ws = self.ws
        recipe = copy.deepcopy(plan.bundle)
        name = recipe["bundle"]["name"]
        recipe["bundle"].pop("model", None)
        with self.session() as (session, job):
            newest = registry.list_bundles(session, name=name)
            build = max([recipe["bundle"].get("build", 0)] + [b.build + 1 for b in newest[:1]])
            recipe["bundle"].update(version=version, build=build)
            signer = ws.signer(session)
            bundle, _ = bundle_builds.build_and_register(
                session, model_name=job.model_name, version=variant, recipe=recipe, data=DataSource.DATASET,
                key=signer.key, delegations=signer.delegations, trusted=ws.trusted(session), artifacts=ws.artifacts,
                bundles=ws.bundles, max_bundle_bytes=ws.max_bundle_bytes, max_dataset_bytes=ws.max_dataset_bytes,
                actor=job.created_by, now=ws.clock(), regimes=plan.regimes)
            job.bundle_digest = bundle.digest
            session.add(job)
        log.info("retraining job %d: bundle %s %s build %d (%s) signed by %s", self.job_id, name, version, build,
                 bundle.digest[:12], signer.key_id[:12])
        return bundle.digest

    # ---------------------------------------------------------------- endings

    def finish(self, digest: str) -> None:
        with self.session() as (session, job):
            job.state, job.finished_at, job.timings = RetrainState.SUCCEEDED, self.ws.clock(), dict(self.timings)
            session.add(job)
            audit.record(session, actor=job.created_by, action="retraining_job.succeeded",
                         target=f"retraining_job:{self.job_id}",
                         details={"model": job.model_name, "version": job.result_version,
                                  "compressed": job.compressed_version, "bundle": digest, "timings": job.timings},
                         now=self.ws.clock())
        log.info("retraining job %d: succeeded (%s)", self.job_id,
                 ", ".join(f"{k} {v:.2f} s" for k, v in self.timings.items()))

    def fail(self, exc: EdgeFleetError, *, report: dict[str, Any] | None = None, log_tail: str | None = None) -> None:
        with self.session() as (session, job):
            job.state, job.finished_at, job.timings = RetrainState.FAILED, self.ws.clock(), dict(self.timings)
            job.error_code, job.error_message = exc.code, str(exc)
            if report is not None:
                job.report = report
            if log_tail is not None:
                job.log_tail = log_tail
            session.add(job)
            audit.record(session, actor=job.created_by, action="retraining_job.failed",
                         target=f"retraining_job:{self.job_id}",
                         details={"model": job.model_name, "phase": job.phase, "code": exc.code}, now=self.ws.clock())
            phase = job.phase
        log.warning("retraining job %d: failed in phase %s (%s) %s", self.job_id, phase, exc.code, exc)


def _at_most(inputs: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """At most ``n`` samples of ``inputs`` (the same rows of every input), drawn without replacement."""
    rows = len(next(iter(inputs.values())))
    if rows <= n:
        return inputs
    keep = np.sort(np.random.default_rng(0).choice(rows, n, replace=False))
    return {name: a[keep] for name, a in inputs.items()}


def _npz(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _check_output(model: bytes, parent: bytes, runtime: Runtime, *, name: str, log_tail: str) -> None:
    """The trained model must load in its runtime and take the parent's inputs (the bundle recipe, the
    devices' callers and the captured samples all assume them)."""
    try:
        trained = open_session(runtime, model)
    except Exception as exc:  # the runtimes raise many kinds on a corrupt model; translated here
        raise TrainingFailed(f"{name} is not a model {runtime} loads: {str(exc).splitlines()[0][:300]}",
                             code=TrainingFailure.BAD_OUTPUT, log_tail=log_tail) from None
    reference = open_session(runtime, parent)
    got = [(t.name, t.shape[1:]) for t in trained.inputs]
    want = [(t.name, t.shape[1:]) for t in reference.inputs]
    if got != want:
        raise TrainingFailed(f"{name} has inputs {got}, the parent model {want}", code=TrainingFailure.BAD_OUTPUT,
                             log_tail=log_tail, hint="keep the parent's input names and shapes")
