"""The cgroup v2 path for real, on the host's unified hierarchy.

A hybrid host (v1 controllers, v2 mounted at /sys/fs/cgroup/unified without memory or
pids) still takes process placement and `cgroup.kill` there. Each test makes a scratch
cgroup standing in for the one systemd delegates, puts a stand-in worker process in it,
and removes every cgroup it made, leaving the host's layout as it was.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from attune.runner import cgroups, host
from attune.runner.cgroups import CgroupSupport, RunCgroup
from attune.runner.profiles import Profile
from attune.runner.sandbox import RunSpec, Sandbox
from tests.unavailable import unavailable

pytestmark = pytest.mark.sandbox


def _unified_mount() -> Path | None:
    for candidate in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified")):
        if (candidate / "cgroup.procs").exists() and (
            candidate / "cgroup.subtree_control"
        ).exists():
            return candidate
    return None


def _v2_own(pid: int | str = "self") -> str:
    return cgroups.own_paths(Path(f"/proc/{pid}/cgroup").read_text()).get("", "/")


@dataclasses.dataclass
class Delegated:
    mount: Path
    base: Path  # the scratch cgroup standing in for the delegated one
    worker: subprocess.Popen[bytes]  # a stand-in worker, started in `base`

    @property
    def own(self) -> str:
        return "/" + str(self.base.relative_to(self.mount))


@pytest.fixture
def delegated() -> Iterator[Delegated]:
    mount = _unified_mount()
    if mount is None or os.geteuid() != 0:
        unavailable("needs root and a cgroup v2 hierarchy")
    base = mount / _v2_own().lstrip("/") / f"attune-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    base.mkdir()
    worker = subprocess.Popen(["sleep", "600"])
    try:
        (base / "cgroup.procs").write_text(str(worker.pid))
        yield Delegated(mount, base, worker)
    finally:
        worker.kill()
        worker.wait()
        # Deepest first; every directory below `base` is one this test made.
        for path in sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            _rmdir(path)
        _rmdir(base)


def _rmdir(path: Path) -> None:
    for _ in range(500):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            with open(path / "cgroup.kill", "w") as kill:
                kill.write("1")
            time.sleep(0.01)  # bounded retry while the killed processes exit
    raise AssertionError(f"could not remove test cgroup {path}")


def test_the_worker_moves_itself_into_a_leaf_of_its_delegated_cgroup(
    delegated: Delegated,
) -> None:
    available = (delegated.base / "cgroup.controllers").read_text().split()
    cgroups.apply(cgroups.v2_delegation_plan(delegated.base, delegated.worker.pid, available))
    assert _v2_own(delegated.worker.pid) == delegated.own + "/worker"
    assert (delegated.base / "runs").is_dir()
    assert (delegated.base / "cgroup.procs").read_text() == ""  # no internal processes
    # what a restarted detection sees from inside the leaf: the same delegated base
    assert cgroups.delegated_base(delegated.mount, _v2_own(delegated.worker.pid)) == delegated.base


async def test_cgroup_kill_tears_down_every_process_of_a_run(delegated: Delegated) -> None:
    cgroups.apply(cgroups.v2_delegation_plan(delegated.base, delegated.worker.pid, []))
    runs = delegated.base / "runs"
    support = CgroupSupport(2, runs, runs, "test", runs, frozenset())
    run = RunCgroup(support, "run-1", 0, 0)
    # A run that forks a daemon and a grandchild, as actions do; it waits on stdin so
    # it is in the run's cgroup before it forks, as a sandbox is attached before exec.
    script = "read go; sleep 600 & (sleep 600 &); echo forked; sleep 600"
    tree = subprocess.Popen(["sh", "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert tree.stdin is not None and tree.stdout is not None
    try:
        (runs / "run-1" / "cgroup.procs").write_text(str(tree.pid))
        tree.stdin.write(b"go\n")
        tree.stdin.flush()
        assert await trio.to_thread.run_sync(tree.stdout.readline) == b"forked\n"
        members = (runs / "run-1" / "cgroup.procs").read_text().split()
        assert len(members) >= 3, members  # sh, the daemon, the grandchild (+ sleep)
        await trio.to_thread.run_sync(run.remove)
        assert not (runs / "run-1").exists()
        for pid in members:
            assert not Path(f"/proc/{pid}").exists() or _is_zombie(int(pid)), pid
    finally:
        tree.kill()
        tree.wait()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True


async def test_a_sandboxed_run_lives_and_dies_in_its_v2_run_cgroup(
    delegated: Delegated, facts: host.HostFacts, sandbox: Sandbox, profiles: dict[str, Profile]
) -> None:
    cgroups.apply(cgroups.v2_delegation_plan(delegated.base, delegated.worker.pid, []))
    runs = delegated.base / "runs"
    support = CgroupSupport(2, runs, runs, "test", runs, frozenset())
    v2 = Sandbox(
        dataclasses.replace(facts, cgroups=support),
        sandbox.run_dir,
        slot_uid_base=sandbox.slot_uid_base,
    )
    seen: list[list[str]] = []

    async def on_output(stream: str, data: bytes) -> None:
        if b"ready" in data and not seen:
            run_dirs = [d for d in runs.iterdir() if d.is_dir()]
            seen.append([p for d in run_dirs for p in (d / "cgroup.procs").read_text().split()])

    code = (
        "import subprocess, time\n"
        "subprocess.Popen(['sleep', '600'], start_new_session=True)\n"
        "print('ready', flush=True)\n"
        "time.sleep(600)\n"
    )
    spec = RunSpec(
        profile=profiles["python"],
        code=code.encode(),
        code_name="action.py",
        params={},
        env={"ATTUNE_EXEC_ID": "test", "ATTUNE_ACTION": "tests.v2", "ATTUNE_PACK_REF": "tests"},
    )
    outcome = await v2.run(spec, timeout=3, on_output=on_output)
    assert outcome.status == "timeout"
    assert seen and len(seen[0]) >= 3, seen  # bwrap's init, the action, its daemon
    assert [d for d in runs.iterdir() if d.is_dir()] == []  # torn down
    for pid in seen[0]:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(int(pid)), pid
