"""The comparison's pure code: the plain sandbox's argv, process trees, CPU shares, CSV.

Shared by the Celery comparison (`celery_app`, `celery_case`), the CPU probe (`cpu`) and
the chart (`chart`); tested in tests/unit/test_bench.py without Celery or matplotlib.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .stats import Summary

# The trivial Python action every case runs: `def run(): return 1`, its result printed.
TRIVIAL_PY = "def run():\n    return 1\nprint(run())"


def plain_bwrap_argv(bwrap: str, python: str, code: str) -> list[str]:
    """bwrap with every namespace, /usr read-only, nothing else: no seccomp, no uid switch,
    no limits, no cgroup. Root inside its user namespace. The `plain bwrap` floor and the
    Celery bwrap variant run exactly this."""
    return [
        bwrap,
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--ro-bind", "/usr", "/usr",
        "--symlink", "usr/lib", "/lib",
        "--symlink", "usr/lib64", "/lib64",
        "--symlink", "usr/bin", "/bin",
        "--proc", "/proc",
        "--dev", "/dev",
        "--tmpfs", "/tmp",
        "--chdir", "/tmp",
        "--",
        python, "-I", "-c", code,
    ]  # fmt: skip


def parse_stat_ppid(stat_text: str) -> int | None:
    """The parent pid from the text of /proc/PID/stat (comm may hold spaces, parentheses)."""
    fields = stat_text[stat_text.rfind(")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 else None


def descendants(parents: Mapping[int, int], root: int) -> set[int]:
    """`root` and every process below it, from a pid -> parent pid map."""
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


@dataclass(frozen=True)
class CpuShare:
    """CPU milliseconds per execution, by who spent it."""

    runner: float | None  # the worker or Celery tree: its processes and reaped children
    postgres: float | None  # the backends connected to the case's own database
    rabbitmq: float | None  # the whole RabbitMQ server (shared with anything else running)

    @property
    def total(self) -> float | None:
        parts = (self.runner, self.postgres, self.rabbitmq)
        return None if any(p is None for p in parts) else sum(p for p in parts if p is not None)

    def as_dict(self) -> dict[str, float | None]:
        return {
            "runner": self.runner,
            "postgres": self.postgres,
            "rabbitmq": self.rabbitmq,
            "total": self.total,
        }


def cpu_share(before: Mapping[str, float], after: Mapping[str, float], count: int) -> CpuShare:
    """Seconds of CPU per component (snapshots) -> milliseconds per execution."""

    def per(key: str) -> float | None:
        if key not in before or key not in after or count <= 0:
            return None
        return max(after[key] - before[key], 0.0) * 1000 / count

    return CpuShare(per("runner"), per("postgres"), per("rabbitmq"))


CSV_COLUMNS = (
    "case",
    "median_ms",
    "p95_ms",
    "n",
    "per_second_c2",
    "cpu_ms_runner",
    "cpu_ms_postgres",
    "cpu_ms_rabbitmq",
    "cpu_ms_total",
    "load1",
)


@dataclass(frozen=True)
class CaseLine:
    """One row of the side-by-side table: a system's latency, throughput and CPU."""

    case: str
    latency: Summary | None
    per_second: float | None
    cpu: CpuShare | None
    load1: float | None

    def cells(self) -> list[str]:
        def num(value: float | None, digits: int = 1) -> str:
            return "" if value is None else f"{value:.{digits}f}"

        cpu = self.cpu or CpuShare(None, None, None)
        lat = self.latency
        return [
            self.case,
            num(lat.median if lat else None),
            num(lat.p95 if lat else None),
            str(lat.n) if lat else "",
            num(self.per_second),
            num(cpu.runner),
            num(cpu.postgres),
            num(cpu.rabbitmq),
            num(cpu.total),
            num(self.load1, 2),
        ]


def to_csv(lines: Iterable[CaseLine]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for line in lines:
        writer.writerow(line.cells())
    return out.getvalue()


def side_by_side(lines: Sequence[CaseLine]) -> list[list[str]]:
    """Rows for stats.format_table: latency median / p95, rate at capacity 2, CPU."""
    rows = []
    for line in lines:
        cells = line.cells()
        lat = f"{cells[1]} / {cells[2]} ms" if cells[1] else "-"
        cpu = f"{cells[8]} ms ({cells[5]} + {cells[6]} + {cells[7]})" if cells[8] else "-"
        rows.append([line.case, lat, f"{cells[4]}/s" if cells[4] else "-", cpu, cells[9] or "-"])
    return rows


SIDE_BY_SIDE_HEADER = [
    "case",
    "latency median / p95",
    "per second at capacity 2",
    "CPU/execution (runner + PostgreSQL + RabbitMQ)",
    "load",
]


def chart_data(
    doc: Mapping[str, Any],
) -> tuple[dict[str, list[float]], dict[str, dict[int, float]]]:
    """From a bench JSON: latency samples per case label, and rates per series per capacity.

    The latency cases are the floor (`python3 -c pass`), the worker's end-to-end cases
    (warm pool on, and off where measured) and the Celery cases; the rates are the worker
    per capacity (pool on and off), the floors and Celery at 2.
    """
    wanted = ("plain_python", "e2e_python", "e2e_shell", "e2e_python_cold", "e2e_shell_cold")
    latencies: dict[str, list[float]] = {}
    cases = doc.get("cases", {})
    for name in wanted:
        case = cases.get(name)
        if case and case.get("samples_ms"):
            latencies[case["label"] if name == "plain_python" else f"worker {case['label']}"] = (
                case["samples_ms"]
            )
    compare = doc.get("compare", {})
    for name, case in compare.get("celery", {}).items():
        if case.get("latency_ms"):
            latencies[f"celery {name}"] = case["latency_ms"]
    rates: dict[str, dict[int, float]] = {}
    for capacity, run in doc.get("throughput", {}).items():
        rates.setdefault("worker", {})[int(capacity)] = run["per_second"]
    for capacity, run in doc.get("throughput_pool_off", {}).items():
        rates.setdefault("worker, warm pool off", {})[int(capacity)] = run["per_second"]
    for capacity, run in doc.get("floor_rates", {}).items():
        rates.setdefault("floor: bwrap+seccomp python3 -c pass", {})[int(capacity)] = run[
            "per_second"
        ]
    plain = compare.get("plain_bwrap_rate")
    if plain:
        rates["floor: plain bwrap python3 -I -c pass"] = {
            int(plain["concurrency"]): plain["per_second"]
        }
    for name, case in compare.get("celery", {}).items():
        if case.get("per_second"):
            rates[f"celery {name}"] = {int(case["concurrency"]): case["per_second"]}
    return latencies, rates


SPAN_LABELS = {
    "claim": "claim (delivery taken -> row, action and secret rows read)",
    "run_outside": "run minus in-sandbox (secrets, code, run dir, masking, logs)",
    "in_sandbox": "in the sandbox (the result's duration_ms)",
    "record": "record (terminal write + announcements)",
    "after": "after the answer, off the path (result.json)",
}


def timing_spans(log_text: str) -> dict[str, list[float]]:
    """The worker's `execution_timing` events (JSON log lines) -> milliseconds per span."""
    spans: dict[str, list[float]] = {}
    for line in log_text.splitlines():
        if '"execution_timing"' not in line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if not isinstance(event, dict) or event.get("event") != "execution_timing":
            continue
        run, inside = event.get("run_ms"), event.get("in_sandbox_ms")
        values = {
            "claim": event.get("claim_ms"),
            "run_outside": run - inside if run is not None and inside is not None else None,
            "in_sandbox": inside,
            "record": event.get("record_ms"),
            "after": event.get("after_ms"),
        }
        for name, value in values.items():
            if isinstance(value, int | float):
                spans.setdefault(name, []).append(float(value))
    return spans
