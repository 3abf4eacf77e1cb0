"""Running a real `attune run-worker` process against the test's own database and vhost."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from attune.broker import Broker
from attune.db import Database
from attune.errors import TransientError
from attune.messages import (
    EXCHANGE_EXECUTIONS,
    ExecutionRequested,
    dispatch_routing_key,
    encode_message,
)
from attune.models import Execution
from attune.packs import install_pack, load_pack
from attune.runner.pool import pool_uids
from attune.submit import schedule, wait_terminal

REPO = Path(__file__).resolve().parent.parent.parent
ATTUNE = str(REPO / ".venv" / "bin" / "attune")
DEMO_PACK = REPO / "examples" / "packs" / "demo"
TERMINAL = frozenset({"completed", "failed", "timeout", "cancelled", "abandoned"})
STARTED = re.compile(r"event=execution_started execution_id=(\d+)")
HOSTILE_PACK = REPO / "tests" / "packs" / "hostile"


@dataclass
class WorkerProcess:
    name: str
    env: dict[str, str]
    log_path: Path
    extra_args: list[str] = field(default_factory=list)
    wrapper: list[str] = field(default_factory=list)  # e.g. setpriv to drop root
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*self.wrapper, ATTUNE, "run-worker", "--name", self.name, *self.extra_args],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_ready(self, timeout: float = 20.0) -> None:
        await self.wait_log("event=worker_ready", timeout)

    async def wait_log(self, needle: str, timeout: float = 20.0) -> None:
        """Wait until the worker has logged a line containing `needle`."""
        await self.wait_log_any((needle,), timeout)

    async def wait_log_any(self, needles: tuple[str, ...], timeout: float = 20.0) -> None:
        """Wait until the worker has logged a line containing any of `needles`."""
        with trio.move_on_after(timeout):
            while not any(needle in self.log() for needle in needles):
                assert self.proc is not None
                if self.proc.poll() is not None:
                    pytest.fail(f"worker exited with {self.proc.returncode}:\n{self.log()}")
                await trio.sleep(0.05)
            return
        pytest.fail(f"worker never logged any of {needles} within {timeout}s:\n{self.log()}")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def wait_exit(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        with trio.move_on_after(timeout):
            while self.proc.poll() is None:
                await trio.sleep(0.05)
            self._log.close()
            return self.proc.returncode
        pytest.fail(f"worker did not exit within {timeout}s:\n{self.log()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        if hasattr(self, "_log"):
            self._log.close()


@dataclass
class Stack:
    """Database, broker, packs and artifacts of one test, and a way to start workers."""

    db: Database
    broker: Broker
    db_url: str
    amqp_url: str
    root: Path
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def packs_dir(self) -> Path:
        # Whole packs are bound into the sandbox by path, so slot uids must be able to
        # traverse to them: pytest's tmp_path sits under a 0700 directory.
        return Path(tempfile.gettempdir()) / f"attune-packs-{self.root.name}-{os.getpid()}"

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATTUNE")}
        env.update(
            {
                "ATTUNE__DATABASE__URL": self.db_url,
                "ATTUNE__MESSAGE_QUEUE__URL": self.amqp_url,
                "ATTUNE__MESSAGE_QUEUE__RECONNECT_INTERVAL": "0.5",
                "ATTUNE__PACKS_BASE_DIR": str(self.packs_dir),
                "ATTUNE__ARTIFACTS_DIR": str(self.artifacts_dir),
                "ATTUNE__WORKER__HEARTBEAT_INTERVAL": "1",
                "ATTUNE__WORKER__SHUTDOWN_TIMEOUT": "10",
                # Slot uids of this test process only: a worker kills its slot uids'
                # leftovers at start-up, so two test sessions must never share them.
                "ATTUNE__SANDBOX__SLOT_UID_BASE": str(SESSION_UID_BASE),
                "ATTUNE__SANDBOX__WARM_POOL": str(WARM_POOL),
            }
        )
        env.update(overrides)
        return env

    async def start_worker(
        self,
        *,
        capacity: int = 4,
        name: str | None = None,
        wrapper: list[str] | None = None,
        **env: str,
    ) -> WorkerProcess:
        worker = WorkerProcess(
            name=name or f"w-{uuid.uuid4().hex[:8]}",
            env=self.env(ATTUNE__WORKER__MAX_CONCURRENT_TASKS=str(capacity), **env),
            log_path=self.root / f"worker-{len(self.workers)}.log",
            wrapper=wrapper or [],
        )
        self.workers.append(worker)
        worker.start()
        await worker.wait_ready()
        return worker

    async def load_pack(self, path: Path) -> None:
        spec = load_pack(path)
        install_pack(spec, self.packs_dir)
        await self.db.upsert_pack(spec)

    async def worker_id(self, name: str) -> int:
        for w in await self.db.list_workers():
            if w.name == name:
                return w.id
        raise AssertionError(f"worker {name} not registered")

    async def submit(self, ref: str, params: dict[str, Any] | None = None, **kw: Any) -> int:
        execution_id, _ = await schedule(self.db, self.broker, ref, params or {}, **kw)
        return execution_id

    async def dispatch(self, execution_id: int, ref: str, worker_id: int) -> None:
        """Publish ExecutionRequested for an execution already scheduled on `worker_id`
        (as the executor does), bypassing `attune submit`'s choice of worker."""
        message = encode_message(
            "ExecutionRequested",
            ExecutionRequested(execution_id=execution_id, action_ref=ref, worker_id=worker_id),
            source_service="executor",
        )
        await self.broker.publish(EXCHANGE_EXECUTIONS, dispatch_routing_key(worker_id), message)

    async def wait(self, execution_id: int, timeout: float = 30.0) -> Execution:
        return await wait_terminal(self.db, execution_id, timeout=timeout)

    async def result_file(self, worker: WorkerProcess, execution_id: int) -> Path:
        """The run's result.json, once written (after its end is recorded and announced)."""
        run = self.artifacts_dir / worker.name / f"execution_{execution_id}"
        return await wait_for_file(run / "result.json")

    async def wait_all(self, ids: list[int], timeout: float) -> dict[int, str]:
        """Every execution's terminal status; fails the test if one is not terminal in
        time. Database errors while polling are waited out (a fault may be underway)."""
        statuses: dict[int, str] = {}
        with trio.move_on_after(timeout):
            while len(statuses) < len(ids):
                for execution_id in ids:
                    if execution_id in statuses:
                        continue
                    try:
                        row = await self.db.get_execution(execution_id)
                    except TransientError:
                        await trio.sleep(0.5)
                        break
                    if row is not None and row.status in TERMINAL:
                        statuses[execution_id] = row.status
                await trio.sleep(0.2)
            return statuses
        pytest.fail(
            f"{len(ids) - len(statuses)} of {len(ids)} executions not terminal "
            f"within {timeout:g}s; terminal so far: {Counter(statuses.values())}"
        )

    def runs_started(self) -> Counter[int]:
        """How many times each execution was started, across every worker of the test."""
        counts: Counter[int] = Counter()
        for worker in self.workers:
            counts.update(int(m) for m in STARTED.findall(worker.log()))
        return counts

    def peak_running(self, ids: list[int]) -> dict[int, int]:
        """worker id -> the most of `ids` it ran at once, from ONE query of finished rows.

        Each run holds [started_at, updated): claimed at the start, ended at the result
        write, and a worker admits its next dispatch only after that write. Judging from
        one snapshot of the intervals, instead of sampling statuses row by row while
        runs finish, cannot count one run twice or miss a peak.
        """
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT worker, started_at, updated FROM attune.execution "
                "WHERE id = ANY(%s) AND started_at IS NOT NULL",
                (ids,),
            ).fetchall()
        by_worker: dict[int, list[tuple[datetime, datetime]]] = {}
        for worker_id, started, ended in rows:
            by_worker.setdefault(worker_id, []).append((started, ended))
        return {w: peak_overlap(spans) for w, spans in by_worker.items()}

    async def wait_status(self, execution_id: int, status: str, timeout: float = 15.0) -> None:
        with trio.move_on_after(timeout):
            while True:
                row = await self.db.get_execution(execution_id)
                if row is not None and row.status == status:
                    return
                await trio.sleep(0.05)
        pytest.fail(f"execution {execution_id} never reached {status}")


async def wait_for_file(path: Path, timeout: float = 10.0) -> Path:
    """A file the worker writes after a run's answer (result.json): it follows the
    recorded end by a moment, so a test that saw the end waits for it too."""
    with trio.move_on_after(timeout):
        while not path.exists():
            await trio.sleep(0.02)
        return path
    pytest.fail(f"{path} did not appear within {timeout}s")


@pytest.fixture
async def stack(
    db: Database, db_url: str, amqp_url: str, amqp_broker: Broker, tmp_path: Path
) -> AsyncIterator[Stack]:
    spec = load_pack(DEMO_PACK)
    s = Stack(db=db, broker=amqp_broker, db_url=db_url, amqp_url=amqp_url, root=tmp_path)
    s.packs_dir.mkdir(mode=0o755)
    s.packs_dir.chmod(0o755)
    install_pack(spec, s.packs_dir)
    await db.upsert_pack(spec)
    try:
        yield s
    finally:
        for worker in s.workers:
            worker.kill()
        shutil.rmtree(s.packs_dir, ignore_errors=True)


SESSION_UID_BASE = 1_000_000 + (os.getpid() % 4000) * 256
_SESSION_UIDS = 256
_DEFAULT_UIDS = 32  # the default workers' slots, exec's uid and their pool's uids
_next_block = [_DEFAULT_UIDS]
# ATTUNE_TEST_WARM_POOL=N: every worker of the suite keeps N parked sandboxes per shape
# (scripts/test runs the sandbox and integration suites both ways).
WARM_POOL = int(os.environ.get("ATTUNE_TEST_WARM_POOL") or 0)


def uid_span(capacity: int) -> int:
    """How many uids from its slot_uid_base a worker of `capacity` uses (profiles: 2)."""
    return pool_uids(0, capacity, WARM_POOL, 2).stop if WARM_POOL else capacity + 1


def slot_uid_block(size: int) -> int:
    """The first slot uid of a worker of capacity `size` that no other test of this
    session (or process) uses, with room for its exec uid and its warm pool.

    For tests that need workers with slot uids of their own (several workers, or a
    worker that is killed and whose uids must be checked afterwards).
    """
    span = uid_span(size)
    start = _next_block[0]
    if start + span > _SESSION_UIDS:
        start = _DEFAULT_UIDS
    _next_block[0] = start + span
    return SESSION_UID_BASE + start


def _reap_own_zombies(low: int, high: int) -> None:
    """Reap zombies of slot uids in [low, high) whose parent is this test process.

    Sandbox tests make the test process a child subreaper, so the sandboxes of a worker
    killed with SIGKILL are reparented here; only this process can reap them. Each is
    reaped by its own pid, never with a wildcard wait (which could reap a Popen's child).
    """
    me = str(os.getpid())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = dict(
                line.split(":", 1) for line in (entry / "status").read_text().splitlines()
            )
        except (OSError, ValueError):
            continue
        uid = int(status.get("Uid", "-1").split()[0])
        zombie = status.get("State", "").strip()[:1] == "Z"
        if zombie and status.get("PPid", "").strip() == me and low <= uid < high:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(int(entry.name), os.WNOHANG)


def host_processes_of_uids(low: int, high: int) -> list[str]:
    """Host processes running as any uid in [low, high): sandboxes of those slots.

    Zombies this test process must reap itself are reaped first: they are gone, only
    not yet collected.
    """
    _reap_own_zombies(low, high)
    out = subprocess.run(["ps", "-eo", "uid=,pid=,args="], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if low <= int(line.split()[0]) < high]


def peak_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    """The most intervals [start, end) that hold at one instant."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    peak = current = 0
    for _, step in edges:  # at a tie, -1 sorts first: an end and a start do not overlap
        current += step
        peak = max(peak, current)
    return peak


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def rabbit_queue_depth(vhost: str, queue: str) -> int:
    out = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "messages"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == queue:
            return int(parts[1])
    raise AssertionError(f"queue {queue} not found in {vhost}: {out}")


__all__ = [
    "HOSTILE_PACK",
    "SESSION_UID_BASE",
    "TERMINAL",
    "Stack",
    "WorkerProcess",
    "host_processes_of_uids",
    "peak_overlap",
    "rabbit_queue_depth",
    "rss_kib",
    "slot_uid_block",
    "stack",
]
