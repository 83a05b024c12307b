"""The update state machine of DESIGN.md section 5, written as data.

``TRANSITIONS`` is the whole behaviour: ``(state, event) -> next state``. The updater
performs side effects; this module only says which moves are legal and persists the
:class:`UpdateRecord` atomically (temp file, fsync, ``os.replace``) *before* the side effect
of the new state runs, so a power cut at any point leaves a record that says what to resume
or undo.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from edgefleet.protocol.errors import EdgeFleetError
from edgefleet.protocol.files import atomic_write
from edgefleet.protocol.vocabulary import Outcome, Reason, UpdateState


class E(StrEnum):
    """What happens to an update (agent-internal; the states are the protocol's :class:`UpdateState`)."""

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


TERMINAL = frozenset({UpdateState.IDLE, UpdateState.COMMITTED, UpdateState.FAILED, UpdateState.ROLLED_BACK,
                      UpdateState.CANCELLED})
PRE_ACTIVATION = (UpdateState.DOWNLOADING, UpdateState.VERIFYING, UpdateState.STAGED)
POST_ACTIVATION = (UpdateState.ACTIVATING, UpdateState.HEALTH_CHECK)

TRANSITIONS: dict[tuple[UpdateState, E], UpdateState] = {
    **{(s, E.ACCEPT): UpdateState.DOWNLOADING for s in TERMINAL},
    (UpdateState.DOWNLOADING, E.DOWNLOADED): UpdateState.VERIFYING,
    (UpdateState.DOWNLOADING, E.RETRY): UpdateState.DOWNLOADING,
    (UpdateState.VERIFYING, E.VERIFIED): UpdateState.STAGED,
    (UpdateState.STAGED, E.INSTALLED): UpdateState.ACTIVATING,
    (UpdateState.STAGED, E.RETRY): UpdateState.STAGED,
    (UpdateState.ACTIVATING, E.ACTIVATED): UpdateState.HEALTH_CHECK,
    (UpdateState.HEALTH_CHECK, E.HEALTHY): UpdateState.COMMITTED,
    **{(s, E.UNHEALTHY): UpdateState.ROLLED_BACK for s in POST_ACTIVATION},
    **{(s, E.FAIL): UpdateState.FAILED for s in PRE_ACTIVATION},
    **{(s, E.CANCEL): UpdateState.CANCELLED for s in PRE_ACTIVATION},
    **{(s, E.TIMEOUT): UpdateState.FAILED for s in PRE_ACTIVATION},
    **{(s, E.TIMEOUT): UpdateState.ROLLED_BACK for s in POST_ACTIVATION},
    # Restart: redo idempotent steps; never trust a half-activated model, roll back instead.
    **{(s, E.INTERRUPTED): s for s in PRE_ACTIVATION},
    **{(s, E.INTERRUPTED): UpdateState.ROLLED_BACK for s in POST_ACTIVATION},
    **{(s, E.REACTIVATE): UpdateState.ACTIVATING for s in POST_ACTIVATION},
}


class IllegalTransition(EdgeFleetError):
    code: str = Reason.ILLEGAL_TRANSITION


def next_state(state: UpdateState, event: E) -> UpdateState:
    try:
        return TRANSITIONS[(UpdateState(state), E(event))]
    except KeyError:
        raise IllegalTransition(f"no transition from {UpdateState(state).value} on {E(event).value}") from None


class UpdateRecord(BaseModel):
    """Everything needed to resume or undo an update after a power cut."""

    model_config = ConfigDict(extra="allow")

    state: UpdateState = UpdateState.IDLE
    last_sequence: int = 0
    deployment_id: str | None = None
    sequence: int = 0
    order: dict[str, Any] | None = None
    attempt: int = 0
    started_at: float = 0.0
    deadline: float = 0.0
    previous_slot: str | None = None
    target_slot: str | None = None
    outcome: Outcome | None = None
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
