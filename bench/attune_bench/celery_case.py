"""The Celery comparison (scripts/bench --compare): Celery 5 on the same RabbitMQ and
PostgreSQL, a fresh process per task, plain (`subprocess`) and in a plain bwrap (`bwrap`).

Set-up (undone by Cleanup): its own database (Celery's `celery_taskmeta` table, plus a
trigger that NOTIFYs when a row turns SUCCESS or FAILURE) and vhost, and a Celery worker
(prefork, concurrency 2) in its own session. Latency runs from `send_task` to the NOTIFY
of the result row's commit: the same "durable result known" point as the worker's
ExecutionCompleted, without polling. Celery itself is imported only here and in
`celery_app`, never by the rest of the bench.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import trio

from . import cpu
from .cleanup import Cleanup
from .compare import TRIVIAL_PY, cpu_share, plain_bwrap_argv
from .e2e import PG_ADMIN_URL, Completion, Completions, create_database, create_vhost
from .local import REPO, SYSTEM_PYTHON, VENV_PYTHON, CaseError
from .stats import rate, round_robin

VARIANTS = {"subprocess": "bench.subprocess", "bwrap": "bench.bwrap"}
CONCURRENCY = 2
CELERY_WORKER = [
    VENV_PYTHON, "-m", "celery", "-A", "attune_bench.celery_app", "worker",
    "--pool", "prefork", "--concurrency", str(CONCURRENCY), "--without-heartbeat",
    "--without-gossip", "--without-mingle", "--loglevel", "WARNING",
]  # fmt: skip
READY_TIMEOUT = 60.0
CHANNEL = "attune_bench_done"
TRIGGER_SQL = f"""
CREATE FUNCTION attune_bench_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IN ('SUCCESS', 'FAILURE') THEN
        PERFORM pg_notify('{CHANNEL}', NEW.task_id || ' ' || NEW.status);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER attune_bench_done AFTER INSERT OR UPDATE ON celery_taskmeta
    FOR EACH ROW EXECUTE FUNCTION attune_bench_notify();
"""


def _listen(
    db_url: str,
    completions: Completions,
    listening: trio.Event,
    stop: threading.Event,
    token: trio.lowlevel.TrioToken,
) -> None:
    with psycopg.connect(db_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"LISTEN {CHANNEL}")
        trio.from_thread.run_sync(listening.set, trio_token=token)
        while not stop.is_set():
            for note in conn.notifies(timeout=0.2):
                at = time.perf_counter()
                task_id, status = note.payload.split(" ", 1)
                status = "Completed" if status == "SUCCESS" else status
                trio.from_thread.run_sync(
                    completions.record, int(task_id), Completion(at, status, None), trio_token=token
                )


async def _start_worker(env: dict[str, str], log_path: Path, cleanup: Cleanup) -> Any:
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [VENV_PYTHON, "-m", "attune_bench.reaper", "--", *CELERY_WORKER],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )
    cleanup.process(f"celery worker pid {proc.pid}", proc)
    from .celery_app import READY_LINE

    with trio.move_on_after(READY_TIMEOUT):
        while READY_LINE not in log_path.read_text(errors="replace"):
            if proc.poll() is not None:
                raise CaseError(f"celery worker exited: {log_path.read_text()[-800:]}")
            await trio.sleep(0.05)
        return proc
    raise CaseError(f"celery worker not ready: {log_path.read_text()[-800:]}")


async def plain_bwrap_rate(count: int, concurrency: int = CONCURRENCY) -> dict[str, Any]:
    """The plain sandbox's spawn rate: `count` plain bwrap python3 runs on N lanes."""
    argv = plain_bwrap_argv("bwrap", SYSTEM_PYTHON, TRIVIAL_PY)
    remaining = count

    async def lane() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await trio.run_process(argv, capture_stdout=True)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(lane)
    seconds = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "count": count,
        "seconds": seconds,
        "per_second": rate(count, seconds),
        "load1": load1(),
    }


def load1() -> float:
    return os.getloadavg()[0]


async def measure(
    root: Path, cleanup: Cleanup, *, latency_runs: int, throughput_n: int, seed: int
) -> dict[str, Any]:
    """Latency (sequential, variants interleaved) and throughput per variant, with CPU."""
    from .celery_app import app

    db_url = create_database(cleanup)
    amqp_url = create_vhost(cleanup)
    database = urlsplit(db_url).path.lstrip("/")
    backend = "db+" + db_url.replace("postgresql://", "postgresql+psycopg://", 1)
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "PYTHONPATH": str(REPO / "bench"),
        "BENCH_CELERY_BROKER": amqp_url,
        "BENCH_CELERY_BACKEND": backend,
    }
    app.conf.update(broker_url=amqp_url, result_backend=backend)
    worker = await _start_worker(env, root / "celery-worker.log", cleanup)
    try:
        # Warm-up through Celery's own polling; it also creates celery_taskmeta.
        def warm_up(task: str) -> None:
            app.send_task(task).get(timeout=60, interval=0.05)

        for task in VARIANTS.values():
            await trio.to_thread.run_sync(warm_up, task)
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(TRIGGER_SQL)
        completions = Completions()
        stop = threading.Event()
        listening = trio.Event()
        token = trio.lowlevel.current_trio_token()
        out: dict[str, Any] = {name: {"latency_ms": []} for name in VARIANTS}
        next_id = iter(range(1, 10**9))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                lambda: trio.to_thread.run_sync(
                    _listen, db_url, completions, listening, stop, token
                )
            )
            await listening.wait()
            order = round_robin(list(VARIANTS), latency_runs, warmup=2, seed=seed)
            for index, name in order:
                task_id = next(next_id)
                started = time.perf_counter()
                app.send_task(VARIANTS[name], task_id=str(task_id))
                await completions.wait_all([task_id], timeout=60)
                done = completions.seen[task_id]
                if done.status != "Completed":
                    raise CaseError(f"celery {name} task ended {done.status}")
                if index >= 0:
                    out[name]["latency_ms"].append((done.at - started) * 1000)
            for name, task in VARIANTS.items():
                ids = [next(next_id) for _ in range(throughput_n)]
                load = load1()
                before = await cpu.snapshot(worker.pid, PG_ADMIN_URL, database)
                started = time.perf_counter()
                for task_id in ids:
                    app.send_task(task, task_id=str(task_id))
                await completions.wait_all(ids, timeout=120 + throughput_n / 2)
                seconds = max(completions.seen[i].at for i in ids) - started
                after = await cpu.snapshot(worker.pid, PG_ADMIN_URL, database)
                out[name] |= {
                    "concurrency": CONCURRENCY,
                    "count": throughput_n,
                    "seconds": seconds,
                    "per_second": rate(throughput_n, seconds),
                    "failed": sum(completions.seen[i].status != "Completed" for i in ids),
                    "cpu_ms": cpu_share(before, after, throughput_n).as_dict(),
                    "load1": load,
                }
            stop.set()
    finally:
        worker.terminate()
        with trio.move_on_after(20):
            while worker.poll() is None:
                await trio.sleep(0.05)
    return out
