"""The controller's own vocabulary (the device-facing one is :mod:`edgefleet.protocol.vocabulary`):
deployment and target statuses, compression-job states, roles, model-version kinds, data sources
and telemetry groupings. Columns store the values as plain strings; a ``StrEnum`` member equals
its value, so rows compare and serialise as before."""

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
