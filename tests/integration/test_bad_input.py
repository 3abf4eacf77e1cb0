"""Bad input reaching a live worker: each ends dead-lettered or `failed` with a precise
error, and the worker keeps serving (issue: reliability, bad input)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
import psycopg
import pytest

from attune.messages import (
    EXCHANGE_DLX,
    EXCHANGE_EXECUTIONS,
    ExecutionRequested,
    OutgoingMessage,
    dispatch_routing_key,
    encode_message,
)
from tests.integration.amqp_fixtures import Collector, collect
from tests.integration.worker_kit import Stack

pytestmark = [pytest.mark.services, pytest.mark.sandbox]
Pg = psycopg.Connection[tuple[Any, ...]]


async def _dispatch(stack: Stack, worker_id: int, execution_id: int, ref: str) -> None:
    message = encode_message(
        "ExecutionRequested",
        ExecutionRequested(execution_id=execution_id, action_ref=ref, worker_id=worker_id),
        source_service="executor",
    )
    await stack.broker.publish(EXCHANGE_EXECUTIONS, dispatch_routing_key(worker_id), message)


async def _still_serving(stack: Stack) -> None:
    execution_id = await stack.submit("demo.add", {"x": 40, "y": 2})
    assert (await stack.wait(execution_id)).result["data"] == 42


async def test_ten_megabyte_body_is_dead_lettered_and_the_worker_keeps_serving(
    stack: Stack,
) -> None:
    worker = await stack.start_worker()
    worker_id = await stack.worker_id(worker.name)
    body = (
        b'{"message_type": "ExecutionRequested", "payload": {"pad": "' + b"x" * (10 << 20) + b'"}}'
    )
    async with collect(stack.broker, EXCHANGE_DLX, dispatch_routing_key(worker_id)) as dead:
        msg = OutgoingMessage(body=body, message_id=str(uuid.uuid4()), correlation_id="c")
        await stack.broker.publish(
            EXCHANGE_EXECUTIONS, dispatch_routing_key(worker_id), msg, timeout=30
        )
        assert len((await dead.next(timeout=15)).body) == len(body)
    assert "dispatch_rejected" in worker.log()
    await _still_serving(stack)


def _delete_action(pg: Pg, stack: Stack) -> None:
    pg.execute("DELETE FROM action WHERE ref = 'demo.add'")


def _escape_by_dotdot(pg: Pg, stack: Stack) -> None:
    pg.execute("UPDATE action SET entrypoint = '../../../etc/passwd' WHERE ref = 'demo.add'")


def _escape_by_symlink(pg: Pg, stack: Stack) -> None:
    os.symlink("/etc/hostname", stack.packs_dir / "demo" / "actions" / "evil.py")
    pg.execute("UPDATE action SET entrypoint = 'evil.py' WHERE ref = 'demo.add'")


def _unknown_runtime(pg: Pg, stack: Stack) -> None:
    pg.execute("INSERT INTO runtime (ref, pack_ref, name) VALUES ('core.ruby', 'core', 'ruby')")
    pg.execute(
        "UPDATE action SET runtime = (SELECT id FROM runtime WHERE ref = 'core.ruby') "
        "WHERE ref = 'demo.add'"
    )


def _secret_marker_without_rows(pg: Pg, stack: Stack) -> None:
    pg.execute("""UPDATE execution SET config = '{"x": {"$attune_secret": true, "redacted": true},
                  "y": 1}' WHERE action_ref = 'demo.add'""")


def _missing_file(pg: Pg, stack: Stack) -> None:
    (stack.packs_dir / "demo" / "actions" / "add.py").unlink()


CASES: list[tuple[str, Callable[[Pg, Stack], None], str]] = [
    ("action deleted", _delete_action, "no longer exists"),
    ("escape by ..", _escape_by_dotdot, ".."),
    ("escape by symlink", _escape_by_symlink, "evil.py"),
    ("unknown runtime", _unknown_runtime, "ruby"),
    ("secret marker without rows", _secret_marker_without_rows, "/x"),
    ("missing code file", _missing_file, "add.py"),
]


@pytest.mark.parametrize(("case", "damage", "needle"), CASES, ids=[c[0] for c in CASES])
async def test_broken_execution_fails_with_a_precise_error_and_the_worker_keeps_serving(
    stack: Stack,
    pg: Pg,
    case: str,
    damage: Callable[[Pg, Stack], None],
    needle: str,
) -> None:
    worker = await stack.start_worker()
    worker_id = await stack.worker_id(worker.name)
    action = await stack.db.get_action("demo.add")
    assert action is not None
    execution_id = await stack.db.create_execution(
        action, config={"x": 1, "y": 2}, worker_id=worker_id
    )
    damage(pg, stack)
    await _dispatch(stack, worker_id, execution_id, "demo.add")
    row = await stack.wait(execution_id)
    assert row.status == "failed", (case, row.result)
    assert needle in row.result["error"], (case, row.result)
    assert row.result["succeeded"] is False
    if case in {"action deleted", "unknown runtime", "escape by ..", "escape by symlink"}:
        # Put the action back in working order, then prove the worker still serves.
        pg.execute(
            "UPDATE action SET entrypoint = 'add.py', runtime = (SELECT id FROM runtime "
            "WHERE ref = 'core.python') WHERE ref = 'demo.add'"
        )
    if case not in {"action deleted", "missing code file"}:
        await _still_serving(stack)


async def test_an_unreadable_row_ends_failed_and_the_end_is_announced(
    stack: Stack, pg: Pg, execution_events: Collector
) -> None:
    worker = await stack.start_worker()
    worker_id = await stack.worker_id(worker.name)
    action = await stack.db.get_action("demo.add")
    assert action is not None
    execution_id = await stack.db.create_execution(action, config={}, worker_id=worker_id)
    pg.execute("UPDATE execution SET config = '[1, 2]' WHERE id = %s", (execution_id,))
    await _dispatch(stack, worker_id, execution_id, "demo.add")
    seen = []
    while len(seen) < 2:
        body = msgspec.json.decode((await execution_events.next(timeout=15)).body)
        if body["payload"].get("execution_id") == execution_id:
            seen.append(body)
    changed, completed = seen
    assert changed["message_type"] == "ExecutionStatusChanged"
    assert (changed["payload"]["previous_status"], changed["payload"]["new_status"]) == (
        "scheduled",
        "failed",
    )
    assert changed["payload"]["action_ref"] == "demo.add"
    assert completed["message_type"] == "ExecutionCompleted"
    assert completed["payload"]["status"] == "Failed"
    status, result = pg.execute(
        "SELECT status::text, result FROM execution WHERE id = %s", (execution_id,)
    ).fetchone() or (None, None)
    assert status == "failed" and result["error"].startswith("invalid execution:")
    assert completed["payload"]["result"] == result
    await _still_serving(stack)
