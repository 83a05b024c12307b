"""The three state machines of a rollout, written as data: ``(state, event) -> next state``.

The rollout as a whole, each of its stages, and each of its devices. The service (:mod:`service`)
moves rows only through :func:`~edgefleet.cloud.services.transitions.advance`. Every final state
is final: nothing leaves it.
"""

from __future__ import annotations

from enum import StrEnum

from edgefleet.cloud.vocabulary import DeviceState, RolloutState, StageState


class RolloutEvent(StrEnum):
    APPROVE = "approve"
    PAUSE = "pause"
    RESUME = "resume"
    """Carry on where it paused (a person paused it, or abort criteria said pause)."""
    PROMOTE = "promote"
    """Accept the stage it paused after (or in) as passed and start the next."""
    FINISH = "finish"
    ABORT = "abort"
    CANCEL = "cancel"


ROLLOUT_TRANSITIONS: dict[tuple[RolloutState, RolloutEvent], RolloutState] = {
    (RolloutState.WAITING_APPROVAL, RolloutEvent.APPROVE): RolloutState.RUNNING,
    (RolloutState.WAITING_APPROVAL, RolloutEvent.CANCEL): RolloutState.CANCELLED,
    (RolloutState.RUNNING, RolloutEvent.PAUSE): RolloutState.PAUSED,
    (RolloutState.RUNNING, RolloutEvent.FINISH): RolloutState.SUCCEEDED,
    (RolloutState.PAUSED, RolloutEvent.RESUME): RolloutState.RUNNING,
    (RolloutState.PAUSED, RolloutEvent.PROMOTE): RolloutState.RUNNING,
    **{(s, RolloutEvent.ABORT): RolloutState.ABORTED for s in (RolloutState.RUNNING, RolloutState.PAUSED)},
    **{(s, RolloutEvent.CANCEL): RolloutState.CANCELLED for s in (RolloutState.RUNNING, RolloutState.PAUSED)},
}
OPEN_ROLLOUT_STATES = (RolloutState.WAITING_APPROVAL, RolloutState.RUNNING, RolloutState.PAUSED)


class StageEvent(StrEnum):
    START = "start"
    EXECUTED = "executed"
    PASS = "pass"
    FAIL = "fail"


STAGE_TRANSITIONS: dict[tuple[StageState, StageEvent], StageState] = {
    (StageState.PENDING, StageEvent.START): StageState.RUNNING,
    (StageState.RUNNING, StageEvent.EXECUTED): StageState.SOAKING,
    (StageState.RUNNING, StageEvent.FAIL): StageState.FAILED,
    (StageState.SOAKING, StageEvent.PASS): StageState.PASSED,
    (StageState.SOAKING, StageEvent.FAIL): StageState.FAILED,
    (StageState.RUNNING, StageEvent.PASS): StageState.PASSED,   # promoted by a person before it finished
}


class DeviceEvent(StrEnum):
    ORDER = "order"
    SUCCEED = "succeed"
    FAIL = "fail"
    ROLL_BACK = "roll_back"
    TIME_OUT = "time_out"
    REJECT = "reject"
    RETRY = "retry"
    SKIP = "skip"
    REVERT = "revert"
    REVERTED = "reverted"
    REVERT_FAIL = "revert_fail"


_RETRYABLE = (DeviceState.FAILED, DeviceState.ROLLED_BACK, DeviceState.TIMED_OUT, DeviceState.REJECTED)
DEVICE_TRANSITIONS: dict[tuple[DeviceState, DeviceEvent], DeviceState] = {
    (DeviceState.QUEUED, DeviceEvent.ORDER): DeviceState.IN_PROGRESS,
    (DeviceState.QUEUED, DeviceEvent.SKIP): DeviceState.SKIPPED,
    (DeviceState.IN_PROGRESS, DeviceEvent.SUCCEED): DeviceState.SUCCEEDED,
    (DeviceState.IN_PROGRESS, DeviceEvent.FAIL): DeviceState.FAILED,
    (DeviceState.IN_PROGRESS, DeviceEvent.ROLL_BACK): DeviceState.ROLLED_BACK,
    (DeviceState.IN_PROGRESS, DeviceEvent.TIME_OUT): DeviceState.TIMED_OUT,
    (DeviceState.IN_PROGRESS, DeviceEvent.REJECT): DeviceState.REJECTED,
    (DeviceState.IN_PROGRESS, DeviceEvent.SKIP): DeviceState.SKIPPED,   # cancelled before it reported
    **{(s, DeviceEvent.RETRY): DeviceState.QUEUED for s in _RETRYABLE},
    (DeviceState.SUCCEEDED, DeviceEvent.REVERT): DeviceState.REVERTING,
    (DeviceState.SKIPPED, DeviceEvent.REVERT): DeviceState.REVERTING,   # its cancel came too late: it installed
    (DeviceState.REVERTING, DeviceEvent.REVERTED): DeviceState.REVERTED,
    (DeviceState.REVERTING, DeviceEvent.REVERT_FAIL): DeviceState.REVERT_FAILED,
}
EXECUTED_STATES = (DeviceState.SUCCEEDED, *_RETRYABLE)
"""A device counts as executed once its order ended, well or not (abort criteria, gates)."""
OPEN_DEVICE_STATES = (DeviceState.QUEUED, DeviceState.IN_PROGRESS, DeviceState.REVERTING)

