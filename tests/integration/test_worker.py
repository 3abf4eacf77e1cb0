"""The worker end to end: real PostgreSQL, real RabbitMQ, real sandboxes, a real process."""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio

from attune.messages import (
    EXCHANGE_DLX,
    EXCHANGE_EXECUTIONS,
    ExecutionCancelRequested,
    OutgoingMessage,
    cancel_routing_key,
    dispatch_routing_key,
    encode_message,
    executions_queue,
)
from tests.integration.amqp_fixtures import Collector, collect
from tests.integration.worker_kit import (
    ATTUNE,
    Stack,
    host_processes_of_uids,
    rabbit_queue_depth,
    slot_uid_block,
)

pytestmark = [pytest.mark.services, pytest.mark.sandbox]


def _body(delivery: Any) -> dict[str, Any]:
    return json.loads(delivery.body)


async def _messages_for(
    events: Collector, execution_id: int, count: int, timeout: float = 15
) -> list[dict[str, Any]]:
    """The next `count` messages the worker published about one execution, in order."""
    found: list[dict[str, Any]] = []
    with trio.move_on_after(timeout):
        while len(found) < count:
            body = _body(await events.next(timeout=timeout))
            if (
                body["payload"].get("execution_id") == execution_id
                and body["headers"].get("source_service") == "worker"
            ):
                found.append(body)
        return found
    pytest.fail(f"only {len(found)} of {count} messages for execution {execution_id}")


DEMO_CASES = [
    ("demo.add", {"x": 1, "y": 2}, "completed", lambda r: r["data"] == 3),
    ("demo.hello", {"name": "World"}, "completed", lambda r: r["stdout"] == "Hello, World!\n"),
    (
        "demo.greet_script",
        {"name": "Ann"},
        "completed",
        lambda r: r["data"] == {"greeting": "Hello, Ann!"},
    ),
    ("demo.shell_json", {"name": "Bo"}, "completed", lambda r: r["data"]["params"]["name"] == "Bo"),
    ("demo.fail", {"message": "boom"}, "failed", lambda r: r["error"] == "RuntimeError: boom"),
]


async def test_every_demo_action_runs_end_to_end_with_row_artifacts_and_messages(
    stack: Stack, execution_events: Collector
) -> None:
    worker = await stack.start_worker()
    for ref, params, status, check in DEMO_CASES:
        execution_id = await stack.submit(ref, params)
        running, terminal, completed = await _messages_for(execution_events, execution_id, 3)
        # The row is terminal before its completion goes out: read as soon as it came.
        row = await stack.db.get_execution(execution_id)
        assert row is not None and row.status == status, (ref, row)
        assert check(row.result), (ref, row.result)
        assert row.started_at is not None
        assert row.result["succeeded"] is (status == "completed")
        # result.json is written after the answer; it still comes, masked as recorded.
        stored = json.loads((await stack.result_file(worker, execution_id)).read_text())
        assert stored == {"status": status, "result": row.result}
        artifacts = stack.artifacts_dir / worker.name / f"execution_{execution_id}"
        assert (artifacts / "stdout.log").exists() and (artifacts / "stderr.log").exists()
        assert running["message_type"] == "ExecutionStatusChanged"
        assert running["payload"]["previous_status"] == "scheduled"
        assert running["payload"]["new_status"] == "running"
        assert terminal["message_type"] == "ExecutionStatusChanged"
        assert terminal["payload"]["previous_status"] == "running"
        assert terminal["payload"]["new_status"] == status
        assert completed["message_type"] == "ExecutionCompleted"
        assert set(completed["payload"]) == {
            "execution_id",
            "action_id",
            "action_ref",
            "status",
            "result",
            "completed_at",
        }
        assert completed["payload"]["status"] == status.capitalize()
        assert completed["payload"]["action_ref"] == ref
        assert completed["payload"]["result"] == row.result
        # A reply keeps the dispatch's correlation id; all three share it.
        assert (
            running["correlation_id"] == terminal["correlation_id"] == completed["correlation_id"]
        )
        assert completed["headers"]["source_service"] == "worker"
    assert (stack.artifacts_dir / worker.name).is_dir()
    hello = await stack.submit("demo.hello", {"name": "Logs"})
    await stack.wait(hello)
    log = stack.artifacts_dir / worker.name / f"execution_{hello}" / "stdout.log"
    assert log.read_text() == "Hello, Logs!\n"


async def test_raw_reference_format_dispatch_is_handled(stack: Stack) -> None:
    worker = await stack.start_worker()
    worker_id = await stack.worker_id(worker.name)
    action = await stack.db.get_action("demo.add")
    assert action is not None
    execution_id = await stack.db.create_execution(
        action, config={"x": 20, "y": 22}, worker_id=worker_id
    )
    raw = json.dumps(
        {
            "message_id": str(uuid.uuid4()),
            "correlation_id": str(uuid.uuid4()),
            "message_type": "ExecutionRequested",
            "version": "1.0",
            "timestamp": "2026-09-03T12:34:56.789012345Z",
            "headers": {"retry_count": 0, "source_service": "executor"},
            "payload": {
                "execution_id": execution_id,
                "action_ref": "demo.add",
                "worker_id": worker_id,
                "release_id": None,
                "extra_field": 1,
            },
        }
    ).encode()
    msg = OutgoingMessage(body=raw, message_id=str(uuid.uuid4()), correlation_id="c")
    await stack.broker.publish(EXCHANGE_EXECUTIONS, dispatch_routing_key(worker_id), msg)
    row = await stack.wait(execution_id)
    assert row.status == "completed" and row.result["data"] == 42


async def test_capacity_two_never_runs_more_than_two_and_all_six_finish(stack: Stack) -> None:
    worker = await stack.start_worker(capacity=2)
    ids = [await stack.submit("demo.sleep", {"seconds": 1}) for _ in range(6)]
    statuses = await stack.wait_all(ids, 60)
    assert list(statuses.values()) == ["completed"] * 6
    assert stack.peak_running(ids) == {await stack.worker_id(worker.name): 2}


async def test_duplicate_dispatch_runs_once(stack: Stack, execution_events: Collector) -> None:
    worker = await stack.start_worker()
    worker_id = await stack.worker_id(worker.name)
    execution_id = await stack.submit("demo.add", {"x": 1, "y": 1})
    await stack.wait(execution_id)
    # The same dispatch again (a redelivery or a duplicate publish): acked, not run.
    from attune.messages import ExecutionRequested

    again = encode_message(
        "ExecutionRequested",
        ExecutionRequested(execution_id=execution_id, action_ref="demo.add", worker_id=worker_id),
        source_service="executor",
    )
    await stack.broker.publish(EXCHANGE_EXECUTIONS, dispatch_routing_key(worker_id), again)
    await _messages_for(execution_events, execution_id, 3)
    # Nothing more from the worker: the duplicate was acknowledged and not run.
    with trio.move_on_after(1.5):
        while True:
            body = _body(await execution_events.next(timeout=2))
            assert body["headers"].get("source_service") != "worker", body
    assert "dispatch_ignored" in worker.log()
    assert rabbit_queue_depth(_vhost(stack), executions_queue(worker_id)) == 0


async def test_cancel_kills_the_run_and_records_cancelled(stack: Stack) -> None:
    worker = await stack.start_worker()
    worker_id = await stack.worker_id(worker.name)
    execution_id = await stack.submit("demo.sleep", {"seconds": 60})
    await worker.wait_log(f"event=execution_started execution_id={execution_id} ")
    cancel = encode_message(
        "ExecutionCancelRequested",
        ExecutionCancelRequested(execution_id=execution_id, worker_id=worker_id),
    )
    await stack.broker.publish(EXCHANGE_EXECUTIONS, cancel_routing_key(worker_id), cancel)
    row = await stack.wait(execution_id, timeout=10)
    assert row.status == "cancelled"
    assert row.result["cancelled"] is True
    assert row.result["error"] == "Execution cancelled by user"


async def test_cancel_before_dispatch_is_applied_when_it_arrives(stack: Stack) -> None:
    worker = await stack.start_worker()
    worker_id = await stack.worker_id(worker.name)
    action = await stack.db.get_action("demo.sleep")
    assert action is not None
    execution_id = await stack.db.create_execution(
        action, config={"seconds": 60}, worker_id=worker_id
    )
    cancel = encode_message(
        "ExecutionCancelRequested",
        ExecutionCancelRequested(execution_id=execution_id, worker_id=worker_id),
    )
    await stack.broker.publish(EXCHANGE_EXECUTIONS, cancel_routing_key(worker_id), cancel)
    await worker.wait_log(f"event=execution_cancel_remembered execution_id={execution_id}")
    from attune.messages import ExecutionRequested

    dispatch = encode_message(
        "ExecutionRequested",
        ExecutionRequested(execution_id=execution_id, action_ref="demo.sleep", worker_id=worker_id),
    )
    await stack.broker.publish(EXCHANGE_EXECUTIONS, dispatch_routing_key(worker_id), dispatch)
    row = await stack.wait(execution_id, timeout=10)
    assert row.status == "cancelled"
    assert row.result["duration_ms"] == 0


async def test_execution_timeout_is_recorded(stack: Stack) -> None:
    await stack.start_worker()
    execution_id = await stack.submit("demo.sleep", {"seconds": 60}, timeout_seconds=1)
    row = await stack.wait(execution_id, timeout=15)
    assert row.status == "timeout"
    assert row.result["timed_out"] is True
    assert row.result["error"] == "Execution timed out after 1 seconds"
    assert 1000 <= row.result["duration_ms"] < 2500


async def test_sigterm_finishes_in_flight_leaves_backlog_and_marks_inactive(stack: Stack) -> None:
    worker = await stack.start_worker(capacity=1)
    worker_id = await stack.worker_id(worker.name)
    first = await stack.submit("demo.sleep", {"seconds": 2})
    await stack.wait_status(first, "running")
    backlog = [await stack.submit("demo.add", {"x": i, "y": 1}) for i in range(3)]
    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit() == 0
    assert (await stack.wait(first)).status == "completed"
    for execution_id in backlog:
        row = await stack.db.get_execution(execution_id)
        assert row is not None and row.status == "scheduled"
    assert rabbit_queue_depth(_vhost(stack), executions_queue(worker_id)) == 3
    workers = {w.name: w for w in await stack.db.list_workers()}
    assert workers[worker.name].status == "inactive"
    # The next worker with the same name picks the backlog up.
    await stack.start_worker(capacity=2, name=worker.name)
    for execution_id in backlog:
        assert (await stack.wait(execution_id)).status == "completed"


async def test_shutdown_deadline_cancels_in_flight_runs_with_a_reason(stack: Stack) -> None:
    worker = await stack.start_worker(capacity=2, ATTUNE__WORKER__SHUTDOWN_TIMEOUT="1")
    execution_id = await stack.submit("demo.sleep", {"seconds": 60})
    await stack.wait_status(execution_id, "running")
    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit(timeout=20) == 0
    row = await stack.db.get_execution(execution_id)
    assert row is not None and row.status == "cancelled"
    assert "shut down" in row.result["error"]


async def test_restart_recovers_orphaned_running_execution_as_abandoned(
    stack: Stack, execution_events: Collector
) -> None:
    worker = await stack.start_worker()
    execution_id = await stack.submit("demo.sleep", {"seconds": 60})
    (running,) = await _messages_for(execution_events, execution_id, 1)
    assert running["payload"]["new_status"] == "running"
    worker.kill()  # SIGKILL: no chance to record anything
    await stack.start_worker(name=worker.name)
    row = await stack.wait(execution_id, timeout=15)
    assert row.status == "abandoned"
    assert "worker" in row.result["error"]
    changed, completed = await _messages_for(execution_events, execution_id, 2)
    assert (changed["payload"]["previous_status"], changed["payload"]["new_status"]) == (
        "running",
        "abandoned",
    )
    assert completed["message_type"] == "ExecutionCompleted"
    assert completed["payload"]["status"] == "Abandoned"


@pytest.mark.parametrize(
    "body",
    [
        b"not json at all",
        b'{"just": "an object"}',
        b'{"message_type": "SomethingElse", "payload": {}}',
        b'{"message_type": "ExecutionRequested", "payload": {"action_ref": "demo.add"}}',
        b'{"message_type": "ExecutionRequested", "payload": {"execution_id": "x", '
        b'"action_ref": 1, "worker_id": 1}}',
        b'{"message_type": "ExecutionRequested", "payload": {"execution_id": 987654, '
        b'"action_ref": "demo.add", "worker_id": 1}}',
    ],
)
async def test_malformed_dispatch_dead_letters_and_the_worker_keeps_serving(
    stack: Stack, body: bytes
) -> None:
    worker = await stack.start_worker()
    worker_id = await stack.worker_id(worker.name)
    queue = executions_queue(worker_id)
    async with collect(stack.broker, EXCHANGE_DLX, dispatch_routing_key(worker_id)) as dead:
        msg = OutgoingMessage(body=body, message_id=str(uuid.uuid4()), correlation_id="c")
        await stack.broker.publish(EXCHANGE_EXECUTIONS, dispatch_routing_key(worker_id), msg)
        lost = await dead.next(timeout=10)
        assert lost.body == body
    assert "dispatch_rejected" in worker.log()
    assert rabbit_queue_depth(_vhost(stack), queue) == 0
    execution_id = await stack.submit("demo.add", {"x": 2, "y": 3})
    assert (await stack.wait(execution_id)).result["data"] == 5


async def test_missing_action_code_fails_the_execution_with_a_precise_error(stack: Stack) -> None:
    await stack.start_worker()
    (stack.packs_dir / "demo" / "actions" / "add.py").unlink()
    execution_id = await stack.submit("demo.add", {"x": 1, "y": 2})
    row = await stack.wait(execution_id)
    assert row.status == "failed"
    assert "add.py" in row.result["error"]


def _vhost(stack: Stack) -> str:
    from urllib.parse import unquote, urlsplit

    return unquote(urlsplit(stack.amqp_url).path.lstrip("/"))


async def test_second_signal_cancels_in_flight_runs_at_once(stack: Stack) -> None:
    worker = await stack.start_worker(capacity=1, ATTUNE__WORKER__SHUTDOWN_TIMEOUT="120")
    execution_id = await stack.submit("demo.sleep", {"seconds": 60})
    await stack.wait_status(execution_id, "running")
    worker.signal(signal.SIGTERM)
    await worker.wait_log("event=draining")
    worker.signal(signal.SIGINT)
    began = trio.current_time()
    assert await worker.wait_exit(timeout=20) == 0
    assert trio.current_time() - began < 10
    row = await stack.db.get_execution(execution_id)
    assert row is not None and row.status == "cancelled"
    assert "shut down" in row.result["error"]


async def test_a_starting_worker_spares_attune_exec_running_beside_it(
    stack: Stack, tmp_path: Path
) -> None:
    """`attune exec` runs as the uid one past the slots (slot_uid_base + capacity), and
    the warm pool's uids come after it: the start-up kill of leftover sandboxes covers
    the slots and the pool, never a local run of the same configuration."""
    base = slot_uid_block(4)
    env = stack.env(
        ATTUNE__SANDBOX__SLOT_UID_BASE=str(base), ATTUNE__WORKER__MAX_CONCURRENT_TASKS="4"
    )
    action = tmp_path / "wait.sh"
    action.write_text("sleep 2; echo survived\n")
    action.chmod(0o644)
    tmp_path.chmod(0o755)
    async with trio.open_nursery() as nursery:
        done: list[subprocess.CompletedProcess[bytes]] = []

        async def run_exec() -> None:
            done.append(
                await trio.run_process(
                    [ATTUNE, "exec", str(action)], env=env, capture_stdout=True, check=False
                )
            )

        nursery.start_soon(run_exec)
        with trio.fail_after(20):  # exec's sandbox is up, as its own uid
            while not host_processes_of_uids(base + 4, base + 5):
                await trio.sleep(0.05)
        await stack.start_worker(
            capacity=4, ATTUNE__SANDBOX__SLOT_UID_BASE=str(base)
        )  # kills leftovers of its slots and pool at start-up
    result = json.loads(done[0].stdout)
    assert done[0].returncode == 0 and result["stdout"] == "survived\n", result
