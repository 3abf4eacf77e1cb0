"""CPU snapshots of a case's process trees, from /proc: the runner (worker or Celery),
the PostgreSQL backends of the case's own database, and the RabbitMQ server.

Sampled when nothing of the case is running (before the first publish, after the last
result), so every sandbox or subprocess that ran is in its reaper's reaped-children
time. The RabbitMQ server is shared by everything on the machine: its share is an upper
bound when other work is running.
"""

from __future__ import annotations

import contextlib
import os

import psycopg
import trio

from .compare import descendants, parse_stat_ppid
from .stats import parse_cpu_ticks

HZ = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read()
    except OSError:
        return None


def _parents() -> dict[int, int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (text := _stat(int(entry))) is not None:
            ppid = parse_stat_ppid(text)
            if ppid is not None:
                parents[int(entry)] = ppid
    return parents


def _seconds(pids: set[int]) -> float:
    total = 0
    for pid in pids:
        text = _stat(pid)
        ticks = parse_cpu_ticks(text) if text else None
        if ticks is not None:
            total += ticks[0] + ticks[1]
    return total / HZ


def _comm_pids(name: str) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as handle:
                    if handle.read().strip() == name:
                        found.add(int(entry))
            except OSError:
                continue
    return found


def _backends(admin_url: str, database: str) -> set[int]:
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return {int(row[0]) for row in rows}


def snapshot_sync(root: int, admin_url: str, database: str) -> dict[str, float]:
    """Cumulative CPU seconds: 'runner' (tree of `root`), 'postgres', 'rabbitmq'."""
    out = {"runner": _seconds(descendants(_parents(), root))}
    with contextlib.suppress(psycopg.Error):
        out["postgres"] = _seconds(_backends(admin_url, database))
    beam = _comm_pids("beam.smp")
    if beam:
        out["rabbitmq"] = _seconds(beam)
    return out


async def snapshot(root: int, admin_url: str, database: str) -> dict[str, float]:
    return await trio.to_thread.run_sync(snapshot_sync, root, admin_url, database)
