"""process.py pieces that need a real child process but no bubblewrap."""

from __future__ import annotations

import os
import select
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from attune.runner import process

pytestmark = pytest.mark.sandbox


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "30"])
    yield proc
    proc.kill()
    proc.wait()


def test_open_child_pidfd_accepts_only_a_child_of_the_given_parent(
    child: subprocess.Popen[bytes],
) -> None:
    fd = process.open_child_pidfd(child.pid, os.getpid())
    assert fd is not None
    try:
        assert process._pidfd_pid(fd) == child.pid
    finally:
        os.close(fd)
    assert process.open_child_pidfd(child.pid, os.getppid()) is None
    assert process.open_child_pidfd(os.getpid(), os.getpid()) is None


def test_pidfd_of_a_reaped_process_reports_no_pid(child: subprocess.Popen[bytes]) -> None:
    fd = os.pidfd_open(child.pid)
    try:
        child.kill()
        child.wait()
        assert process._pidfd_pid(fd) == -1
        assert process.open_child_pidfd(child.pid, os.getpid()) is None
    finally:
        os.close(fd)


def test_parent_pid_parses_odd_command_names(tmp_path: Path) -> None:
    # /proc/PID/stat is "pid (comm) state ppid ...", and comm may hold ") (" itself
    odd_name = tmp_path / "x) S 1 (y"
    odd_name.symlink_to("/usr/bin/sleep")
    odd = subprocess.Popen([str(odd_name), "30"])
    try:
        assert process._parent_pid(odd.pid) == os.getpid()
    finally:
        odd.kill()
        odd.wait()


def test_pending_inits_are_reaped_once_they_exit() -> None:
    """An orphaned init still tearing down is left pending and reaped by a later sweep."""
    pid = os.posix_spawn("/usr/bin/sleep", ["sleep", "30"], {})  # a child no Popen owns
    fd = os.pidfd_open(pid)
    process._pending_inits.append(fd)
    try:
        assert process.sweep_pending_inits() >= 1
        os.kill(pid, signal.SIGKILL)
        select.select([fd], [], [], 5)  # a pidfd turns readable when its process exits
        assert process.sweep_pending_inits() == 0
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # already reaped, by the sweep
    finally:
        if fd in process._pending_inits:
            process._pending_inits.remove(fd)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(fd)


def test_an_ordinary_child_is_never_taken_for_an_orphaned_init(
    child: subprocess.Popen[bytes],
) -> None:
    """A reused pid now held by one of the worker's own Popen children must not be reaped."""
    assert process.open_child_pidfd(child.pid, os.getpid(), namespace_init=True) is None
    assert child.poll() is None
