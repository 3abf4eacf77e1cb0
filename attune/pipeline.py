"""One execution from dispatch to completion: the only place that walks the steps.

    decode -> claim (CAS scheduled->running) -> ack -> publish running -> resolve code
    -> run in the sandbox -> store artifacts -> write result (CAS from running)
    -> publish terminal status -> publish ExecutionCompleted

Every write is a compare-and-set, so a redelivered or duplicated dispatch never runs
an execution twice. A database outage delays the result write (retried with backoff);
a broker outage delays the status messages (the outbox retries them); neither loses
the outcome, which is also in the artifacts directory.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import trio

from attune.artifacts import ArtifactStore
from attune.broker import Broker, Delivery
from attune.config import Config
from attune.db import Database
from attune.errors import AttuneError, ExecutionError, MessageError, TransientError
from attune.log import log_event
from attune.messages import (
    EXCHANGE_EXECUTIONS,
    ExecutionCompleted,
    ExecutionStatusChanged,
    OutgoingMessage,
    decode_cancel,
    decode_dispatch,
    encode_message,
)
from attune.metrics import Metrics
from attune.models import Action, Execution
from attune.packs import read_code, resolve_code
from attune.params import context_env
from attune.runner.profiles import Profile
from attune.runner.sandbox import RunControl, RunSpec, Sandbox
from attune.secrets import OutputGuard, RunSecrets, load_run_secrets
from attune.states import completed_status_name, status_value

log = logging.getLogger("attune.worker")
T = TypeVar("T")

ROUTING_STATUS = "execution.status.changed"
ROUTING_COMPLETED = "execution.completed"
RUNTIME_ALIASES = {"python3": "python", "py": "python", "bash": "shell", "sh": "shell"}
SHUTDOWN_REASON = "Execution cancelled: the worker shut down before it finished"


class Outbox:
    """Publishes now, or keeps the message and retries once the broker is back."""

    def __init__(self, broker: Broker, *, limit: int = 100_000) -> None:
        self.broker = broker
        self.pending: list[tuple[str, str, OutgoingMessage]] = []
        self.limit = limit
        self.wakeup = trio.Event()

    async def publish(self, exchange: str, routing_key: str, message: OutgoingMessage) -> None:
        if not self.pending:
            try:
                await self.broker.publish(exchange, routing_key, message, timeout=10)
                return
            except TransientError as exc:
                log_event(log, "publish_deferred", logging.WARNING, reason=str(exc))
        if len(self.pending) < self.limit:
            self.pending.append((exchange, routing_key, message))
            self.wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drain the pending messages in order, pausing while the broker is away."""
        task_status.started()
        while True:
            await self.wakeup.wait()
            self.wakeup = trio.Event()
            while self.pending:
                exchange, routing_key, message = self.pending[0]
                try:
                    await self.broker.publish(exchange, routing_key, message, timeout=30)
                except TransientError:
                    await trio.sleep(1)
                    continue
                self.pending.pop(0)


class SlotPool:
    """The capacity limiter plus a slot number per run (slot -> sandbox host uid)."""

    def __init__(self, capacity: int) -> None:
        self.limiter = trio.CapacityLimiter(capacity)
        self.free = list(range(capacity - 1, -1, -1))


@dataclass
class WorkerContext:
    config: Config
    db: Database
    broker: Broker
    sandbox: Sandbox
    profiles: dict[str, Profile]
    artifacts: ArtifactStore
    outbox: Outbox
    slots: SlotPool
    worker_id: int
    worker_name: str
    runs: dict[int, RunControl] = field(default_factory=dict)
    early_cancels: dict[int, float] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)


async def with_db_retry(what: str, fn: Callable[[], Awaitable[T]]) -> T:
    """Retry a unit of DB work across an outage, backing off up to 30 s; cancellable."""
    delay = 0.5
    while True:
        try:
            return await fn()
        except TransientError as exc:
            log_event(log, "db_retry", logging.WARNING, what=what, reason=str(exc), retry_in=delay)
            await trio.sleep(delay)
            delay = min(delay * 2, 30.0)


def _now() -> datetime:
    return datetime.now(UTC)


async def publish_status(
    ctx: WorkerContext,
    execution_id: int,
    action_ref: str,
    previous: str,
    new: str,
    correlation_id: str | None,
) -> None:
    payload = ExecutionStatusChanged(
        execution_id=execution_id,
        action_ref=action_ref,
        previous_status=status_value(previous),
        new_status=status_value(new),
        changed_at=_now(),
    )
    message = encode_message("ExecutionStatusChanged", payload, correlation_id=correlation_id)
    await ctx.outbox.publish(EXCHANGE_EXECUTIONS, ROUTING_STATUS, message)


async def publish_completed(
    ctx: WorkerContext,
    execution: Execution,
    status: str,
    result: dict[str, Any],
    correlation_id: str | None,
) -> None:
    payload = ExecutionCompleted(
        execution_id=execution.id,
        action_id=execution.action,
        action_ref=execution.action_ref,
        status=completed_status_name(status),
        result=result,
        completed_at=_now(),
    )
    message = encode_message("ExecutionCompleted", payload, correlation_id=correlation_id)
    await ctx.outbox.publish(EXCHANGE_EXECUTIONS, ROUTING_COMPLETED, message)


async def finish(
    ctx: WorkerContext,
    execution: Execution,
    status: str,
    result: dict[str, Any],
    correlation_id: str | None,
    *,
    from_status: str = "running",
) -> bool:
    """Write the terminal state (CAS) and announce it; False if someone else ended it."""
    written = await with_db_retry(
        f"finish execution {execution.id}",
        lambda: ctx.db.finish_execution(execution.id, status, result, from_statuses=(from_status,)),
    )
    if not written:
        log_event(
            log,
            "finish_skipped",
            logging.WARNING,
            execution_id=execution.id,
            reason=f"execution is no longer {from_status}; not overwritten",
        )
        return False
    await publish_status(
        ctx, execution.id, execution.action_ref, from_status, status, correlation_id
    )
    await publish_completed(ctx, execution, status, result, correlation_id)
    return True


def runtime_of(action: Action) -> str:
    """The profile name for an action's runtime row (name or alias, any case)."""
    runtime = (action.runtime_name or "").lower()
    return RUNTIME_ALIASES.get(runtime, runtime)


def build_spec(
    ctx: WorkerContext, execution: Execution, action: Action, secrets: RunSecrets
) -> tuple[RunSpec, float]:
    """Resolve code, profile, parameters and timeout; ExecutionError when it cannot run."""
    runtime = runtime_of(action)
    profile = ctx.profiles.get(runtime)
    if profile is None:
        known = ", ".join(sorted(ctx.profiles))
        raise ExecutionError(
            f"unknown runtime {action.runtime_name!r} for action "
            f"{action.ref}; this worker runs: {known}"
        )
    resolved = resolve_code(
        Path(ctx.config.packs_base_dir), action.pack_ref, action.entrypoint, runtime
    )
    if resolved.path is not None:
        code, code_name = read_code(resolved.path), resolved.path.name
    else:
        code, code_name = (resolved.inline or "").encode(), "inline.sh"
    params = secrets.params  # execution.config with the secret markers restored (§8)
    env = context_env(
        exec_id=execution.id,
        action_ref=action.ref,
        pack_ref=action.pack_ref,
        delivery=action.parameter_delivery,
        fmt=action.parameter_format,
        env_vars=execution.env_vars,
    )
    timeout = next(
        (
            t
            for t in (
                execution.timeout_seconds,
                action.timeout_seconds,
                ctx.config.worker.task_timeout,
            )
            if t and t > 0
        ),
        300,
    )
    spec = RunSpec(
        profile=profile,
        code=code,
        code_name=code_name,
        params=params,
        env=env,
        parameter_delivery=action.parameter_delivery,
        parameter_format=action.parameter_format,
        output_format=action.output_format,  # type: ignore[arg-type]
        label=f"execution-{execution.id}",
        secrets=secrets.keystore,
    )
    return spec, float(timeout)


async def run_claimed(
    ctx: WorkerContext, execution: Execution, action: Action | None, control: RunControl, slot: int
) -> tuple[str, dict[str, Any]]:
    if action is None:
        return "failed", {
            "succeeded": False,
            "error": f"action {execution.action_ref} no longer exists",
        }
    try:
        secrets = await with_db_retry(
            f"load secrets of execution {execution.id}",
            lambda: load_run_secrets(ctx.db, execution, action, ctx.config.security.encryption_key),
        )
        spec, timeout = build_spec(ctx, execution, action, secrets)
    except AttuneError as exc:
        return "failed", {"succeeded": False, "error": str(exc)}
    if secrets.too_short:
        log_event(
            log,
            "secret_too_short_to_mask",
            logging.WARNING,
            execution_id=execution.id,
            sources=",".join(secrets.too_short),
        )
    if control.reason is not None:  # cancelled before it started
        return "cancelled", {
            "succeeded": False,
            "cancelled": True,
            "exit_code": -1,
            "duration_ms": 0,
            "error": control.reason,
        }
    artifacts = ctx.artifacts.open_run(execution.id)
    try:
        # Output, result and log lines of the run pass through the masker (secrets §8).
        async with OutputGuard(
            secrets.masker, artifacts.write, action.out_schema, artifacts.directory
        ) as guard:
            outcome = await ctx.sandbox.run(
                spec, timeout=timeout, slot=slot, control=control, on_output=guard.write
            )
            result = await guard.redact(outcome.result)
            await trio.to_thread.run_sync(artifacts.write_result, outcome.status, result)
    except AttuneError as exc:
        return "failed", {"succeeded": False, "error": secrets.masker.text(str(exc))}
    finally:
        artifacts.close()
    return outcome.status, result


async def dead_letter(
    ctx: WorkerContext, delivery: Delivery, queue: str, event: str, reason: str
) -> None:
    """A body we cannot use: one log line, then nack without requeue (to attune.dlx)."""
    log_event(log, event, logging.WARNING, delivery_tag=delivery.delivery_tag, reason=reason)
    ctx.metrics.message_dead_lettered(queue, "undecodable")
    await delivery.nack(requeue=False)


async def handle_dispatch(ctx: WorkerContext, delivery: Delivery) -> None:
    """Everything about one dispatch message; never raises for bad input."""
    try:
        envelope, request = decode_dispatch(delivery.body)
    except MessageError as exc:
        await dead_letter(ctx, delivery, "executions", "dispatch_rejected", str(exc))
        return
    execution_id = request.execution_id
    try:
        claim = await ctx.db.claim_execution(execution_id, ctx.worker_id)
    except TransientError as exc:
        log_event(
            log, "claim_deferred", logging.WARNING, execution_id=execution_id, reason=str(exc)
        )
        await trio.sleep(1)
        await delivery.nack(requeue=True)
        return
    except AttuneError as exc:  # the row cannot be read as an execution: fail it
        log_event(log, "claim_failed", logging.WARNING, execution_id=execution_id, reason=str(exc))
        invalid = {"succeeded": False, "error": f"invalid execution: {exc}"}
        await with_db_retry(
            f"fail execution {execution_id}",
            lambda: ctx.db.finish_execution(
                execution_id, "failed", invalid, from_statuses=("scheduled",)
            ),
        )
        await delivery.ack()
        return
    if claim.status is None or claim.execution is None:
        log_event(
            log,
            "dispatch_rejected",
            logging.WARNING,
            execution_id=execution_id,
            reason="no such execution",
        )
        ctx.metrics.message_dead_lettered("executions", "no_such_execution")
        await delivery.nack(requeue=False)
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
    await delivery.ack()
    execution = claim.execution
    corr = envelope.correlation_id
    log_event(
        log,
        "execution_started",
        execution_id=execution_id,
        action_ref=execution.action_ref,
        worker=ctx.worker_name,
        status="running",
    )
    control = RunControl()
    ctx.runs[execution_id] = control
    if ctx.early_cancels.pop(execution_id, None) is not None:
        control.cancel()
    slot = ctx.slots.free.pop()
    began = trio.current_time()
    try:
        # The `running` announcement overlaps the sandbox start-up; the terminal
        # messages wait for it, so consumers still see running -> terminal -> completed.
        async with trio.open_nursery() as announcing:
            announcing.start_soon(
                publish_status,
                ctx,
                execution_id,
                execution.action_ref,
                "scheduled",
                "running",
                corr,
            )
            status, result = await run_claimed(ctx, execution, claim.action, control, slot)
    finally:
        ctx.slots.free.append(slot)
        ctx.runs.pop(execution_id, None)
    runtime = runtime_of(claim.action) if claim.action else ""
    ctx.metrics.execution_finished(
        runtime if runtime in ctx.profiles else "other", status, result, trio.current_time() - began
    )
    log_event(
        log,
        "execution_finished",
        execution_id=execution_id,
        action_ref=execution.action_ref,
        worker=ctx.worker_name,
        status=status,
        duration_ms=result.get("duration_ms"),
        error=result.get("error") if status != "completed" else None,
    )
    with trio.CancelScope(shield=True):
        with trio.move_on_after(ctx.config.worker.shutdown_timeout + 30):
            await finish(ctx, execution, status, result, corr)


async def handle_cancel(ctx: WorkerContext, delivery: Delivery) -> None:
    try:
        _, request = decode_cancel(delivery.body)
    except MessageError as exc:
        await dead_letter(ctx, delivery, "cancel", "cancel_rejected", str(exc))
        return
    control = ctx.runs.get(request.execution_id)
    if control is not None:
        control.cancel()
        log_event(log, "execution_cancel_requested", execution_id=request.execution_id)
    else:
        # Before its dispatch: remembered (bounded) and applied when it arrives.
        ctx.early_cancels[request.execution_id] = trio.current_time()
        if len(ctx.early_cancels) > 10_000:
            oldest = min(ctx.early_cancels, key=ctx.early_cancels.__getitem__)
            ctx.early_cancels.pop(oldest)
        log_event(log, "execution_cancel_remembered", execution_id=request.execution_id)
    await delivery.ack()


async def recover_orphans(ctx: WorkerContext) -> int:
    """Executions this worker left `running` when it died end `abandoned`, announced."""
    orphans = await ctx.db.orphaned_executions(ctx.worker_id)
    for execution in orphans:
        result = {
            "succeeded": False,
            "abandoned": True,
            "error": "Execution abandoned: the worker stopped while it was running "
            "(worker died or was killed); it was not run to completion",
        }
        if await finish(ctx, execution, "abandoned", result, None):
            log_event(
                log,
                "execution_abandoned",
                logging.WARNING,
                execution_id=execution.id,
                action_ref=execution.action_ref,
                status="abandoned",
            )
    return len(orphans)
