"""Per-run cgroups: memory, pids and CPU limits, OOM detection, a clean teardown.

cgroup v2 (the unified hierarchy every current distribution boots with under systemd):
the worker is started in a cgroup systemd delegated to it (`Delegate=yes`). A cgroup
that holds processes cannot hand controllers to its children ("no internal
processes"), so the worker first moves itself into a leaf of that cgroup (`worker/`),
then enables memory, pids and cpu in `cgroup.subtree_control`, and every run gets its
own cgroup under `runs/` with `memory.max`, `memory.swap.max = 0`, `pids.max` and
`cpu.max`. OOM kills are read from `memory.events`; teardown writes `cgroup.kill`,
which kills every process of the run at once, however it forked.

cgroup v1 (and hybrid hosts, whose unified hierarchy carries no controllers): writable
memory and pids hierarchies give the same memory and process limits, the cpu hierarchy
(where mounted) the CPU quota, `memory.oom_control` the OOM count.

Anything else: the layer is reported inactive and rlimits alone bound the run.

Decisions are plain functions returning `Write` lists (what to write where), applied by
`apply`; unit tests run them against a fake cgroupfs tree.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
WANTED = ("cpu", "memory", "pids")  # the controllers per-run limits use
REQUIRED = frozenset({"memory", "pids"})  # without these, per-run cgroups are off
LEAF = "worker"  # v2: the leaf the worker moves itself into
RUNS = "runs"  # v2: the parent of the per-run cgroups
V1_PARENT = "attune"
CPU_PERIOD_US = 100_000


@dataclass(frozen=True)
class Write:
    """One step: `text is None` makes the directory, otherwise writes the file."""

    path: Path
    text: str | None = None
    optional: bool = False  # e.g. memory.swap.max without swap accounting


@dataclass(frozen=True)
class CgroupSupport:
    version: int  # 0 (none), 1 or 2
    memory_parent: Path | None
    pids_parent: Path | None
    detail: str
    cpu_parent: Path | None = None
    controllers: frozenset[str] = field(default_factory=frozenset)  # limited per run

    @property
    def parents(self) -> dict[str, Path]:
        found = {"memory": self.memory_parent, "pids": self.pids_parent, "cpu": self.cpu_parent}
        return {name: path for name, path in found.items() if path is not None}


# --- pure core ---------------------------------------------------------------------------


def own_paths(proc_self_cgroup: str) -> dict[str, str]:
    """`/proc/self/cgroup` -> {controller: path}; the v2 (unified) line is key ""."""
    paths: dict[str, str] = {}
    for line in proc_self_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            paths[name.removeprefix("name=")] = path
    return paths


def delegated_base(mount: Path, own: str) -> Path:
    """The delegated cgroup: the worker's own, or its parent once it moved into LEAF."""
    base = mount / own.lstrip("/")
    return base.parent if base.name == LEAF else base


def cpu_max(cpus: float, period: int = CPU_PERIOD_US) -> str:
    """`cpu.max` for a quota of `cpus` CPUs; 0 means no quota."""
    if cpus <= 0:
        return f"max {period}"
    return f"{max(1000, round(cpus * period))} {period}"


def v2_delegation_plan(base: Path, pid: int, available: Iterable[str]) -> list[Write]:
    """Move `pid` into base/LEAF, then enable the wanted controllers for base/RUNS/*."""
    enable = " ".join(f"+{c}" for c in WANTED if c in set(available))
    writes = [Write(base / LEAF), Write(base / LEAF / "cgroup.procs", str(pid))]
    if enable:
        writes.append(Write(base / "cgroup.subtree_control", enable))
    writes.append(Write(base / RUNS))
    if enable:
        writes.append(Write(base / RUNS / "cgroup.subtree_control", enable))
    return writes


def run_plan(
    support: CgroupSupport, name: str, memory_bytes: int, pids: int, cpus: float
) -> list[Write]:
    """The directories and limit files of one run's cgroup(s). 0 means "no limit"."""
    pids_max = str(pids) if pids > 0 else "max"
    if support.version == 2 and support.memory_parent is not None:
        run = support.memory_parent / name
        writes = [Write(run)]
        if "memory" in support.controllers:
            writes.append(Write(run / "memory.max", str(memory_bytes) if memory_bytes else "max"))
            writes.append(Write(run / "memory.swap.max", "0", optional=True))
        if "pids" in support.controllers:
            writes.append(Write(run / "pids.max", pids_max))
        if "cpu" in support.controllers:
            writes.append(Write(run / "cpu.max", cpu_max(cpus)))
        return writes
    writes = []
    for controller, parent in support.parents.items():
        run = parent / name
        if Write(run) not in writes:
            writes.append(Write(run))
        if controller == "memory" and memory_bytes > 0:
            writes.append(Write(run / "memory.limit_in_bytes", str(memory_bytes)))
            writes.append(Write(run / "memory.memsw.limit_in_bytes", str(memory_bytes), True))
        elif controller == "pids":
            writes.append(Write(run / "pids.max", pids_max))
        elif controller == "cpu":
            quota = str(round(cpus * CPU_PERIOD_US)) if cpus > 0 else "-1"
            writes.append(Write(run / "cpu.cfs_period_us", str(CPU_PERIOD_US)))
            writes.append(Write(run / "cpu.cfs_quota_us", quota))
    return writes


def oom_kills(text: str) -> int:
    """The `oom_kill` count of `memory.events` (v2) or `memory.oom_control` (v1)."""
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return 0


# --- I/O ---------------------------------------------------------------------------------


def apply(writes: Sequence[Write]) -> None:
    for step in writes:
        try:
            if step.text is None:
                step.path.mkdir(exist_ok=True)
            else:
                step.path.write_text(step.text)
        except OSError:
            if not step.optional:
                raise


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def detect_v2(mount: Path, own: str, pid: int | None = None) -> CgroupSupport:
    """Take over the delegated cgroup `own` of the v2 hierarchy mounted at `mount`."""
    base = delegated_base(mount, own)
    available = frozenset(_read(base / "cgroup.controllers").split())
    missing = sorted(REQUIRED - available)
    if missing:
        return CgroupSupport(
            0, None, None, f"cgroup v2 {base} has no {'+'.join(missing)} controller"
        )
    try:
        apply(v2_delegation_plan(base, os.getpid() if pid is None else pid, available))
    except OSError as exc:
        return CgroupSupport(
            0, None, None, f"cgroup v2 {base} is not delegated to the worker: {exc.strerror}"
        )
    runs = base / RUNS
    enabled = frozenset(w.lstrip("+") for w in _read(runs / "cgroup.subtree_control").split())
    enabled &= frozenset(WANTED)
    if not enabled >= REQUIRED:
        return CgroupSupport(0, None, None, f"cgroup v2 {runs}: controllers not enabled")
    return CgroupSupport(2, runs, runs, f"cgroup v2 delegated at {base}", runs, controllers=enabled)


def _v1_parent(controller: str, own: dict[str, str]) -> Path | None:
    path = own.get(controller)
    if path is None:
        return None
    parent = ROOT / controller / path.lstrip("/") / V1_PARENT
    try:
        parent.mkdir(exist_ok=True)
        probe = parent / f"probe-{os.getpid()}"
        probe.mkdir()
        probe.rmdir()
    except OSError:
        return None
    return parent


def detect() -> CgroupSupport:
    own = own_paths(_read(Path("/proc/self/cgroup")))
    if (ROOT / "cgroup.controllers").exists():
        return detect_v2(ROOT, own.get("", "/"))
    if "memory" not in own or "pids" not in own:
        return CgroupSupport(0, None, None, "no cgroup v2 and no v1 memory+pids hierarchy")
    memory, pids = _v1_parent("memory", own), _v1_parent("pids", own)
    if memory is None or pids is None:
        return CgroupSupport(0, None, None, "cgroup v1 memory/pids hierarchies are not writable")
    cpu = _v1_parent("cpu", own)
    controllers = frozenset({"memory", "pids"} | ({"cpu"} if cpu else set()))
    return CgroupSupport(
        1, memory, pids, f"cgroup v1 memory+pids under {memory}", cpu, controllers=controllers
    )


class RunCgroup:
    """The cgroups of one run: created before the sandbox starts, removed after."""

    def __init__(
        self, support: CgroupSupport, name: str, memory_bytes: int, pids: int, cpus: float = 0
    ) -> None:
        self.support = support
        self.dirs: list[Path] = []
        if support.version == 0 or support.memory_parent is None:
            return
        writes = run_plan(support, name, memory_bytes, pids, cpus)
        try:
            for step in writes:
                apply([step])
                if step.text is None:
                    self.dirs.append(step.path)
        except OSError:
            self.remove()
            raise
        self.memory_dir = support.memory_parent / name

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def oom_killed(self) -> bool:
        if not self.dirs:
            return False
        name = "memory.events" if self.support.version == 2 else "memory.oom_control"
        return oom_kills(_read(self.memory_dir / name)) > 0

    def remove(self) -> None:
        """Kill what is left (cgroup.kill on v2), then rmdir; retried while it exits."""
        for d in self.dirs:
            if self.support.version == 2:
                with contextlib.suppress(OSError):
                    (d / "cgroup.kill").write_text("1")
            for _ in range(200):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    _kill_all(d)
                    time.sleep(0.01)
        self.dirs.clear()


def _kill_all(d: Path) -> None:
    """The fallback where there is no cgroup.kill (v1, kernels before 5.14)."""
    for pid in _read(d / "cgroup.procs").split():
        with contextlib.suppress(OSError):
            os.kill(int(pid), 9)
