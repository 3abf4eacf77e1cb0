"""`Teardown`: removes finished runs' directories and cgroups after their answer is out.

Removing a run dir and rmdir-ing its cgroups took ~12 ms per run on a loaded 2-core
machine, all of it between the sandbox's exit and the execution's recorded end. Nothing
of the answer depends on it: the sandbox's processes are dead (its pid namespace went
with its init), the run dir and the cgroup names are never reused, and the files that
hold execution data (result, parameters, secrets) are unlinked inline before the
answer. So the worker hands the rest to this long-lived task, which does it in a thread
off the critical path. Without a running `Teardown` (tests, `attune exec`), or when its
queue is full or closed, the sandbox removes everything inline as before.

On shutdown the queue is closed and what is left is removed before the task returns.

A sandbox whose init has reported the action's end (the end record, resultpipe.py) is
answered before its pid namespace has finished tearing down: waiting for bwrap to exit,
reaping its init and giving its uid back then happen here too, as `defer_tail` tasks in
this task's nursery (at most TAILS_LIMIT at once; beyond that the run does it inline).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

QUEUE_LIMIT = 64  # a full queue means teardown cannot keep up: fall back to inline
TAILS_LIMIT = 64

Job = Callable[[], None]
Tail = Callable[[], Awaitable[None]]


class Teardown:
    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        self._send, self._receive = trio.open_memory_channel[Job](limit)
        self._nursery: trio.Nursery | None = None  # set while `run` runs
        self._tails = 0

    def defer_tail(self, tail: Tail) -> bool:
        """Run the async `tail` of a run after its answer; False: the caller runs it."""
        if self._nursery is None or self._tails >= TAILS_LIMIT:
            return False
        self._tails += 1
        self._nursery.start_soon(self._run_tail, tail)
        return True

    async def _run_tail(self, tail: Tail) -> None:
        try:
            with trio.CancelScope(shield=True):  # each tail bounds its own waits
                await tail()
        finally:
            self._tails -= 1

    def defer(self, job: Job) -> bool:
        """Queue `job`; False when the caller must run it itself (not running, full, closed)."""
        if self._nursery is None:
            return False
        try:
            self._send.send_nowait(job)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                async for job in self._receive:
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(job)
        finally:
            self._nursery = None
            self._send.close()
            while True:  # shutdown: finish what was queued, bounded by the queue's size
                try:
                    job = self._receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                job()
