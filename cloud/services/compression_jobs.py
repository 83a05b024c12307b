"""Compression jobs: a model version in, a ``compressed`` variant version out (lineage: source →
variant), run off the request path by the controller's compression worker (a background loop).

A job is ``pending`` → ``running`` → ``succeeded`` | ``failed``. Claiming is one conditional
UPDATE, so two workers never run the same job. A job found ``running`` when a controller starts
was interrupted: it goes back to ``pending`` (up to :data:`MAX_ATTEMPTS` starts), then fails with
``interrupted``. When the accuracy gate refuses the result, the job fails with
``accuracy_gate_failed``, keeps the report, and nothing is registered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select

from edgefleet.cloud.services import audit, datasets, registry
from edgefleet.cloud.store.blobs import BlobStore
from edgefleet.cloud.store.engine import OpenSession
from edgefleet.cloud.store.tables import CompressionJob, ModelVersion, row_id
from edgefleet.cloud.vocabulary import OPEN_JOB_STATES, DataSource, JobState, ModelKind
from edgefleet.compression import CompressionConfig, compress
from edgefleet.protocol.errors import AccuracyGateError, ConflictError, EdgeFleetError, NotFoundError
from edgefleet.protocol.vocabulary import Reason, Runtime

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3



def create_job(session: Session, *, model_name: str, version: str, variant: str, runtime: Runtime,
               config: CompressionConfig, data: DataSource, actor: str, now: float) -> CompressionJob:
    source = registry.get_model_version(session, model_name=model_name, version=version)
    if source.artifact_digest is None:
        raise ConflictError(f"{model_name}@{version} has no model file to compress", where="version",
                            hint=f"upload it first: PUT /api/v1/models/{model_name}/versions/{version}/artifact")
    if source.format == Runtime.TFLITE and runtime == Runtime.ONNX:
        raise ConflictError("a TFLite model cannot be compressed for ONNX", where="runtime", hint="use 'tflite'")
    if data == DataSource.DATASET:
        datasets.get_dataset(session, model_name=model_name)
    taken = session.exec(select(ModelVersion).where(ModelVersion.model_id == source.model_id,
                                                    ModelVersion.version == variant)).first()
    queued = session.exec(select(CompressionJob).where(CompressionJob.model_name == model_name,
                                                       CompressionJob.variant == variant,
                                                       col(CompressionJob.state).in_(OPEN_JOB_STATES))).first()
    if taken is not None or queued is not None:
        raise ConflictError(f"model {model_name!r} already has (or is making) version {variant!r}",
                            where="variant", hint="pick a new variant version")
    job = CompressionJob(model_name=model_name, source_version_id=row_id(source), source_version=version,
                         variant=variant, runtime=runtime, config=config.model_dump(mode="json"), data=data,
                         created_at=now, created_by=actor)
    session.add(job)
    session.flush()
    audit.record(session, actor=actor, action="compression_job.create", target=f"compression_job:{job.id}",
                 details={"model": model_name, "version": version, "variant": variant, "runtime": runtime,
                          "mode": job.config["mode"], "data": data}, now=now)
    return job


def list_jobs(session: Session, *, model_name: str | None = None, state: JobState | None = None,
              limit: int = 100) -> list[CompressionJob]:
    query = select(CompressionJob).order_by(col(CompressionJob.id).desc()).limit(limit)
    if model_name:
        query = query.where(CompressionJob.model_name == model_name)
    if state:
        query = query.where(CompressionJob.state == state)
    return list(session.exec(query))


def get_job(session: Session, *, job_id: int) -> CompressionJob:
    job = session.get(CompressionJob, job_id)
    if job is None:
        raise NotFoundError(f"no compression job {job_id}", where="id")
    return job


def recover_interrupted(session: Session, *, now: float) -> list[int]:
    """Jobs left ``running`` by a controller that died: back to ``pending``, or ``failed`` with
    ``interrupted`` once they have been started :data:`MAX_ATTEMPTS` times. Idempotent."""
    recovered = []
    for job in session.exec(select(CompressionJob).where(CompressionJob.state == JobState.RUNNING)):
        if job.attempts >= MAX_ATTEMPTS:
            job.state, job.finished_at = JobState.FAILED, now
            job.error_code = Reason.INTERRUPTED
            job.error_message = f"the controller stopped while running it ({job.attempts} attempts)"
        else:
            job.state, job.started_at = JobState.PENDING, None
        session.add(job)
        recovered.append(row_id(job))
        log.warning("compression job %d was interrupted: now %s", job.id, job.state)
    return recovered


def _claim(open_session: OpenSession, now: float) -> int | None:
    """Take the oldest pending job (one conditional UPDATE); ``None`` when there is none."""
    while True:
        with open_session() as session:
            job_id = session.exec(select(CompressionJob.id).where(CompressionJob.state == JobState.PENDING)
                                  .order_by(col(CompressionJob.id)).limit(1)).first()
            if job_id is None:
                return None
            claimed = session.exec(update(CompressionJob)
                                   .where(col(CompressionJob.id) == job_id,
                                          col(CompressionJob.state) == JobState.PENDING)
                                   .values(state=JobState.RUNNING, started_at=now,
                                           attempts=CompressionJob.attempts + 1))
            if claimed.rowcount == 1:
                return job_id


def run_next(*, open_session: OpenSession, store: BlobStore, clock: Callable[[], float],
             max_dataset_bytes: int) -> int | None:
    """Run the oldest pending job to a final state; return its id (``None``: nothing pending).

    The model is compressed outside any transaction; the variant is registered (blob, version,
    artifact) in one transaction with the job's final state."""
    job_id = _claim(open_session, clock())
    if job_id is None:
        return None
    run_job(job_id, open_session=open_session, store=store, clock=clock, max_dataset_bytes=max_dataset_bytes)
    return job_id


def run_job(job_id: int, *, open_session: OpenSession, store: BlobStore, clock: Callable[[], float],
            max_dataset_bytes: int) -> CompressionJob:
    """Run a claimed (``running``) job to a final state and return it; also how a retraining job runs
    the compression it created (services/retraining.py)."""
    log.info("compression job %d: running", job_id)
    try:
        with open_session() as session:
            job = get_job(session, job_id=job_id)
            source = session.get(ModelVersion, job.source_version_id)
            if source is None or source.artifact_digest is None:
                raise ConflictError("the source version has no model file any more", where="version")
            model = store.open_path(source.artifact_digest).read_bytes()
            samples = datasets.load_samples(session, model_name=job.model_name, data=job.data, store=store,
                                            max_unpacked=max_dataset_bytes)
            runtime, config = Runtime(job.runtime), CompressionConfig.model_validate(job.config)
        result = compress(model, runtime, config, calibration=samples.calibration, eval_x=samples.eval_x,
                          eval_y=samples.eval_y)
        report = result.report.model_dump(mode="json")
        with open_session() as session:
            job = get_job(session, job_id=job_id)
            _register(session, job=job, model=result.model, report=report, store=store, now=clock())
    except AccuracyGateError as exc:
        _fail(open_session, job_id, exc, report=exc.report, now=clock())
    except EdgeFleetError as exc:
        _fail(open_session, job_id, exc, now=clock())
    except Exception as exc:  # a bug or a library failure must not leave the job running forever
        log.exception("compression job %d crashed", job_id)
        _fail(open_session, job_id, EdgeFleetError(f"{type(exc).__name__}: {exc}", code=Reason.INTERNAL_ERROR),
              now=clock())
    with open_session() as session:
        return get_job(session, job_id=job_id)


def _register(session: Session, *, job: CompressionJob, model: bytes, report: dict[str, Any], store: BlobStore,
              now: float) -> None:
    version = registry.create_model_version(session, model_name=job.model_name, version=job.variant,
                                            kind=ModelKind.COMPRESSED, parent_version=job.source_version,
                                            format=Runtime(job.runtime),
                                            report=report, actor=job.created_by, now=now)
    registry.attach_artifact(session, model_name=job.model_name, version=job.variant, incoming=store.put(model),
                             store=store, actor=job.created_by, now=now)
    job.state, job.report, job.result_version_id, job.finished_at = JobState.SUCCEEDED, report, version.id, now
    session.add(job)
    log.info("compression job %d: succeeded, %s@%s registered (%d bytes)", job.id, job.model_name, job.variant,
             len(model))


def _fail(open_session: OpenSession, job_id: int, exc: EdgeFleetError, *, now: float,
          report: dict[str, Any] | None = None) -> None:
    with open_session() as session:
        job = get_job(session, job_id=job_id)
        job.state, job.finished_at = JobState.FAILED, now
        job.error_code, job.error_message, job.report = exc.code, str(exc), report
        session.add(job)
    log.warning("compression job %d: failed (%s) %s", job_id, exc.code, exc)
