"""The worker's task tree, all of it visible here.

    run_worker
    ├── signals                       first SIGTERM/SIGINT: drain; second: cancel runs now
    └── services nursery (after register, topology, recovery)
        ├── heartbeat                 UPDATE worker SET last_heartbeat every interval
        ├── outbox                    re-publishes status messages the broker missed
        ├── cancel consumer           worker.{id}.cancel -> RunControl.cancel()
        ├── pack events consumer      worker.{id}.packs -> build / remove pack environments
        ├── retention                 prunes old artifact directories
        ├── metrics                   GET /metrics for Prometheus (if worker.metrics_port)
        └── serve (consumer)          worker.{id}.executions, holds the executions nursery;
            │                         when drained it flushes the outbox, stops the rest
            └── execution x N         pipeline.handle_dispatch, admitted by runs.Runs

Shutdown is cancellation with a deadline: the intake scope is cancelled (unread
deliveries go back to the broker), in-flight runs get `shutdown_timeout` seconds (the
drain waits on `Runs.wait_idle`, an event), then `Runs.cancel_all` cancels the rest and
they are recorded `cancelled`, announced like every other end.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import trio

import attune
from attune import doctor
from attune.artifacts import ArtifactStore
from attune.broker import Broker, Delivery, open_broker
from attune.config import ArtifactsConfig, Config
from attune.db import Database
from attune.errors import SandboxUnavailable, TransientError
from attune.launcher import Launcher
from attune.log import log_event
from attune.messages import cancel_queue, executions_queue
from attune.metrics import Metrics, serve_metrics
from attune.outbox import Outbox
from attune.pack_events import consume_pack_events, declare_packs_queue
from attune.pipeline import Pipeline, handle_cancel, handle_dispatch, recover_orphans
from attune.runner import host, process
from attune.runner.pool import WarmPool, pool_uids
from attune.runner.profiles import capped_output, load_profiles
from attune.runner.sandbox import Sandbox
from attune.runner.teardown import Teardown
from attune.runs import SHUTDOWN_REASON, Runs

log = logging.getLogger("attune.worker")


@dataclass
class Shutdown:
    """What a signal changes: the intake scope, then the drain deadline."""

    intake: trio.CancelScope = field(default_factory=trio.CancelScope)
    drain: trio.CancelScope = field(default_factory=lambda: trio.CancelScope(deadline=math.inf))
    requested: trio.Event = field(default_factory=trio.Event)
    drain_seconds: float = 30.0

    def request(self) -> None:
        if not self.requested.is_set():
            self.requested.set()
            self.drain.deadline = trio.current_time() + self.drain_seconds
            self.intake.cancel()
        else:  # a second signal: no more waiting
            self.drain.cancel()


async def watch_signals(
    shutdown: Shutdown, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            log_event(
                log,
                "shutdown_requested",
                signal=signal.Signals(signum).name,
                second=shutdown.requested.is_set(),
            )
            shutdown.request()


async def heartbeat(
    db: Database,
    worker_id: int,
    interval: float,
    metrics: Metrics,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    task_status.started()
    while True:
        await trio.sleep(interval)
        try:
            alive = await db.heartbeat(worker_id)
            metrics.heartbeat("ok" if alive else "lost")
            if not alive:
                log_event(
                    log,
                    "heartbeat_lost",
                    logging.WARNING,
                    reason="worker row is gone; re-registering on restart",
                )
        except TransientError as exc:
            metrics.heartbeat("failed")
            log_event(log, "heartbeat_failed", logging.WARNING, reason=str(exc))


async def retention(
    artifacts: ArtifactStore,
    cfg: ArtifactsConfig,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    task_status.started()
    while True:
        removed = await trio.to_thread.run_sync(
            lambda: artifacts.prune(
                max_age_seconds=cfg.retention_days * 86400, max_count=cfg.max_count
            )
        )
        if removed:
            log_event(log, "artifacts_pruned", count=removed)
        await trio.sleep(3600)


async def consume_cancels(
    broker: Broker,
    pipeline: Pipeline,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with broker.consume(cancel_queue(pipeline.worker_id), prefetch=32) as deliveries:
        task_status.started()
        async for delivery in deliveries:
            await handle_cancel(pipeline, delivery)


async def consume_executions(
    broker: Broker,
    pipeline: Pipeline,
    shutdown: Shutdown,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Take dispatches under the capacity limiter until shutdown, then drain in-flight runs."""
    runs = pipeline.runs

    async def one(delivery: Delivery) -> None:
        try:
            await handle_dispatch(pipeline, delivery)
        except Exception:  # a bug must not take the worker down; the message dead-letters
            log.exception("unexpected error handling delivery %s", delivery.delivery_tag)
            pipeline.metrics.message_dead_lettered("executions", "handler_error")
            with trio.CancelScope(shield=True):
                await delivery.nack(requeue=False)
        finally:
            runs.release(delivery)

    async with trio.open_nursery() as executions:
        with shutdown.intake:
            async with broker.consume(
                executions_queue(pipeline.worker_id), prefetch=runs.capacity
            ) as deliveries:
                task_status.started()
                async for delivery in deliveries:
                    try:
                        await runs.admit(delivery)
                    except trio.Cancelled:
                        with trio.CancelScope(shield=True):
                            await delivery.nack(requeue=True)
                        raise
                    executions.start_soon(one, delivery)
        # Intake stopped: unread deliveries are back in the broker. Let runs finish.
        log_event(log, "draining", in_flight=runs.in_flight, timeout=shutdown.drain_seconds)
        with shutdown.drain:
            await runs.wait_idle()
        runs.cancel_all(SHUTDOWN_REASON)


def pin_malloc_thresholds() -> bool:
    """Keep large buffers (captured output, results) in mmap so freeing returns them.

    glibc raises its mmap threshold after the first large free, after which 10 MiB
    output buffers come from the heap and fragment it: RSS ratchets up run after run.
    Fixing the thresholds (which also disables that adjustment) keeps RSS flat.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 256 * 1024) == 1
        return bool(ok and libc.mallopt(m_trim_threshold, 1024 * 1024) == 1)
    except (OSError, AttributeError):
        return False


def capabilities(config: Config, facts: host.HostFacts, runtimes: list[str]) -> dict[str, object]:
    """Configured capabilities, labels and taints (the reference's keys), then measured ones."""
    return {
        **(config.worker.capabilities or {}),
        "labels": dict(config.worker.labels),
        "taints": [msgspec.to_builtins(t) for t in config.worker.taints],
        "runtimes": runtimes,
        "max_concurrent_executions": config.worker.max_concurrent_tasks,
        "worker_version": attune.__version__,
        "sandbox": facts.capabilities(),
        # `attune submit` sends `network: egress` actions only to workers saying true.
        "egress": config.network.egress and facts.layer_active("egress"),
    }


async def run_worker(config: Config) -> None:
    """Register, serve until a signal, drain, deregister. Returns normally on shutdown."""
    shutdown = Shutdown(drain_seconds=config.worker.shutdown_timeout)
    async with trio.open_nursery() as root:
        await root.start(watch_signals, shutdown)
        facts = host.detect()
        checks = doctor.preflight(config, facts)  # attune doctor's host checks
        for check in checks:
            if check.status != "OK":
                log_event(
                    log,
                    "preflight_check",
                    logging.ERROR if check.status == "FAIL" else logging.WARNING,
                    check=check.name,
                    status=check.status,
                    detail=check.detail,
                    fix=check.fix,
                )
        problems = doctor.refusal(checks)  # FAILs that make the sandbox unsafe
        if problems:
            if not config.sandbox.allow_unsafe:
                raise SandboxUnavailable(f"refusing to start: {problems}")
            log_event(log, "UNSAFE_SANDBOX_OVERRIDE", logging.CRITICAL, problems=problems)
        process.become_subreaper()
        pin_malloc_thresholds()
        profiles = capped_output(
            load_profiles(config.sandbox.effective_profiles_dir()),
            config.worker.max_stdout_bytes,
            config.worker.max_stderr_bytes,
        )
        capacity = config.worker.max_concurrent_tasks
        parked_uids = pool_uids(
            config.sandbox.slot_uid_base, capacity, config.sandbox.warm_pool, len(profiles)
        )
        if facts.is_root:
            # The slots' and the pool's uids, not the one between them: `attune exec`'s.
            slots = range(config.sandbox.slot_uid_base, config.sandbox.slot_uid_base + capacity)
            leftovers = [
                pid
                for uids in (slots, parked_uids)
                for pid in process.kill_uid_range(uids.start, len(uids))
            ]
            if leftovers:
                log_event(
                    log,
                    "leftover_sandboxes_killed",
                    logging.WARNING,
                    count=len(leftovers),
                    pids=",".join(map(str, leftovers)),
                )
        sandbox = Sandbox(
            facts, Path(config.sandbox.run_dir), slot_uid_base=config.sandbox.slot_uid_base
        )
        pool: WarmPool | None = None
        if config.sandbox.warm_pool > 0:
            uids = list(parked_uids) if facts.is_root else [None] * len(parked_uids)
            pool = WarmPool(sandbox, list(profiles.values()), config.sandbox.warm_pool, uids)
            sandbox.pool = pool
        name = config.worker.effective_name()
        async with (
            Database.open_ctx(
                config.database.url,
                min_size=max(1, config.database.min_connections),
                max_size=config.database.max_connections,
                connect_timeout=config.database.connect_timeout,
                max_idle=config.database.idle_timeout,
            ) as db,
            open_broker(
                config.message_queue.url, reconnect_interval=config.message_queue.reconnect_interval
            ) as broker,
        ):
            worker_id = await db.register_worker(
                name,
                worker_type=config.worker.worker_type,
                host=config.worker.host or socket.gethostname(),
                port=config.worker.port,
                runtime_id=config.worker.runtime_id,
                capabilities=capabilities(config, facts, sorted(profiles)),
            )
            await broker.declare_topology()
            await broker.declare_worker_queues(worker_id)
            await declare_packs_queue(broker, worker_id)
            artifacts = ArtifactStore(Path(config.artifacts_dir), name)
            outbox = Outbox(broker)
            teardown = Teardown()  # run dirs and cgroups removed after the answer
            sandbox.teardown = teardown
            pipeline = Pipeline(
                store=db,
                announcer=outbox,
                runner=Launcher(config, db, sandbox, profiles, artifacts),
                runs=Runs(config.worker.max_concurrent_tasks),
                worker_id=worker_id,
                worker_name=name,
                record_timeout=config.worker.shutdown_timeout + 30,
            )
            metrics = pipeline.metrics
            metrics.bind(
                worker=name,
                version=attune.__version__,
                in_flight=lambda: pipeline.runs.in_flight,
                capacity=lambda: pipeline.runs.capacity,
                reconnects=lambda: broker.reconnects,
                outbox_pending=lambda: len(outbox.pending),
                outbox_dropped=lambda: outbox.dropped,
            )
            if pool is not None:
                metrics.bind_pool(
                    parked=lambda: pool.parked,
                    taken=lambda: pool.taken,
                    cold=lambda: pool.missed,
                )
            log_event(
                log,
                "worker_registered",
                worker=name,
                worker_id=worker_id,
                capacity=config.worker.max_concurrent_tasks,
                pid=os.getpid(),
                layers=",".join(layer.name for layer in facts.layers if layer.active),
                warm_pool=config.sandbox.warm_pool,
            )
            await recover_orphans(pipeline)
            try:
                async with trio.open_nursery() as services:
                    if config.worker.metrics_port is not None:
                        await services.start(serve_metrics, metrics, config.worker.metrics_port)
                    interval = config.worker.heartbeat_interval
                    await services.start(heartbeat, db, worker_id, interval, metrics)
                    await services.start(outbox.run)
                    await services.start(teardown.run)
                    if pool is not None:  # parked sandboxes before the first delivery
                        await services.start(pool.run)
                    await services.start(consume_cancels, broker, pipeline)
                    await services.start(consume_pack_events, config, broker, worker_id)
                    await services.start(retention, artifacts, config.artifacts)
                    await services.start(
                        serve, broker, pipeline, outbox, shutdown, services.cancel_scope
                    )
                    log_event(log, "worker_ready", worker=name, worker_id=worker_id)
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await db.set_worker_status(worker_id, "inactive")
                log_event(log, "worker_stopped", worker=name, worker_id=worker_id)
        root.cancel_scope.cancel()


async def serve(
    broker: Broker,
    pipeline: Pipeline,
    outbox: Outbox,
    shutdown: Shutdown,
    services: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The consumer's life: serve until drained, flush the outbox, stop the services."""
    await consume_executions(broker, pipeline, shutdown, task_status=task_status)
    with trio.move_on_after(10):
        await outbox.wait_empty()
    services.cancel()
