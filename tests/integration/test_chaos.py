"""Machine-wide faults: RabbitMQ and PostgreSQL restarted under load.

These stop the shared servers, so scripts/test runs them last and alone
(`pytest -m chaos`); every execution must still end terminal exactly once.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import trio

from attune.broker import Broker
from attune.messages import EXCHANGE_EXECUTIONS
from tests.integration.worker_kit import Stack

pytestmark = [pytest.mark.services, pytest.mark.sandbox, pytest.mark.chaos]


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def _rabbit_up() -> bool:
    return (
        subprocess.run(
            ["rabbitmqctl", "-q", "await_startup"], capture_output=True, timeout=60
        ).returncode
        == 0
    )


def _pg_cluster() -> str:
    return sorted(Path("/etc/postgresql").iterdir(), key=lambda p: p.name)[-1].name


async def _completions(broker: Broker, name: str, want: set[int], timeout: float) -> set[int]:
    seen: set[int] = set()
    with trio.move_on_after(timeout):
        async with broker.consume(name, prefetch=500) as deliveries:
            async for delivery in deliveries:
                seen.add(json.loads(delivery.body)["payload"]["execution_id"])
                await delivery.ack()
                if want <= seen:
                    break
    return seen


async def test_rabbitmq_restart_under_load_every_execution_once_and_announced(
    stack: Stack,
) -> None:
    await stack.start_worker(capacity=4)
    await stack.broker.declare_queue("chaos.completions", durable=True)
    await stack.broker.bind_queue("chaos.completions", EXCHANGE_EXECUTIONS, "execution.completed")
    ids = [await stack.submit("demo.add", {"x": i, "y": 1}) for i in range(300)]
    await trio.sleep(1.0)
    started = time.monotonic()
    await trio.to_thread.run_sync(_run, "rabbitmqctl", "-q", "stop_app")
    await trio.sleep(3)
    await trio.to_thread.run_sync(_run, "rabbitmqctl", "-q", "start_app")
    assert await trio.to_thread.run_sync(_rabbit_up)
    statuses = await stack.wait_all(ids, 240)
    recovery = time.monotonic() - started
    assert Counter(statuses.values()) == Counter({"completed": len(ids)})
    runs = stack.runs_started()
    assert [i for i in ids if runs[i] != 1] == []
    seen = await _completions(stack.broker, "chaos.completions", set(ids), 120)
    assert set(ids) <= seen
    print(
        f"chaos rabbitmq: {len(ids)} executions, all terminal, 0 duplicates, "
        f"drained {recovery:.1f}s after the stop"
    )


async def test_postgresql_restart_under_load_results_written_once_back(stack: Stack) -> None:
    await stack.start_worker(capacity=4)
    ids = [await stack.submit("demo.sleep", {"seconds": 1}) for _ in range(12)]
    ids += [await stack.submit("demo.add", {"x": i, "y": 2}) for i in range(60)]
    await trio.sleep(1.0)
    cluster = _pg_cluster()
    started = time.monotonic()
    await trio.to_thread.run_sync(
        _run, "pg_ctlcluster", "--skip-systemctl-redirect", cluster, "main", "restart"
    )
    statuses = await stack.wait_all(ids, 240)
    recovery = time.monotonic() - started
    assert Counter(statuses.values()) == Counter({"completed": len(ids)})
    runs = stack.runs_started()
    assert [i for i in ids if runs[i] != 1] == []
    running = [i for i in ids if (await stack.db.get_execution(i)).status == "running"]  # type: ignore[union-attr]
    assert running == []
    print(
        f"chaos postgresql: {len(ids)} executions, all terminal, 0 duplicates, "
        f"drained {recovery:.1f}s after the restart"
    )
