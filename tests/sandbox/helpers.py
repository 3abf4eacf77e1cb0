"""Helpers for the real-bubblewrap tests: host process scans, action preludes."""

from __future__ import annotations

import importlib.util
import os
import signal
import uuid
from dataclasses import dataclass
from pathlib import Path

import trio


def make_wheel(out: Path, *args: object) -> Path:
    """examples/wheels/make_wheel.py's `make_wheel(out, *args)`: a wheel made offline."""
    script = Path(__file__).resolve().parents[2] / "examples" / "wheels" / "make_wheel.py"
    spec = importlib.util.spec_from_file_location("make_wheel", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_wheel(out, *args)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class HostProcess:
    pid: int
    ppid: int
    uids: tuple[int, ...]  # real, effective, saved, filesystem
    state: str
    cmdline: str


def host_processes() -> list[HostProcess]:
    """Every process of the host as the worker sees it (skips ones that vanish)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as handle:
                status = handle.read()
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        uids = tuple(int(u) for u in fields.get("Uid", "").split())
        found.append(
            HostProcess(
                int(name),
                int(fields.get("PPid", "0")),
                uids,
                fields.get("State", "").strip(),
                cmdline,
            )
        )
    return found


def outer_bwrap_of(token: str) -> HostProcess | None:
    """The worker's child (bwrap) above the process whose command line holds `token`:
    by ancestry, since a parked sandbox's bwrap names the launcher, not the action."""
    procs = {p.pid: p for p in host_processes()}
    for start in (p for p in procs.values() if token in p.cmdline):
        proc: HostProcess | None = start
        while proc is not None and proc.ppid != os.getpid():
            proc = procs.get(proc.ppid)
        if proc is not None:
            return proc
    return None


def with_token(token: str) -> list[HostProcess]:
    return [p for p in host_processes() if token in p.cmdline]


def of_uids(uids: set[int]) -> list[HostProcess]:
    return [p for p in host_processes() if p.uids and p.uids[0] in uids]


async def wait_until_gone(token: str, seconds: float = 1.0) -> list[HostProcess]:
    """Poll until no host process mentions `token`; returns what is left after `seconds`."""
    with trio.move_on_after(seconds):
        while with_token(token):
            await trio.sleep(0.02)
    return with_token(token)


def token() -> str:
    """A unique number usable as `sleep` argument and as a marker: 1000.<digits>."""
    return f"1000.{uuid.uuid4().int % 10**9:09d}"


# Prepended to python actions that make raw system calls (x86_64 numbers).
SYSCALLS = '''
import ctypes, errno, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

def sysc(nr, *args):
    """A raw syscall; 'OK' or the errno name."""
    ctypes.set_errno(0)
    conv = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    rc = libc.syscall(ctypes.c_long(nr), *conv)
    return "OK" if rc >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))

def libcall(name, *args):
    ctypes.set_errno(0)
    rc = getattr(libc, name)(*args)
    return "OK" if rc >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))

def oserr(fn, *args, **kw):
    """'OK' or the errno name of the OSError fn raised."""
    try:
        fn(*args, **kw)
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return "OK"
'''


def catches_sigusr1(pid: int) -> bool:
    """True once `pid` has a SIGUSR1 handler (an action waiting to be released by it)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            status = dict(line.split(":", 1) for line in handle if ":" in line)
    except OSError:
        return False
    return bool(int(status.get("SigCgt", "0"), 16) & (1 << (signal.SIGUSR1 - 1)))
