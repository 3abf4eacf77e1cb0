"""End to end through RabbitMQ and PostgreSQL with a real `attune run-worker` process.

Set-up (all undone by Cleanup): a database `attune_bench_<hex>` (created, migrated, the
demo pack and a bench pack of trivial actions loaded), a vhost `attune-bench-<hex>`, a
temp tree for packs, artifacts and run dirs, and a worker subprocess per capacity.
This process plays the executor: it inserts `scheduled` executions and publishes
`ExecutionRequested` to the worker's routing key (what `attune.submit.schedule` does,
minus the per-call action and worker look-ups, which are done once), and it hears the
worker's `ExecutionCompleted` on a private queue bound to `attune.executions`.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import psycopg
import trio
from psycopg import sql

from attune.broker import Broker, open_broker
from attune.db import Database
from attune.messages import (
    EXCHANGE_EXECUTIONS,
    ROUTING_COMPLETED,
    ExecutionRequested,
    decode_completed,
    dispatch_routing_key,
    encode_message,
)
from attune.models import Action
from attune.packs import install_pack, load_pack
from attune.runner.process import _parent_pid

from . import cpu
from .cleanup import Cleanup
from .compare import CpuShare, cpu_share
from .local import ATTUNE, REPO, CaseError
from .stats import parse_cpu_ticks, parse_vmrss_kib

PG_ADMIN_URL = os.environ.get(
    "ATTUNE_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
AMQP_BASE_URL = os.environ.get("ATTUNE_BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
DEMO_PACK = REPO / "examples" / "packs" / "demo"
BENCH_PACK = {
    "pack.yaml": "ref: bench\nlabel: Bench\ndescription: Trivial actions for scripts/bench\n"
    "version: 1.0.0\n",
    "actions/noop_py.yaml": "ref: bench.noop_py\nlabel: Noop (python)\n"
    "description: def run() returning 1\nrunner_type: python\n"
    "entry_point: noop_py.py\n",
    "actions/noop_py.py": "def run():\n    return 1\n",
    "actions/noop_sh.yaml": "ref: bench.noop_sh\nlabel: Noop (shell)\n"
    "description: the shell no-op\nrunner_type: shell\n"
    "entry_point: noop_sh.sh\n",
    "actions/noop_sh.sh": ":\n",
}
ACTIONS = {"python": "bench.noop_py", "shell": "bench.noop_sh"}
WORKER_READY_TIMEOUT = 60.0


def _rabbitmqctl(*args: str) -> None:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise CaseError(f"rabbitmqctl {args[0]}: {done.stderr.strip()[:300]}")


def create_database(cleanup: Cleanup) -> str:
    name = f"attune_bench_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        raise CaseError(f"PostgreSQL ({PG_ADMIN_URL}): {exc}") from None

    def drop() -> None:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    cleanup.push(f"database {name}", drop)
    parts = urlsplit(PG_ADMIN_URL)
    return parts._replace(path=f"/{name}").geturl()


def create_vhost(cleanup: Cleanup) -> str:
    name = f"attune-bench-{secrets.token_hex(4)}"
    _rabbitmqctl("add_vhost", name)
    cleanup.push(f"vhost {name}", lambda: _rabbitmqctl("delete_vhost", name))
    _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    parts = urlsplit(AMQP_BASE_URL)
    return f"{parts.scheme}://{parts.netloc}/{quote(name, safe='')}"


def write_bench_pack(root: Path) -> Path:
    for rel, text in BENCH_PACK.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as handle:
            kib = parse_vmrss_kib(handle.read())
    except OSError:
        return None
    return kib / 1024 if kib is not None else None


def children_of(pid: int) -> list[int]:
    """Every descendant of `pid` (through /proc's parent links)."""
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (ppid := _parent_pid(int(name))) >= 0:
            parents.setdefault(ppid, []).append(int(name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def pool_cost(worker_pid: int) -> dict[str, float]:
    """What an idle worker's sandboxes cost (with a warm pool: the parked ones): PSS
    (shared pages split between their users) and RSS summed over every process below
    the worker, and their count."""
    pss = rss = 0
    pids = children_of(worker_pid)
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1])
        except OSError:
            continue
    return {"processes": len(pids), "pss_mib": pss / 1024, "rss_mib": rss / 1024}


def cpu_seconds(pid: int) -> tuple[float, float] | None:
    """(own, reaped children) CPU seconds of a process."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            ticks = parse_cpu_ticks(handle.read())
    except OSError:
        return None
    if ticks is None:
        return None
    hz = os.sysconf("SC_CLK_TCK")
    return ticks[0] / hz, ticks[1] / hz


@dataclass
class Completion:
    at: float
    status: str
    duration_ms: int | None


@dataclass
class Completions:
    """ExecutionCompleted messages by execution id, with their arrival time."""

    seen: dict[int, Completion] = field(default_factory=dict)
    _want: set[int] = field(default_factory=set)
    _done: trio.Event = field(default_factory=trio.Event)

    def record(self, execution_id: int, completion: Completion) -> None:
        self.seen.setdefault(execution_id, completion)
        self._want.discard(execution_id)
        if not self._want:
            self._done.set()

    async def wait_all(self, ids: Sequence[int], timeout: float) -> None:
        self._want = {i for i in ids if i not in self.seen}
        self._done = trio.Event()
        if self._want:
            with trio.move_on_after(timeout):
                await self._done.wait()
        if self._want:
            raise CaseError(
                f"{len(self._want)} of {len(ids)} executions did not complete within {timeout:g}s"
            )


def _ready(log_text: str) -> bool:
    """worker_ready in the text format or (with --timing) the JSON one."""
    return "event=worker_ready" in log_text or '"event": "worker_ready"' in log_text


@dataclass
class WorkerProc:
    proc: subprocess.Popen[bytes]
    log_path: Path
    capacity: int
    started: float
    ready_seconds: float = 0.0

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def rss(self) -> float | None:
        return rss_mib(self.proc.pid)

    async def wait_ready(self) -> None:
        with trio.move_on_after(WORKER_READY_TIMEOUT):
            while not _ready(self.log_path.read_text(errors="replace")):
                if self.proc.poll() is not None:
                    raise CaseError(f"worker exited {self.proc.returncode}:\n{self.log_tail()}")
                await trio.sleep(0.02)
            self.ready_seconds = time.perf_counter() - self.started
            return
        raise CaseError(f"worker not ready within {WORKER_READY_TIMEOUT:g}s:\n{self.log_tail()}")

    async def stop(self, grace: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        with trio.move_on_after(grace):
            while self.proc.poll() is None:
                await trio.sleep(0.05)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Stack:
    db: Database
    broker: Broker
    root: Path
    db_url: str
    amqp_url: str
    cleanup: Cleanup
    completions: Completions
    actions: dict[str, Action]
    worker_name: str = field(default_factory=lambda: f"bench-{secrets.token_hex(3)}")
    worker_id: int | None = None
    starts: int = 0

    def worker_env(
        self, capacity: int, *, timing: bool = False, warm_pool: int = 0
    ) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATTUNE")}
        env.update(
            {
                "ATTUNE__DATABASE__URL": self.db_url,
                "ATTUNE__MESSAGE_QUEUE__URL": self.amqp_url,
                "ATTUNE__PACKS_BASE_DIR": str(self.root / "packs"),
                "ATTUNE__ARTIFACTS_DIR": str(self.root / "artifacts"),
                "ATTUNE__SANDBOX__RUN_DIR": str(self.root / "worker-runs"),
                "ATTUNE__WORKER__MAX_CONCURRENT_TASKS": str(capacity),
                "ATTUNE__SANDBOX__WARM_POOL": str(warm_pool),
            }
        )
        if timing:  # the execution_timing spans (debug level), one JSON object a line
            env |= {"ATTUNE__LOG__LEVEL": "debug", "ATTUNE__LOG__FORMAT": "json"}
        return env

    async def start_worker(
        self, capacity: int, *, timing: bool = False, warm_pool: int = 0
    ) -> WorkerProc:
        self.starts += 1
        log_path = self.root / f"worker-c{capacity}-p{warm_pool}-{self.starts}.log"
        with open(log_path, "wb") as log:
            started = time.perf_counter()
            # Own session: a Ctrl-C in the terminal reaches the bench, which stops the
            # worker itself (SIGTERM, then SIGKILL) during cleanup.
            proc = subprocess.Popen(
                [ATTUNE, "run-worker", "--name", self.worker_name],
                env=self.worker_env(capacity, timing=timing, warm_pool=warm_pool),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
            )
        self.cleanup.process(f"worker pid {proc.pid}", proc)
        worker = WorkerProc(proc, log_path, capacity, started)
        await worker.wait_ready()
        if self.worker_id is None:
            for row in await self.db.list_workers():
                if row.name == self.worker_name:
                    self.worker_id = row.id
        if self.worker_id is None:
            raise CaseError(f"worker {self.worker_name} is ready but not registered")
        return worker

    async def create(self, interp: str, count: int) -> list[int]:
        assert self.worker_id is not None
        action = self.actions[interp]
        return [
            await self.db.create_execution(action, config={}, worker_id=self.worker_id)
            for _ in range(count)
        ]

    async def dispatch(self, execution_id: int, interp: str) -> None:
        assert self.worker_id is not None
        request = ExecutionRequested(
            execution_id=execution_id, action_ref=ACTIONS[interp], worker_id=self.worker_id
        )
        message = encode_message("ExecutionRequested", request, source_service="executor")
        await self.broker.publish(
            EXCHANGE_EXECUTIONS, dispatch_routing_key(self.worker_id), message
        )


async def _collect(
    broker: Broker,
    completions: Completions,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    queue = f"bench.completed.{secrets.token_hex(4)}"
    await broker.declare_queue(queue, durable=False, exclusive=True, auto_delete=True)
    await broker.bind_queue(queue, EXCHANGE_EXECUTIONS, ROUTING_COMPLETED)
    async with broker.consume(queue, prefetch=1000) as deliveries:
        task_status.started()
        async for delivery in deliveries:
            at = time.perf_counter()
            _, done = decode_completed(delivery.body)
            result = done.result if isinstance(done.result, dict) else {}
            completions.record(
                done.execution_id, Completion(at, done.status, result.get("duration_ms"))
            )
            await delivery.ack()


@asynccontextmanager
async def open_stack(root: Path, cleanup: Cleanup) -> AsyncIterator[Stack]:
    db_url = create_database(cleanup)
    amqp_url = create_vhost(cleanup)
    for sub in ("packs", "artifacts", "worker-runs"):
        (root / sub).mkdir()
    bench_pack = write_bench_pack(root / "bench-pack")
    async with Database.open_ctx(db_url) as db:
        await db.migrate()
        for pack_dir in (DEMO_PACK, bench_pack):
            spec = load_pack(pack_dir)
            install_pack(spec, root / "packs")
            await db.upsert_pack(spec)
        actions: dict[str, Action] = {}
        for interp, ref in ACTIONS.items():
            action = await db.get_action(ref)
            if action is None:
                raise CaseError(f"action {ref} missing after loading the bench pack")
            actions[interp] = action
        async with open_broker(amqp_url, reconnect_interval=0.5) as broker:
            await broker.declare_topology()
            completions = Completions()
            async with trio.open_nursery() as nursery:
                await nursery.start(_collect, broker, completions)
                yield Stack(
                    db=db,
                    broker=broker,
                    root=root,
                    db_url=db_url,
                    amqp_url=amqp_url,
                    cleanup=cleanup,
                    completions=completions,
                    actions=actions,
                )
                nursery.cancel_scope.cancel()


async def latency_one(stack: Stack, interp: str) -> tuple[float, Completion]:
    """Seconds from publishing one dispatch to receiving its ExecutionCompleted."""
    (execution_id,) = await stack.create(interp, 1)
    started = time.perf_counter()
    await stack.dispatch(execution_id, interp)
    await stack.completions.wait_all([execution_id], timeout=60)
    done = stack.completions.seen[execution_id]
    if done.status != "Completed":
        raise CaseError(f"execution {execution_id} ({interp}) ended {done.status}")
    return done.at - started, done


@dataclass
class Throughput:
    capacity: int
    count: int
    seconds: float
    finish_times: list[float]
    failed: int
    rss_samples: list[float]
    worker_cpu_ms: float | None  # per execution: the worker process, all threads
    sandbox_cpu_ms: float | None  # per execution: its reaped children (bwrap + action)
    cpu: CpuShare | None = None  # per execution: worker tree + PostgreSQL + RabbitMQ
    load1: float | None = None


async def throughput(stack: Stack, worker: WorkerProc, count: int) -> Throughput:
    """`count` trivial python executions queued at once; first publish to last result."""
    ids = await stack.create("python", count)
    samples: list[float] = []

    async def sample_rss() -> None:
        while True:
            value = worker.rss()
            if value is not None:
                samples.append(value)
            await trio.sleep(0.1)

    database = urlsplit(stack.db_url).path.lstrip("/")
    load1 = os.getloadavg()[0]
    share_before = await cpu.snapshot(worker.proc.pid, PG_ADMIN_URL, database)
    cpu_before = cpu_seconds(worker.proc.pid)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample_rss)
        started = time.perf_counter()
        for execution_id in ids:
            await stack.dispatch(execution_id, "python")
        await stack.completions.wait_all(ids, timeout=120 + count / 2)
        nursery.cancel_scope.cancel()
    cpu_after = cpu_seconds(worker.proc.pid)
    share_after = await cpu.snapshot(worker.proc.pid, PG_ADMIN_URL, database)
    own = children = None
    if cpu_before is not None and cpu_after is not None:
        own = (cpu_after[0] - cpu_before[0]) * 1000 / count
        children = (cpu_after[1] - cpu_before[1]) * 1000 / count
    done = [stack.completions.seen[i] for i in ids]
    last = max(d.at for d in done)
    return Throughput(
        capacity=worker.capacity,
        count=count,
        seconds=last - started,
        finish_times=[d.at - started for d in done],
        failed=sum(d.status != "Completed" for d in done),
        rss_samples=samples,
        worker_cpu_ms=own,
        sandbox_cpu_ms=children,
        cpu=cpu_share(share_before, share_after, count),
        load1=load1,
    )


def summary_of_worker(worker: WorkerProc) -> dict[str, Any]:
    return {
        "capacity": worker.capacity,
        "ready_seconds": round(worker.ready_seconds, 3),
        "log": worker.log_path.name,
    }
