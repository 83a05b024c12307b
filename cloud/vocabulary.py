"""The controller's own vocabulary (the device-facing one is :mod:`edgefleet.protocol.vocabulary`):
deployment and target statuses, compression-job states, roles, model-version kinds, data sources,
telemetry groupings, webhook events and delivery states, drift incidents. Columns store the values as plain
strings; a ``StrEnum`` member equals its value, so rows compare and serialise as before."""

from __future__ import annotations

from enum import StrEnum

from edgefleet.protocol.vocabulary import Outcome, UpdateState


class DeploymentStatus(StrEnum):
    ACTIVE = "active"
    """Some target is not final yet."""
    SUCCEEDED = "succeeded"
    """Every target committed."""
    PARTIAL = "partial"
    """Some targets committed, some did not."""
    FAILED = "failed"
    """No target committed."""
    CANCELLED = "cancelled"


class TargetState(StrEnum):
    """A deployment target before its device reports; afterwards the target takes the device's
    :class:`~edgefleet.protocol.vocabulary.UpdateState`."""

    PENDING = "pending"
    """The signed order is stored, not yet handed to the broker."""
    SENT = "sent"
    """The broker has the order; the device has not reported yet."""


TARGET_STATES: tuple[str, ...] = (*TargetState, *UpdateState)
"""Every value ``DeploymentTarget.state`` can take."""
TARGET_OUTCOMES: tuple[str, ...] = tuple(Outcome)


class JobState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


OPEN_JOB_STATES = (JobState.PENDING, JobState.RUNNING)
FINAL_JOB_STATES = (JobState.SUCCEEDED, JobState.FAILED)


class Role(StrEnum):
    """What an API token may do; each operator role includes the ones before it."""

    VIEWER = "viewer"
    OPERATOR = "operator"
    APPROVER = "approver"
    """An operator who may also approve rollouts to protected devices (docs/security.md, "People and roles")."""
    ADMIN = "admin"
    DEVICE = "device"
    """A device's own token: bundle downloads, nothing else."""


OPERATOR_ROLES = (Role.VIEWER, Role.OPERATOR, Role.APPROVER, Role.ADMIN)
"""The roles of people (and shared tokens), lowest first: each includes the rights of those before it."""


class HttpRefusal(StrEnum):
    """Error codes of the controller's HTTP guards (docs/security.md, "The REST surface")."""

    RATE_LIMITED = "rate_limited"
    """Too many failed authentications from the client's address (429 with Retry-After)."""
    CSRF_REFUSED = "csrf_refused"
    """A UI form post without the session's CSRF token."""


class ModelKind(StrEnum):
    SOURCE = "source"
    """As trained."""
    COMPRESSED = "compressed"
    """A variant of its parent version."""


class DataSource(StrEnum):
    """Where a compression job or server-side build takes its samples from."""

    DIGITS = "digits"
    """scikit-learn's bundled handwritten digits."""
    DATASET = "dataset"
    """The model's uploaded ``.npz``."""


class TelemetryGroup(StrEnum):
    DEVICE = "device"
    BUNDLE = "bundle"
    MODEL_VERSION = "model_version"
    TAG = "tag"


class WebhookEvent(StrEnum):
    """What the controller tells webhooks about (the payloads are in docs/webhooks.md)."""

    ROLLOUT_STAGE_PASSED = "rollout.stage_passed"
    ROLLOUT_GATE_FAILED = "rollout.gate_failed"
    ROLLOUT_PAUSED = "rollout.paused"
    ROLLOUT_ABORTED = "rollout.aborted"
    ROLLOUT_SUCCEEDED = "rollout.succeeded"
    EXPERIMENT_FINISHED = "experiment.finished"
    EXPERIMENT_PROMOTED = "experiment.promoted"
    EXPERIMENT_STOPPED = "experiment.stopped"
    INCIDENT_OPENED = "incident.opened"
    INCIDENT_CLOSED = "incident.closed"
    PING = "ping"
    """Sent to one webhook on request, to test the receiver."""


class DeliveryState(StrEnum):
    """A webhook delivery: retried while ``pending``, then ``delivered`` or ``failed``."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    """Gave up after the configured number of attempts."""


class RolloutState(StrEnum):
    """A staged rollout (docs/rollouts.md §3); the transitions are in services/rollouts/states.py."""

    WAITING_APPROVAL = "waiting_approval"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    ABORTED = "aborted"
    CANCELLED = "cancelled"


class StageState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    """Its devices are being ordered; some are not final yet."""
    SOAKING = "soaking"
    """Every device is final; telemetry accumulates until the soak ends and the gates judge."""
    PASSED = "passed"
    FAILED = "failed"


class DeviceState(StrEnum):
    """A device in a rollout."""

    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    TIMED_OUT = "timed_out"
    REJECTED = "rejected"
    SKIPPED = "skipped"
    """Never ordered: incompatible, already on the bundle, or the rollout ended first."""
    REVERTING = "reverting"
    """The rollout was aborted: an order for the bundle it ran before is out."""
    REVERTED = "reverted"
    REVERT_FAILED = "revert_failed"


class Arm(StrEnum):
    A = "a"
    """The control: the bundle the fleet runs today, usually."""
    B = "b"
    """The treatment: the bundle on trial."""


class ExperimentState(StrEnum):
    """An A/B experiment (docs/experiments.md); the transitions are in services/experiment_states.py."""

    RUNNING = "running"
    """Its devices run their arms' bundles; the results grow with every telemetry window."""
    FINISHED = "finished"
    """Its duration is over: the results are frozen; promote the winner or stop."""
    PROMOTED = "promoted"
    """A rollout of the winner's bundle to the experiment's selector was created."""
    STOPPED = "stopped"


class ArmDeviceState(StrEnum):
    """A device in an experiment."""

    ORDERED = "ordered"
    """The signed order for its arm's bundle is out."""
    RUNNING = "running"
    """It runs its arm's bundle (it already did, or installed it): its windows count."""
    FAILED = "failed"
    """Its install did not take (failed, rolled back, refused or timed out; the reason says which)."""
    CANCELLED = "cancelled"
    """The experiment ended, or another deployment took the device, before it installed."""
    SKIPPED = "skipped"
    """Never in an arm: it cannot run one of the two bundles, or another experiment has it."""


class UploadState(StrEnum):
    """A device's upload of captured samples (services/captures.py)."""

    REQUESTED = "requested"
    """The device asked; a grant is being (or has been) sent and bytes may be arriving."""
    STORED = "stored"
    """Every byte arrived, the digest and the archive checked out: a captured dataset exists."""
    REFUSED = "refused"
    """The controller refused the request (unknown bundle, a bundle without capture, too large)."""


class CohortKind(StrEnum):
    """What a drift incident is about (services/incidents/, docs/incidents.md): always one bundle, and..."""

    DEVICE = "device"
    """...one device running it."""
    TAG = "tag"
    """...the devices with one tag running it."""


class IncidentState(StrEnum):
    OPEN = "open"
    """The cohort stayed at alarm for K consecutive windows and has not cooled down since."""
    CLOSED = "closed"
    """No alarm window for the cooldown, or a person closed it."""


class IncidentEvent(StrEnum):
    EXTEND = "extend"
    """Another alarm window of the cohort."""
    COOL_DOWN = "cool_down"
    """No alarm window for ``incident_cooldown_s``."""
    CLOSE = "close"
    """A person closed it (with a reason, in the audit log)."""


INCIDENT_TRANSITIONS: dict[tuple[IncidentState, IncidentEvent], IncidentState] = {
    (IncidentState.OPEN, IncidentEvent.EXTEND): IncidentState.OPEN,
    (IncidentState.OPEN, IncidentEvent.COOL_DOWN): IncidentState.CLOSED,
    (IncidentState.OPEN, IncidentEvent.CLOSE): IncidentState.CLOSED,
}
"""An incident is born ``open`` (the K-window rule held) and ends ``closed``; nothing leaves ``closed``
(the cohort's next run of K alarm windows opens a new incident)."""


class RetrainState(StrEnum):
    """A retraining job (services/retraining.py, docs/retraining.md)."""

    PENDING = "pending"
    RUNNING = "running"
    """In one of its :class:`RetrainPhase` s."""
    SUCCEEDED = "succeeded"
    """A new version, its compressed variant and a signed bundle of it are registered."""
    FAILED = "failed"
    """``error_code`` says why; what earlier phases registered stays."""


OPEN_RETRAIN_STATES = (RetrainState.PENDING, RetrainState.RUNNING)
FINAL_RETRAIN_STATES = (RetrainState.SUCCEEDED, RetrainState.FAILED)


class RetrainPhase(StrEnum):
    """The steps of a retraining job, in order."""

    GATHER = "gather"
    """Reference dataset and captured samples into a work directory."""
    TRAIN = "train"
    """The model's entry point, in a subprocess with time and memory limits."""
    REGISTER = "register"
    """The new source version, with its lineage."""
    COMPRESS = "compress"
    """A compression job with the model's [compression] recipe and gate."""
    BUNDLE = "bundle"
    """A bundle built from the model's bundle recipe, signed on the controller."""


class TrainingFailure(StrEnum):
    """Why a training entry point produced no model (besides ``timeout`` and ``interrupted``)."""

    ENTRY_POINT_NOT_FOUND = "entry_point_not_found"
    """The callable cannot be imported, or the command cannot be run."""
    TRAINING_FAILED = "training_failed"
    """It raised an exception, or the command exited non-zero."""
    MEMORY_LIMIT = "memory_limit"
    """It needed more memory than ``memory_mb``."""
    NO_OUTPUT = "no_output"
    """It ended without writing the output model."""
    BAD_OUTPUT = "bad_output"
    """The output is not a model the runtime loads, or its inputs differ from the parent's."""


class BrokerKind(StrEnum):
    """Which MQTT broker ``broker_url`` names (``broker_kind``): what it lacks is checked at start and at
    enrollment (services/broker_kinds.py, docs/operations.md §3)."""

    MOSQUITTO = "mosquitto"
    RABBITMQ = "rabbitmq"
    NATS = "nats"
    EMQX = "emqx"
    HIVEMQ = "hivemq"
    VERNEMQ = "vernemq"


class TransitionCause(StrEnum):
    """Why a device went online or offline (``device_transitions.cause``, services/fleet_history.py)."""

    HEARD = "heard"
    """It said hello, sent its state, telemetry or an event after being offline."""
    LAST_WILL = "last_will"
    """The broker published its last will: the connection dropped."""
    HEARTBEAT_TIMEOUT = "heartbeat_timeout"
    """The reconciler heard nothing for longer than the heartbeat timeout."""
    DECOMMISSIONED = "decommissioned"


class SnapshotMetric(StrEnum):
    """What a ``fleet_snapshots`` row counts."""

    DEVICES = "devices"
    VERSION = "version"
    DRIFT = "drift"
