"""The update state machine of DESIGN.md section 5, written as data.

``TRANSITIONS`` is the whole behaviour: ``(state, event) -> next state``. The updater
performs side effects; this module only says which moves are legal and persists the
:class:`UpdateRecord` atomically (temp file, fsync, ``os.replace``) *before* the side effect
of the new state runs, so a power cut at any point leaves a record that says what to resume
or undo.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from edgefleet.protocol.errors import EdgeFleetError
from edgefleet.protocol.files import atomic_write


class S(str, enum.Enum):
    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    STAGED = "staged"
    ACTIVATING = "activating"
    HEALTH_CHECK = "health_check"
    COMMITTED = "committed"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


class E(str, enum.Enum):
    ACCEPT = "accept"            # a verified order starts an update
    DOWNLOADED = "downloaded"    # bundle bytes complete (size + sha256 match the order)
    RETRY = "retry"              # transient failure, try the same step again after backoff
    VERIFIED = "verified"        # signature, digest, target and runtime checks passed
    INSTALLED = "installed"      # bundle written to the inactive slot
    ACTIVATED = "activated"      # pointer switched and the new model loaded
    HEALTHY = "healthy"          # smoke test + first live inferences passed
    UNHEALTHY = "unhealthy"      # smoke test or live inference failed -> roll back
    FAIL = "fail"                # refused or gave up before activation
    TIMEOUT = "timeout"          # in-progress timeout
    CANCEL = "cancel"            # a cancel order before activation
    INTERRUPTED = "interrupted"  # the agent restarted in this state
    REACTIVATE = "reactivate"    # restarted mid-activation with nothing to roll back to


TERMINAL = frozenset({S.IDLE, S.COMMITTED, S.FAILED, S.ROLLED_BACK})
PRE_ACTIVATION = (S.DOWNLOADING, S.VERIFYING, S.STAGED)
POST_ACTIVATION = (S.ACTIVATING, S.HEALTH_CHECK)

TRANSITIONS: dict[tuple[S, E], S] = {
    **{(s, E.ACCEPT): S.DOWNLOADING for s in TERMINAL},
    (S.DOWNLOADING, E.DOWNLOADED): S.VERIFYING,
    (S.DOWNLOADING, E.RETRY): S.DOWNLOADING,
    (S.VERIFYING, E.VERIFIED): S.STAGED,
    (S.STAGED, E.INSTALLED): S.ACTIVATING,
    (S.STAGED, E.RETRY): S.STAGED,
    (S.ACTIVATING, E.ACTIVATED): S.HEALTH_CHECK,
    (S.HEALTH_CHECK, E.HEALTHY): S.COMMITTED,
    **{(s, E.UNHEALTHY): S.ROLLED_BACK for s in POST_ACTIVATION},
    **{(s, E.FAIL): S.FAILED for s in PRE_ACTIVATION},
    **{(s, E.CANCEL): S.FAILED for s in PRE_ACTIVATION},
    **{(s, E.TIMEOUT): S.FAILED for s in PRE_ACTIVATION},
    **{(s, E.TIMEOUT): S.ROLLED_BACK for s in POST_ACTIVATION},
    # Restart: redo idempotent steps; never trust a half-activated model, roll back instead.
    **{(s, E.INTERRUPTED): s for s in PRE_ACTIVATION},
    **{(s, E.INTERRUPTED): S.ROLLED_BACK for s in POST_ACTIVATION},
    **{(s, E.REACTIVATE): S.ACTIVATING for s in POST_ACTIVATION},
}


class IllegalTransition(EdgeFleetError):
    code = "illegal_transition"


def next_state(state: S, event: E) -> S:
    try:
        return TRANSITIONS[(S(state), E(event))]
    except KeyError:
        raise IllegalTransition(f"no transition from {S(state).value} on {E(event).value}") from None


class UpdateRecord(BaseModel):
    """Everything needed to resume or undo an update after a power cut."""

    model_config = ConfigDict(extra="allow")

    state: S = S.IDLE
    last_sequence: int = 0
    deployment_id: str | None = None
    sequence: int = 0
    order: dict[str, Any] | None = None
    attempt: int = 0
    started_at: float = 0.0
    deadline: float = 0.0
    previous_slot: str | None = None
    target_slot: str | None = None
    outcome: str | None = None
    reason: str | None = None
    detail: str | None = None
    final_reported: bool = True


class RecordStore:
    """The persisted :class:`UpdateRecord` (``state_dir/update.json``)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> UpdateRecord:
        try:
            return UpdateRecord.model_validate(json.loads(self.path.read_bytes()))
        except FileNotFoundError:
            return UpdateRecord()

    def save(self, record: UpdateRecord) -> None:
        atomic_write(self.path, record.model_dump_json().encode())
