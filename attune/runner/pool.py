"""The warm pool: single-use sandboxes started before their execution is known.

Most of a short run's latency is the sandbox and the interpreter starting, and neither
depends on the execution. So the pool keeps `depth` sandboxes of each shape parked
(sandbox/parked.py: interpreter up, run() wrapper imported, blocked on stdin), and a run
whose sandbox a parked one can be takes it and hands it the code, parameters,
environment and secrets in one message (handoff.py). Refills run off the critical
path, in this task.

What stays true: a parked sandbox is made exactly like a cold one (namespaces,
seccomp, limits from the spawn chain, cgroup, attune-init as pid 1) and holds nothing
of any execution; each runs one action and is destroyed like a cold one.

A shape is what a sandbox is made of before its action: the runtime profile and, for a
pack's action, the pack directory and its Python environment (bound at their own
paths). Every profile's plain shape is always kept; a pack's shape gets a shelf the
first time one of its actions misses (that run goes cold), and so does an egress
shape (a profile, maybe a pack, and the egress policy): up to `EXTRA_SHAPES` of these at
once, the least recently used giving way. A parked sandbox of a pack is only handed a
run if the pack directory is still the one it bound: a re-loaded pack is swapped in by
rename, and its stale sandboxes are discarded.

An egress sandbox is parked with its network attached and its rules loaded
(Sandbox.park), and those rules hold the addresses its allowlisted names resolved to
when it was parked. So it serves a run only within `EGRESS_MAX_AGE` of the start of its
parking (before the names were resolved); older ones are replaced by the refill (and
discarded at take, should the refill be late), so no run gets rules older than that.
Re-loading the rules at handoff instead would still leave the /etc/hosts of
`dns: hosts` as it was at spawn, and would put the name resolution back on the run's
clock. An egress shelf without a run for `EGRESS_IDLE` is no longer refreshed (its
next run goes cold and fills it again).

uids: a parked sandbox needs its host uid from the start, and a slot can have one
sandbox running and the next parked, so the pool has uids of its own (`pool_uids`),
after the slots' and `attune exec`'s: depth x shapes parked plus one per slot in use.
Egress shapes count among the `EXTRA_SHAPES`, so the count is the same with egress. A
uid goes back to the pool only once its sandbox has been reaped and cleaned up.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from attune.log import log_event
from attune.runner.argv import PackMount
from attune.runner.egress import EgressPolicy
from attune.runner.profiles import Profile
from attune.runner.sandbox import RunSpec, Sandbox, _Box

log = logging.getLogger("attune.worker")

PARK_TIMEOUT = 30.0  # a sandbox that is not ready by then is killed
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
DISCARD_TIMEOUT = 20.0
EXTRA_SHAPES = 4  # pack and egress shapes with parked sandboxes at once (LRU goes)
EGRESS_MAX_AGE = 30.0  # seconds an egress sandbox's rules (its name resolution) serve
EGRESS_IDLE = 300.0  # an egress shelf without a run for this long is not re-parked

# profile, pack dir, pack environment, egress policy
ShapeKey = tuple[str, str | None, str | None, EgressPolicy | None]


def pool_uids(slot_uid_base: int, capacity: int, depth: int, profiles: int) -> range:
    """The pool's own host uids: after the slots (base .. base+capacity-1) and the one
    `attune exec` uses (base+capacity); enough for every shape's parked sandboxes and
    one taken sandbox per slot."""
    first = slot_uid_base + capacity + 1
    if depth <= 0:
        return range(first, first)
    return range(first, first + depth * (profiles + EXTRA_SHAPES) + capacity)


def parkable(profile: Profile) -> bool:
    """The launcher is Python: a profile whose sandbox has /usr bound can park."""
    return "/usr" in profile.mounts.ro_bind


def shape_key(spec: RunSpec) -> ShapeKey:
    pack = spec.pack
    return (
        spec.profile.name,
        pack.pack_dir if pack else None,
        pack.env_dir if pack else None,
        spec.network,
    )


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


@dataclass
class _Shelf:
    """The parked sandboxes of one shape, oldest first."""

    profile: Profile
    pack: PackMount | None = None
    network: EgressPolicy | None = None
    parked: list[_Parked] = field(default_factory=list)
    failures: int = 0
    retry_at: float = 0.0  # after a failed park: not before this (trio clock)
    used: float = 0.0  # last take or miss (trio clock): the LRU order of extra shelves

    def bound(self) -> tuple[int, int] | None:
        """The identity of the pack directory at its path now (None: no pack, or gone)."""
        return _identity(self.pack.pack_dir) if self.pack else None

    def expires(self, parked: _Parked) -> float:
        """When a parked sandbox stops being handed runs (trio clock)."""
        return parked.at + EGRESS_MAX_AGE if self.network is not None else float("inf")


@dataclass(frozen=True, eq=False)
class _Parked:
    box: _Box
    bound: tuple[int, int] | None  # the pack directory it bound (None: no pack)
    at: float  # when its parking began, before its names were resolved (trio clock)


class WarmPool:
    """Parked sandboxes per shape, refilled by `run`; trio tasks only, no locks."""

    def __init__(
        self,
        sandbox: Sandbox,
        profiles: Sequence[Profile],
        depth: int,
        uids: Sequence[int | None],
    ) -> None:
        self.sandbox = sandbox
        self.depth = depth
        self._shelves: dict[ShapeKey, _Shelf] = {
            (p.name, None, None, None): _Shelf(p) for p in profiles if parkable(p)
        }
        self._free: list[int | None] = list(uids)
        self._wanted = trio.Event()
        self._dead: list[_Box] = []  # off a shelf, never handed a run: the refill kills them
        self.taken = 0  # handoffs so far (metrics, tests)
        self.missed = 0  # runs that fitted but found their shelf empty or absent

    @property
    def parked(self) -> int:
        return sum(len(shelf.parked) for shelf in self._shelves.values())

    def take(self, spec: RunSpec) -> _Box | None:
        """A live parked sandbox for this run, or None (the run goes cold)."""
        if not parkable(spec.profile):
            return None
        key = shape_key(spec)
        shelf = self._shelves.get(key)
        if shelf is not None and shelf.profile != spec.profile:
            return None  # a profile of the same name but other limits: not this sandbox
        if shelf is None:
            shelf = self._add_shelf(key, spec)
        now = trio.current_time()
        shelf.used = now
        current = shelf.bound()
        while shelf.parked:
            parked = shelf.parked.pop(0)
            box = parked.box
            if box.alive() and parked.bound == current and now < shelf.expires(parked):
                self.taken += 1
                # Its replacement is parked once this sandbox is gone (`_give_back`),
                # after the run's answer: a refill holds the trio thread for a
                # millisecond or two and a core for tens, which the run would wait for.
                return box
            self._dead.append(box)  # died, its pack was re-loaded, or its rules are old
            self._wanted.set()
        self.missed += 1
        self._wanted.set()
        return None

    def _add_shelf(self, key: ShapeKey, spec: RunSpec) -> _Shelf:
        """A pack's or an egress shape's shelf, the least recently used giving way."""
        pack = spec.pack
        assert pack is not None or spec.network is not None  # plain shapes have shelves
        extra = [k for k in self._shelves if _extra(k)]
        if len(extra) >= EXTRA_SHAPES:
            oldest = min(extra, key=lambda k: self._shelves[k].used)
            self._dead += [parked.box for parked in self._shelves.pop(oldest).parked]
        shelf = _Shelf(
            spec.profile,
            PackMount(pack_dir=pack.pack_dir, action_path="", env_dir=pack.env_dir)
            if pack
            else None,
            spec.network,
        )
        self._shelves[key] = shelf
        return shelf

    def _give_back(self, uid: int | None) -> None:
        self._free.append(uid)
        self._wanted.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep every shelf full until cancelled; then kill what is still parked."""
        try:
            await self._fill()
            task_status.started()
            while True:
                wake = min(
                    [
                        *(s.retry_at for s in self._short()),
                        *(s.expires(p) for s in self._shelves.values() for p in s.parked),
                    ],
                    default=float("inf"),
                )
                with trio.move_on_at(wake):
                    await self._wanted.wait()
                self._wanted = trio.Event()
                await self._fill()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(DISCARD_TIMEOUT):
                for shelf in self._shelves.values():
                    self._dead += [parked.box for parked in shelf.parked]
                    shelf.parked.clear()
                await self._bury()

    def _short(self) -> list[_Shelf]:
        """Shelves to fill: an egress shelf idle for EGRESS_IDLE waits for its next run
        (which goes cold), rather than being re-parked every EGRESS_MAX_AGE for nothing."""
        now = trio.current_time()
        return [
            s
            for s in self._shelves.values()
            if len(s.parked) < self.depth
            and not (s.network is not None and now - s.used > EGRESS_IDLE)
        ]

    async def _bury(self) -> None:
        while self._dead:
            await self.sandbox.discard(self._dead.pop())

    def _expire(self) -> None:
        """Egress sandboxes past their age go (their rules may be stale): refilled."""
        now = trio.current_time()
        for shelf in self._shelves.values():
            self._dead += [p.box for p in shelf.parked if now >= shelf.expires(p)]
            shelf.parked = [p for p in shelf.parked if now < shelf.expires(p)]

    async def _fill(self) -> None:
        """Park until every shelf holds `depth`, one at a time, emptiest shelf first."""
        self._expire()
        await self._bury()
        while self._free:
            now = trio.current_time()
            short = [s for s in self._short() if s.retry_at <= now]
            if not short:
                return
            shelf = min(short, key=lambda s: len(s.parked))
            uid = self._free.pop()
            bound = shelf.bound()
            began = trio.current_time()  # its age counts from its name resolution
            try:
                with trio.fail_after(PARK_TIMEOUT):
                    box = await self.sandbox.park(shelf.profile, shelf.pack, uid, shelf.network)
            except Exception as exc:  # a host problem: logged, retried with backoff
                self._free.append(uid)
                shelf.failures += 1
                delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (shelf.failures - 1))
                shelf.retry_at = trio.current_time() + delay
                log_event(
                    log,
                    "warm_pool_park_failed",
                    logging.WARNING,
                    profile=shelf.profile.name,
                    pack=shelf.pack.pack_dir if shelf.pack else None,
                    egress=shelf.network is not None,
                    error=str(exc) or type(exc).__name__,
                    retry_in_s=delay,
                )
                continue
            shelf.failures = 0
            box.on_closed = functools.partial(self._give_back, uid)
            if shelf in self._shelves.values():
                shelf.parked.append(_Parked(box, bound, began))
            else:  # evicted while this one started
                self._dead.append(box)
                await self._bury()


def _extra(key: ShapeKey) -> bool:
    """A shape whose shelf is made on demand: a pack's, or one with egress."""
    return key[1] is not None or key[3] is not None
