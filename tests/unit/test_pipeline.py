"""Every branch of `handle_dispatch`, with small in-memory fakes and no I/O.

The fakes keep the contract of the real adapters: the store's writes are
compare-and-sets that take lifecycle transitions, the announcer receives encoded
messages, the runner honours its `RunControl`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
import trio
from trio.testing import MockClock

from attune.errors import InputError, TransientError, UnreadableExecution
from attune.lifecycle import Event, Transition
from attune.messages import (
    EXCHANGE_EXECUTIONS,
    ExecutionCancelRequested,
    ExecutionRequested,
    OutgoingMessage,
    decode_completed,
    decode_status_changed,
    encode_message,
)
from attune.models import Action, Claim, Execution
from attune.outbox import Outbox
from attune.pipeline import Pipeline, handle_cancel, handle_dispatch, recover_orphans
from attune.runner.supervise import RunControl
from attune.runs import SHUTDOWN_REASON, Runs
from attune.secrets.records import KeyRecord, SecretRows, StoredSecret

WORKER_ID = 4
CREATED = datetime(2026, 1, 1, tzinfo=UTC)


def execution_row(execution_id: int, status: str = "scheduled") -> Execution:
    return Execution(
        id=execution_id,
        action=3,
        action_ref="demo.add",
        config={"x": 1},
        env_vars=None,
        worker=WORKER_ID,
        status=status,
        result=None,
        started_at=None,
        timeout_seconds=None,
        created=CREATED,
    )


ACTION = Action(
    id=3,
    ref="demo.add",
    pack_ref="demo",
    entrypoint="add.py",
    runtime_name="python",
    timeout_seconds=None,
    parameter_delivery="stdin",
    parameter_format="json",
    output_format="json",
    param_schema=None,
    out_schema=None,
)


class FakeDelivery:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.delivery_tag = 1
        self.settled: list[str] = []

    async def ack(self) -> bool:
        self.settled.append("ack")
        return True

    async def nack(self, *, requeue: bool) -> bool:
        self.settled.append("requeue" if requeue else "dead-letter")
        return True


def dispatch(execution_id: int, correlation_id: str = "corr-1") -> FakeDelivery:
    request = ExecutionRequested(execution_id=execution_id, action_ref="demo.add", worker_id=4)
    message = encode_message("ExecutionRequested", request, correlation_id=correlation_id)
    return FakeDelivery(message.body)


def cancel(execution_id: int) -> FakeDelivery:
    request = ExecutionCancelRequested(execution_id=execution_id)
    return FakeDelivery(encode_message("ExecutionCancelRequested", request).body)


@dataclass
class FakeStore:
    """Rows by id; writes are CAS like the SQL. Failures are scripted per call."""

    rows: dict[int, Execution] = field(default_factory=dict)
    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    action: Action | None = ACTION
    secrets: SecretRows | None = None  # read with the claim, as the SQL does
    claim_outages: int = 0
    unreadable: set[int] = field(default_factory=set)
    finish_outages: int = 0
    finish_errors: list[Exception] = field(default_factory=list)
    writes: list[tuple[int, str, str]] = field(default_factory=list)

    def add(self, execution_id: int, status: str = "scheduled") -> None:
        self.rows[execution_id] = execution_row(execution_id, status)

    def status(self, execution_id: int) -> str:
        return self.rows[execution_id].status

    def _set(self, execution_id: int, step: Transition) -> bool:
        row = self.rows.get(execution_id)
        if row is None or row.status not in step.cas_from:
            return False
        self.rows[execution_id] = msgspec.structs.replace(row, status=step.new.value)
        self.writes.append((execution_id, step.previous.value, step.new.value))
        return True

    async def claim_execution(self, execution_id: int, worker_id: int, step: Transition) -> Claim:
        assert step.event is Event.CLAIM and worker_id == WORKER_ID
        if self.claim_outages:
            self.claim_outages -= 1
            raise TransientError("database away")
        if execution_id in self.unreadable:
            raise UnreadableExecution(
                "execution row 9 has an unexpected shape: Expected `object`, got `array`",
                execution_id=execution_id,
                action_id=3,
                action_ref="demo.add",
            )
        row = self.rows.get(execution_id)
        if row is None:
            return Claim(claimed=False, status=None, execution=None, action=None)
        if not self._set(execution_id, step):
            return Claim(claimed=False, status=row.status, execution=row, action=None)
        claimed = self.rows[execution_id]
        return Claim(
            claimed=True,
            status=claimed.status,
            execution=claimed,
            action=self.action,
            secrets=self.secrets,
        )

    async def finish_execution(
        self, execution_id: int, step: Transition, result: dict[str, Any]
    ) -> bool:
        assert step.terminal
        if self.finish_outages:
            self.finish_outages -= 1
            raise TransientError("database away")
        if self.finish_errors:
            raise self.finish_errors.pop(0)
        if not self._set(execution_id, step):
            return False
        self.results[execution_id] = result
        return True

    async def orphaned_executions(self, worker_id: int) -> list[Execution]:
        return [r for r in self.rows.values() if r.status == "running"]


@dataclass
class FakeAnnouncer:
    published: list[tuple[str, str, OutgoingMessage]] = field(default_factory=list)
    batches: list[list[str]] = field(default_factory=list)  # routing keys per hand-over

    async def publish_all(
        self, exchange: str, messages: Sequence[tuple[str, OutgoingMessage]]
    ) -> None:
        self.published += [(exchange, routing_key, message) for routing_key, message in messages]
        self.batches.append([routing_key for routing_key, _ in messages])

    def story(self, execution_id: int) -> list[str]:
        """What consumers saw for one execution: `a->b` changes and `Completed:X`."""
        seen = []
        for exchange, routing_key, message in self.published:
            assert exchange == EXCHANGE_EXECUTIONS
            if routing_key == "execution.status.changed":
                _, changed = decode_status_changed(message.body)
                if changed.execution_id == execution_id:
                    seen.append(f"{changed.previous_status}->{changed.new_status}")
            else:
                assert routing_key == "execution.completed"
                _, done = decode_completed(message.body)
                if done.execution_id == execution_id:
                    seen.append(f"Completed:{done.status}")
        return seen


RunFn = Callable[[Execution, Action, RunControl, int], Awaitable[tuple[str, dict[str, Any]]]]


@dataclass
class FakeRunner:
    behaviour: RunFn | None = None
    started: trio.Event = field(default_factory=trio.Event)
    slots: list[int] = field(default_factory=list)
    secret_rows: list[SecretRows | None] = field(default_factory=list)
    after: list[int] = field(default_factory=list)
    announcer: FakeAnnouncer | None = None  # what had been announced when after_end came
    announced_before_after: list[list[str]] = field(default_factory=list)

    def runtime_label(self, action: Action | None) -> str:
        return "python" if action is not None else "other"

    async def run(
        self,
        execution: Execution,
        action: Action,
        control: RunControl,
        slot: int,
        *,
        secret_rows: SecretRows | None = None,
    ) -> tuple[str, dict[str, Any]]:
        self.slots.append(slot)
        self.secret_rows.append(secret_rows)
        self.started.set()
        if self.behaviour is None:
            return "completed", {"succeeded": True, "exit_code": 0, "duration_ms": 5}
        return await self.behaviour(execution, action, control, slot)

    async def after_end(self, execution_id: int) -> None:
        self.after.append(execution_id)
        if self.announcer is not None:
            self.announced_before_after.append(self.announcer.story(execution_id))


async def until_cancelled(
    execution: Execution, action: Action, control: RunControl, slot: int
) -> tuple[str, dict[str, Any]]:
    """Like the sandbox: runs until its control cancels it, then reports the reason."""
    with control.scope:
        await trio.sleep_forever()
    return "cancelled", {"succeeded": False, "cancelled": True, "error": control.reason}


def make(
    store: FakeStore | None = None,
    runner: FakeRunner | None = None,
    announcer: Any = None,
    capacity: int = 2,
) -> tuple[Pipeline, FakeStore, FakeAnnouncer, FakeRunner]:
    store = store or FakeStore()
    runner = runner or FakeRunner()
    announcer = announcer if announcer is not None else FakeAnnouncer()
    pipeline = Pipeline(
        store=store,
        announcer=announcer,
        runner=runner,
        runs=Runs(capacity),
        worker_id=WORKER_ID,
        worker_name="w",
    )
    return pipeline, store, announcer, runner


ENDED = ["scheduled->running"]


async def test_a_bad_body_is_dead_lettered_without_touching_any_row() -> None:
    p, store, announcer, _ = make()
    delivery = FakeDelivery(b'{"message_type": "ExecutionRequested", "payload": 1}')
    await handle_dispatch(p, delivery)
    assert delivery.settled == ["dead-letter"]
    assert store.writes == [] and announcer.published == []


async def test_a_dispatch_for_a_missing_row_is_dead_lettered() -> None:
    p, _store, announcer, _ = make()
    delivery = dispatch(404)
    await handle_dispatch(p, delivery)
    assert delivery.settled == ["dead-letter"]
    assert announcer.published == []


async def test_an_unreadable_row_ends_failed_and_is_announced() -> None:
    p, store, announcer, runner = make()
    store.add(9)
    store.unreadable.add(9)
    delivery = dispatch(9)
    await handle_dispatch(p, delivery)
    assert delivery.settled == ["ack"]
    assert store.status(9) == "failed"
    assert store.results[9]["error"].startswith("invalid execution: execution row 9")
    assert announcer.story(9) == ["scheduled->failed", "Completed:Failed"]
    assert not runner.started.is_set()


async def test_a_row_that_is_no_longer_scheduled_is_acked_and_not_run_again() -> None:
    p, store, announcer, runner = make()
    store.add(5, "completed")
    delivery = dispatch(5)
    await handle_dispatch(p, delivery)
    assert delivery.settled == ["ack"]
    assert store.status(5) == "completed" and store.writes == []
    assert announcer.published == [] and not runner.started.is_set()


async def test_a_claim_during_a_database_outage_is_requeued(autojump_clock: MockClock) -> None:
    p, store, announcer, _runner = make(FakeStore(claim_outages=1))
    store.add(5)
    delivery = dispatch(5)
    await handle_dispatch(p, delivery)
    assert delivery.settled == ["requeue"]
    assert store.status(5) == "scheduled" and announcer.published == []


async def test_a_claimed_run_that_completes_is_recorded_and_announced_in_order() -> None:
    p, store, announcer, _runner = make()
    store.add(5)
    delivery = dispatch(5, correlation_id="trace-me")
    await handle_dispatch(p, delivery)
    assert delivery.settled == ["ack"]
    assert store.writes == [(5, "scheduled", "running"), (5, "running", "completed")]
    assert store.results[5]["succeeded"] is True
    assert announcer.story(5) == ["scheduled->running", "running->completed", "Completed:Completed"]
    assert {m.correlation_id for _, _, m in announcer.published} == {"trace-me"}
    assert p.runs.in_flight == 0 and p.runs.admitted == 0


async def test_the_time_to_the_recorded_end_is_broken_down_at_debug_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    p, store, _announcer, _runner = make()
    store.add(5)
    with caplog.at_level("DEBUG", logger="attune.worker"):
        await handle_dispatch(p, dispatch(5))
    (timing,) = [r for r in caplog.records if r.getMessage() == "execution_timing"]
    fields = timing.attune_fields  # type: ignore[attr-defined]
    spans = {k: v for k, v in fields.items() if k.endswith("_ms")}
    assert set(spans) >= {"claim_ms", "run_ms", "record_ms"}
    assert all(v is None or v >= 0 for v in spans.values())


async def test_a_failed_run_is_recorded_failed() -> None:
    async def fails(*_: Any) -> tuple[str, dict[str, Any]]:
        return "failed", {"succeeded": False, "exit_code": 1, "error": "boom"}

    p, store, announcer, _ = make(runner=FakeRunner(fails))
    store.add(5)
    await handle_dispatch(p, dispatch(5))
    assert store.results[5]["error"] == "boom"
    assert announcer.story(5) == ["scheduled->running", "running->failed", "Completed:Failed"]


async def test_a_run_whose_action_is_gone_fails_without_running() -> None:
    p, store, announcer, runner = make(FakeStore(action=None))
    store.add(5)
    await handle_dispatch(p, dispatch(5))
    assert store.results[5]["error"] == "action demo.add no longer exists"
    assert announcer.story(5)[-1] == "Completed:Failed"
    assert not runner.started.is_set()


async def test_a_timed_out_run_is_recorded_timeout() -> None:
    async def times_out(*_: Any) -> tuple[str, dict[str, Any]]:
        return "timeout", {"succeeded": False, "timed_out": True, "error": "timed out"}

    p, store, announcer, _ = make(runner=FakeRunner(times_out))
    store.add(5)
    await handle_dispatch(p, dispatch(5))
    assert store.status(5) == "timeout"
    assert announcer.story(5) == ["scheduled->running", "running->timeout", "Completed:Timeout"]


async def test_a_cancel_before_the_dispatch_ends_the_run_cancelled_without_starting_it() -> None:
    p, store, announcer, runner = make()
    store.add(5)
    cancelling = cancel(5)
    await handle_cancel(p, cancelling)
    assert cancelling.settled == ["ack"]
    await handle_dispatch(p, dispatch(5))
    assert not runner.started.is_set()
    assert store.status(5) == "cancelled"
    assert store.results[5]["error"] == "Execution cancelled by user"
    assert announcer.story(5) == ["scheduled->running", "running->cancelled", "Completed:Cancelled"]


async def test_a_cancel_during_the_run_reaches_it_and_ends_it_cancelled() -> None:
    p, store, announcer, runner = make(runner=FakeRunner(until_cancelled))
    store.add(5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(handle_dispatch, p, dispatch(5))
        await runner.started.wait()
        assert p.runs.in_flight == 1
        await handle_cancel(p, cancel(5))
    assert store.status(5) == "cancelled"
    assert announcer.story(5)[-1] == "Completed:Cancelled"


async def test_cancel_all_ends_every_live_run_with_the_shutdown_reason() -> None:
    p, store, _announcer, runner = make(runner=FakeRunner(until_cancelled))
    store.add(5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(handle_dispatch, p, dispatch(5))
        await runner.started.wait()
        assert p.runs.cancel_all() == 1
    assert store.results[5]["error"] == SHUTDOWN_REASON
    assert store.status(5) == "cancelled"


async def test_the_result_write_waits_out_a_database_outage(autojump_clock: MockClock) -> None:
    p, store, announcer, _ = make(FakeStore(finish_outages=2))
    store.add(5)
    await handle_dispatch(p, dispatch(5))
    assert store.status(5) == "completed"
    assert announcer.story(5)[-1] == "Completed:Completed"


@pytest.mark.parametrize(
    "error",
    [
        InputError("database rejected the data: unsupported Unicode escape sequence"),
        ValueError("jsonb cannot hold \\u0000"),
        RecursionError("maximum recursion depth exceeded"),
    ],
    ids=["input-error", "value-error", "recursion-error"],
)
async def test_a_result_the_database_refuses_is_replaced_by_a_plain_failure(
    error: Exception,
) -> None:
    p, store, announcer, _ = make(FakeStore(finish_errors=[error]))
    store.add(5)
    await handle_dispatch(p, dispatch(5))
    assert store.status(5) == "failed"
    assert "recording its result" in store.results[5]["error"]
    assert type(error).__name__ in store.results[5]["error"]
    assert announcer.story(5) == ["scheduled->running", "running->failed", "Completed:Failed"]


@pytest.mark.parametrize(
    "error",
    [ValueError("bad json"), RecursionError("deep"), KeyError("x"), OSError(28, "No space")],
    ids=["value", "recursion", "key", "oserror"],
)
async def test_any_error_in_the_run_path_ends_the_claimed_run_failed(error: Exception) -> None:
    async def raises(*_: Any) -> tuple[str, dict[str, Any]]:
        raise error

    p, store, announcer, _ = make(runner=FakeRunner(raises))
    store.add(5)
    delivery = dispatch(5)
    await handle_dispatch(p, delivery)
    assert delivery.settled == ["ack"]
    assert store.status(5) == "failed"
    assert type(error).__name__ in store.results[5]["error"]
    assert announcer.story(5) == ["scheduled->running", "running->failed", "Completed:Failed"]
    assert p.runs.in_flight == 0


async def test_an_unencodable_result_is_replaced_by_a_plain_failure() -> None:
    async def odd(*_: Any) -> tuple[str, dict[str, Any]]:
        return "completed", {"succeeded": True, "value": object()}  # not JSON

    p, store, announcer, _ = make(runner=FakeRunner(odd))
    store.add(5)
    await handle_dispatch(p, dispatch(5))
    assert store.status(5) == "failed"
    assert announcer.story(5)[-1] == "Completed:Failed"


class FlakyBroker:
    """A broker that is down until `up` is set; what it accepted, in order."""

    def __init__(self) -> None:
        self.up = trio.Event()
        self.accepted: list[str] = []

    async def publish(
        self, exchange: str, routing_key: str, message: OutgoingMessage, *, timeout: float = 10
    ) -> None:
        await self.publish_all(exchange, [(routing_key, message)], timeout=timeout)

    async def publish_all(
        self,
        exchange: str,
        messages: Sequence[tuple[str, OutgoingMessage]],
        *,
        timeout: float = 10,
    ) -> None:
        if not self.up.is_set():
            raise TransientError("broker away")
        self.accepted += [routing_key for routing_key, _ in messages]


async def test_a_broker_outage_delays_the_announcements_but_loses_none() -> None:
    broker = FlakyBroker()
    outbox = Outbox(broker)
    p, store, _, _ = make(announcer=outbox)
    store.add(5)
    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        await handle_dispatch(p, dispatch(5))
        assert store.status(5) == "completed"  # the row does not wait for the broker
        assert broker.accepted == [] and len(outbox.pending) == 3
        broker.up.set()
        await outbox.wait_empty()
        nursery.cancel_scope.cancel()
    assert broker.accepted == [
        "execution.status.changed",
        "execution.status.changed",
        "execution.completed",
    ]


async def test_a_full_outbox_counts_and_logs_each_drop(caplog: pytest.LogCaptureFixture) -> None:
    outbox = Outbox(FlakyBroker(), limit=1)
    message = encode_message("ExecutionCancelRequested", ExecutionCancelRequested(execution_id=1))
    await outbox.publish(EXCHANGE_EXECUTIONS, "k", message)
    await outbox.publish(EXCHANGE_EXECUTIONS, "k", message)
    assert len(outbox.pending) == 1 and outbox.dropped == 1
    assert "publish_dropped" in caplog.text


async def test_recovery_records_left_running_rows_abandoned_and_announces_them() -> None:
    p, store, announcer, _ = make()
    store.add(5, "running")
    store.add(6, "completed")
    assert await recover_orphans(p) == 1
    assert store.status(5) == "abandoned" and store.status(6) == "completed"
    assert store.results[5]["abandoned"] is True
    assert announcer.story(5) == ["running->abandoned", "Completed:Abandoned"]


async def test_an_end_someone_else_wrote_first_is_neither_overwritten_nor_announced() -> None:
    async def overtaken(execution: Execution, *_: Any) -> tuple[str, dict[str, Any]]:
        store.rows[5] = msgspec.structs.replace(store.rows[5], status="cancelled")
        return "completed", {"succeeded": True}

    p, store, announcer, _ = make(runner=FakeRunner(overtaken))
    store.add(5)
    await handle_dispatch(p, dispatch(5))
    assert store.status(5) == "cancelled"
    assert announcer.story(5) == ["scheduled->running"]


async def test_the_secret_rows_read_with_the_claim_reach_the_runner() -> None:
    rows = SecretRows(
        stored=[StoredSecret(json_path="/t", encrypted_value="sealed", encryption_key_hash="h")],
        keys=[KeyRecord(id=1, ref="k", owner_type="system", name="k", encrypted=False, value=1)],
    )
    p, store, _announcer, runner = make(FakeStore(secrets=rows))
    store.add(5)
    await handle_dispatch(p, dispatch(5))
    assert runner.secret_rows == [rows]


async def test_the_end_is_handed_over_as_one_ordered_batch_after_the_row_is_terminal() -> None:
    announcer = FakeAnnouncer()
    seen_at_publish: list[str] = []

    class Watching(FakeAnnouncer):
        async def publish_all(
            self, exchange: str, messages: Sequence[tuple[str, OutgoingMessage]]
        ) -> None:
            seen_at_publish.append(store.status(5))
            await announcer.publish_all(exchange, messages)

    p, store, _, _ = make(announcer=Watching())
    store.add(5)
    await handle_dispatch(p, dispatch(5))
    assert announcer.batches == [
        ["execution.status.changed"],
        ["execution.status.changed", "execution.completed"],
    ]
    assert seen_at_publish == ["running", "completed"]  # the end goes out once written


async def test_what_nobody_waits_for_comes_after_the_announced_end() -> None:
    announcer = FakeAnnouncer()
    runner = FakeRunner(announcer=announcer)
    p, store, _, _ = make(runner=runner, announcer=announcer)
    store.add(5)
    await handle_dispatch(p, dispatch(5))
    assert runner.after == [5]
    assert runner.announced_before_after == [
        ["scheduled->running", "running->completed", "Completed:Completed"]
    ]


async def test_what_nobody_waits_for_follows_every_kind_of_end() -> None:
    async def raises(*_: Any) -> tuple[str, dict[str, Any]]:
        raise ValueError("boom")

    runner = FakeRunner(raises)
    p, store, _, _ = make(runner=runner)
    store.add(5)
    await handle_dispatch(p, dispatch(5))
    assert store.status(5) == "failed" and runner.after == [5]


async def test_an_after_end_that_raises_is_logged_and_the_dispatch_still_completes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(FakeRunner):
        async def after_end(self, execution_id: int) -> None:
            raise OSError(28, "No space left on device")

    p, store, announcer, _ = make(runner=Broken())
    store.add(5)
    delivery = dispatch(5)
    await handle_dispatch(p, delivery)
    assert delivery.settled == ["ack"] and store.status(5) == "completed"
    assert announcer.story(5)[-1] == "Completed:Completed"
    assert "the work after its end failed" in caplog.text


async def test_the_run_does_not_wait_for_the_dispatch_ack() -> None:
    class SlowAck(FakeDelivery):
        async def ack(self) -> bool:
            await runner.started.wait()  # settles only once the run has begun
            return await super().ack()

    p, store, _, runner = make()
    store.add(5)
    request = ExecutionRequested(execution_id=5, action_ref="demo.add", worker_id=WORKER_ID)
    delivery = SlowAck(encode_message("ExecutionRequested", request).body)
    with trio.fail_after(5):
        await handle_dispatch(p, delivery)
    assert delivery.settled == ["ack"] and store.status(5) == "completed"


async def test_a_batch_the_broker_cannot_confirm_is_kept_whole_and_in_order() -> None:
    broker = FlakyBroker()
    outbox = Outbox(broker)
    first = encode_message("ExecutionCancelRequested", ExecutionCancelRequested(execution_id=1))
    await outbox.publish(EXCHANGE_EXECUTIONS, "a", first)
    await outbox.publish_all(EXCHANGE_EXECUTIONS, [("b", first), ("c", first)])
    assert [key for _, key, _ in outbox.pending] == ["a", "b", "c"]
    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run)
        broker.up.set()
        await outbox.wait_empty()
        nursery.cancel_scope.cancel()
    assert broker.accepted == ["a", "b", "c"]
