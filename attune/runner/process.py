"""Spawning bubblewrap, waiting on it, killing it: the only place processes are made.

Why not trio.run_process: trio spawns from a helper thread that exits after ~10 s idle,
and bwrap's --die-with-parent fires when that thread exits, killing long runs. So we
fork on the trio thread with subprocess.Popen and wait on a pidfd.

bwrap reads its options from a pipe (`--args FD`) before doing anything else; we only
write them after the process is in its cgroups, so the action never runs a single
instruction outside them. Resource limits are applied inside the sandbox by
/usr/bin/prlimit (see argv.py): the worker may lack CAP_SYS_RESOURCE, which prlimit(2)
on another uid's process needs, and a preexec_fn is unsafe in a threaded process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from attune.errors import SandboxUnavailable

PR_SET_CHILD_SUBREAPER = 36


@dataclass
class Pipes:
    """The parent's ends of the child's stdin/stdout/stderr."""

    stdin: trio.lowlevel.FdStream
    stdout: trio.lowlevel.FdStream
    stderr: trio.lowlevel.FdStream


class SandboxProcess:
    """A running bwrap: wait on its pidfd, kill it race-free, reap it."""

    def __init__(self, popen: subprocess.Popen[bytes], pidfd: int, pipes: Pipes) -> None:
        self._popen = popen
        self._pidfd = pidfd
        self.pipes = pipes
        self.pid = popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    async def wait(self) -> int:
        """Wait for exit; a cancel kills the whole sandbox before it propagates."""
        try:
            while self._popen.poll() is None:
                await trio.lowlevel.wait_readable(self._pidfd)
        except BaseException:
            self.kill()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                while self._popen.poll() is None:
                    await trio.lowlevel.wait_readable(self._pidfd)
            raise
        return self._popen.returncode  # type: ignore[return-value]

    def kill(self) -> None:
        """SIGKILL the outer bwrap; --die-with-parent then takes the pid namespace down."""
        if self._popen.returncode is None:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._pidfd)


def spawn(
    bwrap: str,
    args: bytes,
    command: Sequence[str],
    *,
    pass_fds: Sequence[int],
    uid: int | None,
    gid: int | None,
    cgroup_procs: Sequence[str] = (),
) -> SandboxProcess:
    """Start bwrap gated on its --args pipe, confine it, then release it."""
    args_r, args_w = os.pipe2(os.O_CLOEXEC)
    in_r, in_w = os.pipe2(os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    child_ends = (args_r, in_r, out_w, err_w)
    try:
        popen = subprocess.Popen(
            [bwrap, "--args", str(args_r), "--", *command],
            stdin=in_r, stdout=out_w, stderr=err_w,
            pass_fds=(args_r, *pass_fds), close_fds=True,
            env={}, cwd="/",
            user=uid, group=gid, extra_groups=[] if uid is not None else None,
        )
    except OSError as exc:
        for fd in (*child_ends, args_w, in_w, out_r, err_r):
            os.close(fd)
        raise SandboxUnavailable(f"cannot start {bwrap}: {exc.strerror}") from None
    for fd in child_ends:
        os.close(fd)
    try:
        for procs in cgroup_procs:
            with open(procs, "w") as handle:
                handle.write(str(popen.pid))
        pidfd = os.pidfd_open(popen.pid)
        view = memoryview(args)
        while view:  # args are small (well under the 64 KiB pipe buffer)
            view = view[os.write(args_w, view):]
    except BaseException:
        popen.kill()
        popen.wait()
        for fd in (in_w, out_r, err_r):
            os.close(fd)
        raise
    finally:
        os.close(args_w)
    pipes = Pipes(
        stdin=trio.lowlevel.FdStream(in_w),
        stdout=trio.lowlevel.FdStream(out_r),
        stderr=trio.lowlevel.FdStream(err_r),
    )
    return SandboxProcess(popen, pidfd, pipes)


def become_subreaper() -> bool:
    """Orphans of our sandboxes (their init, after bwrap is killed) reparent to us."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except OSError:
        return False


def reap_orphans(owned: set[int]) -> int:
    """Reap exited children we did not spawn (zombies that count against RLIMIT_NPROC)."""
    reaped = 0
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return reaped
        if info is None or info.si_pid in owned:
            return reaped
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.si_pid, 0)
            reaped += 1
