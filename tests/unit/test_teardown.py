"""Teardown: run dirs and cgroups are removed after the answer, never lost."""

from __future__ import annotations

import threading

import trio

from attune.runner.teardown import Teardown


async def test_without_a_running_teardown_the_caller_removes_inline() -> None:
    assert Teardown().defer(lambda: None) is False


async def test_deferred_jobs_run_off_the_event_loop_thread() -> None:
    teardown = Teardown()
    ran: list[int] = []
    done = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def job() -> None:
        ran.append(threading.get_ident())
        trio.from_thread.run_sync(done.set, trio_token=token)

    async with trio.open_nursery() as nursery:
        await nursery.start(teardown.run)
        assert teardown.defer(job) is True
        await done.wait()
        nursery.cancel_scope.cancel()
    assert ran and ran[0] != threading.get_ident()


async def test_shutdown_finishes_what_was_queued_and_then_refuses() -> None:
    teardown = Teardown()
    ran: list[str] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(teardown.run)
        for name in ("a", "b", "c"):
            assert teardown.defer(lambda name=name: ran.append(name))
        nursery.cancel_scope.cancel()  # before the task took them
    assert sorted(ran) == ["a", "b", "c"]
    assert teardown.defer(lambda: None) is False


async def test_a_full_queue_hands_the_job_back() -> None:
    teardown = Teardown(limit=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(teardown.run)
        # Without yielding, at most one job reaches the waiting task and one the queue.
        accepted = [teardown.defer(lambda: None) for _ in range(3)]
        assert accepted[0] is True and accepted[-1] is False
        nursery.cancel_scope.cancel()
