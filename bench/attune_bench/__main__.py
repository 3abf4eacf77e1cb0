"""scripts/bench [--quick] [--json FILE]: how fast the worker is, against its targets.

One process measures everything, so ratios hold on a noisy machine: the local cases
(floors, runner, `attune exec`) are interleaved round-robin, the floor spawn rate at
concurrency N is measured right around the worker's throughput run at capacity N
(half before, half after), and every target compares numbers taken in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import trio

from attune.errors import AttuneError
from attune.runner import host

from . import e2e, egress, local
from .cleanup import Cleanup
from .compare import (
    SIDE_BY_SIDE_HEADER,
    SPAN_LABELS,
    CaseLine,
    CpuShare,
    side_by_side,
    timing_spans,
    to_csv,
)
from .stats import (
    Row,
    Summary,
    build_targets,
    format_cases,
    format_table,
    format_targets,
    rate,
    round_robin,
    steady_rate,
)

CAPACITIES = (1, 2, 4)


@dataclass(frozen=True)
class Plan:
    rounds: int
    warmup: int
    latency_runs: int  # per interpreter
    throughput_n: int
    e2e: bool
    seed: int
    egress: bool = True
    only_egress: bool = False
    compare: bool = False  # Celery cases, plain bwrap floor, chart (requirements-bench.lock)
    timing: bool = False  # the capacity-1 worker logs execution_timing (debug level)
    warm_pool: int = 1  # the workers' sandbox.warm_pool; >0 also runs cold comparisons
    latency_gap: float = 0.1  # idle seconds before each latency run (pool on and off)


@dataclass
class Results:
    samples: dict[str, list[float]] = field(default_factory=dict)  # ms
    labels: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (section, label)
    errors: dict[str, str] = field(default_factory=dict)
    throughput: dict[int, dict[str, Any]] = field(default_factory=dict)
    throughput_cold: dict[int, dict[str, Any]] = field(default_factory=dict)  # pool off
    pool_idle: dict[str, Any] = field(default_factory=dict)  # an idle worker's parked sandboxes
    floor_rates: dict[int, dict[str, Any]] = field(default_factory=dict)
    memory: dict[int, dict[str, float | None]] = field(default_factory=dict)
    workers: list[dict[str, Any]] = field(default_factory=list)
    egress: dict[str, Any] = field(default_factory=dict)
    compare: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False

    def add(self, name: str, seconds: float) -> None:
        self.samples.setdefault(name, []).append(seconds * 1000)

    def summaries(self) -> dict[str, Summary]:
        return {name: Summary.of(v) for name, v in self.samples.items() if v}

    def rates(self) -> dict[str, float]:
        out = {f"floor_python_c{c}": r["per_second"] for c, r in self.floor_rates.items()}
        out |= {f"worker_c{c}": r["per_second"] for c, r in self.throughput.items()}
        return out


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --- machine -------------------------------------------------------------------------------


def _first(path: str, prefix: str) -> str | None:
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _os_name() -> str:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME", platform.platform())
    except OSError:
        return platform.platform()


def machine() -> dict[str, Any]:
    bwrap = shutil.which("bwrap")
    version = None
    if bwrap:
        version = subprocess.run(
            [bwrap, "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _first("/proc/cpuinfo", "model name"),
        "mem_total": _first("/proc/meminfo", "MemTotal"),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "bwrap": version,
        "uid": os.geteuid(),
        "loadavg_start": os.getloadavg(),
    }


# --- phases --------------------------------------------------------------------------------


async def run_local(env: local.LocalEnv, plan: Plan, results: Results) -> None:
    cases = {case.name: case for case in local.cases(env)}
    for case in cases.values():
        results.labels[case.name] = (case.section, case.label)
    order = round_robin(list(cases), plan.rounds, warmup=plan.warmup, seed=plan.seed)
    async with trio.open_nursery() as nursery:
        await nursery.start(env.pool.run)  # the warm cases' parked sandboxes
        await _run_cases(order, cases, plan, results)
        nursery.cancel_scope.cancel()


async def _run_cases(
    order: list[tuple[int, str]], cases: dict[str, local.Case], plan: Plan, results: Results
) -> None:
    last_round = None
    for index, name in order:
        if name in results.errors:
            continue
        if index != last_round and index >= 0 and (index % 10 == 0 or index == plan.rounds - 1):
            progress(f"local cases: round {index + 1}/{plan.rounds}")
        last_round = index
        try:
            seconds = await cases[name].run()
        except local.CaseError as exc:
            results.errors[name] = str(exc)
            progress(f"case {name} failed, dropped: {exc}")
            continue
        if index >= 0:
            results.add(name, seconds)


@dataclass
class FloorRun:
    seconds: float = 0.0
    spawner_cpu: float = 0.0  # this process (all threads), seconds
    sandbox_cpu: float = 0.0  # its reaped children: every bwrap and what ran inside


async def floor_rate(env: local.LocalEnv, concurrency: int, count: int, into: FloorRun) -> None:
    """`count` sandboxed `python3 -c pass` on `concurrency` slots at once, added to `into`."""
    profile = env.profiles["python"]
    command = [local.SYSTEM_PYTHON, "-c", "pass"]
    remaining = count
    for slot in range(concurrency):
        env.layout(slot)

    async def lane(slot: int) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await local.run_sandboxed(env, profile, command, slot=slot)

    before = os.times()
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for slot in range(concurrency):
            nursery.start_soon(lane, slot)
    into.seconds += time.perf_counter() - started
    after = os.times()
    into.spawner_cpu += (after.user + after.system) - (before.user + before.system)
    into.sandbox_cpu += (after.children_user + after.children_system) - (
        before.children_user + before.children_system
    )


async def run_e2e(
    env: local.LocalEnv, plan: Plan, results: Results, root: Path, cleanup: Cleanup
) -> None:
    progress("end to end: database, vhost, packs")
    async with e2e.open_stack(root, cleanup) as stack:
        for capacity in CAPACITIES:
            progress(f"end to end: worker at capacity {capacity}")
            timing = plan.timing and capacity == CAPACITIES[0]
            worker = await stack.start_worker(capacity, timing=timing, warm_pool=plan.warm_pool)
            await trio.sleep(1.0)
            memory: dict[str, float | None] = {"idle": worker.rss()}
            results.memory[capacity] = memory
            if capacity == CAPACITIES[0] and plan.warm_pool:
                results.pool_idle = await idle_pool_cost(worker, plan.warm_pool)
            if capacity == CAPACITIES[0]:
                await latency(stack, plan, results)
                if timing:
                    add_spans(results, worker.log_path.read_text(errors="replace"))
            memory["before_throughput"] = worker.rss()
            half = plan.throughput_n // 2
            floor = FloorRun()
            await floor_rate(env, capacity, half, floor)
            progress(f"end to end: {plan.throughput_n} queued executions")
            run = await e2e.throughput(stack, worker, plan.throughput_n)
            await floor_rate(env, capacity, plan.throughput_n - half, floor)
            await trio.sleep(0.5)
            memory["peak"] = max(run.rss_samples, default=None)
            memory["after"] = worker.rss()
            results.floor_rates[capacity] = {
                "count": plan.throughput_n,
                "seconds": floor.seconds,
                "per_second": rate(plan.throughput_n, floor.seconds),
                "spawner_cpu_ms_per_run": floor.spawner_cpu * 1000 / plan.throughput_n,
                "sandbox_cpu_ms_per_run": floor.sandbox_cpu * 1000 / plan.throughput_n,
            }
            results.throughput[capacity] = throughput_row(run)
            await worker.stop()
            results.workers.append(
                e2e.summary_of_worker(worker) | {"exit_code": worker.proc.returncode}
            )
            if plan.warm_pool and capacity in COLD_COMPARED:
                await run_cold(stack, plan, results, capacity)


COLD_COMPARED = (1, 2)  # capacities also measured with the warm pool off
IDLE_SECONDS = 5.0


async def idle_pool_cost(worker: e2e.WorkerProc, depth: int) -> dict[str, Any]:
    """The parked sandboxes of an idle worker: memory, and CPU over IDLE_SECONDS."""

    def own_cpu(pids: list[int]) -> float:
        return sum(cpu[0] for pid in pids if (cpu := e2e.cpu_seconds(pid)) is not None)

    pids = e2e.children_of(worker.proc.pid)
    worker_before, parked_before = e2e.cpu_seconds(worker.proc.pid), own_cpu(pids)
    await trio.sleep(IDLE_SECONDS)
    worker_after, parked_after = e2e.cpu_seconds(worker.proc.pid), own_cpu(pids)
    cost: dict[str, Any] = {"depth": depth, **e2e.pool_cost(worker.proc.pid)}
    cost["parked_cpu_ms_per_s"] = (parked_after - parked_before) * 1000 / IDLE_SECONDS
    if worker_before and worker_after:
        cost["worker_cpu_ms_per_s"] = (worker_after[0] - worker_before[0]) * 1000 / IDLE_SECONDS
    return cost


def throughput_row(run: e2e.Throughput) -> dict[str, Any]:
    return {
        "count": run.count,
        "seconds": run.seconds,
        "failed": run.failed,
        "per_second": rate(run.count, run.seconds),
        "steady_per_second": steady_rate(run.finish_times),
        "worker_cpu_ms_per_execution": run.worker_cpu_ms,
        "sandbox_cpu_ms_per_execution": run.sandbox_cpu_ms,
        "cpu_ms": run.cpu.as_dict() if run.cpu else None,
        "load1": run.load1,
    }


async def run_cold(stack: e2e.Stack, plan: Plan, results: Results, capacity: int) -> None:
    """The same worker with `sandbox.warm_pool: 0`: the before of the warm pool."""
    progress(f"end to end: worker at capacity {capacity}, warm pool off")
    worker = await stack.start_worker(capacity, warm_pool=0)
    await trio.sleep(1.0)
    if capacity == CAPACITIES[0]:
        await latency(stack, plan, results, suffix="_cold", note=", warm pool off")
    run = await e2e.throughput(stack, worker, plan.throughput_n)
    results.throughput_cold[capacity] = throughput_row(run)
    await worker.stop()
    results.workers.append(e2e.summary_of_worker(worker) | {"exit_code": worker.proc.returncode})


async def latency(
    stack: e2e.Stack, plan: Plan, results: Results, *, suffix: str = "", note: str = ""
) -> None:
    progress(f"end to end: latency, {plan.latency_runs} runs per runtime{note}")
    names = {f"e2e_python{suffix}": "python", f"e2e_shell{suffix}": "shell"}
    section = "end to end (publish -> ExecutionCompleted)"
    for name, runtime in names.items():
        action = "bench.noop_py" if runtime == "python" else "bench.noop_sh"
        results.labels[name] = (section, f"{action}{note}")
        results.labels[f"{name}_outside"] = (
            section,
            f"{action} minus its in-sandbox duration_ms{note}",
        )
    order = round_robin(list(names), plan.latency_runs, warmup=2, seed=plan.seed)
    for index, name in order:
        # A request to a worker that is not saturated (the throughput runs measure a
        # saturated one): the same pause before every run, warm pool on or off.
        await trio.sleep(plan.latency_gap)
        seconds, done = await e2e.latency_one(stack, names[name])
        if index >= 0:
            results.add(name, seconds)
            if done.duration_ms is not None:
                results.add(f"{name}_outside", seconds - done.duration_ms / 1000)


async def main_async(plan: Plan, root: Path, cleanup: Cleanup, results: Results) -> None:
    async with trio.open_nursery() as nursery:

        async def watch(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                task_status.started()
                async for signum in signals:
                    progress(f"{signal.Signals(signum).name}: stopping and cleaning up")
                    results.interrupted = True
                    nursery.cancel_scope.cancel()

        await nursery.start(watch)
        try:
            env = local.make_env(root)
        except (local.CaseError, AttuneError) as exc:
            results.errors["setup"] = str(exc)
            progress(f"cannot measure: {exc}")
            nursery.cancel_scope.cancel()
            return
        if not plan.only_egress:
            progress(f"local cases: {plan.rounds} rounds (+{plan.warmup} warm-up), interleaved")
            await run_local(env, plan, results)
        if plan.egress:
            ok, detail = host.egress_detail()
            if ok and env.facts.is_root:
                progress(f"egress: {plan.rounds} rounds without and with egress, interleaved")
                try:
                    results.egress = await egress.measure(env, plan.rounds, plan.seed)
                except (local.CaseError, AttuneError) as exc:
                    results.errors["egress"] = str(exc)
            else:
                progress(f"egress skipped: {detail if not ok else 'needs root'}")
        if plan.e2e and not plan.only_egress:
            try:
                await run_e2e(env, plan, results, root, cleanup)
            except* (local.CaseError, AttuneError) as group:
                # Raised inside open_stack's nursery, so they arrive as a group.
                results.errors["e2e"] = "; ".join(str(exc) for exc in _leaves(group))
                progress(f"end to end failed: {results.errors['e2e']}")
        if plan.compare and not plan.only_egress:
            await run_compare(plan, results, root, cleanup)
        nursery.cancel_scope.cancel()


async def run_compare(plan: Plan, results: Results, root: Path, cleanup: Cleanup) -> None:
    from . import celery_case  # imports Celery: only with --compare

    progress(f"compare: plain bwrap floor, {plan.throughput_n} runs at concurrency 2")
    results.compare["plain_bwrap_rate"] = await celery_case.plain_bwrap_rate(plan.throughput_n)
    progress("compare: Celery 5 (subprocess, plain bwrap), PostgreSQL results")
    try:
        results.compare["celery"] = await celery_case.measure(
            root,
            cleanup,
            latency_runs=plan.latency_runs,
            throughput_n=plan.throughput_n,
            seed=plan.seed,
        )
    except* (local.CaseError, AttuneError) as group:
        results.errors["celery"] = "; ".join(str(exc) for exc in _leaves(group))
        progress(f"Celery comparison failed: {results.errors['celery']}")


def add_spans(results: Results, log_text: str) -> None:
    """The latency runs' execution_timing spans, as cases of their own."""
    section = "end to end, the worker's own spans (--timing; capacity 1, debug log)"
    for name, values in timing_spans(log_text).items():
        results.labels[f"span_{name}"] = (section, SPAN_LABELS.get(name, name))
        results.samples[f"span_{name}"] = values


def case_lines(results: Results) -> list[CaseLine]:
    """The side-by-side table: floors, the worker at capacity 2, Celery."""
    summaries = results.summaries()

    def share(value: dict[str, Any] | None) -> CpuShare | None:
        return CpuShare(value["runner"], value["postgres"], value["rabbitmq"]) if value else None

    lines = []
    if "plain_python" in summaries:
        lines.append(
            CaseLine("floor: python3 -c pass, bare", summaries["plain_python"], None, None, None)
        )
    plain = results.compare.get("plain_bwrap_rate")
    if plain:
        lines.append(
            CaseLine(
                "floor: plain bwrap python3 -I -c", None, plain["per_second"], None, plain["load1"]
            )
        )
    floor2 = results.floor_rates.get(2)
    if floor2:
        cpu = floor2["spawner_cpu_ms_per_run"] + floor2["sandbox_cpu_ms_per_run"]
        lines.append(
            CaseLine(
                "floor: worker's bwrap+seccomp python3 -c pass",
                summaries.get("bwrap_python"),
                floor2["per_second"],
                CpuShare(cpu, 0.0, 0.0),
                None,
            )
        )
    for suffix, runs, note in (
        ("", results.throughput, ""),
        ("_cold", results.throughput_cold, ", warm pool off"),
    ):
        run2 = runs.get(2, {})
        for name, label in (
            (f"e2e_python{suffix}", f"worker bench.noop_py{note}"),
            (f"e2e_shell{suffix}", f"worker bench.noop_sh{note}"),
        ):
            python = name.startswith("e2e_python")
            if name in summaries or (run2 and python):
                lines.append(
                    CaseLine(
                        label,
                        summaries.get(name),
                        run2.get("per_second") if python else None,
                        share(run2.get("cpu_ms")) if python else None,
                        run2.get("load1") if python else None,
                    )
                )
    for name, case in results.compare.get("celery", {}).items():
        latency = Summary.of(case["latency_ms"]) if case.get("latency_ms") else None
        lines.append(
            CaseLine(
                f"Celery {name} per task, PostgreSQL results",
                latency,
                case.get("per_second"),
                share(case.get("cpu_ms")),
                case.get("load1"),
            )
        )
    return lines


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


# --- report --------------------------------------------------------------------------------


def report(results: Results, targets: Sequence[Any]) -> str:
    summaries = results.summaries()
    sections: dict[str, list[Row]] = {}
    for name, (section, label) in results.labels.items():
        note = "FAILED: " + results.errors[name][:60] if name in results.errors else ""
        sections.setdefault(section, []).append(Row(label, summaries.get(name), note))
    parts = [format_cases(list(sections.items()))]
    if results.throughput:
        rows = []
        runs = [(c, str(c), r) for c, r in sorted(results.throughput.items())]
        runs += [(c, f"{c}, pool off", r) for c, r in sorted(results.throughput_cold.items())]
        for capacity, shown, run in runs:
            floor_run = results.floor_rates.get(capacity, {})
            floor = floor_run.get("per_second")
            steady = run["steady_per_second"]
            rows.append(
                [
                    shown,
                    str(run["count"]),
                    f"{run['seconds']:.2f} s",
                    f"{run['per_second']:.1f}/s",
                    f"{steady:.1f}/s" if steady else "-",
                    f"{floor:.1f}/s" if floor else "-",
                    f"{run['per_second'] / floor:.0%}" if floor else "-",
                    f"{_ms(run['worker_cpu_ms_per_execution'])} / "
                    f"{_ms(floor_run.get('spawner_cpu_ms_per_run'))}",
                    f"{_ms(run['sandbox_cpu_ms_per_execution'])} / "
                    f"{_ms(floor_run.get('sandbox_cpu_ms_per_run'))}",
                    str(run["failed"]),
                ]
            )
        parts.append(
            format_table(
                [
                    "capacity",
                    "N",
                    "wall",
                    "executions/s",
                    "steady",
                    "floor (python3 -c pass)",
                    "of floor",
                    "CPU/run worker / floor spawner",
                    "sandbox CPU/run worker / floor",
                    "failed",
                ],
                rows,
                frozenset(range(1, 10)),
            )
        )
    if results.memory:
        ready = {w["capacity"]: w["ready_seconds"] for w in results.workers}
        rows = []
        for capacity, mem in sorted(results.memory.items()):
            idle, after = mem.get("idle"), mem.get("after")
            rows.append(
                [str(capacity), f"{ready[capacity]:.2f} s" if capacity in ready else "-"]
                + [f"{v:.1f} MiB" if v is not None else "-" for v in (idle, mem.get("peak"), after)]
                + [f"{after - idle:+.1f} MiB" if idle is not None and after is not None else "-"]
            )
        parts.append(
            format_table(
                [
                    "worker at capacity",
                    "start -> ready",
                    "RSS idle",
                    "peak (throughput)",
                    "after",
                    "growth",
                ],
                rows,
                frozenset(range(1, 6)),
            )
        )
    if results.pool_idle:
        pool = results.pool_idle
        parked = pool["processes"] / 3 if pool["processes"] else 0  # bwrap, init, launcher
        parts.append(
            f"warm pool, idle worker (depth {pool['depth']}): {pool['processes']} processes "
            f"(about {parked:.0f} parked sandboxes), PSS {pool['pss_mib']:.1f} MiB, "
            f"RSS {pool['rss_mib']:.1f} MiB in all; CPU while idle: parked "
            f"{pool['parked_cpu_ms_per_s']:.2f} ms/s, worker "
            f"{pool.get('worker_cpu_ms_per_s', float('nan')):.2f} ms/s"
        )
    if results.egress:
        parts.append(egress.format_report(results.egress))
    lines = case_lines(results)
    if lines:
        parts.append(
            "side by side (CPU in ms per execution; PostgreSQL: the case's own database's\n"
            "backends; RabbitMQ: the whole shared server)\n"
            + format_table(SIDE_BY_SIDE_HEADER, side_by_side(lines), frozenset(range(1, 5)))
        )
    parts.append(format_targets(targets))
    if results.errors:
        parts.append("errors:\n" + "\n".join(f"  {k}: {v}" for k, v in results.errors.items()))
    return "\n\n".join(parts)


def _ms(value: float | None) -> str:
    return f"{value:.1f} ms" if value is not None else "-"


def to_json(
    plan: Plan, info: dict[str, Any], results: Results, targets: Sequence[Any], started: datetime
) -> dict[str, Any]:
    summaries = results.summaries()
    return {
        "format": 1,
        "started_at": started.isoformat(),
        "finished_at": datetime.now(UTC).isoformat(),
        "plan": plan.__dict__,
        "machine": info | {"loadavg_end": os.getloadavg()},
        "interrupted": results.interrupted,
        "cases": {
            name: {
                "section": section,
                "label": label,
                **(summaries[name].as_dict() if name in summaries else {}),
                "samples_ms": [round(v, 3) for v in results.samples.get(name, [])],
                "error": results.errors.get(name),
            }
            for name, (section, label) in results.labels.items()
        },
        "throughput": {str(c): r for c, r in results.throughput.items()},
        "throughput_pool_off": {str(c): r for c, r in results.throughput_cold.items()},
        "pool_idle": results.pool_idle,
        "floor_rates": {str(c): r for c, r in results.floor_rates.items()},
        "memory_mib": {str(c): m for c, m in results.memory.items()},
        "workers": results.workers,
        "egress": results.egress,
        "compare": results.compare,
        "targets": [t.as_dict() for t in targets],
        "errors": results.errors,
    }


def default_json_path(now: datetime) -> Path:
    return local.REPO / "bench-results" / f"bench-{now.strftime('%Y%m%d-%H%M%S')}.json"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer runs (30 rounds, 100 queued executions): a few minutes",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="where to write the results (default bench-results/bench-<time>.json)",
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds of the local cases")
    parser.add_argument(
        "--no-e2e",
        action="store_true",
        help="skip the RabbitMQ + PostgreSQL part (no services needed)",
    )
    parser.add_argument("--seed", type=int, default=6, help="shuffle seed of the round-robin")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="add Celery 5 and the plain bwrap floor, and draw the chart "
        "(scripts/bench installs requirements-bench.lock first)",
    )
    parser.add_argument(
        "--warm-pool",
        type=int,
        default=1,
        metavar="N",
        help="sandbox.warm_pool of the end-to-end workers (default 1); with N > 0 the "
        "capacity 1 and 2 runs are repeated with the pool off, for the before/after",
    )
    parser.add_argument(
        "--latency-gap",
        type=float,
        default=0.1,
        metavar="SECONDS",
        help="idle time before each end-to-end latency run (default 0.1; 0: back to back)",
    )
    parser.add_argument(
        "--timing",
        action="store_true",
        help="the capacity-1 worker logs at debug level; its execution_timing spans "
        "(claim, run outside the sandbox, in the sandbox, record) become cases",
    )
    parser.add_argument(
        "--chart",
        type=Path,
        default=None,
        help="where to draw the PNG with --compare (default: next to the JSON)",
    )
    parser.add_argument(
        "--egress-only",
        action="store_true",
        help="only the egress cost (no network vs egress through Sandbox.run, cold and parked)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    plan = Plan(
        rounds=args.rounds or (30 if args.quick else 100),
        warmup=2,
        latency_runs=20 if args.quick else 100,
        throughput_n=100 if args.quick else 500,
        e2e=not args.no_e2e,
        seed=args.seed,
        only_egress=args.egress_only,
        compare=args.compare,
        timing=args.timing,
        warm_pool=args.warm_pool,
        latency_gap=args.latency_gap,
    )
    started = datetime.now(UTC)
    info = machine()
    results = Results()
    cleanup = Cleanup()
    try:
        root = Path(tempfile.mkdtemp(prefix="attune-bench-"))
        cleanup.temp_dir(root)
        os.chmod(root, 0o711)  # the slot uids traverse to their run dirs
        trio.run(main_async, plan, root, cleanup, results)
    except KeyboardInterrupt:
        results.interrupted = True
    finally:
        progress("cleaning up")
        failures = cleanup.run_all()
    targets = build_targets(results.summaries(), results.rates(), results.memory)
    print(
        f"machine: {info['nproc']} x {info['cpu_model']}, kernel {info['kernel']}, "
        f"{info['bwrap']}, load {info['loadavg_start'][0]:.2f} at start"
    )
    print(report(results, targets))
    path = args.json or default_json_path(started)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = to_json(plan, info, results, targets, started)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    progress(f"results written to {path}")
    lines = case_lines(results)
    if lines:
        path.with_suffix(".csv").write_text(to_csv(lines))
    if plan.compare:
        from . import chart  # imports matplotlib: only with --compare

        png = args.chart or path.with_suffix(".png")
        if chart.draw(doc, png):
            progress(f"chart drawn to {png}")
    if results.interrupted:
        return 130
    return 1 if results.errors or failures else 0


if __name__ == "__main__":
    sys.exit(main())
