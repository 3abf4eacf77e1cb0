"""Two and three workers on one machine share the load submitted through `schedule`."""

from __future__ import annotations

from collections import Counter

import pytest
import trio

from tests.integration.worker_kit import Stack

pytestmark = [pytest.mark.services, pytest.mark.sandbox]


@pytest.mark.parametrize("workers", [2, 3])
async def test_workers_share_the_load_evenly_and_each_capacity_holds(
    stack: Stack, workers: int
) -> None:
    capacity = 2
    started = [
        await stack.start_worker(
            capacity=capacity, ATTUNE__SANDBOX__SLOT_UID_BASE=str(250000 + 100 * i)
        )
        for i in range(workers)
    ]
    names = {await stack.worker_id(w.name): w.name for w in started}
    total = 12 * workers
    ids = [await stack.submit("demo.sleep", {"seconds": 0.5}) for _ in range(total)]
    peak: Counter[int] = Counter()
    with trio.move_on_after(120):
        while True:
            # One query per poll: concurrency is judged from one snapshot.
            running_rows = await stack.db.list_executions(status="running", limit=1000)
            running = Counter(r.worker for r in running_rows if r.id in set(ids))
            for worker_id, count in running.items():
                peak[worker_id] = max(peak[worker_id], count)
            done = await stack.db.list_executions(status="completed", limit=1000)
            if len({r.id for r in done} & set(ids)) == total:
                break
            await trio.sleep(0.05)
    rows = [await stack.db.get_execution(i) for i in ids]
    assert Counter(r.status for r in rows if r) == Counter({"completed": total})
    spread = Counter(names[r.worker] for r in rows if r and r.worker)
    assert set(spread) == set(names.values())
    assert max(spread.values()) - min(spread.values()) <= 2, spread
    assert all(count <= capacity for count in peak.values()), peak
