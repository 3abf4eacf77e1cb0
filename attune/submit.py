"""Scheduling an execution the way the reference executor does (for operators and tests).

The executor owns `requested -> scheduling -> scheduled`; `attune submit` compresses that
into one step: pick a healthy worker with the runtime (least loaded first), insert the
execution as `scheduled` on it, and publish `ExecutionRequested` to its routing key.
Then, for `--wait` and `attune executions logs --follow`, the row is polled until it is
terminal while the worker's live log files are tailed (`follow_execution`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from attune.artifacts import ArtifactStore
from attune.broker import Broker
from attune.db import Database
from attune.errors import InputError, TransientError
from attune.lifecycle import is_terminal
from attune.messages import (
    EXCHANGE_EXECUTIONS,
    ExecutionRequested,
    dispatch_routing_key,
    encode_message,
)
from attune.models import Execution, Worker
from attune.params import apply_schema


async def schedule(
    db: Database,
    broker: Broker,
    action_ref: str,
    params: dict[str, Any],
    *,
    timeout_seconds: int | None = None,
    env_vars: dict[str, Any] | None = None,
    encryption_key: str | None = None,
) -> tuple[int, Worker]:
    """Schedule like the executor; parameters marked `secret: true` are sealed like the
    API does (markers in `execution.config`, AES-GCM values in `execution_secret_value`),
    so a submitted secret is never stored in plain text."""
    action = await db.get_action(action_ref)
    if action is None:
        raise InputError(f"no action {action_ref!r} (load its pack with `attune pack load`)")
    params = apply_schema(action.param_schema, params)
    from attune.secrets import seal_secret_params, sealable_paths

    sealed: list[Any] = []
    if sealable_paths(params, action.param_schema):
        if not encryption_key:
            raise InputError(
                f"action {action_ref} has secret parameters: set "
                "security.encryption_key (ATTUNE__SECURITY__ENCRYPTION_KEY) "
                "to submit them sealed"
            )
        params, sealed = seal_secret_params(params, action.param_schema, encryption_key)
    runtime = action.runtime_name or ""
    egress = action.network == "egress"
    worker = await db.pick_worker(runtime, egress=egress)
    if worker is None:
        offering = " and offers egress (network.egress: true)" if egress else ""
        raise TransientError(
            f"no healthy worker runs {runtime!r}{offering} (start `attune run-worker`)"
        )
    execution_id = await db.create_execution(
        action,
        config=params,
        worker_id=worker.id,
        timeout_seconds=timeout_seconds,
        env_vars=env_vars,
    )
    if sealed:
        await db.put_execution_secrets(execution_id, sealed)
    request = ExecutionRequested(
        execution_id=execution_id, action_ref=action.ref, worker_id=worker.id
    )
    message = encode_message("ExecutionRequested", request, source_service="executor")
    await broker.publish(EXCHANGE_EXECUTIONS, dispatch_routing_key(worker.id), message)
    return execution_id, worker


async def wait_terminal(
    db: Database, execution_id: int, *, timeout: float, poll: float = 0.05
) -> Execution:
    """Poll the source of truth until the execution is terminal."""
    with trio.move_on_after(timeout):
        while True:
            row = await db.get_execution(execution_id)
            if row is not None and is_terminal(row.status):
                return row
            await trio.sleep(poll)
    raise TransientError(f"execution {execution_id} did not finish within {timeout:g}s")


class LogTail:
    """The bytes an execution's `stdout.log` / `stderr.log` gained since the last read.

    The worker appends to these files while the action runs (artifacts.py), so following
    them is how a client on the worker's host sees output live. Files are opened with
    O_NOFOLLOW and read in bounded pieces; a file that shrank is read again from the start.
    """

    STREAMS = ("stdout", "stderr")
    MAX_READ = 1024 * 1024

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.offsets = dict.fromkeys(self.STREAMS, 0)

    def read_new(self) -> list[tuple[str, bytes]]:
        chunks = []
        for stream in self.STREAMS:
            try:
                fd = os.open(
                    self.directory / f"{stream}.log", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                )
            except OSError:
                continue  # not created yet, or not on this host
            try:
                if os.fstat(fd).st_size < self.offsets[stream]:
                    self.offsets[stream] = 0
                data = os.pread(fd, self.MAX_READ, self.offsets[stream])
            finally:
                os.close(fd)
            if data:
                self.offsets[stream] += len(data)
                chunks.append((stream, data))
        return chunks

    def drain(self) -> list[tuple[str, bytes]]:
        """Everything left, however much (the run has ended, the files are final)."""
        out: list[tuple[str, bytes]] = []
        while chunks := self.read_new():
            out += chunks
        return out


def execution_dir(artifacts_dir: Path, worker_name: str, execution_id: int) -> Path:
    """`{artifacts_dir}/{worker_name}/execution_{id}`, the worker's artifact layout."""
    return ArtifactStore(artifacts_dir, worker_name).path_for(execution_id)


async def worker_name(db: Database, worker_id: int | None) -> str | None:
    if worker_id is None:
        return None
    return next((w.name for w in await db.list_workers() if w.id == worker_id), None)


async def follow_execution(
    db: Database,
    execution_id: int,
    artifacts_dir: Path,
    on_output: Callable[[str, bytes], None],
    *,
    timeout: float,
    poll: float = 0.1,
    on_poll: Callable[[Execution], None] | None = None,
) -> Execution:
    """Poll the row until it is terminal, passing new log bytes to `on_output` meanwhile.

    The worker closes the logs before it writes the terminal status, so the final drain
    after the row turns terminal delivers the whole output. Logs of a worker on another
    host are simply not there: the result is still returned.
    """
    tail: LogTail | None = None
    with trio.move_on_after(timeout):
        while True:
            row = await db.get_execution(execution_id)
            if row is None:
                raise InputError(f"no execution {execution_id}")
            if tail is None and row.worker is not None:
                name = await worker_name(db, row.worker)
                if name is not None:
                    tail = LogTail(execution_dir(artifacts_dir, name, execution_id))
            done = is_terminal(row.status)
            if tail is not None:
                for stream, chunk in tail.drain() if done else tail.read_new():
                    on_output(stream, chunk)
            if done:
                return row
            if on_poll is not None:
                on_poll(row)
            await trio.sleep(poll)
    raise TransientError(f"execution {execution_id} did not finish within {timeout:g}s")
