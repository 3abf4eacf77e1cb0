"""The comparison's pure code: the plain sandbox argv, process trees, CPU shares, the
side-by-side table, its CSV and the chart's data. Needs neither Celery nor matplotlib."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from attune_bench.compare import (
    CSV_COLUMNS,
    CaseLine,
    CpuShare,
    chart_data,
    cpu_share,
    descendants,
    parse_stat_ppid,
    plain_bwrap_argv,
    side_by_side,
    timing_spans,
    to_csv,
)
from attune_bench.stats import Summary


def test_plain_bwrap_unshares_every_namespace_and_runs_python_isolated() -> None:
    argv = plain_bwrap_argv("/usr/bin/bwrap", "/usr/bin/python3", "pass")
    assert argv[0] == "/usr/bin/bwrap"
    assert "--unshare-all" in argv
    assert argv[argv.index("--") + 1 :] == ["/usr/bin/python3", "-I", "-c", "pass"]
    # No seccomp, no uid switch: the plain floor.
    assert "--seccomp" not in argv and "--uid" not in argv


def test_parent_pid_is_read_past_a_command_name_with_parentheses() -> None:
    stat = "4242 (evil) 1 (x)) S 17 4242 4242 0 -1 4194560 0 0 0 0 3 4 0 0 20 0 1 0"
    assert parse_stat_ppid(stat) == 17
    assert parse_stat_ppid("1 (init)") is None


def test_descendants_follow_the_tree_and_ignore_other_branches() -> None:
    parents = {10: 1, 11: 10, 12: 11, 13: 10, 20: 1, 21: 20}
    assert descendants(parents, 10) == {10, 11, 12, 13}
    assert descendants(parents, 99) == {99}


def test_cpu_share_is_milliseconds_per_execution_per_component() -> None:
    before = {"runner": 1.0, "postgres": 2.0, "rabbitmq": 3.0}
    after = {"runner": 1.5, "postgres": 2.1, "rabbitmq": 3.2}
    share = cpu_share(before, after, 100)
    assert share.runner == 5.0
    assert round(share.postgres or 0, 6) == 1.0
    assert round(share.rabbitmq or 0, 6) == 2.0
    assert round(share.total or 0, 6) == 8.0


def test_a_missing_component_has_no_share_and_no_total() -> None:
    share = cpu_share({"runner": 1.0}, {"runner": 2.0}, 10)
    assert share.runner == 100.0
    assert share.postgres is None and share.total is None
    assert cpu_share({"runner": 1.0}, {"runner": 2.0}, 0).runner is None


def _lines() -> list[CaseLine]:
    return [
        CaseLine("floor", Summary.of([10.0, 12.0, 14.0]), None, None, None),
        CaseLine("worker", Summary.of([20.0, 30.0]), 37.5, CpuShare(30.0, 2.0, 3.0), 4.5),
    ]


def test_csv_has_one_row_per_case_with_empty_cells_for_what_was_not_measured() -> None:
    rows = list(csv.reader(io.StringIO(to_csv(_lines()))))
    assert rows[0] == list(CSV_COLUMNS)
    floor = dict(zip(CSV_COLUMNS, rows[1], strict=True))
    worker = dict(zip(CSV_COLUMNS, rows[2], strict=True))
    assert floor["median_ms"] == "12.0" and floor["per_second_c2"] == ""
    assert worker["per_second_c2"] == "37.5" and worker["cpu_ms_total"] == "35.0"
    assert worker["load1"] == "4.50" and worker["n"] == "2"


def test_side_by_side_rows_show_latency_rate_and_cpu_breakdown() -> None:
    floor, worker = side_by_side(_lines())
    assert floor == ["floor", "12.0 / 13.8 ms", "-", "-", "-"]
    assert worker[2] == "37.5/s"
    assert worker[3] == "35.0 ms (30.0 + 2.0 + 3.0)"


def test_chart_data_gathers_latencies_and_rates_per_capacity() -> None:
    doc = {
        "cases": {
            "plain_python": {"label": "python3 -c pass", "samples_ms": [11.0, 12.0]},
            "e2e_python": {"label": "bench.noop_py", "samples_ms": [40.0]},
            "e2e_shell": {"label": "bench.noop_sh", "samples_ms": []},
        },
        "throughput": {"1": {"per_second": 20.0}, "2": {"per_second": 35.0}},
        "floor_rates": {"2": {"per_second": 50.0}},
        "compare": {
            "plain_bwrap_rate": {"concurrency": 2, "per_second": 60.0},
            "celery": {"subprocess": {"latency_ms": [25.0], "concurrency": 2, "per_second": 70.0}},
        },
    }
    latencies, rates = chart_data(doc)
    assert latencies == {
        "python3 -c pass": [11.0, 12.0],
        "worker bench.noop_py": [40.0],
        "celery subprocess": [25.0],
    }
    assert rates["worker"] == {1: 20.0, 2: 35.0}
    assert rates["celery subprocess"] == {2: 70.0}
    assert rates["floor: plain bwrap python3 -I -c pass"] == {2: 60.0}


def test_chart_data_of_a_run_without_comparison_has_only_the_worker() -> None:
    latencies, rates = chart_data({"throughput": {"2": {"per_second": 35.0}}})
    assert latencies == {} and rates == {"worker": {2: 35.0}}


def test_timing_spans_come_from_the_workers_json_log_lines() -> None:
    log = "\n".join(
        [
            '{"event": "execution_started", "execution_id": 1}',
            '{"event": "execution_timing", "claim_ms": 2.5, "run_ms": 40.0,'
            ' "in_sandbox_ms": 31, "record_ms": 4.0, "after_ms": 0.5}',
            "not json execution_timing",
            '{"event": "execution_timing", "claim_ms": null, "run_ms": 5.0,'
            ' "in_sandbox_ms": null, "record_ms": 3.0}',
        ]
    )
    spans = timing_spans(log)
    assert spans == {
        "claim": [2.5],
        "run_outside": [9.0],
        "in_sandbox": [31.0],
        "record": [4.0, 3.0],
        "after": [0.5],
    }
