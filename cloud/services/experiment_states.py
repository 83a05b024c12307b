"""The two state machines of an A/B experiment, written as data: ``(state, event) -> next state``.

The experiment as a whole and each of its devices. :mod:`.experiments` moves rows only through
:func:`~edgefleet.cloud.services.transitions.advance` (an illegal move is a conflict that says
so). Promoted and stopped are final; a finished experiment waits for a person to promote or stop it.
"""

from __future__ import annotations

from enum import StrEnum

from edgefleet.cloud.vocabulary import ArmDeviceState, ExperimentState


class ExperimentEvent(StrEnum):
    FINISH = "finish"
    PROMOTE = "promote"
    STOP = "stop"


EXPERIMENT_TRANSITIONS: dict[tuple[ExperimentState, ExperimentEvent], ExperimentState] = {
    (ExperimentState.RUNNING, ExperimentEvent.FINISH): ExperimentState.FINISHED,
    **{(s, ExperimentEvent.PROMOTE): ExperimentState.PROMOTED
       for s in (ExperimentState.RUNNING, ExperimentState.FINISHED)},
    **{(s, ExperimentEvent.STOP): ExperimentState.STOPPED for s in (ExperimentState.RUNNING, ExperimentState.FINISHED)},
}
OPEN_EXPERIMENT_STATES = (ExperimentState.RUNNING, ExperimentState.FINISHED)
"""A person may still promote or stop it."""


class ArmDeviceEvent(StrEnum):
    INSTALL = "install"
    FAIL = "fail"
    CANCEL = "cancel"


ARM_DEVICE_TRANSITIONS: dict[tuple[ArmDeviceState, ArmDeviceEvent], ArmDeviceState] = {
    (ArmDeviceState.ORDERED, ArmDeviceEvent.INSTALL): ArmDeviceState.RUNNING,
    (ArmDeviceState.ORDERED, ArmDeviceEvent.FAIL): ArmDeviceState.FAILED,
    (ArmDeviceState.ORDERED, ArmDeviceEvent.CANCEL): ArmDeviceState.CANCELLED,
}
