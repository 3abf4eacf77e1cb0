"""The seccomp denylist: a pure rule list, compiled to BPF once per process.

Default allow keeps ordinary Python (threads, fork, subprocess, multiprocessing)
working; the list removes what an untrusted action could use to attack the kernel or
escape its namespaces. Some calls get ENOSYS instead of EPERM so that glibc and other
libraries fall back to older calls (clone3 -> clone, io_uring -> read/write, the new
mount API -> nothing useful).
"""

from __future__ import annotations

import errno
import os
import socket
import tempfile
from dataclasses import dataclass
from functools import cache

# The namespace flags that make clone() create namespaces.
CLONE_NEW_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
    "CLONE_NEWTIME": 0x00000080,
}
TIOCSTI = 0x5412
TIOCLINUX = 0x541C
ALLOWED_SOCKET_FAMILIES = (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6)
MAX_SOCKET_FAMILY = 46  # AF_MAX on Linux 6.x; families >= this are refused as a block

EPERM_SYSCALLS = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "create_module",
    "open_by_handle_at",
    "name_to_handle_at",
    "reboot",
    "swapon",
    "swapoff",
    "iopl",
    "ioperm",
    "acct",
    "quotactl",
    "quotactl_fd",
    "syslog",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "pidfd_getfd",
    "kcmp",
    "lookup_dcookie",
    "vhangup",
    "nfsservctl",
)
ENOSYS_SYSCALLS = (
    "clone3",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "open_tree",
    "move_mount",
    "mount_setattr",
)


@dataclass(frozen=True)
class ArgMatch:
    """One comparison of a syscall argument: `arg <op> value` (masked_eq uses mask)."""

    index: int
    op: str  # "eq" | "ne" | "ge" | "masked_eq"
    value: int
    mask: int = 0


@dataclass(frozen=True)
class Rule:
    syscall: str
    errno: int
    args: tuple[ArgMatch, ...] = ()


def default_rules() -> list[Rule]:
    """The full denylist of docs/sandbox.md guarantee 6, as data."""
    rules = [Rule(name, errno.EPERM) for name in EPERM_SYSCALLS]
    rules += [Rule(name, errno.ENOSYS) for name in ENOSYS_SYSCALLS]
    # clone() with any namespace flag: one rule per flag (rules on a syscall are OR-ed).
    rules += [
        Rule("clone", errno.EPERM, (ArgMatch(0, "masked_eq", flag, flag),))
        for flag in CLONE_NEW_FLAGS.values()
    ]
    # personality(): any non-zero persona (e.g. ADDR_NO_RANDOMIZE) is refused.
    rules.append(Rule("personality", errno.EPERM, (ArgMatch(0, "ne", 0),)))
    # ioctl TIOCSTI / TIOCLINUX, matching the low 32 bits of the request number.
    rules += [
        Rule("ioctl", errno.EPERM, (ArgMatch(1, "masked_eq", request, 0xFFFFFFFF),))
        for request in (TIOCSTI, TIOCLINUX)
    ]
    # socket(): families other than unix/inet/inet6 are "not supported".
    rules += [
        Rule("socket", errno.EAFNOSUPPORT, (ArgMatch(0, "eq", family),))
        for family in range(MAX_SOCKET_FAMILY)
        if family not in ALLOWED_SOCKET_FAMILIES
    ]
    rules.append(Rule("socket", errno.EAFNOSUPPORT, (ArgMatch(0, "ge", MAX_SOCKET_FAMILY),)))
    return rules


def compile_bpf(rules: list[Rule]) -> bytes:
    """Compile the rules for the native architecture; foreign ABIs (i386, x32) kill."""
    import pyseccomp as sc

    ops = {"eq": sc.EQ, "ne": sc.NE, "ge": sc.GE, "masked_eq": sc.MASKED_EQ}
    flt = sc.SyscallFilter(sc.ALLOW)
    # Syscalls made through a foreign ABI kill the process (libseccomp's bad-arch action).
    flt.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    for rule in rules:
        try:
            sc.resolve_syscall(sc.system_arch(), rule.syscall)
        except Exception:  # unknown on this architecture: nothing to deny
            continue
        args = [
            # MASKED_EQ compares (arg & mask) == value: libseccomp takes (mask, value).
            sc.Arg(a.index, ops[a.op], a.mask, a.value)
            if a.op == "masked_eq"
            else sc.Arg(a.index, ops[a.op], a.value)
            for a in rule.args
        ]
        flt.add_rule(sc.ERRNO(rule.errno), rule.syscall, *args)
    with tempfile.TemporaryFile() as out:
        flt.export_bpf(out)
        out.seek(0)
        return out.read()


@cache
def default_bpf() -> bytes:
    """Built once per process: the filter takes about a millisecond to build."""
    return compile_bpf(default_rules())


def bpf_fd(program: bytes) -> int:
    """A fresh read-only fd holding the program; one per run (a shared offset races)."""
    fd = os.memfd_create("attune-seccomp", os.MFD_CLOEXEC)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
