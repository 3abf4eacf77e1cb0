"""The Celery side of the comparison (bench-only; needs `requirements-bench.lock`).

Two tasks run the same trivial Python action as the worker's bench pack, in a fresh
process per task: `subprocess` (no isolation: same uid, full network) and `bwrap`
(namespaces only, root inside: `compare.plain_bwrap_argv`). Results go to PostgreSQL
through Celery's database backend, the broker is the same RabbitMQ. Configured from
BENCH_CELERY_BROKER and BENCH_CELERY_BACKEND; the worker writes a line to stderr when
ready, for the bench to wait on.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import Any

from celery import Celery
from celery.signals import worker_ready

from .compare import TRIVIAL_PY, plain_bwrap_argv

PYTHON = "/usr/bin/python3"
READY_LINE = "attune-bench-celery-ready"

app = Celery("attune_bench", broker=os.environ.get("BENCH_CELERY_BROKER"))
app.conf.update(
    result_backend=os.environ.get("BENCH_CELERY_BACKEND"),
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_default_queue="attune-bench",
    broker_connection_retry_on_startup=True,
    database_create_tables_at_setup=True,
)


def _run(argv: list[str]) -> int:
    done = subprocess.run(argv, capture_output=True, check=True, timeout=60)
    return int(done.stdout)


@app.task(name="bench.subprocess")  # type: ignore[untyped-decorator]
def run_subprocess() -> int:
    return _run([PYTHON, "-c", TRIVIAL_PY])


@app.task(name="bench.bwrap")  # type: ignore[untyped-decorator]
def run_bwrap() -> int:
    return _run(plain_bwrap_argv(shutil.which("bwrap") or "bwrap", PYTHON, TRIVIAL_PY))


@worker_ready.connect  # type: ignore[untyped-decorator]
def _ready(**_: Any) -> None:
    print(READY_LINE, file=sys.stderr, flush=True)
