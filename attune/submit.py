"""Scheduling an execution the way the reference executor does (for operators and tests).

The executor owns `requested -> scheduling -> scheduled`; `attune submit` compresses that
into one step: pick a healthy worker with the runtime (least loaded first), insert the
execution as `scheduled` on it, and publish `ExecutionRequested` to its routing key.
"""

from __future__ import annotations

from typing import Any

import trio

from attune.broker import Broker
from attune.db import Database
from attune.errors import InputError, TransientError
from attune.messages import (
    EXCHANGE_EXECUTIONS,
    ExecutionRequested,
    dispatch_routing_key,
    encode_message,
)
from attune.models import Execution, Worker
from attune.params import apply_schema
from attune.states import TERMINAL


async def schedule(
    db: Database,
    broker: Broker,
    action_ref: str,
    params: dict[str, Any],
    *,
    timeout_seconds: int | None = None,
    env_vars: dict[str, Any] | None = None,
) -> tuple[int, Worker]:
    action = await db.get_action(action_ref)
    if action is None:
        raise InputError(f"no action {action_ref!r} (load its pack with `attune pack load`)")
    params = apply_schema(action.param_schema, params)
    runtime = action.runtime_name or ""
    worker = await db.pick_worker(runtime)
    if worker is None:
        raise TransientError(f"no healthy worker runs {runtime!r} (start `attune run-worker`)")
    execution_id = await db.create_execution(action, config=params, worker_id=worker.id,
                                             timeout_seconds=timeout_seconds, env_vars=env_vars)
    request = ExecutionRequested(execution_id=execution_id, action_ref=action.ref,
                                 worker_id=worker.id)
    message = encode_message("ExecutionRequested", request, source_service="executor")
    await broker.publish(EXCHANGE_EXECUTIONS, dispatch_routing_key(worker.id), message)
    return execution_id, worker


async def wait_terminal(db: Database, execution_id: int, *, timeout: float,
                        poll: float = 0.05) -> Execution:
    """Poll the source of truth until the execution is terminal."""
    with trio.move_on_after(timeout):
        while True:
            row = await db.get_execution(execution_id)
            if row is not None and row.status in {s.value for s in TERMINAL}:
                return row
            await trio.sleep(poll)
    raise TransientError(f"execution {execution_id} did not finish within {timeout:g}s")
