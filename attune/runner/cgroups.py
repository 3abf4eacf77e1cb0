"""Per-run memory and pids cgroups, where the host lets us make them.

Both cgroup v2 (a delegated, writable subtree with the memory and pids controllers)
and v1 (writable memory and pids hierarchies) are supported; anything else means the
layer is reported inactive and rlimits alone bound the run.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class CgroupSupport:
    version: int  # 0 (none), 1 or 2
    memory_parent: Path | None
    pids_parent: Path | None
    detail: str


def _own_path(controller: str) -> str | None:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    return None


def _try_parent(base: Path) -> Path | None:
    parent = base / "attune"
    try:
        parent.mkdir(exist_ok=True)
        probe = parent / f"probe-{os.getpid()}"
        probe.mkdir()
        probe.rmdir()
    except OSError:
        return None
    return parent


def detect() -> CgroupSupport:
    v2_controllers = ROOT / "cgroup.controllers"
    if v2_controllers.exists():
        own = _own_path("") or "/"
        base = ROOT / own.lstrip("/")
        wanted = {"memory", "pids"}
        have = set((base / "cgroup.controllers").read_text().split()) if base.exists() else set()
        if not wanted <= have:
            return CgroupSupport(0, None, None, f"cgroup v2 without {sorted(wanted - have)}")
        parent = _try_parent(base)
        if parent is None:
            return CgroupSupport(0, None, None, f"cgroup v2 subtree {base} is not writable")
        with contextlib.suppress(OSError):
            (parent / "cgroup.subtree_control").write_text("+memory +pids")
        return CgroupSupport(2, parent, parent, f"cgroup v2 delegated at {parent}")
    memory = _own_path("memory")
    pids = _own_path("pids")
    if memory is None or pids is None:
        return CgroupSupport(0, None, None, "no cgroup v2 and no v1 memory+pids hierarchy")
    mem_parent = _try_parent(ROOT / "memory" / memory.lstrip("/"))
    pids_parent = _try_parent(ROOT / "pids" / pids.lstrip("/"))
    if mem_parent is None or pids_parent is None:
        return CgroupSupport(0, None, None, "cgroup v1 memory/pids hierarchies are not writable")
    return CgroupSupport(1, mem_parent, pids_parent, f"cgroup v1 memory+pids under {mem_parent}")


class RunCgroup:
    """The cgroups of one run: created before the sandbox starts, removed after."""

    def __init__(self, support: CgroupSupport, name: str, memory_bytes: int, pids: int) -> None:
        self.support = support
        self.dirs: list[Path] = []
        if support.version == 0 or support.memory_parent is None or support.pids_parent is None:
            return
        mem = support.memory_parent / name
        pid_dir = support.pids_parent / name
        mem.mkdir()
        self.dirs.append(mem)
        if pid_dir != mem:
            pid_dir.mkdir()
            self.dirs.append(pid_dir)
        # 0 means "no limit" (as for the rlimits), never "nothing allowed".
        pids_max = str(pids) if pids > 0 else "max"
        if support.version == 2:
            (mem / "memory.max").write_text(str(memory_bytes) if memory_bytes > 0 else "max")
            with contextlib.suppress(OSError):
                (mem / "memory.swap.max").write_text("0")
            (mem / "pids.max").write_text(pids_max)
        else:
            if memory_bytes > 0:
                (mem / "memory.limit_in_bytes").write_text(str(memory_bytes))
                with contextlib.suppress(OSError):
                    (mem / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
            (pid_dir / "pids.max").write_text(pids_max)
        self.memory_dir = mem

    @property
    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def oom_killed(self) -> bool:
        if not self.dirs:
            return False
        name = "memory.events" if self.support.version == 2 else "memory.oom_control"
        try:
            for line in (self.memory_dir / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
        except OSError:
            return False
        return False

    def remove(self) -> None:
        """rmdir fails while a process is still exiting; retry briefly."""
        for d in self.dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    self._kill_all(d)
                    time.sleep(0.01)

    @staticmethod
    def _kill_all(d: Path) -> None:
        with contextlib.suppress(OSError):
            for pid in (d / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    os.kill(int(pid), 9)
