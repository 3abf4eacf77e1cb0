"""The warm pool: single-use sandboxes started before their execution is known.

Most of a short run's latency is the sandbox and the interpreter starting, and neither
depends on the execution. So the pool keeps `depth` sandboxes of each runtime profile
parked (sandbox/parked.py: interpreter up, run() wrapper imported, blocked on stdin),
and a run whose sandbox a parked one can be takes it and hands it the code, parameters,
environment and secrets in one message (handoff.py). The refill runs off the critical
path, in this task.

What stays true: a parked sandbox is made exactly like a cold one (namespaces,
seccomp, limits from the spawn chain, cgroup, attune-init as pid 1) and holds nothing
of any execution; each runs one action and is destroyed like a cold one. A run takes a
parked sandbox only if it would get the same sandbox cold: same profile, no egress
network (that is set up per run), no pack (its directory and environment are bound at
their own paths). Anything else runs cold, as does everything when the pool is empty.

uids: a parked sandbox needs its host uid from the start, and a slot can have one
sandbox running and the next parked, so the pool has uids of its own (`pool_uids`),
after the slots' and `attune exec`'s: depth x profiles parked plus one per slot in use.
A uid goes back to the pool only once its sandbox has been reaped and cleaned up.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from attune.log import log_event
from attune.runner.profiles import Profile
from attune.runner.sandbox import RunSpec, Sandbox, _Box

log = logging.getLogger("attune.worker")

PARK_TIMEOUT = 30.0  # a sandbox that is not ready by then is killed
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
DISCARD_TIMEOUT = 20.0


def pool_uids(slot_uid_base: int, capacity: int, depth: int, profiles: int) -> range:
    """The pool's own host uids: after the slots (base .. base+capacity-1) and the one
    `attune exec` uses (base+capacity); enough for every profile's parked sandboxes and
    one taken sandbox per slot."""
    first = slot_uid_base + capacity + 1
    return range(first, first + depth * profiles + capacity) if depth > 0 else range(first, first)


def parkable(profile: Profile) -> bool:
    """The launcher is Python: a profile whose sandbox has /usr bound can park."""
    return "/usr" in profile.mounts.ro_bind


def fits(spec: RunSpec) -> bool:
    """Would a parked sandbox of the spec's profile be the sandbox it gets cold?"""
    return spec.network is None and spec.pack is None


@dataclass
class _Shelf:
    """The parked sandboxes of one profile, oldest first."""

    profile: Profile
    parked: list[_Box] = field(default_factory=list)
    failures: int = 0


class WarmPool:
    """Parked sandboxes per profile, refilled by `run`; trio tasks only, no locks."""

    def __init__(
        self,
        sandbox: Sandbox,
        profiles: Sequence[Profile],
        depth: int,
        uids: Sequence[int | None],
    ) -> None:
        self.sandbox = sandbox
        self.depth = depth
        self._shelves = {p.name: _Shelf(p) for p in profiles if parkable(p)}
        self._free: list[int | None] = list(uids)
        self._wanted = trio.Event()
        self._dead: list[_Box] = []  # taken off a shelf dead: discarded by the refill
        self.taken = 0  # handoffs so far (metrics, tests)
        self.missed = 0  # runs that fit but found the shelf empty

    @property
    def parked(self) -> int:
        return sum(len(shelf.parked) for shelf in self._shelves.values())

    def take(self, spec: RunSpec) -> _Box | None:
        """A live parked sandbox for this run, or None (the run goes cold)."""
        shelf = self._shelves.get(spec.profile.name)
        if shelf is None or shelf.profile != spec.profile or not fits(spec):
            return None
        while shelf.parked:
            box = shelf.parked.pop(0)
            self._wanted.set()
            if box.alive():
                self.taken += 1
                return box
            self._dead.append(box)
        self.missed += 1
        return None

    def _give_back(self, uid: int | None) -> None:
        self._free.append(uid)
        self._wanted.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep every shelf full until cancelled; then kill what is still parked."""
        try:
            await self._fill()
            task_status.started()
            while True:
                await self._wanted.wait()
                self._wanted = trio.Event()
                await self._fill()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(DISCARD_TIMEOUT):
                for shelf in self._shelves.values():
                    while shelf.parked:
                        await self.sandbox.discard(shelf.parked.pop())
                await self._bury()

    async def _bury(self) -> None:
        while self._dead:
            await self.sandbox.discard(self._dead.pop())

    async def _fill(self) -> None:
        """Park until every shelf holds `depth` (one at a time, fairest first)."""
        await self._bury()
        while self._free:
            shelf = min(
                (s for s in self._shelves.values() if len(s.parked) < self.depth),
                key=lambda s: len(s.parked),
                default=None,
            )
            if shelf is None:
                return
            uid = self._free.pop()
            try:
                with trio.fail_after(PARK_TIMEOUT):
                    box = await self.sandbox.park(shelf.profile, uid)
            except Exception as exc:  # a host problem: logged, retried with backoff
                self._free.append(uid)
                shelf.failures += 1
                delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (shelf.failures - 1))
                log_event(
                    log,
                    "warm_pool_park_failed",
                    logging.WARNING,
                    profile=shelf.profile.name,
                    error=str(exc) or type(exc).__name__,
                    retry_in_s=delay,
                )
                await trio.sleep(delay)
                continue
            shelf.failures = 0
            box.on_closed = functools.partial(self._give_back, uid)
            shelf.parked.append(box)
