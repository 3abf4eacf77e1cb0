"""The execution lifecycle table, exhaustively, with no I/O."""

from __future__ import annotations

import ast
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import get_args

import msgspec
import pytest

from attune.lifecycle import (
    EDGES,
    SUBMITTED,
    TERMINAL,
    Event,
    ExecutionRef,
    ExecutionStatus,
    IllegalTransition,
    abandoned,
    cancelled_before_start,
    internal_failure,
    is_terminal,
    outcome_event,
    rejected,
    transition,
)
from attune.messages import (
    EXECUTION_COMPLETED,
    EXECUTION_STATUS_CHANGED,
    ROUTING_COMPLETED,
    ROUTING_STATUS_CHANGED,
    CompletedStatusName,
    ExecutionCompleted,
    ExecutionStatusChanged,
    StatusValue,
    decode_completed,
    decode_status_changed,
    encode_message,
)

ALL = list(ExecutionStatus)
AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
REF = ExecutionRef(id=7, action_id=3, action_ref="demo.add")

# The only edges the worker takes, written out once more by hand.
ALLOWED = {
    ("scheduled", "claim"): "running",
    ("scheduled", "reject"): "failed",
    ("running", "succeed"): "completed",
    ("running", "fail"): "failed",
    ("running", "time_out"): "timeout",
    ("running", "cancel"): "cancelled",
    ("running", "abandon"): "abandoned",
}


def test_status_values_match_the_postgres_enum_and_the_wire_literal_exactly() -> None:
    values = [s.value for s in ExecutionStatus]
    assert values == [
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
    assert tuple(values) == get_args(StatusValue)


def test_terminal_set_is_the_five_end_states() -> None:
    assert {s.value for s in TERMINAL} == {
        "completed",
        "failed",
        "cancelled",
        "timeout",
        "abandoned",
    }
    assert is_terminal("failed") and not is_terminal("running") and not is_terminal("garbage")


def test_the_executor_inserts_scheduled_rows_for_the_worker() -> None:
    assert SUBMITTED is ExecutionStatus.SCHEDULED


@pytest.mark.parametrize("current", ALL)
@pytest.mark.parametrize("event", list(Event))
def test_every_status_event_pair_takes_the_table_edge_or_raises(
    current: ExecutionStatus, event: Event
) -> None:
    expected = ALLOWED.get((current.value, event.value))
    if expected is None:
        with pytest.raises(IllegalTransition):
            transition(current, event)
        return
    step = transition(current, event)
    assert (step.previous, step.event, step.new.value) == (current, event, expected)
    assert step.cas_from == (current,)  # the write lands only if nobody moved the row
    assert step.terminal == (step.new in TERMINAL)


def test_the_table_is_the_hand_written_list() -> None:
    assert {(a.value, e.value): b.value for (a, e), b in EDGES.items()} == ALLOWED


def test_no_edge_leaves_an_end_or_an_executor_owned_status() -> None:
    for (source, _event), _new in EDGES.items():
        assert source not in TERMINAL
        assert source in {ExecutionStatus.SCHEDULED, ExecutionStatus.RUNNING}


@pytest.mark.parametrize("bad", ["unknown", "Running", "", "bogus"])
def test_an_unknown_current_status_raises(bad: str) -> None:
    with pytest.raises(IllegalTransition, match="unknown execution status"):
        transition(bad, Event.CLAIM)


def test_the_claim_announces_one_status_change_and_no_completion() -> None:
    (changed,) = transition("scheduled", Event.CLAIM).announcements(REF, None, AT)
    assert (changed.routing_key, changed.message_type) == (
        ROUTING_STATUS_CHANGED,
        EXECUTION_STATUS_CHANGED,
    )
    assert changed.payload == ExecutionStatusChanged(
        execution_id=7,
        action_ref="demo.add",
        previous_status="scheduled",
        new_status="running",
        changed_at=AT,
    )


COMPLETED_NAMES: dict[str, CompletedStatusName] = {
    "completed": "Completed",
    "failed": "Failed",
    "cancelled": "Cancelled",
    "timeout": "Timeout",
    "abandoned": "Abandoned",
}


@pytest.mark.parametrize(("source", "event"), [k for k, v in ALLOWED.items() if v != "running"])
def test_every_end_announces_the_status_change_then_the_completion(source: str, event: str) -> None:
    step = transition(source, Event(event))
    result = {"succeeded": False, "error": "x"}
    changed, completed = step.announcements(REF, result, AT)
    assert changed.routing_key == ROUTING_STATUS_CHANGED
    assert isinstance(changed.payload, ExecutionStatusChanged)
    assert (changed.payload.previous_status, changed.payload.new_status) == (source, step.new)
    assert (completed.routing_key, completed.message_type) == (
        ROUTING_COMPLETED,
        EXECUTION_COMPLETED,
    )
    assert completed.payload == ExecutionCompleted(
        execution_id=7,
        action_id=3,
        action_ref="demo.add",
        status=COMPLETED_NAMES[step.new.value],
        result=result,
        completed_at=AT,
    )
    # Both encode and decode as the wire contract says.
    _, back = decode_status_changed(encode_message(changed.message_type, changed.payload).body)
    assert back.new_status == step.new.value
    _, done = decode_completed(encode_message(completed.message_type, completed.payload).body)
    assert done.status == COMPLETED_NAMES[step.new.value]


def test_an_end_of_a_deleted_action_announces_the_status_but_no_completion() -> None:
    # ExecutionCompleted.action_id is required, as in the reference, whose worker
    # publishes no completion when the action row is gone.
    orphan = ExecutionRef(id=7, action_id=None, action_ref="demo.gone")
    (changed,) = transition("running", Event.FAIL).announcements(orphan, {"error": "x"}, AT)
    assert changed.message_type == "ExecutionStatusChanged"


def test_an_end_without_its_result_is_refused() -> None:
    with pytest.raises(IllegalTransition, match="needs the result"):
        transition("running", Event.SUCCEED).announcements(REF, None, AT)


@pytest.mark.parametrize(
    ("word", "event"),
    [
        ("completed", Event.SUCCEED),
        ("failed", Event.FAIL),
        ("timeout", Event.TIME_OUT),
        ("cancelled", Event.CANCEL),
    ],
)
def test_a_run_outcome_word_maps_to_its_event(word: str, event: Event) -> None:
    assert outcome_event(word) is event


@pytest.mark.parametrize("word", ["running", "abandoned", "Completed", "ok"])
def test_other_outcome_words_raise(word: str) -> None:
    with pytest.raises(IllegalTransition):
        outcome_event(word)


def test_results_the_worker_writes_itself_say_why() -> None:
    assert cancelled_before_start("stop")["error"] == "stop"
    assert cancelled_before_start("stop")["cancelled"] is True
    assert rejected("bad shape")["error"] == "invalid execution: bad shape"
    assert abandoned()["abandoned"] is True
    for r in (cancelled_before_start("x"), rejected("y"), abandoned()):
        assert r["succeeded"] is False
        msgspec.json.encode(r)


def test_the_last_resort_result_names_the_error_type_but_never_its_text() -> None:
    exc = ValueError("password=hunter2")
    result = internal_failure(exc, "running it")
    assert "ValueError" in result["error"] and "hunter2" not in result["error"]
    group = ExceptionGroup("g", [RecursionError("deep")])
    assert "RecursionError" in internal_failure(group, "running it")["error"]


# --- the proof that no production code writes an execution status elsewhere -----------

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = [p for d in ("attune", "sandbox", "bench") for p in (ROOT / d).rglob("*.py")]
SQL_STATUS_LITERAL = re.compile(r"\bstatus\s*=\s*'", re.IGNORECASE)
EXECUTION_WRITE = re.compile(r"\b(UPDATE\s+execution\b|INSERT\s+INTO\s+execution\s*\()", re.I)


def _string_constants(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]


def test_execution_row_writes_live_in_the_db_adapter_with_the_status_as_a_parameter() -> None:
    writers = []
    for path in PRODUCTION:
        for text in _string_constants(path):
            if EXECUTION_WRITE.search(text):
                writers.append(path.relative_to(ROOT).as_posix())
                head = text.split("WHERE")[0]
                assert not SQL_STATUS_LITERAL.search(head), (path, text)
                assert "'scheduled'" not in head and "'running'" not in head, (path, text)
    assert set(writers) == {"attune/db/queries.py"}


def test_the_db_status_writes_accept_only_lifecycle_transitions() -> None:
    """`Transition` is built by `transition()` alone; the adapter's writes take one."""
    for path in PRODUCTION:
        if path.name == "lifecycle.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute):
                name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
                assert name != "Transition", f"{path}: builds a Transition outside lifecycle"
    database = ast.parse((ROOT / "attune/db/database.py").read_text())
    methods = {
        n.name: n
        for n in ast.walk(database)
        if isinstance(n, ast.AsyncFunctionDef | ast.FunctionDef)
    }
    for name in ("claim_execution", "finish_execution"):
        annotations = {
            a.arg: ast.unparse(a.annotation) for a in methods[name].args.args if a.annotation
        }
        assert annotations.get("step") == "Transition", name
    callers = {
        path.relative_to(ROOT).as_posix()
        for path in PRODUCTION
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute)
        and node.attr in {"claim_execution", "finish_execution"}
        and isinstance(node.value, ast.Name)
        and node.value.id == "queries"
    }
    assert callers == {"attune/db/database.py"}
