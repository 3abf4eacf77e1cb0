"""Spawning bubblewrap, waiting on it, killing it: the only place processes are made.

Why not trio.run_process: trio spawns from a helper thread that exits after ~10 s idle,
and bwrap's --die-with-parent fires when that thread exits, killing long runs. So we
fork on the trio thread with subprocess.Popen and wait on a pidfd.

bwrap reads its options from a pipe (`--args FD`) before doing anything else; we only
write them after the process is in its cgroups, so the action never runs a single
instruction outside them. Resource limits are applied by the spawn chain itself, before
bwrap (argv.spawn_argv): the worker may lack CAP_SYS_RESOURCE, which prlimit(2) on
another uid's process needs, and a preexec_fn is unsafe in a threaded process.

The process tree of one run is: bwrap (host pid, our child) -> attune-init (pid 1 of
the sandbox's pid namespace, `--as-pid-1`) -> the action (pid 2). bwrap reports the init's host pid
on `--info-fd`; we hold a pidfd on it. Killing a run SIGKILLs the init: the kernel
then kills every process of the namespace (setsid daemons included), bwrap reaps the
init and exits. Killing the outer bwrap instead orphans the init: reparented to the
host's pid 1, which may never reap it (this host's does not), its zombie of the slot
uid counts against RLIMIT_NPROC for good; and an init still blocked in its setup when
bwrap died never exits at all. So bwrap is killed only as a fallback (the init is not
known yet, or the namespace takes over KILL_GRACE_SECONDS to die), and after every run
whose bwrap died of a signal, orphaned inits are found, killed and reaped: the worker
is a child subreaper (`become_subreaper`), so they are its children, and each is reaped
through its own pidfd (waitid P_PIDFD), never with a wildcard wait, which could reap a
pid some subprocess.Popen of the worker owns (Popen would then report exit 0).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from attune.errors import SandboxUnavailable
from attune.runner import argv

PR_SET_CHILD_SUBREAPER = 36
# After its init is killed, bwrap exits as soon as the kernel has torn the pid namespace
# down: milliseconds usually, around a second for a namespace of 256 fork-bomb processes
# on a loaded host. Only past this bound is bwrap itself killed (orphaning the init).
KILL_GRACE_SECONDS = 10.0
# How long a run waits to reap an orphaned init before leaving it to the next run.
REAP_WAIT_SECONDS = 2.0
INFO_MAX_BYTES = 4096

# pidfds of orphaned sandbox inits (our children, as a subreaper) still to be reaped.
_pending_inits: list[int] = []


@dataclass
class Pipes:
    """The parent's ends of the child's stdin/stdout/stderr."""

    stdin: trio.lowlevel.FdStream
    stdout: trio.lowlevel.FdStream
    stderr: trio.lowlevel.FdStream


def _pidfd_pid(pidfd: int) -> int:
    """The pid a pidfd refers to, or -1 once that process has been reaped."""
    try:
        with open(f"/proc/self/fdinfo/{pidfd}") as handle:
            for line in handle:
                if line.startswith("Pid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return -1


def _parent_pid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return -1
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    fields = data[data.rfind(b")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 else -1


def _is_namespace_init(pid: int) -> bool:
    """True if `pid` is pid 1 of a pid namespace below ours (`NSpid: <pid> 1`)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("NSpid:"):
                    ids = line.split()[1:]
                    return len(ids) >= 2 and ids[-1] == "1"
    except OSError:
        pass
    return False


def open_child_pidfd(pid: int, parent: int, *, namespace_init: bool = False) -> int | None:
    """A pidfd on `pid` only if it is (still) a child of `parent`, else None.

    The pid number comes from bwrap and could in theory have been reused; checking the
    parent through /proc and then that the pidfd's process is still unreaped proves the
    pidfd and /proc looked at the same process. With `namespace_init`, the process must
    also be the init of a child pid namespace: when `parent` is the worker itself, that
    keeps a reused pid that now belongs to one of the worker's own children (which some
    subprocess.Popen owns) from ever being taken for an orphaned sandbox init.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    if (
        _parent_pid(pid) == parent
        and (not namespace_init or _is_namespace_init(pid))
        and _pidfd_pid(pidfd) == pid
    ):
        return pidfd
    os.close(pidfd)
    return None


class SandboxProcess:
    """A running bwrap: wait on its pidfd, kill its pid namespace race-free, reap it."""

    def __init__(
        self, popen: subprocess.Popen[bytes], pidfd: int, pipes: Pipes, info_fd: int
    ) -> None:
        self._popen = popen
        self._pidfd = pidfd
        self.pipes = pipes
        self.pid = popen.pid
        self._info = trio.lowlevel.FdStream(info_fd)
        self._info_buf = bytearray()
        self.init_pid: int | None = None
        self._init_pidfd: int | None = None

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    def running(self) -> bool:
        """True while bwrap has not exited (a parked sandbox still waiting, say)."""
        return self._popen.poll() is None

    async def read_info(self) -> None:
        """Learn the sandbox init's host pid from bwrap's --info-fd (EOF if bwrap failed).

        Runs beside the action; a run killed before this finished still finds the info
        through `_info_now` (bwrap writes it right after creating the init).
        """
        try:
            while len(self._info_buf) < INFO_MAX_BYTES:
                chunk = await self._info.receive_some(INFO_MAX_BYTES)
                if not chunk:
                    break
                self._info_buf += chunk
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return
        self._learn_init(self.pid)

    def _info_now(self, parent: int) -> None:
        """Read whatever bwrap wrote on --info-fd without waiting, then learn the init.

        `parent` is bwrap while it lives, the worker once bwrap is gone.
        """
        if self._init_pidfd is not None:
            return
        fd = self._info.fileno()
        while fd >= 0 and len(self._info_buf) < INFO_MAX_BYTES:
            try:
                chunk = os.read(fd, INFO_MAX_BYTES)
            except OSError:  # EAGAIN (nothing yet) or closed
                break
            if not chunk:
                break
            self._info_buf += chunk
        self._learn_init(parent)

    def learn_init(self) -> int | None:
        """The sandbox init's host pid, once bwrap has announced it (a pidfd is held)."""
        self._info_now(self.pid)
        return self.init_pid if self._init_pidfd is not None else None

    def _learn_init(self, parent: int) -> None:
        """Parse the info JSON; hold a pidfd on the init if it is `parent`'s child."""
        if self._init_pidfd is not None:
            return
        if self.init_pid is None:
            try:
                self.init_pid = int(json.loads(bytes(self._info_buf))["child-pid"])
            except (ValueError, KeyError, TypeError):
                return
        self._init_pidfd = open_child_pidfd(
            self.init_pid, parent, namespace_init=parent != self.pid
        )

    async def wait(self) -> int:
        """Wait for exit; a cancel kills the whole sandbox before it propagates."""
        try:
            await self.exited()
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.kill_and_wait()
            raise
        return self._popen.returncode  # type: ignore[return-value]

    async def exited(self) -> None:
        """Wait until bwrap has exited; cancelling this only stops the wait."""
        while self._popen.poll() is None:
            await trio.lowlevel.wait_readable(self._pidfd)

    async def kill_and_wait(self) -> None:
        """Kill the sandbox and wait (bounded) until bwrap is gone."""
        self.kill()
        grace = KILL_GRACE_SECONDS if self._init_pidfd is not None else 0.5
        with trio.move_on_after(grace):
            await self.exited()
        if self._popen.returncode is None:
            self._kill_bwrap()
            with trio.move_on_after(5):
                await self.exited()

    def kill(self) -> None:
        """SIGKILL the sandbox's init (the whole pid namespace dies); bwrap if unknown."""
        if self._popen.returncode is None:
            self._info_now(self.pid)
        if self._init_pidfd is not None:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self._init_pidfd, signal.SIGKILL)
                return
        self._kill_bwrap()

    def _kill_bwrap(self) -> None:
        if self._popen.returncode is None:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    async def reap_init(self) -> None:
        """Reap the init if it was orphaned to us (we are a subreaper); call after wait().

        Normally bwrap reaped it and this costs one waitid (ECHILD). When bwrap itself
        died of a signal (our fallback kill, the OOM killer), its init may be orphaned to
        us without bwrap having announced it on --info-fd, so our children are scanned
        for pid-namespace inits. Every reap goes through that process's own pidfd
        (waitid P_PIDFD), never a wildcard wait. Inits still tearing their namespace down
        after REAP_WAIT_SECONDS stay in `_pending_inits` for later runs to reap.
        """
        if self._popen.returncode is None:
            return
        self._info_now(os.getpid())
        if self._init_pidfd is not None:
            # bwrap is gone, so is its sandbox: an init bwrap did not wait for (e.g. one
            # still blocked in its setup when bwrap died) must not live on.
            _kill_pidfd(self._init_pidfd)
            _pending_inits.append(self._init_pidfd)
            self._init_pidfd = None  # owned by _pending_inits now
        if self._popen.returncode < 0:
            adopt_orphaned_inits()
        with trio.move_on_after(REAP_WAIT_SECONDS):
            while sweep_pending_inits():
                await trio.sleep(0.01)

    def close(self) -> None:
        """Release every fd of this run (idempotent; streams may already be closed)."""
        for stream in (self._info, self.pipes.stdin, self.pipes.stdout, self.pipes.stderr):
            with contextlib.suppress(OSError):
                stream.close()
        for fd in (self._pidfd, self._init_pidfd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._init_pidfd = None
        self._pidfd = -1


def kill_uid_range(first_uid: int, count: int) -> list[int]:
    """SIGKILL every host process running as a uid in [first_uid, first_uid + count).

    Those uids belong to this worker's slots alone, so at start-up anything running as
    them is a leftover of a previous instance that was SIGKILLed: e.g. a bwrap caught
    in the instant between its spawn and `--die-with-parent` taking effect.
    """
    killed = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as handle:
                uid_line = next(line for line in handle if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        real_uid = int(uid_line.split()[1])
        if first_uid <= real_uid < first_uid + count:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
    return killed


def _attach(pid: int, cgroup_procs: Sequence[str]) -> None:
    for procs in cgroup_procs:
        with open(procs, "w") as handle:
            handle.write(str(pid))


async def spawn(
    bwrap: str,
    args: bytes,
    command: Sequence[str],
    *,
    pass_fds: Sequence[int],
    uid: int | None,
    gid: int | None,
    rlimits: Sequence[str] = (),
    cgroup_procs: Sequence[str] = (),
) -> SandboxProcess:
    """Start bwrap gated on its --args pipe, confine it, then release it.

    `args` must not hold `--info-fd`: spawn adds it and owns that pipe. Moving a process
    into a cgroup v1 hierarchy waits for an RCU grace period (about 10 ms), so the
    attach runs in a thread: the trio thread keeps serving other runs meanwhile.
    """
    args_r, args_w = os.pipe2(os.O_CLOEXEC)
    info_r, info_w = os.pipe2(os.O_CLOEXEC)
    in_r, in_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    child_ends = (args_r, info_w, in_r, out_w, err_w)
    parent_ends = (args_w, info_r, in_w, out_r, err_r)
    try:
        popen = subprocess.Popen(
            argv.spawn_argv(
                bwrap,
                become=argv.become_prefix(uid, gid),
                rlimits=rlimits,
                args_fd=args_r,
                info_fd=info_w,
                command=command,
            ),
            stdin=in_r,
            stdout=out_w,
            stderr=err_w,
            pass_fds=(args_r, info_w, *pass_fds),
            close_fds=True,
            env={},
            cwd="/",
        )
    except OSError as exc:
        for fd in (*child_ends, *parent_ends):
            os.close(fd)
        raise SandboxUnavailable(f"cannot start {bwrap}: {exc.strerror}") from None
    for fd in child_ends:
        os.close(fd)
    pidfd = -1
    try:
        if cgroup_procs:
            await trio.to_thread.run_sync(_attach, popen.pid, tuple(cgroup_procs))
        pidfd = os.pidfd_open(popen.pid)
        view = memoryview(args)
        while view:  # bwrap reads all of it before doing anything else
            view = view[os.write(args_w, view) :]
    except BaseException:
        popen.kill()  # still waiting for its options: nothing was created yet
        popen.wait()
        for fd in (pidfd, info_r, in_w, out_r, err_r):
            if fd >= 0:
                os.close(fd)
        raise
    finally:
        os.close(args_w)
    pipes = Pipes(
        stdin=trio.lowlevel.FdStream(in_w),
        stdout=trio.lowlevel.FdStream(out_r),
        stderr=trio.lowlevel.FdStream(err_r),
    )
    return SandboxProcess(popen, pidfd, pipes, info_r)


def _try_reap(pidfd: int) -> bool:
    """True once the process is reaped by us, or is not ours to reap."""
    try:
        return os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG) is not None
    except OSError:  # ECHILD: not our child (bwrap or the host's init reaped it)
        return True


def adopt_orphaned_inits() -> int:
    """Kill and queue every child of ours that is a pid-namespace init (an orphaned
    bwrap init).

    No subprocess.Popen of the worker can own such a process: Popen children live in
    the worker's own pid namespace. Returns how many were found.
    """
    me = os.getpid()
    known = {_pidfd_pid(fd) for fd in _pending_inits}
    found = 0
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in known or _parent_pid(int(name)) != me:
            continue
        fd = open_child_pidfd(int(name), me, namespace_init=True)
        if fd is not None:
            _kill_pidfd(fd)  # its bwrap is dead: the sandbox must be too
            _pending_inits.append(fd)
            found += 1
    return found


def _kill_pidfd(pidfd: int) -> None:
    with contextlib.suppress(OSError):
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)


def sweep_pending_inits() -> int:
    """Reap orphaned inits that have exited since; returns how many are still pending."""
    for fd in list(_pending_inits):
        if _try_reap(fd):
            _pending_inits.remove(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
    return len(_pending_inits)


def data_fd(name: str, data: bytes) -> int:
    """A fresh memfd holding `data` at offset 0 (for bwrap's --file and --seccomp)."""
    fd = os.memfd_create(f"attune-{name}", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def become_subreaper() -> bool:
    """Orphans of our sandboxes (their init, if bwrap dies first) reparent to us.

    Process-wide and idempotent. Only the inits we hold a pidfd for are ever reaped by
    this module (see SandboxProcess.reap_init).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except OSError:
        return False
