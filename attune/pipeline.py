"""One execution from dispatch to its recorded end: the only place that walks the steps.

    decode -> claim (CAS scheduled -> running, with the action and secret rows)
    -> ack and announce running, both while the run starts -> run (Runner)
    -> record the end (CAS from running) -> announce it -> what nobody waits for

Every status write is a `lifecycle.transition()` handed to the store, and every write
that lands is announced through the same `record()`, so each end is written once and
announced the same way (docs/protocol.md §5, "Execution lifecycle"). A redelivered or
duplicated dispatch never runs an execution twice (the claim is a compare-and-set). A
database outage delays a write (retried with backoff); a broker outage delays the
announcements (the outbox keeps them). Once an execution is claimed, nothing leaves it
`running`: an unexpected error anywhere in the run or the recording ends it `failed`.

The functions take narrow interfaces (`ExecutionStore`, `Announcer`, `Runner`) bundled
in `Pipeline`, so unit tests drive every branch with small in-memory fakes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import trio

from attune.errors import AttuneError, MessageError, TransientError, UnreadableExecution
from attune.jsonsafe import heavier_than
from attune.lifecycle import (
    SUBMITTED,
    Announcement,
    Event,
    ExecutionRef,
    ExecutionStatus,
    Transition,
    abandoned,
    cancelled_before_start,
    internal_failure,
    outcome_event,
    rejected,
    transition,
)
from attune.log import log_event
from attune.messages import (
    EXCHANGE_EXECUTIONS,
    OutgoingMessage,
    decode_cancel,
    decode_dispatch,
    encode_message,
)
from attune.metrics import Metrics
from attune.models import Action, Claim, Execution
from attune.retry import with_db_retry
from attune.runner.supervise import RunControl
from attune.runs import Runs
from attune.secrets.records import SecretRows

log = logging.getLogger("attune.worker")


# --- the narrow interfaces ------------------------------------------------------------


class Delivery(Protocol):
    """A message taken off a queue (attune.broker.Delivery is one)."""

    @property
    def body(self) -> bytes: ...
    @property
    def delivery_tag(self) -> int: ...
    async def ack(self) -> bool: ...
    async def nack(self, *, requeue: bool) -> bool: ...


class ExecutionStore(Protocol):
    """The execution rows (attune.db.Database is one); writes take lifecycle transitions."""

    async def claim_execution(self, execution_id: int, worker_id: int, step: Transition) -> Claim:
        """Raises TransientError in an outage, UnreadableExecution for a bad row."""

    async def finish_execution(
        self, execution_id: int, step: Transition, result: dict[str, Any]
    ) -> bool: ...
    async def orphaned_executions(self, worker_id: int) -> list[Execution]: ...


class Announcer(Protocol):
    """Where announcements go (attune.outbox.Outbox is one); waits out broker outages."""

    async def publish_all(
        self, exchange: str, messages: Sequence[tuple[str, OutgoingMessage]]
    ) -> None:
        """In this order; sent back to back, their confirms awaited together."""


class Runner(Protocol):
    """Runs one claimed execution (attune.launcher.Launcher is one)."""

    def runtime_label(self, action: Action | None) -> str: ...
    async def run(
        self,
        execution: Execution,
        action: Action,
        control: RunControl,
        slot: int,
        *,
        secret_rows: SecretRows | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """(outcome word, result): completed, failed, timeout or cancelled.

        `secret_rows` were read with the claim (None: the runner reads them).
        """

    async def after_end(self, execution_id: int) -> None:
        """What the run leaves that nobody waits for (its result.json): called once its
        end is recorded and announced, or given up on. Never raises."""


@dataclass
class Pipeline:
    """What handling an execution needs, and nothing else."""

    store: ExecutionStore
    announcer: Announcer
    runner: Runner
    runs: Runs
    worker_id: int
    worker_name: str
    record_timeout: float = 60.0  # bound on recording an end once the run is over
    metrics: Metrics = field(default_factory=Metrics)


def _now() -> datetime:
    return datetime.now(UTC)


def ref_of(execution: Execution) -> ExecutionRef:
    return ExecutionRef(execution.id, execution.action, execution.action_ref)


# --- recording: every status write that lands is announced here ------------------------


def _encode(
    announcements: tuple[Announcement, ...], correlation_id: str | None
) -> list[tuple[str, OutgoingMessage]]:
    return [
        (a.routing_key, encode_message(a.message_type, a.payload, correlation_id=correlation_id))
        for a in announcements
    ]


async def announce(
    p: Pipeline, messages: list[tuple[str, OutgoingMessage]], execution_id: int
) -> None:
    """Hand the messages to the announcer in order; an error is logged, never raised.

    An end's status change and its completion go together: the announcer sends them
    back to back and waits for both confirms at once (the channel keeps their order).
    """
    try:
        await p.announcer.publish_all(EXCHANGE_EXECUTIONS, messages)
    except Exception as exc:  # the row is written; the worker must keep going
        log_event(
            log,
            "announce_failed",
            logging.ERROR,
            execution_id=execution_id,
            routing_key=",".join(key for key, _ in messages),
            reason=f"{type(exc).__name__}: {exc}",
        )


async def record(
    p: Pipeline,
    step: Transition,
    ref: ExecutionRef,
    result: dict[str, Any],
    correlation_id: str | None,
) -> bool:
    """Write an end (CAS) and announce it; False if the row had already left `cas_from`.

    The messages are built before the write, so a result that cannot be announced
    raises before anything is recorded and the caller can record a plainer one.
    """
    announcements = step.announcements(ref, result, _now())
    if heavier_than(result, values=2000, chars=256 * 1024):
        # Encoding a result of tens of MB takes hundreds of ms: off the trio thread.
        messages = await trio.to_thread.run_sync(_encode, announcements, correlation_id)
    else:
        messages = _encode(announcements, correlation_id)
    written = await with_db_retry(
        f"record execution {ref.id} {step.new}",
        lambda: p.store.finish_execution(ref.id, step, result),
    )
    if not written:
        log_event(
            log,
            "finish_skipped",
            logging.WARNING,
            execution_id=ref.id,
            reason=f"execution is no longer {'/'.join(step.cas_from)}; not overwritten",
        )
        return False
    await announce(p, messages, ref.id)
    return True


async def end_run(
    p: Pipeline, ref: ExecutionRef, outcome: str, result: dict[str, Any], corr: str | None
) -> bool:
    """Record a claimed run's end; if that fails unexpectedly, record it `failed` instead.

    Only if the plain `failed` cannot be written either (the database refuses it, not
    an outage) does the row stay `running`; the log says so, and the next start of this
    worker records it `abandoned`.
    """
    try:
        step = transition(ExecutionStatus.RUNNING, outcome_event(outcome))
        return await record(p, step, ref, result, corr)
    except Exception as exc:
        log.exception("execution %s: recording its end failed; recording it failed", ref.id)
        fallback = internal_failure(exc, "recording its result")
    try:
        return await record(p, transition(ExecutionStatus.RUNNING, Event.FAIL), ref, fallback, corr)
    except Exception:
        log.exception("execution %s: cannot record any end; left running until restart", ref.id)
        return False


# --- the dispatch --------------------------------------------------------------------


async def dead_letter(
    p: Pipeline, delivery: Delivery, queue: str, event: str, reason: str, why: str
) -> None:
    """A message we cannot use: one log line, then nack without requeue (to attune.dlx)."""
    log_event(log, event, logging.WARNING, delivery_tag=delivery.delivery_tag, reason=reason)
    p.metrics.message_dead_lettered(queue, why)
    await delivery.nack(requeue=False)


async def reject_unreadable(
    p: Pipeline, exc: AttuneError, execution_id: int, corr: str | None
) -> None:
    """A dispatched row that cannot be read can never run: record it `failed`, announced."""
    log_event(log, "claim_failed", logging.WARNING, execution_id=execution_id, reason=str(exc))
    if isinstance(exc, UnreadableExecution):
        ref = ExecutionRef(exc.execution_id, exc.action_id, exc.action_ref)
    else:
        ref = ExecutionRef(execution_id, None, "")
    await record(p, transition(SUBMITTED, Event.REJECT), ref, rejected(str(exc)), corr)


async def handle_dispatch(p: Pipeline, delivery: Delivery) -> None:
    """Everything about one dispatch message; never raises for bad input."""
    received = trio.current_time()
    try:
        envelope, request = decode_dispatch(delivery.body)
    except MessageError as exc:
        await dead_letter(p, delivery, "executions", "dispatch_rejected", str(exc), "undecodable")
        return
    execution_id, corr = request.execution_id, envelope.correlation_id
    claiming = transition(SUBMITTED, Event.CLAIM)
    try:
        claim = await p.store.claim_execution(execution_id, p.worker_id, claiming)
    except TransientError as exc:
        log_event(
            log, "claim_deferred", logging.WARNING, execution_id=execution_id, reason=str(exc)
        )
        await trio.sleep(1)
        await delivery.nack(requeue=True)
        return
    except AttuneError as exc:  # the row cannot be read as an execution
        await reject_unreadable(p, exc, execution_id, corr)
        await delivery.ack()
        return
    if claim.status is None or claim.execution is None:
        reason = "no such execution"
        await dead_letter(
            p, delivery, "executions", "dispatch_rejected", reason, "no_such_execution"
        )
        return
    if not claim.claimed:
        log_event(
            log,
            "dispatch_ignored",
            execution_id=execution_id,
            status=claim.status,
            reason="execution is not scheduled; not run again",
        )
        await delivery.ack()
        return
    async with trio.open_nursery() as settling:
        # The claim is committed, so the message has done its job: its ack (never
        # raising; a lost one only brings a redelivery the claim refuses) need not
        # hold up the run.
        settling.start_soon(delivery.ack)
        await run_claimed(
            p,
            claiming,
            claim.execution,
            claim.action,
            corr,
            received=received,
            secret_rows=claim.secrets,
        )


async def run_claimed(
    p: Pipeline,
    claiming: Transition,
    execution: Execution,
    action: Action | None,
    corr: str | None,
    *,
    received: float | None = None,
    secret_rows: SecretRows | None = None,
) -> None:
    """Run a claimed execution and record its end, whatever happens on the way.

    Only then comes what nobody waits for (`Runner.after_end`): the answer is out first.
    """
    ref = ref_of(execution)
    log_event(
        log,
        "execution_started",
        execution_id=ref.id,
        action_ref=ref.action_ref,
        worker=p.worker_name,
        status=claiming.new.value,
    )
    began = trio.current_time()
    with p.runs.run(ref.id) as (control, slot):
        try:
            running = _encode(claiming.announcements(ref, None, _now()), corr)
            # The `running` announcement overlaps the sandbox start-up; the end's messages
            # wait for it, so consumers still see running -> end -> completed.
            async with trio.open_nursery() as announcing:
                announcing.start_soon(announce, p, running, ref.id)
                outcome, result = await _outcome(p, execution, action, control, slot, secret_rows)
        except Exception as exc:  # last resort: nothing may leave a claimed run `running`
            log.exception("execution %s: unexpected error while running", ref.id)
            outcome, result = "failed", internal_failure(exc, "running it")
    p.metrics.execution_finished(
        p.runner.runtime_label(action), outcome, result, trio.current_time() - began
    )
    log_event(
        log,
        "execution_finished",
        execution_id=ref.id,
        action_ref=ref.action_ref,
        worker=p.worker_name,
        status=outcome,
        duration_ms=result.get("duration_ms"),
        error=result.get("error") if outcome != "completed" else None,
    )
    ran = trio.current_time()
    with trio.CancelScope(shield=True):
        with trio.move_on_after(p.record_timeout):
            await end_run(p, ref, outcome, result, corr)
        recorded = trio.current_time()
        try:
            await p.runner.after_end(ref.id)
        except Exception:  # it promises not to raise; the run is recorded either way
            log.exception("execution %s: the work after its end failed", ref.id)
    # Where the time between the dispatch and the announced end went (debug level);
    # after_ms is spent once the answer is out.
    log_event(
        log,
        "execution_timing",
        logging.DEBUG,
        execution_id=ref.id,
        claim_ms=_ms(began - received) if received is not None else None,
        run_ms=_ms(ran - began),
        in_sandbox_ms=result.get("duration_ms"),
        record_ms=_ms(recorded - ran),
        after_ms=_ms(trio.current_time() - recorded),
    )


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


async def _outcome(
    p: Pipeline,
    execution: Execution,
    action: Action | None,
    control: RunControl,
    slot: int,
    secret_rows: SecretRows | None,
) -> tuple[str, dict[str, Any]]:
    if action is None:
        return "failed", {
            "succeeded": False,
            "error": f"action {execution.action_ref} no longer exists",
        }
    if control.reason is not None:  # a cancel arrived before the dispatch
        return "cancelled", cancelled_before_start(control.reason)
    return await p.runner.run(execution, action, control, slot, secret_rows=secret_rows)


# --- cancels and recovery ------------------------------------------------------------


async def handle_cancel(p: Pipeline, delivery: Delivery) -> None:
    """A cancel request: reaches the live run, or waits for the run's dispatch."""
    try:
        _, request = decode_cancel(delivery.body)
    except MessageError as exc:
        await dead_letter(p, delivery, "cancel", "cancel_rejected", str(exc), "undecodable")
        return
    if p.runs.cancel(request.execution_id):
        log_event(log, "execution_cancel_requested", execution_id=request.execution_id)
    else:
        log_event(log, "execution_cancel_remembered", execution_id=request.execution_id)
    await delivery.ack()


async def recover_orphans(p: Pipeline) -> int:
    """Executions this worker left `running` when it died end `abandoned`, announced."""
    orphans = await p.store.orphaned_executions(p.worker_id)
    for execution in orphans:
        step = transition(execution.status, Event.ABANDON)
        if await record(p, step, ref_of(execution), abandoned(), None):
            log_event(
                log,
                "execution_abandoned",
                logging.WARNING,
                execution_id=execution.id,
                action_ref=execution.action_ref,
                status=step.new.value,
            )
    return len(orphans)
