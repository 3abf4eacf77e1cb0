"""Execution status values and the transitions this worker is allowed to make.

The executor owns `requested -> scheduling -> scheduled`; the worker owns everything
after `scheduled` (protocol.md §5). Keeping the table here, pure, lets the pipeline ask
"may I write this?" before it issues the compare-and-set, and lets tests pin the rules
down without a database.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType
from typing import Literal

from attune.errors import InputError


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

# The same values as Literal types, for wire Structs that type-check their fields.
StatusValue = Literal[
    "requested",
    "scheduling",
    "scheduled",
    "running",
    "completed",
    "failed",
    "canceling",
    "cancelled",
    "timeout",
    "abandoned",
]
CompletedStatusName = Literal["Completed", "Failed", "Cancelled", "Timeout", "Abandoned"]

# Once here, nobody writes the row again: every worker CAS excludes these.
TERMINAL: frozenset[ExecutionStatus] = frozenset(
    {_S.COMPLETED, _S.FAILED, _S.CANCELLED, _S.TIMEOUT, _S.ABANDONED}
)

# Only the edges the worker may take. `scheduled -> failed|cancelled` covers a run that
# could not start (missing code, bad secret) or was cancelled before it started.
WORKER_TRANSITIONS: Mapping[ExecutionStatus, frozenset[ExecutionStatus]] = MappingProxyType(
    {
        _S.SCHEDULED: frozenset({_S.RUNNING, _S.FAILED, _S.CANCELLED}),
        _S.RUNNING: frozenset({_S.COMPLETED, _S.FAILED, _S.TIMEOUT, _S.CANCELLED, _S.ABANDONED}),
    }
)

# ExecutionCompleted.status is capitalised on the wire (protocol.md §4).
_COMPLETED_NAMES: Mapping[ExecutionStatus, CompletedStatusName] = MappingProxyType(
    {
        _S.COMPLETED: "Completed",
        _S.FAILED: "Failed",
        _S.CANCELLED: "Cancelled",
        _S.TIMEOUT: "Timeout",
        _S.ABANDONED: "Abandoned",
    }
)


def parse_status(value: str) -> ExecutionStatus:
    """Turn a DB or wire string into the enum; an unknown value is bad input, not a bug."""
    try:
        return ExecutionStatus(value)
    except ValueError:
        raise InputError(f"unknown execution status {value!r}") from None


def status_value(value: str) -> StatusValue:
    """`value` checked and typed as a status Literal (for wire payload fields)."""
    return parse_status(value).value


def is_terminal(status: str) -> bool:
    """True for statuses no one may leave; unknown strings are not terminal."""
    try:
        return ExecutionStatus(status) in TERMINAL
    except ValueError:
        return False


def can_transition(current: str, new: str) -> bool:
    """Whether the worker may move an execution from `current` to `new`.

    Unknown strings answer False rather than raising: the caller is about to decide
    whether to write, and "no" is the safe answer for anything it does not recognise.
    """
    try:
        a, b = ExecutionStatus(current), ExecutionStatus(new)
    except ValueError:
        return False
    return b in WORKER_TRANSITIONS.get(a, frozenset())


def completed_status_name(status: str) -> CompletedStatusName:
    """The capitalised `ExecutionCompleted.status` for a terminal DB status.

    A non-terminal status has no completion message, so asking for one is an error.
    """
    try:
        return _COMPLETED_NAMES[ExecutionStatus(status)]
    except (ValueError, KeyError):
        raise InputError(f"{status!r} is not a terminal execution status") from None
