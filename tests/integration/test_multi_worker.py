"""Two and three workers on one machine share the load submitted through `schedule`."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.integration.worker_kit import Stack, slot_uid_block

pytestmark = [pytest.mark.services, pytest.mark.sandbox]


@pytest.mark.parametrize("workers", [2, 3])
async def test_workers_share_the_load_evenly_and_each_capacity_holds(
    stack: Stack, workers: int
) -> None:
    capacity = 2
    started = [
        await stack.start_worker(
            capacity=capacity, ATTUNE__SANDBOX__SLOT_UID_BASE=str(slot_uid_block(capacity))
        )
        for _ in range(workers)
    ]
    names = {await stack.worker_id(w.name): w.name for w in started}
    total = 12 * workers
    ids = [await stack.submit("demo.sleep", {"seconds": 0.5}) for _ in range(total)]
    statuses = await stack.wait_all(ids, 120)
    assert Counter(statuses.values()) == Counter({"completed": total})
    rows = [await stack.db.get_execution(i) for i in ids]
    spread = Counter(names[r.worker] for r in rows if r and r.worker)
    assert set(spread) == set(names.values())
    assert max(spread.values()) - min(spread.values()) <= 2, spread
    peaks = stack.peak_running(ids)  # one snapshot of every run's interval
    assert set(peaks) == set(names)
    assert all(count <= capacity for count in peaks.values()), peaks
