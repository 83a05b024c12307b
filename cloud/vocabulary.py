"""The controller's own vocabulary (the device-facing one is :mod:`edgefleet.protocol.vocabulary`):
deployment and target statuses, compression-job states, roles, model-version kinds, data sources,
telemetry groupings, webhook events and delivery states. Columns store the values as plain
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
    ADMIN = "admin"
    DEVICE = "device"
    """A device's own token: bundle downloads, nothing else."""


OPERATOR_ROLES = (Role.VIEWER, Role.OPERATOR, Role.ADMIN)


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
