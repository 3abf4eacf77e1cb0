"""The cost of egress: the same python action through `Sandbox.run`, without a network
and with egress (default policy, `dns: off`), in a cold sandbox and in a parked one of
the warm pool (`warm` and `parked`), interleaved round-robin.

Two latencies: the wall time of the whole run (`Sandbox.run` called to returned), and
the start delay (from the call to the first line of the action, which reports
`time.time()` as its result; the clock is the same inside the sandbox). CPU is this
process's (all threads: libnftables, netlink) plus its reaped children's (bwrap and
the action, slirp4netns) per run. The egress action opens no connection: the
only packets are the sandbox's own neighbour discovery with the user-mode gateway,
which never leaves slirp4netns. Before every measured run the pool's refills are done
(its python and egress shelves are full), so a park's cost never lands in a measured
run; a parked run's CPU is its own, without its park (paid off the critical path).
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
import time
from typing import Any

import trio

from attune.runner.egress import EgressPolicy
from attune.runner.pool import WarmPool, shape_key
from attune.runner.sandbox import RunSpec

from . import local
from .stats import round_robin

# The first line of the action takes the time: the start delay of the run.
START_ACTION = b"import time\nSTARTED = time.time()\n\n\ndef run():\n    return STARTED\n"


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


async def measure(env: local.LocalEnv, rounds: int, seed: int) -> dict[str, Any]:
    plain = RunSpec(
        profile=env.profiles["python"],
        code=START_ACTION,
        code_name=local.PY_NAME,
        label="bench",
    )
    with_egress = dataclasses.replace(plain, network=EgressPolicy(dns="off"))
    specs = {"none": plain, "egress": with_egress, "warm": plain, "parked": with_egress}
    wall: dict[str, list[float]] = {name: [] for name in specs}
    start: dict[str, list[float]] = {name: [] for name in specs}
    cpu: dict[str, list[float]] = {name: [] for name in specs}
    pool = env.pool
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run)
        pool.take(with_egress)  # makes the egress shelf, as a worker's first egress run does
        for index, name in round_robin(list(specs), rounds, warmup=2, seed=seed):
            await _refilled(pool, [plain, with_egress])
            sandbox = env.warm if name in ("warm", "parked") else env.sandbox
            taken = pool.taken
            cpu0, t0, called = _cpu_seconds(), time.perf_counter(), time.time()
            outcome = await sandbox.run(specs[name], timeout=local.CASE_TIMEOUT)
            seconds, cpu_seconds = time.perf_counter() - t0, _cpu_seconds() - cpu0
            began = outcome.result.get("data")
            if outcome.status != "completed" or not isinstance(began, float):
                raise local.CaseError(f"egress bench ({name}): {outcome.status}: {outcome.result}")
            if (pool.taken > taken) != (sandbox is env.warm):
                raise local.CaseError(f"egress bench ({name}): ran in the wrong kind of sandbox")
            if index >= 0:
                wall[name].append(seconds * 1000)
                start[name].append((began - called) * 1000)
                cpu[name].append(cpu_seconds * 1000)
        nursery.cancel_scope.cancel()
    out: dict[str, Any] = {
        name: {
            "runs": len(wall[name]),
            "wall_ms_median": statistics.median(wall[name]),
            "wall_ms_p90": statistics.quantiles(wall[name], n=10)[-1],
            "start_ms_median": statistics.median(start[name]),
            "cpu_ms_median": statistics.median(cpu[name]),
        }
        for name in specs
    }
    out["extra_wall_ms_median"] = out["egress"]["wall_ms_median"] - out["none"]["wall_ms_median"]
    out["extra_start_ms_median"] = out["egress"]["start_ms_median"] - out["none"]["start_ms_median"]
    out["extra_cpu_ms_median"] = out["egress"]["cpu_ms_median"] - out["none"]["cpu_ms_median"]
    out["parked_extra_wall_ms_median"] = (
        out["parked"]["wall_ms_median"] - out["warm"]["wall_ms_median"]
    )
    out["parked_extra_start_ms_median"] = (
        out["parked"]["start_ms_median"] - out["warm"]["start_ms_median"]
    )
    out["target_extra_wall_ms"] = 15.0
    return out


async def _refilled(pool: WarmPool, specs: list[RunSpec], timeout: float = 30.0) -> None:
    """Wait until the shelves of `specs` are full again (the refill is off the clock)."""
    shelves = [pool._shelves[shape_key(spec)] for spec in specs]
    with trio.move_on_after(timeout):
        while any(len(shelf.parked) < pool.depth for shelf in shelves):
            await trio.sleep(0.005)
        return
    raise local.CaseError("egress bench: the warm pool did not refill (see its log)")


def format_report(result: dict[str, Any]) -> str:
    lines = ["egress (Sandbox.run of a python action, no network vs egress, cold and parked):"]
    for name in ("none", "egress", "warm", "parked"):
        r = result[name]
        lines.append(
            f"  {name:<7} run median {r['wall_ms_median']:6.1f} ms  p90 {r['wall_ms_p90']:6.1f} ms"
            f"  action starts after {r['start_ms_median']:6.1f} ms"
            f"  CPU {r['cpu_ms_median']:5.1f} ms/run  ({r['runs']} runs)"
        )
    verdict = (
        "meets" if result["extra_wall_ms_median"] <= result["target_extra_wall_ms"] else "MISSES"
    )
    lines.append(
        f"  extra per egress run: {result['extra_wall_ms_median']:+.1f} ms latency (median; "
        f"target <= {result['target_extra_wall_ms']:.0f} ms: {verdict}), the action starting "
        f"{result['extra_start_ms_median']:+.1f} ms later, {result['extra_cpu_ms_median']:+.1f}"
        " ms CPU"
    )
    lines.append(
        f"  extra per parked egress run (parked vs warm): "
        f"{result['parked_extra_wall_ms_median']:+.1f} ms latency (median), the action "
        f"starting {result['parked_extra_start_ms_median']:+.1f} ms later"
    )
    return "\n".join(lines)
