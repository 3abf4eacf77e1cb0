"""Load and soak: 2,000 executions through one worker at capacity 4, 1 in 50 hostile.

Every execution ends terminal exactly once, the worker's memory stays flat, and no
process or cgroup of a run is left on the host.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import pytest
import trio

from tests.integration.worker_kit import (
    HOSTILE_PACK,
    TERMINAL,
    Stack,
    host_processes_of_uids,
    rss_kib,
    slot_uid_block,
    uid_span,
)

pytestmark = [pytest.mark.services, pytest.mark.sandbox, pytest.mark.soak]

TOTAL = int(os.environ.get("ATTUNE_SOAK_TOTAL", "2000"))
HOSTILE = ["hostile.fork_bomb", "hostile.memory_bomb", "hostile.stdout_flood", "hostile.daemon"]


def _cgroup_leftovers() -> list[str]:
    """Per-run cgroups (v1 memory/pids or v2) that still exist."""
    roots = [Path("/sys/fs/cgroup/memory"), Path("/sys/fs/cgroup/pids")]
    if (Path("/sys/fs/cgroup") / "cgroup.controllers").exists():
        roots = [Path("/sys/fs/cgroup")]
    # os.walk, not Path.glob: other runs create and remove their cgroups meanwhile, and a
    # directory that vanishes mid-walk is skipped instead of failing the scan.
    return [
        os.path.join(directory, name)
        for root in roots
        for directory, children, _ in os.walk(root)
        if os.path.basename(directory) == "attune"
        for name in children
        if name.startswith("execution-")
    ]


async def test_two_thousand_executions_one_in_fifty_hostile_all_terminal_exactly_once(
    stack: Stack,
) -> None:
    cgroups_before = set(_cgroup_leftovers())
    await stack.load_pack(HOSTILE_PACK)
    uid_base = slot_uid_block(4)
    worker = await stack.start_worker(capacity=4, ATTUNE__SANDBOX__SLOT_UID_BASE=str(uid_base))
    assert worker.proc is not None
    pid = worker.proc.pid
    ids: dict[int, str] = {}
    rss_after_100 = 0
    expected_hostile = 0
    for i in range(TOTAL):
        if i % 50 == 49:
            ref = HOSTILE[(i // 50) % len(HOSTILE)]
            expected_hostile += 1
        else:
            ref = "hostile.echo_id"
        ids[await stack.submit(ref)] = ref
        if i == 100:
            # Let the first hundred finish, then take the baseline.
            first = list(ids)[:100]
            for execution_id in first:
                await stack.wait(execution_id, timeout=120)
            rss_after_100 = rss_kib(pid)
    statuses: dict[int, str] = {}
    samples: list[tuple[int, int]] = []
    with trio.move_on_after(900):
        pending = set(ids)
        while pending:
            samples.append((len(ids) - len(pending), rss_kib(pid)))
            for execution_id in list(pending)[:200]:
                row = await stack.db.get_execution(execution_id)
                if row is not None and row.status in TERMINAL:
                    statuses[execution_id] = row.status
                    pending.discard(execution_id)
                    if ids[execution_id] == "hostile.echo_id":
                        assert row.result["data"] == {"execution_id": str(execution_id)}
            await trio.sleep(0.5)
    assert len(statuses) == len(ids), f"{len(ids) - len(statuses)} executions not terminal"
    started = stack.runs_started()
    assert all(started[i] == 1 for i in ids), "an execution ran twice or never"
    trivial = Counter(s for i, s in statuses.items() if ids[i] == "hostile.echo_id")
    assert trivial == Counter({"completed": len(ids) - expected_hostile})
    hostile = Counter(s for i, s in statuses.items() if ids[i] != "hostile.echo_id")
    assert sum(hostile.values()) == expected_hostile
    await trio.sleep(1.0)
    rss_end = rss_kib(pid)
    print(
        f"soak: {len(ids)} executions, hostile {dict(hostile)}, RSS after 100 "
        f"{rss_after_100} KiB, at end {rss_end} KiB; (done, KiB): {samples[::10]}"
    )
    assert rss_end - rss_after_100 < 20 * 1024
    assert host_processes_of_uids(uid_base, uid_base + 4) == []
    # Parked sandboxes (a warm pool) live as long as the worker: stop it, then nothing
    # of any sandbox may be left, running or parked.
    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit() == 0
    assert host_processes_of_uids(uid_base, uid_base + uid_span(4)) == []
    with trio.move_on_after(5):
        while set(_cgroup_leftovers()) - cgroups_before:
            await trio.sleep(0.1)
    assert set(_cgroup_leftovers()) - cgroups_before == set()
