"""An execution's life as the worker sees it: every status it may write, and what follows.

The executor owns `requested -> scheduling -> scheduled`; the worker owns every edge
after `scheduled` (docs/protocol.md §5, "Execution lifecycle"). This module is the one
place those edges are decided. It is pure, like h11's connection state machine: the
pipeline names an event, `transition()` answers with the new status, the statuses the
database write must compare-and-set from, and the messages the write obliges the worker
to publish. An edge not in the table raises `IllegalTransition`, so a bug cannot write
an odd status or skip an announcement.

    scheduled --claim--> running --succeed--> completed    each write: status change
        |                   |-----fail------> failed       message; each end also an
        |                   |-----time_out--> timeout      ExecutionCompleted
        |                   |-----cancel----> cancelled
        |                   '-----abandon---> abandoned
        '------reject------> failed          (the row cannot be read as an execution)

Cancel before start, cancel during a run and shutdown all take `running --cancel-->`:
the row is claimed first, so the run is always recorded as this worker's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, get_args

from attune.errors import AttuneError
from attune.messages import (
    EXECUTION_COMPLETED,
    EXECUTION_STATUS_CHANGED,
    ROUTING_COMPLETED,
    ROUTING_STATUS_CHANGED,
    CompletedStatusName,
    ExecutionCompleted,
    ExecutionStatusChanged,
    StatusValue,
)


class ExecutionStatus(StrEnum):
    """The exact lowercase values of `attune.execution_status_enum`."""

    REQUESTED = "requested"
    SCHEDULING = "scheduling"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELING = "canceling"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    ABANDONED = "abandoned"


_S = ExecutionStatus
assert tuple(s.value for s in ExecutionStatus) == get_args(StatusValue)

# Once here, nobody writes the row again: no transition starts from these.
TERMINAL: frozenset[ExecutionStatus] = frozenset(
    {_S.COMPLETED, _S.FAILED, _S.CANCELLED, _S.TIMEOUT, _S.ABANDONED}
)

# What the executor (or `attune exec`, standing in for it) inserts for this worker to run.
SUBMITTED: ExecutionStatus = _S.SCHEDULED


class Event(StrEnum):
    """Something that happened to an execution that the worker must record."""

    CLAIM = "claim"  # this worker takes the dispatched execution
    REJECT = "reject"  # the row cannot be read as an execution: it can never run
    SUCCEED = "succeed"  # the action ran and reported success
    FAIL = "fail"  # it could not run, or ran and failed
    TIME_OUT = "time_out"  # the deadline killed it
    CANCEL = "cancel"  # a cancel request (before or during the run) or a shutdown
    ABANDON = "abandon"  # found `running` under this worker's id after a restart


_E = Event

# The whole table: (current status, event) -> new status. Nothing else is allowed.
EDGES: Mapping[tuple[ExecutionStatus, Event], ExecutionStatus] = MappingProxyType(
    {
        (_S.SCHEDULED, _E.CLAIM): _S.RUNNING,
        (_S.SCHEDULED, _E.REJECT): _S.FAILED,
        (_S.RUNNING, _E.SUCCEED): _S.COMPLETED,
        (_S.RUNNING, _E.FAIL): _S.FAILED,
        (_S.RUNNING, _E.TIME_OUT): _S.TIMEOUT,
        (_S.RUNNING, _E.CANCEL): _S.CANCELLED,
        (_S.RUNNING, _E.ABANDON): _S.ABANDONED,
    }
)

# How a run's outcome (the sandbox's status word) is recorded.
_OUTCOME_EVENTS: Mapping[str, Event] = MappingProxyType(
    {"completed": _E.SUCCEED, "failed": _E.FAIL, "timeout": _E.TIME_OUT, "cancelled": _E.CANCEL}
)

# ExecutionCompleted.status is capitalised on the wire, unlike the DB enum.
_COMPLETED_NAMES: Mapping[ExecutionStatus, CompletedStatusName] = MappingProxyType(
    {
        _S.COMPLETED: "Completed",
        _S.FAILED: "Failed",
        _S.CANCELLED: "Cancelled",
        _S.TIMEOUT: "Timeout",
        _S.ABANDONED: "Abandoned",
    }
)


class IllegalTransition(AttuneError):
    """The worker asked for an edge the lifecycle does not have: a bug, never input."""


@dataclass(frozen=True, slots=True)
class ExecutionRef:
    """What the announcements need to name an execution."""

    id: int
    action_id: int | None
    action_ref: str


@dataclass(frozen=True, slots=True)
class Announcement:
    """One message the worker owes the rest of Attune after a status write."""

    routing_key: str
    message_type: str
    payload: ExecutionStatusChanged | ExecutionCompleted


@dataclass(frozen=True, slots=True)
class Transition:
    """A decided edge: write `new` where the row is still in `cas_from`, then announce.

    Only `transition()` builds these; the DB adapter's status writes accept nothing
    else, which is how the code keeps every status write inside this module's table.
    """

    previous: ExecutionStatus
    event: Event
    new: ExecutionStatus
    cas_from: tuple[ExecutionStatus, ...]

    @property
    def terminal(self) -> bool:
        return self.new in TERMINAL

    def announcements(
        self, ref: ExecutionRef, result: dict[str, Any] | None, at: datetime
    ) -> tuple[Announcement, ...]:
        """The messages the write obliges: a status change, and the completion at an end.

        `result` is what was written to `execution.result` (None for the claim).
        """
        changed = ExecutionStatusChanged(
            execution_id=ref.id,
            action_ref=ref.action_ref,
            previous_status=self.previous.value,
            new_status=self.new.value,
            changed_at=at,
        )
        messages = [Announcement(ROUTING_STATUS_CHANGED, EXECUTION_STATUS_CHANGED, changed)]
        if self.terminal:
            if result is None:
                raise IllegalTransition(f"{self.new} needs the result it records")
            if ref.action_id is None:
                # The reference's ExecutionCompleted.action_id is not optional: it names
                # the executor queue slot to release. With the action row deleted there
                # is none, and the reference worker publishes nothing either.
                return tuple(messages)
            completed = ExecutionCompleted(
                execution_id=ref.id,
                action_id=ref.action_id,
                action_ref=ref.action_ref,
                status=_COMPLETED_NAMES[self.new],
                result=result,
                completed_at=at,
            )
            messages.append(Announcement(ROUTING_COMPLETED, EXECUTION_COMPLETED, completed))
        return tuple(messages)


def transition(current: str, event: Event) -> Transition:
    """Decide the edge `event` takes from `current`; IllegalTransition if there is none."""
    try:
        status = ExecutionStatus(current)
    except ValueError:
        raise IllegalTransition(f"unknown execution status {current!r}") from None
    new = EDGES.get((status, event))
    if new is None:
        raise IllegalTransition(f"no {event.value!r} edge from {status.value!r}")
    return Transition(previous=status, event=event, new=new, cas_from=(status,))


def outcome_event(status: str) -> Event:
    """The event that records a run's outcome word (completed, failed, timeout, cancelled)."""
    try:
        return _OUTCOME_EVENTS[status]
    except KeyError:
        raise IllegalTransition(f"{status!r} is not an outcome of a run") from None


def is_terminal(status: str) -> bool:
    """True for statuses no one may leave; unknown strings are not terminal."""
    try:
        return ExecutionStatus(status) in TERMINAL
    except ValueError:
        return False


# --- results of the ends the worker decides itself (a run's own result comes from it) ----


def cancelled_before_start(reason: str) -> dict[str, Any]:
    """A run cancelled before its sandbox started: nothing ran."""
    return {
        "succeeded": False,
        "cancelled": True,
        "exit_code": -1,
        "duration_ms": 0,
        "error": reason,
    }


def rejected(reason: str) -> dict[str, Any]:
    """A dispatched row that cannot be read as an execution."""
    return {"succeeded": False, "error": f"invalid execution: {reason}"}


def abandoned() -> dict[str, Any]:
    """A run this worker left `running` when it died."""
    return {
        "succeeded": False,
        "abandoned": True,
        "error": "Execution abandoned: the worker stopped while it was running "
        "(worker died or was killed); it was not run to completion",
    }


def internal_failure(exc: BaseException, stage: str) -> dict[str, Any]:
    """The last resort: an unexpected error while running or recording a claimed run.

    Only the exception's type goes into the result (its text may quote parameters or
    output, which can hold secrets); the worker log has the traceback.
    """
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return {
        "succeeded": False,
        "error": f"internal worker error while {stage} ({type(exc).__name__}); "
        "the execution was ended here, see the worker log for details",
    }
