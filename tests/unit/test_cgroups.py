"""Per-run cgroup decisions against a fake cgroupfs tree: what is written where."""

from __future__ import annotations

from pathlib import Path

import pytest

from attune.runner import cgroups
from attune.runner.cgroups import CgroupSupport, RunCgroup, Write


def fake_v2(tmp_path: Path, controllers: str = "cpu io memory pids") -> Path:
    """A delegated v2 cgroup as systemd leaves it: files the kernel would provide."""
    base = tmp_path / "system.slice" / "attune-worker.service"
    base.mkdir(parents=True)
    (base / "cgroup.controllers").write_text(controllers + "\n")
    (base / "cgroup.subtree_control").write_text("")
    (base / "cgroup.procs").write_text("4242\n")
    return base


def test_own_paths_reads_v1_v2_and_named_lines() -> None:
    text = "12:pids:/a\n4:cpu,cpuacct:/b\n1:name=systemd:/c\n0::/system.slice/x.service\n"
    assert cgroups.own_paths(text) == {
        "pids": "/a",
        "cpu": "/b",
        "cpuacct": "/b",
        "systemd": "/c",
        "": "/system.slice/x.service",
    }


def test_the_delegated_base_is_the_own_cgroup_or_the_parent_of_the_worker_leaf() -> None:
    mount = Path("/sys/fs/cgroup")
    assert cgroups.delegated_base(mount, "/a.service") == mount / "a.service"
    assert cgroups.delegated_base(mount, "/a.service/worker") == mount / "a.service"


def test_cpu_max_is_quota_and_period_and_max_without_a_quota() -> None:
    assert cgroups.cpu_max(1.0) == "100000 100000"
    assert cgroups.cpu_max(0.5) == "50000 100000"
    assert cgroups.cpu_max(2) == "200000 100000"
    assert cgroups.cpu_max(0) == "max 100000"
    assert cgroups.cpu_max(0.001) == "1000 100000"  # the kernel's minimum quota is 1 ms


def test_delegation_moves_the_worker_into_a_leaf_before_enabling_controllers() -> None:
    base = Path("/cg/w.service")
    plan = cgroups.v2_delegation_plan(base, 77, ["io", "memory", "pids", "cpu"])
    assert plan == [
        Write(base / "worker"),
        Write(base / "worker" / "cgroup.procs", "77"),
        Write(base / "cgroup.subtree_control", "+cpu +memory +pids"),
        Write(base / "runs"),
        Write(base / "runs" / "cgroup.subtree_control", "+cpu +memory +pids"),
    ]


def test_delegation_without_controllers_still_places_the_worker() -> None:
    base = Path("/cg/unified/x")
    plan = cgroups.v2_delegation_plan(base, 1, [])
    assert plan == [
        Write(base / "worker"),
        Write(base / "worker" / "cgroup.procs", "1"),
        Write(base / "runs"),
    ]


def test_detect_v2_on_a_fake_delegated_tree_enables_memory_pids_cpu(tmp_path: Path) -> None:
    base = fake_v2(tmp_path)
    support = cgroups.detect_v2(tmp_path, "/system.slice/attune-worker.service", pid=4242)
    assert support.version == 2
    assert support.controllers == {"cpu", "memory", "pids"}
    assert support.memory_parent == base / "runs"
    assert (base / "worker" / "cgroup.procs").read_text() == "4242"
    assert (base / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert (base / "runs" / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    # a second start (the worker already in its leaf) finds the same layout
    again = cgroups.detect_v2(tmp_path, "/system.slice/attune-worker.service/worker", pid=4242)
    assert again.memory_parent == base / "runs"


def test_detect_v2_without_memory_or_pids_is_off_and_says_which(tmp_path: Path) -> None:
    fake_v2(tmp_path, controllers="cpu io")
    support = cgroups.detect_v2(tmp_path, "/system.slice/attune-worker.service", pid=1)
    assert support.version == 0
    assert "no memory+pids controller" in support.detail


def test_detect_v2_where_the_cgroup_is_not_writable_is_off(tmp_path: Path) -> None:
    base = fake_v2(tmp_path)
    (base / "worker").write_text("a file where the leaf directory would go")
    support = cgroups.detect_v2(tmp_path, "/system.slice/attune-worker.service", pid=1)
    assert support.version == 0
    assert "not delegated to the worker" in support.detail


def _v2_support(tmp_path: Path) -> CgroupSupport:
    runs = tmp_path / "runs"
    runs.mkdir()
    return CgroupSupport(2, runs, runs, "fake", runs, frozenset({"cpu", "memory", "pids"}))


def test_a_v2_run_cgroup_gets_memory_swap_pids_and_cpu_limits(tmp_path: Path) -> None:
    support = _v2_support(tmp_path)
    run = RunCgroup(support, "execution-7", 512 * 2**20, 256, cpus=1.5)
    d = tmp_path / "runs" / "execution-7"
    assert run.dirs == [d]
    assert (d / "memory.max").read_text() == str(512 * 2**20)
    assert (d / "memory.swap.max").read_text() == "0"
    assert (d / "pids.max").read_text() == "256"
    assert (d / "cpu.max").read_text() == "150000 100000"
    assert run.procs_files == [str(d / "cgroup.procs")]


def test_zero_limits_mean_no_limit_never_nothing_allowed(tmp_path: Path) -> None:
    RunCgroup(_v2_support(tmp_path), "r", 0, 0, cpus=0)
    d = tmp_path / "runs" / "r"
    assert (d / "memory.max").read_text() == "max"
    assert (d / "pids.max").read_text() == "max"
    assert (d / "cpu.max").read_text() == "max 100000"


def test_only_enabled_v2_controllers_get_limit_files() -> None:
    support = CgroupSupport(2, Path("/r"), Path("/r"), "x", Path("/r"), frozenset({"pids"}))
    plan = cgroups.run_plan(support, "a", 1, 2, 3.0)
    assert plan == [Write(Path("/r/a")), Write(Path("/r/a/pids.max"), "2")]


def test_v1_plan_covers_memory_pids_and_the_cpu_quota() -> None:
    support = CgroupSupport(
        1, Path("/m"), Path("/p"), "x", Path("/c"), frozenset({"memory", "pids", "cpu"})
    )
    assert cgroups.run_plan(support, "r", 100, 5, 0.5) == [
        Write(Path("/m/r")),
        Write(Path("/m/r/memory.limit_in_bytes"), "100"),
        Write(Path("/m/r/memory.memsw.limit_in_bytes"), "100", optional=True),
        Write(Path("/p/r")),
        Write(Path("/p/r/pids.max"), "5"),
        Write(Path("/c/r")),
        Write(Path("/c/r/cpu.cfs_period_us"), "100000"),
        Write(Path("/c/r/cpu.cfs_quota_us"), "50000"),
    ]
    no_cpu = CgroupSupport(1, Path("/m"), Path("/p"), "x")
    assert all(not str(w.path).startswith("/c") for w in cgroups.run_plan(no_cpu, "r", 1, 1, 1))


@pytest.mark.parametrize(
    ("text", "kills"),
    [
        ("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n", 1),  # v2
        ("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n", 2),  # v1
        ("oom 0\noom_kill 0\n", 0),
        ("", 0),
    ],
)
def test_oom_kills_are_read_from_memory_events_or_oom_control(text: str, kills: int) -> None:
    assert cgroups.oom_kills(text) == kills


def test_oom_killed_reads_the_runs_memory_events(tmp_path: Path) -> None:
    run = RunCgroup(_v2_support(tmp_path), "r", 1, 1)
    assert not run.oom_killed()
    (tmp_path / "runs" / "r" / "memory.events").write_text("oom 1\noom_kill 1\n")
    assert run.oom_killed()


def test_no_cgroups_means_no_directories(tmp_path: Path) -> None:
    run = RunCgroup(CgroupSupport(0, None, None, "none"), "r", 1, 1)
    assert run.dirs == [] and run.procs_files == [] and not run.oom_killed()
    run.remove()
