"""One step of a state machine written as data, ``(state, event) -> next state``: the rollouts,
experiments and incidents move their rows only through :func:`advance`, so an illegal move is a
bug that says so, never a silent state change."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from edgefleet.protocol.errors import ConflictError

State = TypeVar("State", bound=StrEnum)
Event = TypeVar("Event", bound=StrEnum)


def advance(table: dict[tuple[State, Event], State], state: str, event: Event, *, what: str) -> State:
    """The next state of ``what`` on ``event``; a move the table does not have is a conflict."""
    target = table.get((state, event))  # type: ignore[arg-type]  # a stored str equals and hashes as its member
    if target is None:
        raise ConflictError(f"{what} is {state}: cannot {event.value}", where="state")
    return target
