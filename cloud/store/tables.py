"""The controller's tables (SQLModel). Times are Unix seconds (float), like the wire protocol.

Lineage: a :class:`Model` has :class:`ModelVersion` rows; a compressed variant points at its
source version (``parent_id``); a :class:`Bundle` points at the model version it packs.
"""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy import JSON, BigInteger, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from edgefleet.cloud.vocabulary import (
    DataSource,
    DeliveryState,
    DeploymentStatus,
    JobState,
    ModelKind,
    RetrainState,
    TargetState,
)
from edgefleet.protocol.vocabulary import Runtime


def _json(default: Any = None) -> Any:
    if callable(default):
        return Field(default_factory=default, sa_column=Column(JSON, nullable=False))
    return Field(default=default, sa_column=Column(JSON, nullable=True))


class Model(SQLModel, table=True):
    __tablename__ = "models"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=128)
    description: str = ""
    created_at: float
    created_by: str = ""


class ModelVersion(SQLModel, table=True):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    model_id: int = Field(foreign_key="models.id", index=True)
    version: str = Field(max_length=64)
    kind: str = ModelKind.SOURCE
    """``source`` (as trained) or ``compressed`` (a variant of ``parent_id``)."""
    parent_id: int | None = Field(default=None, foreign_key="model_versions.id")
    format: str = Runtime.ONNX
    artifact_digest: str | None = Field(default=None, index=True, max_length=64)
    artifact_size: int | None = Field(default=None, sa_type=BigInteger)
    report: dict[str, Any] | None = _json()
    lineage: dict[str, Any] | None = _json()
    """Where a retrained (or externally trained) version came from: ``parent`` version, ``incident``,
    the ``datasets`` it was trained on (reference digest, captured dataset ids), the retraining ``job``."""
    created_at: float
    created_by: str = ""


class Bundle(SQLModel, table=True):
    __tablename__ = "bundles"
    __table_args__ = (UniqueConstraint("name", "build"),)

    id: int | None = Field(default=None, primary_key=True)
    digest: str = Field(unique=True, index=True, max_length=64)
    name: str = Field(index=True, max_length=128)
    version: str = Field(max_length=64)
    build: int = Field(sa_type=BigInteger)
    runtime: str
    size: int = Field(sa_type=BigInteger)
    manifest: dict[str, Any] = _json(dict)
    model_version_id: int | None = Field(default=None, foreign_key="model_versions.id", index=True)
    uploaded_at: float
    uploaded_by: str = ""


class Device(SQLModel, table=True):
    __tablename__ = "devices"

    id: str = Field(primary_key=True, max_length=64)
    mqtt_password_hash: str = ""
    """Mosquitto-compatible PBKDF2-SHA512 hash (``$7$...``) so an operator can export a password file."""
    message_key: str = ""
    """The device's Ed25519 public key (base64 of the raw 32 bytes) that every message it publishes
    is signed with; empty for a device enrolled before message signatures."""
    tags: list[str] = _json(list)
    hardware_class: str | None = None
    arch: str | None = None
    os: str | None = None
    runtimes: list[str] = _json(list)
    agent_version: str | None = None
    installed: dict[str, Any] | None = _json()
    update_state: str | None = None
    free_disk_bytes: int | None = Field(default=None, sa_type=BigInteger)
    online: bool = False
    last_seen: float | None = None
    heartbeat_interval_s: float | None = None
    last_sequence: int = Field(default=0, sa_type=BigInteger)
    root_version: int | None = None
    """The trust root version the device said it holds in its last hello (``None``: none)."""
    """Highest order sequence issued to this device (orders must strictly increase)."""
    enrolled_at: float
    enrolled_by: str = ""
    broker_disable_pending: bool = Field(default=False, sa_column_kwargs={"server_default": "0"})
    """Decommissioned, but the managed broker (``broker_admin``) has not disabled its client yet:
    the reconciler retries (services/broker_identity.py). The server default fills the rows of an older
    database (migration 0002)."""


class EnrollmentToken(SQLModel, table=True):
    __tablename__ = "enrollment_tokens"

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(unique=True, index=True, max_length=64)
    device_id: str | None = Field(default=None, max_length=64)
    """If set, the device must enroll under this id."""
    tags: list[str] = _json(list)
    created_at: float
    expires_at: float
    created_by: str = ""
    used_at: float | None = None
    used_by_device: str | None = None


class Deployment(SQLModel, table=True):
    __tablename__ = "deployments"

    id: str = Field(primary_key=True, max_length=64)
    bundle_id: int = Field(foreign_key="bundles.id", index=True)
    bundle_digest: str = Field(max_length=64)
    selector: dict[str, Any] = _json(dict)
    """What the operator asked for: ``{"device_ids": [...]}``, ``{"tag": "..."}`` or ``{"all": true}``."""
    skipped: list[dict[str, Any]] = _json(list)
    """Devices matched by the selector but left out (incompatible), with the reason."""
    status: str = DeploymentStatus.ACTIVE
    """``active`` until every target is final, then ``succeeded``, ``failed``, ``partial`` or ``cancelled``."""
    note: str = ""
    created_at: float
    created_by: str = ""
    finished_at: float | None = None
    timeout_s: float


class DeploymentTarget(SQLModel, table=True):
    __tablename__ = "deployment_targets"
    __table_args__ = (UniqueConstraint("deployment_id", "device_id"),
                      Index("ix_targets_open", "final", "device_id"),
                      Index("ix_targets_deployment_open", "deployment_id", "final"))

    id: int | None = Field(default=None, primary_key=True)
    deployment_id: str = Field(foreign_key="deployments.id", index=True, max_length=64)
    device_id: str = Field(foreign_key="devices.id", index=True, max_length=64)
    sequence: int = Field(sa_type=BigInteger)
    """Sequence of the latest order sent for this target (install, then maybe cancel)."""
    state: str = TargetState.PENDING
    """``pending`` (order not yet published), ``sent``, then the device's update state."""
    final: bool = False
    outcome: str | None = None
    reason: str | None = None
    detail: str | None = None
    bytes_done: int | None = Field(default=None, sa_type=BigInteger)
    bytes_total: int | None = Field(default=None, sa_type=BigInteger)
    order: dict[str, Any] = _json(dict)
    """The signed order (``OrderMessage`` JSON) to publish on the device's cmd topic."""
    published_at: float | None = None
    created_at: float
    updated_at: float
    history: list[dict[str, Any]] = _json(list)


class Rollout(SQLModel, table=True):
    """A staged rollout of a bundle: its policy, where it is, who made and approved it. Its orders are
    the targets of one deployment (``deployment_id``), whose status follows the rollout."""

    __tablename__ = "rollouts"
    __table_args__ = (Index("ix_rollouts_state", "state"),)

    id: str = Field(primary_key=True, max_length=64)
    bundle_id: int = Field(foreign_key="bundles.id", index=True)
    bundle_digest: str = Field(max_length=64)
    deployment_id: str = Field(foreign_key="deployments.id", max_length=64)
    selector: dict[str, Any] = _json(dict)
    policy: dict[str, Any] = _json(dict)
    state: str
    stage_index: int = 0
    """The stage that runs (or last ran)."""
    reason: str | None = None
    """Why it waits, paused, or ended as it did (for people)."""
    note: str = ""
    protected_tags: list[str] = _json(list)
    """The protected tags its devices carry: approval by someone other than the creator is required."""
    ordered: int = 0
    succeeded: int = 0
    rollback: list[str] = _json(list)
    """After an abort: the deployments that take its devices back to the bundles they ran before."""
    incidents: list[str] = _json(list)
    """The drift incidents it brings back to health (their devices are its ``devices`` stages')."""
    created_at: float
    created_by: str = ""
    approved_at: float | None = None
    approved_by: str | None = None
    started_at: float | None = None
    aborted_at: float | None = None
    finished_at: float | None = None
    """Set once nothing is left to do (after an abort: once every roll-back has ended)."""
    updated_at: float


class RolloutStage(SQLModel, table=True):
    __tablename__ = "rollout_stages"
    __table_args__ = (UniqueConstraint("rollout_id", "index"),)

    id: int | None = Field(default=None, primary_key=True)
    rollout_id: str = Field(foreign_key="rollouts.id", index=True, max_length=64)
    index: int
    name: str
    state: str
    started_at: float | None = None
    executed_at: float | None = None
    soak_until: float | None = None
    finished_at: float | None = None
    verdicts: list[dict[str, Any]] = _json(list)
    """The gates' latest results (gate, verdict, summary, evidence)."""


class RolloutDevice(SQLModel, table=True):
    __tablename__ = "rollout_devices"
    __table_args__ = (UniqueConstraint("rollout_id", "device_id"),
                      Index("ix_rollout_devices_state", "rollout_id", "state"))

    id: int | None = Field(default=None, primary_key=True)
    rollout_id: str = Field(foreign_key="rollouts.id", max_length=64)
    device_id: str = Field(foreign_key="devices.id", index=True, max_length=64)
    stage_index: int | None = None
    """The stage that took the device (``None``: not taken yet)."""
    state: str
    previous_digest: str | None = Field(default=None, max_length=64)
    """The bundle the device ran when the rollout took it (what an abort rolls it back to)."""
    revert_deployment_id: str | None = Field(default=None, max_length=64)
    attempts: int = 0
    retry_at: float | None = None
    reason: str | None = None
    ordered_at: float | None = None
    finished_at: float | None = None
    updated_at: float


class TelemetryRecord(SQLModel, table=True):
    __tablename__ = "telemetry_windows"
    __table_args__ = (Index("ix_telemetry_device_end", "device_id", "window_end"),
                      UniqueConstraint("device_id", "msg_id"))

    id: int | None = Field(default=None, primary_key=True)
    msg_id: str = Field(max_length=64)
    """De-duplication is per device: one device cannot shadow another's messages by reusing ids."""
    device_id: str = Field(index=True, max_length=64)
    bundle_digest: str | None = Field(default=None, index=True, max_length=64)
    bundle_name: str | None = None
    bundle_version: str | None = None
    window_seq: int = Field(sa_type=BigInteger)
    window_start: float
    window_end: float
    requests: int = 0
    batches: int = 0
    samples: int = 0
    errors: int = 0
    latency_bounds: list[float] = _json(list)
    latency_counts: list[int] = _json(list)
    predictions: dict[str, int] = _json(dict)
    drift_psi: float | None = None
    drift_js: float | None = None
    drift_ks: float | None = None
    drift_level: str | None = None
    drift_samples: int | None = None
    """The samples behind the drift verdict (``drift.samples``; drift incidents ask for a minimum)."""
    labelled: int = 0
    """Samples the application labelled in this window (``feedback``), ``correct`` of them."""
    correct: int = 0
    confusion: dict[str, dict[str, int]] = _json(dict)
    """True label -> predicted label -> count (empty without feedback, or past the cell limit)."""
    raw: str = Field(default="", sa_type=Text)
    """The message exactly as received (unknown fields included)."""
    received_at: float


class DeviceEvent(SQLModel, table=True):
    __tablename__ = "device_events"
    __table_args__ = (UniqueConstraint("device_id", "msg_id"),)

    id: int | None = Field(default=None, primary_key=True)
    msg_id: str = Field(max_length=64)
    device_id: str = Field(index=True, max_length=64)
    level: str
    kind: str
    text: str = ""
    data: dict[str, Any] = _json(dict)
    sent_at: float
    received_at: float


class ProcessedMessage(SQLModel, table=True):
    """Ids of ingested hello and status messages, so a redelivery is a no-op. Telemetry and
    events are de-duplicated by their own unique ``(device_id, msg_id)``; state messages are
    idempotent. Ids are per device: a device cannot pre-empt another device's message ids."""

    __tablename__ = "processed_messages"

    device_id: str = Field(primary_key=True, max_length=64)
    msg_id: str = Field(primary_key=True, max_length=64)
    kind: str
    received_at: float = Field(index=True)


class User(SQLModel, table=True):
    """A person who signs in (docs/security.md, "People and roles"); never deleted, only disabled,
    so the audit log's ``user:NAME`` always names someone."""

    __tablename__ = "users"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=64)
    display_name: str = Field(default="", max_length=128)
    role: str
    """``viewer``, ``operator``, ``approver`` or ``admin``."""
    password_hash: str | None = Field(default=None, max_length=512)
    """argon2id in PHC form (``$argon2id$v=19$m=...``); ``None``: no password sign-in (OIDC or tokens only)."""
    created_at: float
    created_by: str = ""
    disabled_at: float | None = None
    last_login_at: float | None = None


class ApiToken(SQLModel, table=True):
    __tablename__ = "api_tokens"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=128)
    token_hash: str = Field(unique=True, index=True, max_length=64)
    role: str
    """``admin``, ``approver``, ``operator``, ``viewer`` or ``device``."""
    device_id: str | None = Field(default=None, index=True, max_length=64)
    created_at: float
    created_by: str = ""
    revoked_at: float | None = None
    user_id: int | None = Field(default=None, foreign_key="users.id", index=True)
    """The person who owns this personal token; ``None`` for device and shared (legacy) tokens."""
    expires_at: float | None = None
    last_used_at: float | None = None
    """Updated at most once a minute (services/auth.py ``LAST_USED_EVERY_S``)."""
    ui_session: bool = Field(default=False, sa_column_kwargs={"server_default": "0"})
    """Made by a password sign-in to the web UI (revoked at sign-out), not by the person."""


class AuditEntry(SQLModel, table=True):
    __tablename__ = "audit_log"

    id: int | None = Field(default=None, primary_key=True)
    at: float = Field(index=True)
    actor: str
    action: str = Field(index=True)
    target: str = ""
    details: dict[str, Any] = _json(dict)


class ReleaseKey(SQLModel, table=True):
    """A release public key registered through the API (in addition to the configured files)."""

    __tablename__ = "release_keys"

    key_id: str = Field(primary_key=True, max_length=64)
    name: str = ""
    pem: str
    added_at: float
    added_by: str = ""


class TrustRootRecord(SQLModel, table=True):
    """A trust root the root keys signed, as pushed (services/trust.py, docs/security.md §9). The
    highest version is in force; every version stays, since devices walk them one by one."""

    __tablename__ = "trust_roots"

    version: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    document: str
    """The signed root, canonical JSON (what devices get, byte for byte)."""
    expires_at: int = Field(sa_type=BigInteger)
    pushed_at: float
    pushed_by: str = ""


class DelegationsRecord(SQLModel, table=True):
    """A delegations document the release keys signed, as pushed (services/trust.py, docs/security.md §6).
    The highest version is the one in force; older ones stay for the audit trail."""

    __tablename__ = "delegations"

    version: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    document: str
    """The signed document, canonical JSON (what devices get, byte for byte)."""
    expires_at: int = Field(sa_type=BigInteger)
    pushed_at: float
    pushed_by: str = ""


class ModelDataset(SQLModel, table=True):
    """The sample set of a model (an ``.npz`` with ``x`` and optional ``y``) in the artifact store,
    used for calibration and evaluation by compression jobs and for server-side bundle builds."""

    __tablename__ = "model_datasets"

    model_id: int = Field(foreign_key="models.id", primary_key=True)
    digest: str = Field(max_length=64)
    size: int = Field(sa_type=BigInteger)
    samples: int
    labelled: bool = False
    uploaded_at: float
    uploaded_by: str = ""


class CompressionJob(SQLModel, table=True):
    """Compress a model version into a new ``compressed`` version (run off the request path)."""

    __tablename__ = "compression_jobs"
    __table_args__ = (Index("ix_compression_jobs_state", "state", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    model_name: str = Field(index=True, max_length=128)
    source_version_id: int = Field(foreign_key="model_versions.id", index=True)
    source_version: str = Field(max_length=64)
    variant: str = Field(max_length=64)
    """The version string the compressed variant is registered under."""
    runtime: str
    config: dict[str, Any] = _json(dict)
    """A :class:`edgefleet.compression.CompressionConfig` as JSON (validated when the job was created)."""
    data: str = DataSource.DIGITS
    """``digits`` (scikit-learn's bundled digits) or ``dataset`` (the model's uploaded ``.npz``)."""
    state: str = JobState.PENDING
    """``pending``, ``running``, ``succeeded`` or ``failed``."""
    attempts: int = 0
    error_code: str | None = None
    error_message: str | None = None
    report: dict[str, Any] | None = _json()
    """The compression report (also kept when the accuracy gate refused the result)."""
    result_version_id: int | None = Field(default=None, foreign_key="model_versions.id")
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    created_by: str = ""


class ModelRecipe(SQLModel, table=True):
    """A model's recipe (services/model_recipes.py, docs/retraining.md): its ``[training]`` entry
    point and limits, ``[compression]`` and the bundle tables, as validated when it was stored."""

    __tablename__ = "model_recipes"

    model_id: int = Field(foreign_key="models.id", primary_key=True)
    recipe: dict[str, Any] = _json(dict)
    updated_at: float
    updated_by: str = ""


class RetrainingJob(SQLModel, table=True):
    """Retrain a model version on its reference data and the captured samples, then register, compress
    and bundle the result (services/retraining.py), off the request path."""

    __tablename__ = "retraining_jobs"
    __table_args__ = (Index("ix_retraining_jobs_state", "state", "id"),
                      Index("ix_retraining_jobs_incident", "model_name", "incident_id"))

    id: int | None = Field(default=None, primary_key=True)
    model_name: str = Field(index=True, max_length=128)
    parent_version_id: int = Field(foreign_key="model_versions.id")
    parent_version: str = Field(max_length=64)
    incident_id: str | None = Field(default=None, max_length=128)
    note: str = ""
    state: str = RetrainState.PENDING
    phase: str | None = None
    """The phase running, or the one it failed in (:class:`RetrainPhase`)."""
    attempts: int = 0
    datasets: dict[str, Any] = _json(dict)
    """What it trained on: ``reference`` (digest, samples) and ``captured`` (dataset ids, samples, labelled)."""
    result_version_id: int | None = Field(default=None, foreign_key="model_versions.id")
    result_version: str | None = Field(default=None, max_length=64)
    compression_job_id: int | None = Field(default=None, foreign_key="compression_jobs.id")
    compressed_version: str | None = Field(default=None, max_length=64)
    bundle_digest: str | None = Field(default=None, max_length=64)
    timings: dict[str, float] = _json(dict)
    """Seconds each finished phase took."""
    error_code: str | None = None
    error_message: str | None = None
    report: dict[str, Any] | None = _json()
    """The compression report (kept when the accuracy gate refused the result)."""
    log_tail: str = Field(default="", sa_type=Text)
    """The end of the entry point's stdout and stderr."""
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    created_by: str = ""


class Webhook(SQLModel, table=True):
    """An HTTP endpoint told about events (``services/webhooks.py``, docs/webhooks.md)."""

    __tablename__ = "webhooks"

    id: int | None = Field(default=None, primary_key=True)
    url: str = Field(max_length=2048)
    events: list[str] = _json(list)
    """The event names it subscribes to; ``["*"]`` is every event."""
    secret: str = Field(max_length=128)
    """The HMAC-SHA256 key deliveries are signed with (kept in plaintext: signing needs it; the API
    shows it once, at creation)."""
    description: str = ""
    enabled: bool = True
    created_at: float
    created_by: str = ""


class WebhookDelivery(SQLModel, table=True):
    """One event for one webhook, sent until a 2xx answer or ``max_attempts`` (at least once)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),)

    id: int | None = Field(default=None, primary_key=True)
    webhook_id: int = Field(foreign_key="webhooks.id", index=True)
    event: str = Field(max_length=64)
    body: str = Field(default="", sa_type=Text)
    """The JSON document sent (the same bytes on every attempt; its ``id`` is this row's)."""
    state: str = DeliveryState.PENDING
    attempts: int = 0
    next_attempt_at: float
    in_flight_until: float | None = None
    """Claimed by a sender until then; a claim whose sender died runs out and the delivery is due again."""
    last_status: int | None = None
    """HTTP status of the last attempt (``None``: no answer)."""
    last_error: str | None = None
    created_at: float
    delivered_at: float | None = None
    updated_at: float


class _WithIntId(Protocol):
    id: int | None


def row_id(row: _WithIntId) -> int:
    """The primary key of a row that has been flushed (``None`` before that is a bug, not input)."""
    if row.id is None:
        raise RuntimeError(f"{type(row).__name__} row has no id yet (flush the session first)")
    return row.id


class Experiment(SQLModel, table=True):
    """An A/B experiment: a cohort split between bundle A (control) and bundle B (treatment) for a
    duration. Each arm's orders are the targets of one deployment of its own (``deployment_a_id``,
    ``deployment_b_id``), whose status follows the experiment."""

    __tablename__ = "experiments"
    __table_args__ = (Index("ix_experiments_state", "state"),)

    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=128)
    bundle_a_id: int = Field(foreign_key="bundles.id", index=True)
    bundle_a_digest: str = Field(max_length=64)
    bundle_b_id: int = Field(foreign_key="bundles.id", index=True)
    bundle_b_digest: str = Field(max_length=64)
    deployment_a_id: str = Field(foreign_key="deployments.id", max_length=64)
    deployment_b_id: str = Field(foreign_key="deployments.id", max_length=64)
    selector: dict[str, Any] = _json(dict)
    split_percent: float
    """The share of the cohort on bundle B."""
    cohort_size: int | None = None
    """At most this many of the matching devices take part (``None``: all of them)."""
    duration_s: float
    alpha: float
    min_windows: int
    state: str
    reason: str | None = None
    """Why it ended as it did (for people)."""
    promoted_arm: str | None = Field(default=None, max_length=1)
    rollout_id: str | None = Field(default=None, foreign_key="rollouts.id", max_length=64)
    """The rollout of the winner's bundle, once promoted."""
    created_at: float
    created_by: str = ""
    started_at: float
    ends_at: float
    finished_at: float | None = None
    """When it left ``running``: the results count telemetry windows up to then."""
    updated_at: float


class ExperimentDevice(SQLModel, table=True):
    __tablename__ = "experiment_devices"
    __table_args__ = (UniqueConstraint("experiment_id", "device_id"),)

    id: int | None = Field(default=None, primary_key=True)
    experiment_id: str = Field(foreign_key="experiments.id", index=True, max_length=64)
    device_id: str = Field(foreign_key="devices.id", index=True, max_length=64)
    arm: str | None = Field(default=None, max_length=1)
    """``a`` or ``b`` (``None``: skipped before the split)."""
    state: str
    previous_digest: str | None = Field(default=None, max_length=64)
    """The bundle the device ran when the experiment took it."""
    reason: str | None = None
    ordered_at: float | None = None
    running_since: float | None = None
    """Since when it runs its arm's bundle."""
    updated_at: float


class CaptureUpload(SQLModel, table=True):
    """A device's upload of one batch of captured samples (services/captures.py): asked for over MQTT,
    granted with a signed, expiring URL, received in resumable chunks under ``<data_dir>/uploads``."""

    __tablename__ = "capture_uploads"

    upload_id: str = Field(primary_key=True, max_length=32)
    """Chosen by the device (a random uuid), so a retried request names the same upload."""
    device_id: str = Field(index=True, max_length=64)
    bundle_digest: str = Field(max_length=64)
    size: int = Field(sa_type=BigInteger)
    sha256: str = Field(max_length=64)
    samples: int
    labelled: int
    t_from: float
    t_to: float
    state: str
    reason: str | None = None
    """Why it was refused."""
    grant_due: bool = True
    """A request arrived that no published grant has answered yet."""
    requested_at: float
    granted_at: float | None = None
    dataset_id: int | None = None
    updated_at: float


class CapturedDataset(SQLModel, table=True):
    """Samples captured on a device and uploaded (an ``.npz`` in the capture store, docs/operations.md)."""

    __tablename__ = "captured_datasets"

    id: int | None = Field(default=None, primary_key=True)
    upload_id: str = Field(unique=True, max_length=32)
    device_id: str = Field(index=True, max_length=64)
    bundle_digest: str = Field(index=True, max_length=64)
    bundle_name: str | None = Field(default=None, max_length=128)
    bundle_version: str | None = Field(default=None, max_length=64)
    model_name: str | None = Field(default=None, index=True, max_length=128)
    """The registry model the bundle packs, when the bundle is linked to a model version."""
    t_from: float
    t_to: float = Field(index=True)
    samples: int
    labelled: int
    blob_digest: str = Field(max_length=64)
    size: int = Field(sa_type=BigInteger)
    stored_at: float


class Incident(SQLModel, table=True):
    """A drift incident (services/incidents/, docs/incidents.md): a cohort -- one bundle on one device,
    or on the devices with one tag -- stayed at alarm for K consecutive windows; closed after a cooldown."""

    __tablename__ = "incidents"
    __table_args__ = (Index("ix_incidents_state_opened", "state", "opened_at"),)

    id: str = Field(primary_key=True, max_length=64)
    """``inc-`` and 12 hex digits, derived from the cohort and the opening window (the same on every controller)."""
    cohort_kind: str = Field(max_length=16)
    """``device`` or ``tag``."""
    cohort_key: str = Field(index=True, max_length=64)
    """The device id, or the tag."""
    bundle_digest: str = Field(index=True, max_length=64)
    bundle_name: str | None = Field(default=None, max_length=128)
    bundle_version: str | None = Field(default=None, max_length=64)
    model_name: str | None = Field(default=None, max_length=128)
    """The registry model the bundle packs (else the bundle's name)."""
    state: str
    opened_at: float
    """End of the window that made the K-window rule hold (window time, like every time below)."""
    first_alarm_at: float
    """End of the first alarm window of the run that opened it."""
    last_alarm_at: float
    """End of its latest alarm window: it closes ``incident_cooldown_s`` after this."""
    last_window_end: float
    closed_at: float | None = None
    windows: int = 0
    """Alarm windows counted in it (the K that opened it and every one since)."""
    peak_psi: float | None = None
    devices: list[str] = _json(list)
    """Devices that were at alarm in it."""
    reason: str | None = None
    """Why it closed (the cooldown, or who closed it and why)."""
    updated_at: float


class IncidentCohort(SQLModel, table=True):
    """The drift-incident rule's state of one cohort (``rule.CohortState`` as JSON): kept while one of its
    devices is in a run of alarm windows or an incident is open, deleted when there is nothing to remember."""

    __tablename__ = "incident_cohorts"

    id: str = Field(primary_key=True, max_length=200)
    """``kind:bundle digest:key``."""
    incident_id: str | None = Field(default=None, index=True, max_length=64)
    """The open incident, if any (the periodic pass closes those that cooled down)."""
    state: dict[str, Any] = _json(dict)
    updated_at: float


class IncidentCursor(SQLModel, table=True):
    """How far the incident pass has read ``telemetry_windows`` (by id): each window is judged once. Its
    row lock keeps a second controller from judging the same windows at the same time."""

    __tablename__ = "incident_cursor"

    name: str = Field(primary_key=True, max_length=32)
    last_id: int = Field(default=0, sa_type=BigInteger)
    updated_at: float


class Lease(SQLModel, table=True):
    """Who runs a background loop (reconciler, workers) right now, when several controllers share the
    database (services/leases.py): held until ``expires_at`` and renewed well before; a controller that
    dies loses it when it expires, and another one takes it over."""

    __tablename__ = "leases"

    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=128)
    """The holding controller process (``controller_instance`` of the settings: host, pid, random part)."""
    expires_at: float
    acquired_at: float
    """When the current holder took it (renewals keep it)."""
    generation: int = Field(default=1, sa_type=BigInteger)
    """Bumped each time the lease changes hands: a takeover is visible in the row."""


class DeviceTransition(SQLModel, table=True):
    """A device going offline or coming back, when the controller saw it (services/fleet_history.py): the
    history behind the UI's online-over-time trend and the "went offline" / "came back" feed items. Pruned
    after ``fleet_history_retention_s``."""

    __tablename__ = "device_transitions"
    __table_args__ = (Index("ix_device_transitions_device_at", "device_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(max_length=64)
    at: float = Field(index=True)
    online: bool
    """The state the device went to."""
    cause: str = Field(max_length=32)
    """Why (``TransitionCause``): heard from it, its last will, no heartbeat, decommissioned."""


class FleetSnapshot(SQLModel, table=True):
    """Counts of the fleet at one moment, written by the reconciler every ``fleet_snapshot_interval_s``
    (services/fleet_history.py): devices per installed bundle version, devices per tag and drift level.
    One row per ``(at, metric, key)``; pruned after ``fleet_history_retention_s``."""

    __tablename__ = "fleet_snapshots"

    at: float = Field(primary_key=True)
    metric: str = Field(primary_key=True, max_length=16)
    """``SnapshotMetric``: ``devices``, ``version``, ``drift``."""
    key: str = Field(primary_key=True, max_length=256)
    """``devices``: ``total``/``online``; ``version``: ``name version`` (or ``none``); ``drift``: ``tag`` and
    level joined by a tab."""
    value: int = 0
