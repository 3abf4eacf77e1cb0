"""attune doctor's decisions (pure) and its host probes' parsing; no services."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import msgspec
import pytest

from attune import doctor
from attune.config import Config, NetworkConfig, SandboxConfig, WorkerConfig
from attune.doctor import (
    CgroupView,
    Check,
    Disk,
    HostSnapshot,
    ServiceProbe,
    Services,
    build_checks,
    probes,
    refusal,
    render_text,
)
from attune.runner.cgroups import CgroupSupport
from attune.runner.host import HostFacts, Layer, untraversable_ancestors

GIB = 1024**3
GIB = 1024**3


def _facts(
    *, is_root: bool = True, missing: tuple[str, ...] = (), cgroup: CgroupSupport | None = None
) -> HostFacts:
    cg = cgroup or CgroupSupport(
        1,
        Path("/sys/fs/cgroup/memory/attune"),
        Path("/sys/fs/cgroup/pids/attune"),
        "cgroup v1 memory+pids",
    )
    layers = [
        Layer(name, name not in missing, f"{name} detail")
        for name in (
            "bubblewrap",
            "user_namespaces",
            "seccomp",
            "interpreter",
            "network_isolation",
            "rlimits",
        )
    ] + [
        Layer("per_slot_uids", is_root, "slots", required=False),
        Layer("cgroups", cg.version != 0, cg.detail, required=False),
    ]
    return HostFacts("/usr/bin/bwrap", "0.8.0", is_root, cg, layers)


def _snapshot(**changes: object) -> HostSnapshot:
    base = HostSnapshot(
        facts=_facts(),
        cgroup=CgroupView("v1", ("memory", "pids")),
        disks=[
            Disk("run_dir", "/var/lib/attune/runs", "/var/lib/attune/runs", 50 * GIB, True),
            Disk("artifacts_dir", "/var/lib/attune/artifacts", "/var/lib", 50 * GIB, True),
        ],
        accounts={},
        subuid_ranges=[],
        untraversable=[],
        profiles=["python", "shell"],
        python_version="Python 3.11.2",
        umask=0o022,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


HEALTHY = Services(
    ServiceProbe(True, "PostgreSQL at db:5432/attune", migrated=True),
    ServiceProbe(True, "RabbitMQ at mq:5672 (vhost '/')"),
)


# --- doctor ------------------------------------------------------------------------------


def test_a_healthy_host_passes_every_check_and_nothing_blocks_the_worker() -> None:
    checks = build_checks(_snapshot(), Config(), HEALTHY)
    assert {c.status for c in checks} == {"OK"}
    assert [c.name for c in checks] == [
        "bubblewrap",
        "user_namespaces",
        "seccomp",
        "interpreter",
        "network_isolation",
        "rlimits",
        "cgroups",
        "privileges",
        "per_slot_uids",
        "run_dir_access",
        "umask",
        "profiles",
        "egress",
        "disk_run_dir",
        "disk_artifacts_dir",
        "database",
        "broker",
    ]
    assert refusal(checks) is None
    assert doctor.Report(checks).ok


def _egress_on() -> Config:
    return msgspec.structs.replace(Config(), network=NetworkConfig(egress=True, dns="hosts"))


def test_egress_check_is_ok_when_off_and_names_the_policy_when_on() -> None:
    off = _by_name(build_checks(_snapshot(), Config()))["egress"]
    assert off.status == "OK" and off.detail.startswith("off")
    layers = [*_facts().layers, Layer("egress", True, "tools", required=False)]
    snap = _snapshot(facts=dataclasses.replace(_facts(), layers=layers))
    on = _by_name(build_checks(snap, _egress_on()))["egress"]
    assert on.status == "OK" and "public internet" in on.detail and "dns hosts" in on.detail


def test_egress_enabled_without_its_tools_or_nftables_fails_the_check() -> None:
    layers = [*_facts().layers, Layer("egress", False, "missing /usr/bin/slirp4netns", False)]
    snap = _snapshot(facts=dataclasses.replace(_facts(), layers=layers))
    check = _by_name(build_checks(snap, _egress_on()))["egress"]
    assert check.status == "FAIL" and "slirp4netns" in check.detail and check.fix
    assert not check.unsafe  # the sandbox stays safe: egress runs fail, nothing else
    working = [*_facts().layers, Layer("egress", True, "tools", required=False)]
    snap = _snapshot(
        facts=dataclasses.replace(_facts(), layers=working), nftables_problem="nft refused"
    )
    assert _by_name(build_checks(snap, _egress_on()))["egress"].status == "FAIL"


def test_a_missing_sandbox_layer_is_an_unsafe_fail_with_a_fix_that_stops_the_worker() -> None:
    checks = build_checks(
        _snapshot(facts=_facts(missing=("bubblewrap", "user_namespaces"))), Config()
    )
    failed = [c for c in checks if c.status == "FAIL"]
    assert [c.name for c in failed] == ["bubblewrap", "user_namespaces"]
    assert all(c.unsafe and c.fix for c in failed)
    reason = refusal(checks)
    assert reason is not None
    assert "bubblewrap" in reason and "apt-get install bubblewrap" in reason


def test_slot_uids_that_belong_to_an_account_are_an_unsafe_fail() -> None:
    config = Config(
        sandbox=SandboxConfig(slot_uid_base=65530, warm_pool=0),
        worker=WorkerConfig(max_concurrent_tasks=8),
    )
    check = _by_name(build_checks(_snapshot(accounts={65534: "nobody"}), config))["per_slot_uids"]
    assert check.status == "FAIL" and check.unsafe
    assert "65534 (nobody)" in check.detail and "65530-65538" in check.detail
    assert "slot_uid_base" in check.fix


def test_the_checked_uid_range_covers_the_warm_pools_uids() -> None:
    """Parked sandboxes run as uids past the slots' and exec's: an account there is
    as unsafe as one among the slots."""
    config = Config(
        sandbox=SandboxConfig(slot_uid_base=65520, warm_pool=1),
        worker=WorkerConfig(max_concurrent_tasks=8),
    )
    assert 65534 > 65520 + 8  # past the slots and exec's uid: a pool uid
    check = _by_name(build_checks(_snapshot(accounts={65534: "nobody"}), config))["per_slot_uids"]
    assert check.status == "FAIL" and "65534 (nobody)" in check.detail


def test_slot_uids_inside_a_subuid_range_only_warn() -> None:
    snapshot = _snapshot(subuid_ranges=[("alice", 100000, 65536), ("bob", 300000, 10)])
    checks = build_checks(snapshot, Config())
    check = _by_name(checks)["per_slot_uids"]
    assert check.status == "WARN" and "alice" in check.detail and "bob" not in check.detail
    assert refusal(checks) is None


def test_a_worker_that_is_not_root_is_warned_about_shared_uids_and_no_cgroups() -> None:
    snapshot = _snapshot(
        facts=_facts(is_root=False, cgroup=CgroupSupport(0, None, None, "not root"))
    )
    checks = _by_name(build_checks(snapshot, Config()))
    assert checks["per_slot_uids"].status == "WARN"
    assert "share" in checks["per_slot_uids"].detail
    assert checks["cgroups"].status == "WARN"
    assert refusal(checks.values()) is None


def test_a_delegated_v2_worker_reports_the_v2_limits() -> None:
    runs = Path("/sys/fs/cgroup/system.slice/attune-worker.service/runs")
    support = CgroupSupport(
        2, runs, runs, "cgroup v2 delegated", runs, frozenset({"cpu", "memory", "pids"})
    )
    snapshot = _snapshot(
        facts=_facts(cgroup=support), cgroup=CgroupView("v2", ("cpu", "memory", "pids"))
    )
    check = _by_name(build_checks(snapshot, Config()))["cgroups"]
    assert check.status == "OK" and "delegated" in check.detail
    assert "memory.swap.max=0" in check.detail and "cpu.max" in check.detail


def test_v2_without_delegation_warns_with_the_systemd_fix() -> None:
    snapshot = _snapshot(
        facts=_facts(cgroup=CgroupSupport(0, None, None, "cgroup v2 x has no memory controller")),
        cgroup=CgroupView("v2", ("cpu",)),
    )
    check = _by_name(build_checks(snapshot, Config()))["cgroups"]
    assert check.status == "WARN" and "rlimits only" in check.detail
    assert "Delegate=yes" in check.fix and "leaf" in check.fix


def test_v1_without_a_cpu_hierarchy_says_there_is_no_cpu_quota() -> None:
    check = _by_name(build_checks(_snapshot(), Config()))["cgroups"]
    assert check.status == "OK" and "memory.limit_in_bytes" in check.detail
    assert "no CPU quota" in check.detail


def test_a_worker_without_root_is_told_exactly_what_it_loses() -> None:
    snapshot = _snapshot(
        facts=_facts(is_root=False, cgroup=CgroupSupport(0, None, None, "not root"))
    )
    check = _by_name(build_checks(snapshot, Config()))["privileges"]
    assert check.status == "WARN" and not check.unsafe
    for lost in ("per-slot uids", "per-run cgroups", "OOM reporting", "leftover sandboxes"):
        assert lost in check.detail
    assert "seccomp" in check.detail  # and what it keeps
    assert _by_name(build_checks(_snapshot(), Config()))["privileges"].status == "OK"


@pytest.mark.parametrize(
    ("free", "status"), [(50 * 1024**2, "FAIL"), (500 * 1024**2, "WARN"), (5 * GIB, "OK")]
)
def test_free_disk_space_is_judged_by_threshold(free: int, status: str) -> None:
    disks = [Disk("run_dir", "/r", "/r", free, True)]
    check = _by_name(build_checks(_snapshot(disks=disks), Config()))["disk_run_dir"]
    assert check.status == status
    assert not check.unsafe
    assert (check.fix != "") is (status != "OK")


def test_an_unwritable_or_missing_directory_fails_without_blocking_start_up() -> None:
    disks = [
        Disk("artifacts_dir", "/a", "/", 5 * GIB, False),
        Disk("run_dir", "/r", "/r", None, False, "Permission denied"),
    ]
    checks = _by_name(build_checks(_snapshot(disks=disks), Config()))
    assert checks["disk_artifacts_dir"].status == "FAIL"
    assert "not writable" in checks["disk_artifacts_dir"].detail
    assert checks["disk_run_dir"].status == "FAIL"
    assert refusal(checks.values()) is None


def test_a_run_dir_the_slot_uids_cannot_reach_fails() -> None:
    check = _by_name(build_checks(_snapshot(untraversable=["/root"]), Config()))["run_dir_access"]
    assert check.status == "FAIL" and "/root" in check.detail and "o+x" in check.fix


def test_a_umask_that_hides_run_dirs_from_slot_uids_fails_for_a_root_worker() -> None:
    check = _by_name(build_checks(_snapshot(umask=0o027), Config()))["umask"]
    assert check.status == "FAIL" and "0027" in check.detail and "UMask=0022" in check.fix
    not_root = _snapshot(umask=0o027, facts=_facts(is_root=False))
    assert _by_name(build_checks(not_root, Config()))["umask"].status == "OK"


def test_a_sandbox_that_cannot_run_fails_with_a_fix_matching_the_error() -> None:
    broken = ServiceProbe(
        False, "bwrap: Can't mount proc on /newroot/proc: Operation not permitted"
    )
    check = _by_name(build_checks(_snapshot(), Config(), smoke=broken))["sandbox_run"]
    assert check.status == "FAIL" and "ProtectKernelTunables" in check.fix
    userns = doctor.sandbox_fix("bwrap: setting up uid map: Permission denied")
    assert "apparmor_restrict_unprivileged_userns" in userns
    fine = ServiceProbe(True, "a python action ran in the sandbox (20 ms)")
    assert _by_name(build_checks(_snapshot(), Config(), smoke=fine))["sandbox_run"].status == "OK"


def test_unloadable_profiles_fail_with_the_reason() -> None:
    snapshot = _snapshot(profiles=None, profiles_error="python.toml: unknown key 'comand'")
    check = _by_name(build_checks(snapshot, Config()))["profiles"]
    assert check.status == "FAIL" and "comand" in check.detail


def test_services_unreachable_or_unmigrated_fail_with_the_command_that_fixes_them() -> None:
    services = Services(
        ServiceProbe(True, "PostgreSQL at db:5432/x", migrated=False),
        ServiceProbe(False, "RabbitMQ at mq:5672 unreachable: ConnectionRefused"),
    )
    checks = _by_name(build_checks(_snapshot(), Config(), services))
    assert checks["database"].status == "FAIL" and checks["database"].fix == "attune db migrate"
    assert checks["broker"].status == "FAIL"
    assert "ATTUNE__MESSAGE_QUEUE__URL" in checks["broker"].fix
    assert not doctor.Report(list(checks.values())).ok
    assert refusal(checks.values()) is None  # the worker retries services itself


def test_the_text_report_shows_a_fix_only_under_what_is_not_ok_and_counts() -> None:
    checks = [
        Check("a", "OK", "fine", fix="never shown"),
        Check("b", "WARN", "meh", fix="do x"),
        Check("c", "FAIL", "bad", fix="do y"),
    ]
    text = render_text(checks)
    assert "never shown" not in text
    assert "fix: do x" in text and "fix: do y" in text
    assert text.splitlines()[-1] == "1 OK, 1 WARN, 1 FAIL"
    data = doctor.Report(checks).to_json()
    assert data["ok"] is False
    assert data["checks"][2] == {
        "name": "c",
        "status": "FAIL",
        "detail": "bad",
        "fix": "do y",
        "unsafe": False,
    }


def test_disk_probing_measures_the_nearest_existing_ancestor(tmp_path: Path) -> None:
    disk = probes._disk("run_dir", str(tmp_path / "not" / "yet"))
    assert disk.probed == str(tmp_path)
    assert disk.free_bytes is not None and disk.free_bytes > 0
    assert disk.writable


def test_ancestors_without_the_others_execute_bit_are_found(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    os.chmod(closed, 0o700)
    os.chmod(tmp_path, 0o755)
    found = untraversable_ancestors(str(closed / "runs"))
    assert str(closed) in found
    assert str(tmp_path) not in found


def test_subuid_ranges_are_parsed_and_junk_lines_skipped(tmp_path: Path) -> None:
    path = tmp_path / "subuid"
    path.write_text("alice:100000:65536\n# comment\nbroken\nbob:x:1\n")
    assert probes._subuid_ranges(path) == [("alice", 100000, 65536)]
