"""`Runs`: admission, slots, controls, early cancels and the idle event, without I/O."""

from __future__ import annotations

import pytest
import trio

from attune.runs import SHUTDOWN_REASON, Runs


async def test_each_live_run_holds_its_own_slot_and_returns_it() -> None:
    runs = Runs(3)
    with runs.run(1) as (_, a), runs.run(2) as (_, b), runs.run(3) as (_, c):
        assert sorted((a, b, c)) == [0, 1, 2]
        assert runs.in_flight == 3
    assert runs.in_flight == 0
    with runs.run(4) as (_, again):
        assert again in {0, 1, 2}


async def test_a_cancel_before_the_run_is_remembered_and_applied_once() -> None:
    runs = Runs(1)
    assert runs.cancel(7) is False
    with runs.run(7) as (control, _):
        assert control.reason == "Execution cancelled by user"
    with runs.run(7) as (control, _):
        assert control.reason is None


async def test_a_cancel_during_the_run_reaches_its_control() -> None:
    runs = Runs(1)
    with runs.run(7) as (control, _):
        assert runs.cancel(7) is True
        assert control.reason is not None


async def test_early_cancel_memory_is_bounded_and_forgets_the_oldest() -> None:
    runs = Runs(1, early_cancel_memory=2)
    for execution_id in (1, 2, 3):
        runs.cancel(execution_id)
    with runs.run(1) as (control, _):
        assert control.reason is None
    with runs.run(3) as (control, _):
        assert control.reason is not None


async def test_cancel_all_gives_every_live_run_the_shutdown_reason() -> None:
    runs = Runs(2)
    with runs.run(1) as (a, _), runs.run(2) as (b, _):
        assert runs.cancel_all() == 2
        assert a.reason == b.reason == SHUTDOWN_REASON


async def test_wait_idle_returns_when_the_last_admitted_delivery_is_released() -> None:
    runs = Runs(2)
    await runs.wait_idle()  # idle from the start
    first, second = object(), object()
    await runs.admit(first)
    await runs.admit(second)
    released = trio.Event()

    async def waiter() -> None:
        await runs.wait_idle()
        released.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        runs.release(first)
        await trio.testing.wait_all_tasks_blocked()
        assert not released.is_set()
        runs.release(second)
    assert released.is_set() and runs.admitted == 0


async def test_admission_waits_for_capacity() -> None:
    runs = Runs(1)
    first, second = object(), object()
    await runs.admit(first)
    with trio.move_on_after(0.01) as scope:
        await runs.admit(second)
    assert scope.cancelled_caught
    runs.release(first)
    await runs.admit(second)
    assert runs.admitted == 1


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Runs(0)
