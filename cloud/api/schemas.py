"""Request and response bodies of the REST API (what /docs shows)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgefleet.cloud.vocabulary import DataSource, ModelKind, Role
from edgefleet.compression import CompressionConfig
from edgefleet.protocol.bundle import BundleRecipe
from edgefleet.protocol.messages import DeviceId, HealthCheck
from edgefleet.protocol.vocabulary import Runtime

Name = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
TagStr = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:=-]+$")]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# ---------------------------------------------------------------- tokens, keys, audit

class TokenCreate(Body):
    name: str = Field(min_length=1, max_length=128)
    role: Literal[Role.VIEWER, Role.OPERATOR, Role.ADMIN]


class TokenOut(Out):
    id: int
    name: str
    role: str
    device_id: str | None
    created_at: float
    created_by: str
    revoked_at: float | None


class TokenCreated(TokenOut):
    token: str
    """The plaintext token; shown only in this response."""


class ReleaseKeyCreate(Body):
    name: str = Field(default="", max_length=128)
    pem: str = Field(min_length=1, max_length=4096)


class ReleaseKeyOut(Out):
    key_id: str
    name: str
    pem: str
    source: str = "api"


class AuditOut(Out):
    id: int
    at: float
    actor: str
    action: str
    target: str
    details: dict[str, Any]


class InfoOut(BaseModel):
    version: str
    broker_url: str | None
    topic_prefix: str
    public_url: str
    controller_key_id: str
    controller_public_key_pem: str
    release_key_ids: list[str]


# ---------------------------------------------------------------- registry

class ModelCreate(Body):
    name: str = Name
    description: str = Field(default="", max_length=2000)


class ModelOut(Out):
    id: int
    name: str
    description: str
    created_at: float
    created_by: str


class ModelVersionCreate(Body):
    version: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
    kind: ModelKind = ModelKind.SOURCE
    parent: str | None = Field(default=None, max_length=64)
    """The version this one was derived from (required for ``compressed``)."""
    format: Runtime = Runtime.ONNX
    report: dict[str, Any] | None = None
    """The compression report (size, latency, accuracy / fidelity, gate)."""


class ModelVersionOut(Out):
    id: int
    version: str
    kind: str
    parent_id: int | None
    format: str
    artifact_digest: str | None
    artifact_size: int | None
    report: dict[str, Any] | None
    created_at: float
    created_by: str


class ModelDetail(ModelOut):
    versions: list[ModelVersionOut]
    lineage: list[dict[str, Any]]


class BundleOut(Out):
    digest: str
    name: str
    version: str
    build: int
    runtime: str
    size: int
    model_version_id: int | None
    uploaded_at: float
    uploaded_by: str


class BundleDetail(BundleOut):
    manifest: dict[str, Any]
    download_path: str


class DatasetOut(Out):
    digest: str
    size: int
    samples: int
    labelled: bool
    uploaded_at: float
    uploaded_by: str


class CompressionJobCreate(Body):
    variant: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
    """Version string of the compressed variant to register."""
    runtime: Runtime = Runtime.ONNX
    config: CompressionConfig = CompressionConfig()
    data: DataSource = DataSource.DIGITS
    """Samples for calibration and evaluation (``dataset``: the ``.npz`` of ``PUT /models/{name}/dataset``)."""


class CompressionJobOut(Out):
    id: int
    model_name: str
    source_version: str
    variant: str
    runtime: str
    config: dict[str, Any]
    data: str
    state: str
    attempts: int
    error_code: str | None
    error_message: str | None
    report: dict[str, Any] | None
    result_version_id: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    created_by: str


class BundleBuildRequest(BundleRecipe):
    """A bundle recipe as JSON (the tables of the TOML recipe, without ``bundle.model``) and the samples."""

    data: DataSource = DataSource.DIGITS


# ---------------------------------------------------------------- devices

class EnrollmentTokenCreate(Body):
    device_id: DeviceId | None = None
    """Pin the token to one device id (required to re-enroll an existing device)."""
    tags: list[TagStr] = Field(default=[], max_length=32)
    ttl_s: float = Field(default=86400.0, gt=0, le=30 * 86400)


class EnrollmentTokenOut(Out):
    id: int
    device_id: str | None
    tags: list[str]
    created_at: float
    expires_at: float
    created_by: str
    used_at: float | None
    used_by_device: str | None


class EnrollmentTokenCreated(EnrollmentTokenOut):
    token: str


class EnrollRequest(Body):
    token: str = Field(min_length=8, max_length=256)
    device_id: DeviceId | None = None


class EnrollResponse(BaseModel):
    device_id: str
    mqtt_username: str
    mqtt_password: str
    api_token: str
    broker_url: str | None
    topic_prefix: str
    controller_url: str
    controller_public_key_pem: str
    release_public_keys_pem: list[str]


class DeviceOut(Out):
    id: str
    tags: list[str]
    hardware_class: str | None
    arch: str | None
    os: str | None
    runtimes: list[str]
    agent_version: str | None
    installed: dict[str, Any] | None
    update_state: str | None
    free_disk_bytes: int | None
    online: bool
    last_seen: float | None
    heartbeat_interval_s: float | None
    last_sequence: int
    enrolled_at: float
    decommissioned: bool = False


class DevicePatch(Body):
    tags: list[TagStr] | None = Field(default=None, max_length=64)
    add_tags: list[TagStr] = Field(default=[], max_length=64)
    remove_tags: list[TagStr] = Field(default=[], max_length=64)
    hardware_class: str | None = Field(default=None, min_length=1, max_length=64)


class EventOut(Out):
    msg_id: str
    device_id: str
    level: str
    kind: str
    text: str
    data: dict[str, Any]
    sent_at: float
    received_at: float


# ---------------------------------------------------------------- deployments

class HealthCheckSpec(HealthCheck):
    """The protocol's health-check window, strict like every request body."""

    model_config = ConfigDict(extra="forbid")


class DeploymentCreate(Body):
    bundle: str = Field(min_length=8, max_length=64, pattern=r"^[0-9a-f]+$")
    """Bundle digest (or a unique prefix of at least 8 hex digits)."""
    device_ids: list[DeviceId] | None = Field(default=None, max_length=10_000)
    tag: str | None = Field(default=None, max_length=64)
    all: bool = False
    note: str = Field(default="", max_length=2000)
    timeout_s: float | None = Field(default=None, gt=0, le=30 * 86400)
    health_check: HealthCheckSpec | None = None
    """How devices judge the new model before committing: after its smoke test, wait for up to
    ``inferences`` live inferences (0: none) for at most ``timeout_s`` seconds. Absent: each
    device's own configuration (by default 10 inferences within 60 s)."""


class TargetOut(Out):
    deployment_id: str
    device_id: str
    sequence: int
    state: str
    final: bool
    outcome: str | None
    reason: str | None
    detail: str | None
    bytes_done: int | None
    bytes_total: int | None
    published_at: float | None
    created_at: float
    updated_at: float
    history: list[dict[str, Any]] = []


class DeploymentOut(Out):
    id: str
    bundle_digest: str
    bundle_label: str = ""
    """``name version+build`` of the bundle."""
    selector: dict[str, Any]
    target: str = ""
    """The selector in words (``tag onnx``, ``all compatible devices``, ``cam-1, cam-2``)."""
    skipped: list[dict[str, Any]]
    status: str
    note: str
    created_at: float
    created_by: str
    finished_at: float | None
    timeout_s: float
    progress: dict[str, int] = {}


class DeploymentDetail(DeploymentOut):
    bundle: BundleOut
    targets: list[TargetOut]


# ---------------------------------------------------------------- telemetry

class WindowOut(Out):
    msg_id: str
    device_id: str
    bundle_digest: str | None
    bundle_name: str | None
    bundle_version: str | None
    window_seq: int
    window_start: float
    window_end: float
    requests: int
    batches: int
    samples: int
    errors: int
    latency_bounds: list[float]
    latency_counts: list[int]
    predictions: dict[str, int]
    drift_psi: float | None
    drift_js: float | None
    drift_ks: float | None
    drift_level: str | None
    received_at: float
