"""Faults scoped to the test's own vhost and database: every execution still ends once.

Global faults (stopping RabbitMQ or PostgreSQL for the whole machine) live in
scripts/chaos; these run in the normal suite because they touch nothing but the
test's own broker connections and database.
"""

from __future__ import annotations

import signal
from collections import Counter
from urllib.parse import unquote, urlsplit

import psycopg
import pytest
import trio
from psycopg import sql

from attune.broker import Broker
from attune.messages import EXCHANGE_EXECUTIONS
from tests.integration.amqp_fixtures import close_connections
from tests.integration.conftest import ADMIN_URL
from tests.integration.worker_kit import Stack, host_processes_of_uids, slot_uid_block, uid_span

pytestmark = [pytest.mark.services, pytest.mark.sandbox]


async def test_sigkill_mid_run_leaves_no_sandbox_and_restart_abandons_each_once(
    stack: Stack,
) -> None:
    base = slot_uid_block(3)
    worker = await stack.start_worker(capacity=3, ATTUNE__SANDBOX__SLOT_UID_BASE=str(base))
    ids = [await stack.submit("demo.sleep", {"seconds": 60}) for _ in range(3)]
    for execution_id in ids:
        await stack.wait_status(execution_id, "running")
    # `running` is written at the claim; the three sandboxes start a moment later.
    with trio.move_on_after(10):
        while len({line.split()[0] for line in host_processes_of_uids(base, base + 3)}) < 3:
            await trio.sleep(0.05)
    assert len({line.split()[0] for line in host_processes_of_uids(base, base + 3)}) == 3
    worker.kill()
    span = base + uid_span(3)  # the slots, exec's uid and a warm pool's parked sandboxes
    with trio.move_on_after(3):
        while host_processes_of_uids(base, span):
            await trio.sleep(0.05)
    assert host_processes_of_uids(base, span) == []
    await stack.start_worker(capacity=3, name=worker.name, ATTUNE__SANDBOX__SLOT_UID_BASE=str(base))
    statuses = await stack.wait_all(ids, 20)
    assert set(statuses.values()) == {"abandoned"}
    assert stack.runs_started() == Counter({i: 1 for i in ids})


async def _durable_completions(broker: Broker, name: str) -> None:
    """A durable queue that keeps every ExecutionCompleted even while we are disconnected."""
    await broker.declare_queue(name, durable=True)
    await broker.bind_queue(name, EXCHANGE_EXECUTIONS, "execution.completed")


async def _drain_completions(broker: Broker, name: str, want: int, timeout: float) -> Counter[int]:
    import json

    seen: Counter[int] = Counter()
    with trio.move_on_after(timeout):
        async with broker.consume(name, prefetch=200) as deliveries:
            async for delivery in deliveries:
                seen[json.loads(delivery.body)["payload"]["execution_id"]] += 1
                await delivery.ack()
                if len(seen) >= want:
                    break
    return seen


async def test_forced_broker_disconnects_under_load_lose_and_duplicate_nothing(
    stack: Stack,
) -> None:
    await stack.start_worker(capacity=4)
    await _durable_completions(stack.broker, "test.completions")
    vhost = unquote(urlsplit(stack.amqp_url).path.lstrip("/"))
    ids: list[int] = []
    async with trio.open_nursery() as nursery:

        async def faults() -> None:
            for _ in range(2):
                await trio.sleep(1.5)
                await close_connections(vhost)

        nursery.start_soon(faults)
        for i in range(150):
            ids.append(await stack.submit("demo.add", {"x": i, "y": 1}))
    statuses = await stack.wait_all(ids, 120)
    assert Counter(statuses.values()) == Counter({"completed": len(ids)})
    started = stack.runs_started()
    assert {i: started[i] for i in ids} == {i: 1 for i in ids}
    completions = await _drain_completions(stack.broker, "test.completions", len(ids), 60)
    assert set(completions) == set(ids)  # at least once for every terminal row
    for execution_id in ids[:5]:
        row = await stack.db.get_execution(execution_id)
        assert row is not None and row.result["data"] == ids.index(execution_id) + 1


def _block_database(name: str, allow: bool) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
                sql.Identifier(name), sql.SQL("true" if allow else "false")
            )
        )
        if not allow:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )


async def test_database_outage_under_load_writes_every_result_after_recovery(
    stack: Stack,
) -> None:
    worker = await stack.start_worker(capacity=4)
    name = urlsplit(stack.db_url).path.lstrip("/")
    ids = [await stack.submit("demo.sleep", {"seconds": 1}) for _ in range(8)]
    ids += [await stack.submit("demo.add", {"x": i, "y": 0}) for i in range(8)]
    await worker.wait_log("event=execution_started")
    await trio.to_thread.run_sync(_block_database, name, False)
    try:
        # Keep the database away until the worker has met the outage, then a while more.
        await worker.wait_log_any(
            ("not currently accepting connections", "db_retry", "claim_deferred"), timeout=30
        )
        await trio.sleep(2)
    finally:
        await trio.to_thread.run_sync(_block_database, name, True)
    statuses = await stack.wait_all(ids, 90)
    assert Counter(statuses.values()) == Counter({"completed": len(ids)})
    started = stack.runs_started()
    assert {i: started[i] for i in ids} == {i: 1 for i in ids}
    # The outage was seen (the pool's reconnect attempts or our retries), and survived.
    assert any(
        mark in worker.log()
        for mark in ("not currently accepting connections", "db_retry", "claim_deferred")
    )
    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit() == 0
