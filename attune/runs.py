"""`Runs`: the worker's per-run bookkeeping, owned by one object.

It holds what concurrent runs share: the capacity limiter that admits deliveries, the
slot numbers (a slot picks the sandbox's host uid, so two live runs never share one),
the `RunControl` of each live run (a cancel request or a shutdown reaches the run
through it), the memory of cancels that arrived before their dispatch, and an event
that fires when nothing is admitted any more (the drain waits on it, no polling).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import trio

from attune.log import log_event
from attune.runner.supervise import RunControl

log = logging.getLogger("attune.worker")

SHUTDOWN_REASON = "Execution cancelled: the worker shut down before it finished"
EARLY_CANCEL_MEMORY = 10_000


class Runs:
    """Admission, slots and controls of the runs in flight; trio tasks only, no locks."""

    def __init__(self, capacity: int, *, early_cancel_memory: int = EARLY_CANCEL_MEMORY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.limiter = trio.CapacityLimiter(capacity)
        self._free = list(range(capacity - 1, -1, -1))
        self._controls: dict[int, RunControl] = {}
        self._early: dict[int, float] = {}
        self._early_memory = early_cancel_memory
        self._idle = trio.Event()
        self._idle.set()

    @property
    def capacity(self) -> int:
        return int(self.limiter.total_tokens)

    @property
    def in_flight(self) -> int:
        """Runs that hold a slot now (admitted deliveries may not have claimed yet)."""
        return len(self._controls)

    @property
    def admitted(self) -> int:
        return int(self.limiter.borrowed_tokens)

    # --- admission (one token per delivery, from arrival until its handling ends) -------

    async def admit(self, owner: object) -> None:
        """Wait for capacity on behalf of `owner` (a delivery); cancellable."""
        await self.limiter.acquire_on_behalf_of(owner)
        self._idle = trio.Event() if self._idle.is_set() else self._idle

    def release(self, owner: object) -> None:
        self.limiter.release_on_behalf_of(owner)
        if self.limiter.borrowed_tokens == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no delivery is admitted (every run has finished and recorded)."""
        await self._idle.wait()

    # --- one run -------------------------------------------------------------------------

    @contextmanager
    def run(self, execution_id: int) -> Iterator[tuple[RunControl, int]]:
        """A control and a free slot for one claimed execution, returned on exit.

        A cancel remembered for this execution applies at once, so the run ends
        `cancelled` without starting.
        """
        control = RunControl()
        if self._early.pop(execution_id, None) is not None:
            control.cancel()
        slot = self._free.pop()  # admission bounds live runs, so a slot is always free
        self._controls[execution_id] = control
        try:
            yield control, slot
        finally:
            self._controls.pop(execution_id, None)
            self._free.append(slot)

    def cancel(self, execution_id: int) -> bool:
        """Cancel a live run (True), or remember the request for its dispatch (False)."""
        control = self._controls.get(execution_id)
        if control is not None:
            control.cancel()
            return True
        self._early[execution_id] = trio.current_time()
        if len(self._early) > self._early_memory:
            oldest = min(self._early, key=self._early.__getitem__)
            self._early.pop(oldest)
            log_event(log, "early_cancel_forgotten", logging.WARNING, execution_id=oldest)
        return False

    def cancel_all(self, reason: str = SHUTDOWN_REASON) -> int:
        """Cancel every live run with `reason`; how many there were."""
        controls = list(self._controls.values())
        for control in controls:
            control.cancel(reason)
        return len(controls)
