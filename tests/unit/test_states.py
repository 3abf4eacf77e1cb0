import pytest

from attune.errors import InputError
from attune.states import (
    TERMINAL,
    ExecutionStatus,
    can_transition,
    completed_status_name,
    is_terminal,
    parse_status,
    status_value,
)

ALL = [s.value for s in ExecutionStatus]


def test_status_values_match_the_postgres_enum_exactly() -> None:
    assert ALL == [
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


def test_status_is_a_plain_string_on_the_wire() -> None:
    value: str = ExecutionStatus.RUNNING
    assert value == "running"
    assert f"{ExecutionStatus.RUNNING}" == "running"
    assert ExecutionStatus("running") is ExecutionStatus.RUNNING


def test_terminal_set_is_the_five_end_states() -> None:
    assert {s.value for s in TERMINAL} == {
        "completed",
        "failed",
        "cancelled",
        "timeout",
        "abandoned",
    }


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("scheduled", "running"),
        ("scheduled", "failed"),
        ("scheduled", "cancelled"),
        ("running", "completed"),
        ("running", "failed"),
        ("running", "timeout"),
        ("running", "cancelled"),
        ("running", "abandoned"),
    ],
)
def test_worker_may_take_its_own_edges(a: str, b: str) -> None:
    assert can_transition(a, b)


def test_worker_may_take_no_other_edge() -> None:
    allowed = {
        ("scheduled", "running"),
        ("scheduled", "failed"),
        ("scheduled", "cancelled"),
        ("running", "completed"),
        ("running", "failed"),
        ("running", "timeout"),
        ("running", "cancelled"),
        ("running", "abandoned"),
    }
    for a in ALL:
        for b in ALL:
            assert can_transition(a, b) == ((a, b) in allowed), (a, b)


def test_no_edge_leaves_a_terminal_state() -> None:
    for a in TERMINAL:
        assert not any(can_transition(a, b) for b in ALL)


def test_executor_owned_edges_are_refused() -> None:
    assert not can_transition("requested", "scheduling")
    assert not can_transition("scheduling", "scheduled")
    assert not can_transition("requested", "running")


def test_unknown_status_strings_never_transition() -> None:
    assert not can_transition("running", "unknown")
    assert not can_transition("bogus", "running")
    assert not can_transition("Running", "Completed")


@pytest.mark.parametrize(
    ("status", "name"),
    [
        ("completed", "Completed"),
        ("failed", "Failed"),
        ("cancelled", "Cancelled"),
        ("timeout", "Timeout"),
        ("abandoned", "Abandoned"),
    ],
)
def test_completed_message_status_is_capitalised(status: str, name: str) -> None:
    assert completed_status_name(status) == name
    assert completed_status_name(ExecutionStatus(status)) == name


@pytest.mark.parametrize("status", ["running", "scheduled", "requested", "canceling", "nope"])
def test_completed_status_name_refuses_non_terminal(status: str) -> None:
    with pytest.raises(InputError):
        completed_status_name(status)


def test_parse_status_rejects_unknown_values_as_input_error() -> None:
    assert parse_status("timeout") is ExecutionStatus.TIMEOUT
    with pytest.raises(InputError, match="unknown"):
        parse_status("unknown")


def test_is_terminal() -> None:
    assert is_terminal("failed")
    assert not is_terminal("running")
    assert not is_terminal("garbage")


def test_status_value_checks_and_returns_the_plain_string() -> None:
    assert status_value(ExecutionStatus.RUNNING) == "running"
    assert type(status_value("failed")) is str
    with pytest.raises(InputError):
        status_value("unknown")
