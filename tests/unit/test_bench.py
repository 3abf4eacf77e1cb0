"""The benchmark's pure code: statistics, round-robin order, targets, tables.

The benchmark itself (scripts/bench) is not a test; only its arithmetic is.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from attune_bench.stats import (
    Row,
    Summary,
    Target,
    build_targets,
    format_cases,
    format_targets,
    parse_cpu_ticks,
    parse_vmrss_kib,
    percentile,
    rate,
    round_robin,
    steady_rate,
)


def test_percentile_interpolates_between_ranks() -> None:
    values = [float(v) for v in range(1, 11)]  # 1..10
    assert percentile(values, 50) == pytest.approx(5.5)
    assert percentile(values, 95) == pytest.approx(9.55)
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 10.0
    assert percentile([7.0], 95) == 7.0


def test_percentile_ignores_input_order() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0


@pytest.mark.parametrize("q", [-1, 100.5])
def test_percentile_rejects_bad_quantile(q: float) -> None:
    with pytest.raises(ValueError):
        percentile([1.0], q)


def test_percentile_and_summary_reject_no_values() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        Summary.of([])


def test_summary() -> None:
    s = Summary.of([4.0, 1.0, 3.0, 2.0])
    assert (s.n, s.median, s.mean, s.min, s.max) == (4, 2.5, 2.5, 1.0, 4.0)
    assert s.p95 == pytest.approx(3.85)
    assert s.as_dict()["median"] == 2.5


def test_round_robin_runs_every_case_once_per_round() -> None:
    names = ["a", "b", "c"]
    order = round_robin(names, 5, warmup=2, seed=1)
    assert len(order) == 3 * 7
    for index in range(-2, 5):
        assert sorted(n for i, n in order if i == index) == names
    # rounds are contiguous and in order: warm-up (negative) first
    assert [i for i, _ in order] == sorted(i for i, _ in order)
    assert Counter(n for i, n in order if i >= 0) == {"a": 5, "b": 5, "c": 5}


def test_round_robin_shuffles_within_rounds_reproducibly() -> None:
    names = [f"case{i}" for i in range(8)]
    first = round_robin(names, 20, seed=3)
    assert first == round_robin(names, 20, seed=3)
    rounds = {tuple(n for i, n in first if i == r) for r in range(20)}
    assert len(rounds) > 1  # not the same order every round


def test_round_robin_rejects_negative_counts() -> None:
    with pytest.raises(ValueError):
        round_robin(["a"], -1)


def test_rate_and_steady_rate() -> None:
    assert rate(100, 4.0) == 25.0
    assert rate(5, 0.0) == 0.0
    # 100 completions every 0.1 s after a 2 s ramp: steady is 10/s, overall is lower
    times = [2.0 + 0.1 * i for i in range(100)]
    assert steady_rate(times) == pytest.approx(10.0)
    assert rate(100, times[-1]) < 10.0
    assert steady_rate([1.0, 2.0]) is None
    assert steady_rate([1.0] * 20) is None


def test_parse_vmrss() -> None:
    status = "Name:\tattune\nVmPeak:\t  99999 kB\nVmRSS:\t   61440 kB\nThreads:\t3\n"
    assert parse_vmrss_kib(status) == 61440
    assert parse_vmrss_kib("Name:\tkworker\nState:\tZ (zombie)\n") is None


def test_target_verdict_and_ratio() -> None:
    assert Target("t", 4.0, 5.0, "ms").verdict == "PASS"
    assert Target("t", 5.0, 5.0, "ms").verdict == "PASS"
    miss = Target("t", 7.5, 5.0, "ms")
    assert (miss.verdict, miss.ratio) == ("MISS", 1.5)
    assert Target("t", 30.0, 20.0, "/s", at_most=False).verdict == "PASS"
    assert Target("t", 10.0, 20.0, "/s", at_most=False).verdict == "MISS"
    unmeasured = Target("t", None, 5.0, "ms")
    assert (unmeasured.verdict, unmeasured.ratio) == ("n/a", None)
    assert Target("t", 1.0, None, "ms").verdict == "n/a"
    assert Target("t", 1.0, 5.0, "ms").as_dict()["verdict"] == "PASS"


def _cases(**medians: float) -> dict[str, Summary]:
    return {name: Summary.of([value]) for name, value in medians.items()}


def test_build_targets_from_medians_rates_and_memory() -> None:
    cases = _cases(
        bwrap_python=18.0,
        runner_python=22.0,
        bwrap_bash=8.0,
        runner_shell=15.0,
        e2e_python=35.0,
        e2e_shell=45.0,
        import_trio=100.0,
        exec_python=150.0,
        exec_shell=200.0,
    )
    rates = {"worker_c2": 60.0, "floor_python_c2": 80.0}
    memory = {1: {"idle": 60.0, "after": 62.0}, 2: {"idle": 70.0, "after": 85.0}}
    by_name = {t.name.split(" (")[0]: t for t in build_targets(cases, rates, memory)}
    overhead_py = by_name["runner overhead, python"]
    assert (overhead_py.measured, overhead_py.verdict) == (4.0, "PASS")
    overhead_sh = by_name["runner overhead, shell"]
    assert (overhead_sh.measured, overhead_sh.verdict) == (7.0, "MISS")
    assert by_name["end-to-end latency, python"].verdict == "PASS"
    assert by_name["end-to-end latency, shell"].verdict == "MISS"
    throughput = by_name["throughput at capacity 2"]
    assert throughput.limit == pytest.approx(56.0)
    assert throughput.verdict == "PASS"
    assert "75% of floor" in throughput.detail
    exec_py = by_name["attune exec wall, python"]
    assert (exec_py.limit, exec_py.verdict) == (158.0, "PASS")
    exec_sh = by_name["attune exec wall, shell"]
    assert (exec_sh.limit, exec_sh.verdict) == (148.0, "MISS")
    assert by_name["worker RSS idle after start"].measured == 70.0
    growth = by_name["worker RSS growth over the throughput runs"]
    assert (growth.measured, growth.verdict) == (15.0, "MISS")


def test_build_targets_without_measurements_is_all_na() -> None:
    targets = build_targets({}, {}, {})
    assert targets and all(t.verdict == "n/a" for t in targets)


def test_build_targets_with_missing_idle_rss() -> None:
    targets = build_targets({}, {}, {1: {"idle": None, "after": 60.0}})
    assert all(t.verdict == "n/a" for t in targets)


def test_format_cases_sections_and_failed_rows() -> None:
    text = format_cases(
        [
            ("floors", [Row("python3 -c pass", Summary.of([14.0, 15.0, 16.0]))]),
            ("runner", [Row("Sandbox.run", None, "FAILED: boom")]),
        ]
    )
    lines = text.splitlines()
    assert lines[0].split() == ["case", "n", "median", "p95", "min", "max"]
    assert "[floors]" in lines and "[runner]" in lines
    row = next(line for line in lines if line.startswith("python3 -c pass"))
    assert "15.0 ms" in row and " 3 " in row
    failed = next(line for line in lines if line.startswith("Sandbox.run"))
    assert "FAILED: boom" in failed and " 0 " in failed


def test_format_targets() -> None:
    text = format_targets(
        [
            Target("latency", 50.0, 40.0, "ms", detail="why"),
            Target("rate", 30.0, 20.0, "/s", at_most=False),
            Target("rss", None, 80.0, "MiB"),
        ]
    )
    lines = text.splitlines()
    latency = next(line for line in lines if line.startswith("latency"))
    assert "50.0 ms" in latency and "<= 40.0 ms" in latency and "1.25" in latency
    assert "MISS" in latency and latency.endswith("why")
    rate_line = next(line for line in lines if line.startswith("rate"))
    assert ">= 20.0/s" in rate_line and "PASS" in rate_line
    rss = next(line for line in lines if line.startswith("rss"))
    assert "n/a" in rss and "<= 80.0 MiB" in rss


def test_parse_cpu_ticks() -> None:
    # comm with a space and a parenthesis; utime=11 stime=12 cutime=13 cstime=14
    stat = "4242 (attune (x) y) S 1 4242 4242 0 -1 4194560 9 0 0 0 11 12 13 14 20 0 6 0"
    assert parse_cpu_ticks(stat) == (23, 27)
    assert parse_cpu_ticks("1 (init) S 1") is None
