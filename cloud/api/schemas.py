"""Request and response bodies of the REST API (what /docs shows)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgefleet.cloud.services.experiments import ExperimentPlan
from edgefleet.cloud.services.rollouts.policy import DEFAULT_TEMPLATE, HEAL_TEMPLATE, TEMPLATES, RolloutPolicy, Selector
from edgefleet.cloud.vocabulary import Arm, DataSource, ModelKind, Role
from edgefleet.compression import CompressionConfig
from edgefleet.protocol.bundle import BundleRecipe
from edgefleet.protocol.messages import Delegation, DeviceId, HealthCheck, SignedDelegations, SignedRoot
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
    role: Literal[Role.VIEWER, Role.OPERATOR, Role.APPROVER, Role.ADMIN]


class TokenOut(Out):
    id: int
    name: str
    role: str
    device_id: str | None
    created_at: float
    created_by: str
    revoked_at: float | None
    user_id: int | None = None
    """The owner of a personal token (``GET /api/v1/users``); ``None`` for a shared or device token."""
    expires_at: float | None = None
    last_used_at: float | None = None
    """When it last authenticated a request (written at most once a minute)."""
    ui_session: bool = False
    """Made by a password sign-in to the web UI; revoked at sign-out."""


class TokenCreated(TokenOut):
    token: str
    """The plaintext token; shown only in this response."""


UserName = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.@-]*$")
Password = Field(min_length=1, max_length=1024)
"""The minimum length is the controller's ``password_min_length`` (a 400 says so)."""
PersonRole = Literal[Role.VIEWER, Role.OPERATOR, Role.APPROVER, Role.ADMIN]


class UserCreate(Body):
    name: str = UserName
    role: PersonRole
    display_name: str = Field(default="", max_length=128)
    password: str | None = Field(default=None, min_length=1, max_length=1024)
    """``None``: no password sign-in until one is set (``POST /api/v1/users/{name}/password``)."""


class UserUpdate(Body):
    role: PersonRole | None = None
    disabled: bool | None = None
    """``true``: the user can no longer sign in and none of their tokens works; ``false``: enabled again."""
    display_name: str | None = Field(default=None, max_length=128)


class PasswordChange(Body):
    password: str = Password
    current_password: str | None = Field(default=None, max_length=1024)
    """Needed when users change their own password (an admin setting another's does not give it)."""


class UserOut(Out):
    name: str
    display_name: str
    role: str
    created_at: float
    created_by: str
    disabled_at: float | None
    last_login_at: float | None
    has_password: bool


class MeOut(BaseModel):
    """Who the calling token speaks for."""

    actor: str
    """The name the audit log gives the caller."""
    role: str
    """The rights of this token: the lower of its own role and its owner's."""
    token_id: int | None
    user: UserOut | None
    """``None`` for a shared (not personal) token."""


class PersonalTokenCreate(Body):
    name: str = Field(min_length=1, max_length=128)
    role: PersonRole | None = None
    """At most the owner's role (and the calling token's); ``None``: the caller's role."""
    expires_in_s: int = Field(default=30 * 86400, ge=60, le=366 * 86400)


class ReleaseKeyCreate(Body):
    name: str = Field(default="", max_length=128)
    pem: str = Field(min_length=1, max_length=4096)


class ReleaseKeyOut(Out):
    key_id: str
    name: str
    pem: str
    source: str = "api"


class DelegationsOut(Out):
    """The delegations document in force (docs/security.md §6) and who pushed it when."""

    version: int
    expires_at: int
    pushed_at: float
    pushed_by: str
    delegations: list[Delegation]
    document: SignedDelegations
    """The signed document as devices get it (feed it to ``edgefleet keys delegate --from``)."""


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
    lineage: dict[str, Any] | None = None
    """Where it came from: e.g. ``{"incident": "...", "datasets": {...}, "pipeline": "..."}`` from an
    external training pipeline (docs/retraining.md); ``parent`` is the version it was trained from."""


class ModelVersionOut(Out):
    id: int
    version: str
    kind: str
    parent_id: int | None
    format: str
    artifact_digest: str | None
    artifact_size: int | None
    report: dict[str, Any] | None
    lineage: dict[str, Any] | None = None
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


class CapturedDatasetOut(Out):
    """Samples captured on a device and uploaded (docs/operations.md, "Captured samples")."""

    id: int
    upload_id: str
    device_id: str
    bundle_digest: str
    bundle_name: str | None
    bundle_version: str | None
    model_name: str | None
    t_from: float
    t_to: float
    samples: int
    labelled: int
    size: int
    blob_digest: str
    stored_at: float


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


class RecipeOut(Out):
    """A model's recipe (docs/retraining.md): ``training``, ``compression`` and the bundle tables."""

    model: str
    recipe: dict[str, Any]
    updated_at: float
    updated_by: str


class RetrainRequest(Body):
    incident_id: str | None = Field(default=None, min_length=1, max_length=128)
    """The incident this retraining answers (recorded in the new version's lineage)."""
    parent: str | None = Field(default=None, max_length=64)
    """The version to retrain (default: the newest source version with a model file)."""
    note: str = Field(default="", max_length=2000)


class RetrainingJobOut(Out):
    id: int
    model_name: str
    parent_version: str
    incident_id: str | None
    note: str
    state: str
    phase: str | None
    attempts: int
    datasets: dict[str, Any]
    result_version: str | None
    result_version_id: int | None
    compression_job_id: int | None
    compressed_version: str | None
    bundle_digest: str | None
    timings: dict[str, float]
    """Seconds per finished phase (gather, train, register, compress, bundle)."""
    error_code: str | None
    error_message: str | None
    report: dict[str, Any] | None
    log_tail: str
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
    device_public_key_pem: str | None = Field(default=None, max_length=1024)
    """The Ed25519 public key the device signs every message with (it keeps the private key)."""
    tls_csr_pem: str | None = Field(default=None, max_length=4096)
    """A certificate request for the device's TLS key (signed when the controller has ``device_certificates``)."""


class MessageKeyRegistration(Body):
    public_key_pem: str = Field(max_length=1024)


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
    tls_certificate_pem: str | None = None
    """The device's TLS client certificate (common name = device id), when the controller signs them."""
    tls_ca_pem: str | None = None
    trust_root: SignedRoot | None = None
    """The trust root in force, which the device pins (docs/security.md §9); ``null`` before the first."""


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
    root_version: int | None = None
    """The trust root version the device holds, as its last hello said."""
    decommissioned: bool = False
    broker_disable_pending: bool = False
    """Decommissioned, but the managed broker has not disabled its client yet (retried on every reconcile pass)."""


class BrokerPassword(BaseModel):
    """A device's new broker password (``POST /devices/{id}/broker-password``), shown this once."""

    device_id: str
    mqtt_username: str
    mqtt_password: str
    broker_updated: bool
    """True: the controller gave the broker the new password (``broker_admin``) and dropped the old one's
    connections; false: re-export the broker's password file (``GET /api/v1/broker/passwd``)."""


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
    drift_samples: int | None = None
    received_at: float


# ---------------------------------------------------------------- rollouts

class PolicyChoice(Body):
    """A rollout's policy: given in full, or by the name of a template (neither: the default one)."""

    policy: RolloutPolicy | None = None
    """Absent: the named ``template``'s policy (default: one canary, half the rest, everyone; docs/rollouts.md)."""
    template: str | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _policy_or_template(self) -> PolicyChoice:
        if self.policy is not None and self.template is not None:
            raise ValueError("give a policy or a template, not both")
        if self.template is not None and self.template not in TEMPLATES:
            raise ValueError(f"no policy template {self.template!r} (there are: {', '.join(TEMPLATES)})")
        return self

    def resolved_policy(self) -> RolloutPolicy:
        return self.policy or TEMPLATES[self.template or DEFAULT_TEMPLATE][1]


class RolloutCreate(PolicyChoice):
    bundle: str = Field(min_length=8, max_length=64, pattern=r"^[0-9a-f]+$")
    """Bundle digest (or a unique prefix of at least 8 hex digits)."""
    selector: Selector = Selector()
    """Empty with ``incidents``: the devices on the incidents' bundles, and their drifted devices."""
    note: str = Field(default="", max_length=2000)
    incidents: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(default=[], max_length=16)
    """Drift incidents this rollout brings back to health (docs/rollouts.md §4): ``devices`` stages
    that list none take their devices; with neither ``policy`` nor ``template``, the ``heal`` template."""

    def resolved_policy(self) -> RolloutPolicy:
        if self.incidents and self.policy is None and self.template is None:
            return TEMPLATES[HEAL_TEMPLATE][1]
        return super().resolved_policy()


class RolloutAction(Body):
    reason: str = Field(default="", max_length=500)


class RolloutStageOut(Out):
    index: int
    name: str
    state: str
    started_at: float | None
    executed_at: float | None
    soak_until: float | None
    finished_at: float | None
    verdicts: list[dict[str, Any]]
    devices: dict[str, int] = {}
    """How many of the stage's devices are in each state."""


class RolloutDeviceOut(Out):
    device_id: str
    stage_index: int | None
    state: str
    previous_digest: str | None
    attempts: int
    reason: str | None
    revert_deployment_id: str | None
    ordered_at: float | None
    finished_at: float | None


class RolloutOut(Out):
    id: str
    bundle_digest: str
    bundle_label: str = ""
    deployment_id: str
    selector: dict[str, Any]
    target: str = ""
    """The selector in words."""
    policy: dict[str, Any]
    state: str
    stage_index: int
    reason: str | None
    note: str
    protected_tags: list[str]
    rollback: list[str]
    incidents: list[str] = []
    """The drift incidents it brings back to health."""
    created_at: float
    created_by: str
    approved_at: float | None
    approved_by: str | None
    started_at: float | None
    finished_at: float | None
    devices: dict[str, int] = {}
    """How many devices are in each state."""


class RolloutDetail(RolloutOut):
    stages: list[RolloutStageOut]
    device_rows: list[RolloutDeviceOut]


# ---------------------------------------------------------------- incidents

class IncidentOut(Out):
    """A drift incident (docs/incidents.md); times are the telemetry windows' own (Unix seconds)."""

    id: str
    cohort_kind: str
    """``device`` or ``tag``."""
    cohort_key: str
    """The device id, or the tag."""
    bundle_digest: str
    bundle_name: str | None
    bundle_version: str | None
    model_name: str | None
    state: str
    """``open`` or ``closed``."""
    opened_at: float
    first_alarm_at: float
    """End of the first alarm window of the run that opened it."""
    last_alarm_at: float
    last_window_end: float
    closed_at: float | None
    windows: int
    """Alarm windows counted in it."""
    peak_psi: float | None
    devices: list[str]
    reason: str | None
    """Why it closed."""
    updated_at: float


class IncidentRuleOut(Out):
    windows: int
    min_samples: int
    cooldown_s: float
    min_devices: int


class IncidentWindowOut(Out):
    device_id: str
    window_seq: int
    window_start: float
    window_end: float
    drift_psi: float | None
    drift_js: float | None
    drift_level: str | None
    drift_samples: int | None


class IncidentRolloutOut(Out):
    id: str
    state: str
    bundle_label: str


class IncidentDetail(IncidentOut):
    rule: IncidentRuleOut
    """The rule its cohort kind is judged by (the controller's current settings)."""
    evidence: list[IncidentWindowOut]
    """The drift series behind it, oldest first: its devices' windows on its bundle, from a cooldown
    before the first alarm window to the close (or to now)."""
    rollouts: list[IncidentRolloutOut] = []
    """The rollouts that name it (to bring its devices back to health), newest first."""


class IncidentClose(Body):
    reason: str = Field(min_length=1, max_length=500)
    """Why (kept in the incident and the audit log)."""


# ---------------------------------------------------------------- webhooks

class WebhookCreate(Body):
    url: str = Field(min_length=1, max_length=2048)
    """``http(s)://`` URL the events are POSTed to (https recommended)."""
    events: list[str] = Field(default=["*"], min_length=1, max_length=64)
    """Event names (docs/webhooks.md), or ``["*"]`` for every event."""
    description: str = Field(default="", max_length=500)


class WebhookOut(Out):
    id: int
    url: str
    events: list[str]
    description: str
    enabled: bool
    created_at: float
    created_by: str


class WebhookCreated(WebhookOut):
    secret: str
    """The signing secret (``whsec_...``); shown only in this response."""


class WebhookDeliveryOut(Out):
    id: int
    webhook_id: int
    event: str
    state: str
    """``pending`` (retried), ``delivered`` or ``failed``."""
    attempts: int
    next_attempt_at: float
    last_status: int | None
    last_error: str | None
    created_at: float
    delivered_at: float | None
    updated_at: float


# ---------------------------------------------------------------- experiments

class ExperimentCreate(ExperimentPlan):
    """An A/B experiment (docs/experiments.md): ``bundle_a`` is the control, ``bundle_b`` the treatment;
    ``split_percent`` of the cohort runs B."""

    bundle_a: str = Field(min_length=8, max_length=64, pattern=r"^[0-9a-f]+$")
    """Bundle digest (or a unique prefix of at least 8 hex digits)."""
    bundle_b: str = Field(min_length=8, max_length=64, pattern=r"^[0-9a-f]+$")

    @model_validator(mode="after")
    def _two_bundles(self) -> ExperimentCreate:
        if self.bundle_a == self.bundle_b:
            raise ValueError("bundle_a and bundle_b must be two different bundles")
        return self


class ExperimentAction(Body):
    reason: str = Field(default="", max_length=500)


class ExperimentPromote(ExperimentAction, PolicyChoice):
    arm: Arm
    """The winner: its bundle is rolled out to the experiment's selector (with the chosen policy)."""


class ExperimentDeviceOut(Out):
    device_id: str
    arm: str | None
    """``a``, ``b``, or ``None`` (skipped before the split)."""
    state: str
    previous_digest: str | None
    reason: str | None
    ordered_at: float | None
    running_since: float | None
    updated_at: float


class MetricResultOut(Out):
    metric: str
    label: str
    unit: str
    windows_a: int
    windows_b: int
    mean_a: float | None
    mean_b: float | None
    difference: float | None
    """mean B - mean A."""
    lower: float | None
    """The always-valid confidence interval for B - A (``None``: unbounded yet)."""
    upper: float | None
    p_value: float
    """Always-valid p-value for "no difference"."""
    verdict: str
    """``b_better``, ``b_worse``, ``no_difference_yet``, ``too_few_windows`` or ``inconsistent``."""


class PredictionResultOut(Out):
    predictions_a: int
    predictions_b: int
    js: float | None
    """Jensen-Shannon divergence of B's prediction distribution from A's (0 to 1)."""


class ExperimentResultsOut(Out):
    alpha: float
    min_windows: int
    metrics: list[MetricResultOut]
    predictions: PredictionResultOut


class ExperimentOut(Out):
    id: str
    name: str
    bundle_a_digest: str
    bundle_a_label: str = ""
    bundle_b_digest: str
    bundle_b_label: str = ""
    deployment_a_id: str
    deployment_b_id: str
    selector: dict[str, Any]
    target: str = ""
    """The selector in words."""
    split_percent: float
    cohort_size: int | None
    duration_s: float
    alpha: float
    min_windows: int
    state: str
    reason: str | None
    promoted_arm: str | None
    rollout_id: str | None
    created_at: float
    created_by: str
    started_at: float
    ends_at: float
    finished_at: float | None
    updated_at: float
    devices: dict[str, dict[str, int]] = {}
    """Per arm (``a``, ``b``): how many of its devices are in each state."""
    skipped: int = 0
    """Matching devices left out before the split (the device rows say why)."""


class ExperimentDetail(ExperimentOut):
    device_rows: list[ExperimentDeviceOut]
    results: ExperimentResultsOut
