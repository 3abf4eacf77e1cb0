"""`attune exec` through a warm pool: the egress run takes a parked sandbox.

The egress tests run this instead of `attune exec` when ATTUNE_TEST_WARM_POOL is set
(and for the tests of the parked path): the run's first look at the pool makes its
shape's shelf, as a worker's first egress run of a shape does (that run would go cold);
this waits until a sandbox is parked there, with its network attached, and then the
run takes it. The --with-status output gains `pool_taken` (how many runs took a parked
sandbox: 1), so a test can see which path it pinned.
"""

import sys
from typing import Any

import trio

from attune.cli import exec_cmd
from attune.runner import sandbox as sandbox_mod
from attune.runner.pool import WarmPool, pool_uids, shape_key

PARK_WAIT = 60.0
cold_run = sandbox_mod.Sandbox.run
cold_run_file = exec_cmd.run_file
taken = {"runs": 0}


async def pooled_run(self: sandbox_mod.Sandbox, spec: sandbox_mod.RunSpec, **kw: Any) -> Any:
    if self.pool is not None or spec.network is None:
        return await cold_run(self, spec, **kw)
    slot = kw.get("slot", 0)  # exec's uid is base + capacity: the pool's come after it
    uids = pool_uids(self.slot_uid_base, slot, 1, 1)
    pool = WarmPool(self, [], 1, list(uids) if self.slot_uid(0) is not None else [None] * len(uids))
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        self.pool = pool
        try:
            assert pool.take(spec) is None  # the first run of its shape makes the shelf
            with trio.fail_after(PARK_WAIT):
                while not pool._shelves[shape_key(spec)].parked:
                    await trio.sleep(0.01)
            outcome = await cold_run(self, spec, **kw)
        finally:
            self.pool = None
            taken["runs"] = pool.taken
            nursery.cancel_scope.cancel()  # the pool kills what it parked since
    return outcome


async def run_file(*args: Any, **kw: Any) -> dict[str, Any]:
    out = await cold_run_file(*args, **kw)
    return {**out, "pool_taken": taken["runs"]}


sandbox_mod.Sandbox.run = pooled_run  # type: ignore[method-assign]
exec_cmd.run_file = run_file  # type: ignore[assignment]
sys.exit(exec_cmd.main(sys.argv[1:]))
