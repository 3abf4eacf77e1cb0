"""The pure part of the benchmark: statistics, the round-robin order, targets, the table.

Nothing here spawns, sleeps or reads the clock, so it is unit-tested
(tests/unit/test_bench.py); the measuring code in the sibling modules only produces
lists of seconds and rates and hands them here.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, not {q}")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Summary:
    """One case's samples, in the unit they were given (the bench uses milliseconds)."""

    n: int
    median: float
    p95: float
    mean: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            raise ValueError("summary of no values")
        return cls(
            n=len(values),
            median=percentile(values, 50),
            p95=percentile(values, 95),
            mean=sum(values) / len(values),
            min=min(values),
            max=max(values),
        )

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def round_robin(
    names: Sequence[str], rounds: int, *, warmup: int = 0, seed: int = 0
) -> list[tuple[int, str]]:
    """The order to measure in: every case once per round, shuffled within the round.

    Interleaving puts machine noise (another process's burst, a cache flush) on all
    cases alike, so their ratios hold even when absolute times drift; shuffling within
    a round keeps a case from always following the same neighbour. Warm-up rounds come
    first and carry negative round numbers (-warmup..-1): measure them, keep nothing.
    """
    if rounds < 0 or warmup < 0:
        raise ValueError("rounds and warmup must not be negative")
    rng = random.Random(seed)
    order: list[tuple[int, str]] = []
    for index in range(-warmup, rounds):
        batch = list(names)
        rng.shuffle(batch)
        order.extend((index, name) for name in batch)
    return order


def rate(count: int, seconds: float) -> float:
    """Events per second; 0 when nothing was timed."""
    return count / seconds if seconds > 0 else 0.0


def steady_rate(finish_times: Sequence[float], *, trim: float = 0.1) -> float | None:
    """Completions per second between the trim and 1-trim quantiles of finish times.

    The overall rate includes the ramp (first dispatch to first result) and the tail;
    this one is the rate the worker sustains once it is busy. None when too few points.
    """
    times = sorted(finish_times)
    if len(times) < 10:
        return None
    first = int(len(times) * trim)
    last = len(times) - 1 - first
    span = times[last] - times[first]
    return (last - first) / span if span > 0 else None


def parse_vmrss_kib(status_text: str) -> int | None:
    """VmRSS in KiB from the text of /proc/PID/status (None for a zombie/kernel thread)."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1])
    return None


def parse_cpu_ticks(stat_text: str) -> tuple[int, int] | None:
    """(utime + stime, cutime + cstime) in clock ticks from the text of /proc/PID/stat.

    The first is the process's own CPU (all its threads), the second that of its reaped
    children: for the worker, every bwrap and so every sandbox of the runs it finished.
    """
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    fields = stat_text[stat_text.rfind(")") + 2 :].split()
    if len(fields) < 15:
        return None
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return utime + stime, cutime + cstime


# --- targets ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """`measured` against `limit`: at most (`at_most`) or at least; None when not measured."""

    name: str
    measured: float | None
    limit: float | None
    unit: str
    at_most: bool = True
    detail: str = ""

    @property
    def ratio(self) -> float | None:
        """measured / limit: <= 1 passes an at-most target, >= 1 an at-least one."""
        if self.measured is None or self.limit is None or self.limit <= 0:
            return None
        return self.measured / self.limit

    @property
    def verdict(self) -> str:
        if self.measured is None or self.limit is None:
            return "n/a"
        ok = self.measured <= self.limit if self.at_most else self.measured >= self.limit
        return "PASS" if ok else "MISS"

    def as_dict(self) -> dict[str, object]:
        return asdict(self) | {"ratio": self.ratio, "verdict": self.verdict}


# The targets of issue 6.
RUNNER_OVERHEAD_MS = 5.0
E2E_LATENCY_MS = 40.0
THROUGHPUT_FRACTION = 0.70
EXEC_SLACK_MS = 40.0
RSS_IDLE_MIB = 80.0
RSS_GROWTH_MIB = 10.0
THROUGHPUT_CAPACITY = 2


def _median(cases: Mapping[str, Summary], name: str) -> float | None:
    summary = cases.get(name)
    return summary.median if summary is not None else None


def _diff(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


def _sum(*values: float | None) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if len(known) == len(values) else None


def build_targets(
    cases: Mapping[str, Summary],
    rates: Mapping[str, float],
    memory: Mapping[int, Mapping[str, float | None]],
) -> list[Target]:
    """Every target of issue 6, from case medians (ms), rates (/s) and RSS (MiB).

    `cases` keys are the bench's case names (see CASES in local.py and e2e.py), `rates`
    holds `floor_python_c{N}` and `worker_c{N}`, `memory` maps a capacity to its
    `idle`, `peak` and `after` RSS in MiB. Anything missing gives an `n/a` target.
    """
    targets: list[Target] = []
    for interp, floor in (("python", "bwrap_python"), ("shell", "bwrap_bash")):
        runner, floor_ms = _median(cases, f"runner_{interp}"), _median(cases, floor)
        targets.append(
            Target(
                f"runner overhead, {interp} (median over bwrap+seccomp floor)",
                _diff(runner, floor_ms),
                RUNNER_OVERHEAD_MS,
                "ms",
                detail=f"runner_{interp} - {floor}",
            )
        )
    for interp in ("python", "shell"):
        name = f"e2e_{interp}"
        targets.append(
            Target(
                f"end-to-end latency, {interp} (median)",
                _median(cases, name),
                E2E_LATENCY_MS,
                "ms",
                detail="publish dispatch -> ExecutionCompleted received",
            )
        )
    worker = rates.get(f"worker_c{THROUGHPUT_CAPACITY}")
    floor_rate = rates.get(f"floor_python_c{THROUGHPUT_CAPACITY}")
    fraction = f" ({worker / floor_rate:.0%} of floor)" if worker and floor_rate else ""
    targets.append(
        Target(
            f"throughput at capacity {THROUGHPUT_CAPACITY} (>= {THROUGHPUT_FRACTION:.0%} of the "
            "sandboxed python3 -c pass rate)",
            worker,
            floor_rate * THROUGHPUT_FRACTION if floor_rate else None,
            "/s",
            at_most=False,
            detail=f"floor {floor_rate:.1f}/s at concurrency {THROUGHPUT_CAPACITY}{fraction}"
            if floor_rate
            else "",
        )
    )
    trio_ms = _median(cases, "import_trio")
    for interp, floor in (("python", "bwrap_python"), ("shell", "bwrap_bash")):
        limit = _sum(trio_ms, _median(cases, floor), EXEC_SLACK_MS)
        targets.append(
            Target(
                f"attune exec wall, {interp} (median)",
                _median(cases, f"exec_{interp}"),
                limit,
                "ms",
                detail=f"import_trio + {floor} + {EXEC_SLACK_MS:g} ms",
            )
        )
    idle = [m.get("idle") for m in memory.values()]
    idle_known = [v for v in idle if v is not None]
    targets.append(
        Target(
            "worker RSS idle after start (max over starts)",
            max(idle_known) if idle_known else None,
            RSS_IDLE_MIB,
            "MiB",
        )
    )
    growth = [_diff(m.get("after"), m.get("idle")) for m in memory.values()]
    growth_known = [g for g in growth if g is not None]
    targets.append(
        Target(
            "worker RSS growth over the throughput runs (max over capacities)",
            max(growth_known) if growth_known else None,
            RSS_GROWTH_MIB,
            "MiB",
            detail="after - idle, per worker start",
        )
    )
    return targets


# --- the table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    label: str
    summary: Summary | None  # None: the case failed or was skipped
    note: str = ""


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "/s":
        return f"{value:.1f}/s"
    if unit == "ms":
        return f"{value:.1f} ms"
    return f"{value:.1f} {unit}"


def _columns(rows: Iterable[Sequence[str]], right: frozenset[int]) -> list[str]:
    rows = [list(r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)]
        out.append("  ".join(cells).rstrip())
    return out


def format_cases(sections: Sequence[tuple[str, Sequence[Row]]]) -> str:
    """Sections of timed cases: label, n, median, p95, min, max (milliseconds)."""
    header = ["case", "n", "median", "p95", "min", "max", ""]
    grid: list[list[str]] = [header]
    titles: dict[int, str] = {}
    for title, rows in sections:
        titles[len(grid)] = title
        for row in rows:
            s = row.summary
            if s is None:
                grid.append([row.label, "0", "-", "-", "-", "-", row.note or "failed"])
            else:
                grid.append(
                    [
                        row.label,
                        str(s.n),
                        _fmt(s.median, "ms"),
                        _fmt(s.p95, "ms"),
                        _fmt(s.min, "ms"),
                        _fmt(s.max, "ms"),
                        row.note,
                    ]
                )
    lines = _columns(grid, frozenset({1, 2, 3, 4, 5}))
    out = [lines[0], "-" * len(lines[0])]
    for index, line in enumerate(lines[1:], start=1):
        if index in titles:
            out.append(f"[{titles[index]}]")
        out.append(line)
    return "\n".join(out)


def format_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], right: frozenset[int] = frozenset()
) -> str:
    lines = _columns([header, *rows], right)
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def format_targets(targets: Sequence[Target]) -> str:
    rows = []
    for t in targets:
        op = "<=" if t.at_most else ">="
        ratio = f"{t.ratio:.2f}" if t.ratio is not None else "-"
        rows.append(
            [
                t.name,
                _fmt(t.measured, t.unit),
                f"{op} {_fmt(t.limit, t.unit)}",
                ratio,
                t.verdict,
                t.detail,
            ]
        )
    return format_table(
        ["target", "measured", "target", "ratio", "result", ""], rows, frozenset({1, 2, 3})
    )
