"""The seccomp rule set of docs/sandbox.md guarantee 6, checked as data (nothing is loaded)."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from attune.runner import seccomp
from attune.runner.seccomp import ArgMatch, Rule

RULES = seccomp.default_rules()

GUARANTEE_EPERM = [
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
    "open_by_handle_at",
    "name_to_handle_at",
    "reboot",
    "swapon",
    "swapoff",
    "iopl",
    "ioperm",
    "acct",
    "quotactl",
    "syslog",
    "settimeofday",
    "clock_settime",
    "adjtimex",
    "pidfd_getfd",
    "kcmp",
]
GUARANTEE_ENOSYS = [
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
]


def unconditional(name: str) -> list[Rule]:
    return [r for r in RULES if r.syscall == name and not r.args]


@pytest.mark.parametrize("name", GUARANTEE_EPERM)
def test_denied_with_eperm(name: str) -> None:
    assert [r.errno for r in unconditional(name)] == [errno.EPERM]


@pytest.mark.parametrize("name", GUARANTEE_ENOSYS)
def test_new_apis_get_enosys_so_libraries_fall_back(name: str) -> None:
    assert [r.errno for r in unconditional(name)] == [errno.ENOSYS]


def test_everyday_syscalls_are_not_touched() -> None:
    named = {r.syscall for r in RULES}
    for name in (
        "read",
        "write",
        "openat",
        "execve",
        "fork",
        "vfork",
        "wait4",
        "mmap",
        "futex",
        "socketpair",
        "connect",
        "prctl",
        "seccomp",
    ):
        assert name not in named


def test_no_syscall_is_both_unconditionally_denied_and_filtered_by_argument() -> None:
    plain = {r.syscall for r in RULES if not r.args}
    with_args = {r.syscall for r in RULES if r.args}
    assert not plain & with_args
    assert with_args == {"clone", "personality", "ioctl", "socket"}


def test_clone_with_any_namespace_flag_is_eperm() -> None:
    clone = [r for r in RULES if r.syscall == "clone"]
    assert all(r.errno == errno.EPERM for r in clone)
    flags = {r.args[0].value for r in clone}
    assert flags == {
        0x00020000,
        0x02000000,
        0x04000000,
        0x08000000,
        0x10000000,
        0x20000000,
        0x40000000,
        0x00000080,
    }
    for rule in clone:
        (match,) = rule.args
        assert match == ArgMatch(0, "masked_eq", match.value, match.value)


def test_plain_thread_and_fork_flags_match_no_clone_rule() -> None:
    # glibc's pthread_create and fork flags: none of them carries a namespace bit.
    thread_flags = 0x3D0F00  # CLONE_VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|*TID
    fork_flags = 0x01200011  # CLONE_CHILD_SETTID|CHILD_CLEARTID|SIGCHLD
    for rule in (r for r in RULES if r.syscall == "clone"):
        (match,) = rule.args
        assert thread_flags & match.mask != match.value
        assert fork_flags & match.mask != match.value


def test_personality_zero_is_allowed_anything_else_eperm() -> None:
    (rule,) = [r for r in RULES if r.syscall == "personality"]
    assert rule == Rule("personality", errno.EPERM, (ArgMatch(0, "ne", 0),))


def test_tiocsti_and_tioclinux_match_the_low_32_bits() -> None:
    ioctl = [r for r in RULES if r.syscall == "ioctl"]
    assert sorted(ioctl, key=lambda r: r.args[0].value) == [
        Rule("ioctl", errno.EPERM, (ArgMatch(1, "masked_eq", 0x5412, 0xFFFFFFFF),)),
        Rule("ioctl", errno.EPERM, (ArgMatch(1, "masked_eq", 0x541C, 0xFFFFFFFF),)),
    ]
    # A request with garbage in the upper half still matches: the kernel ignores it.
    (sti,) = [r for r in ioctl if r.args[0].value == seccomp.TIOCSTI]
    assert ((1 << 32) | seccomp.TIOCSTI) & sti.args[0].mask == sti.args[0].value


def denied_family(family: int) -> bool:
    for rule in (r for r in RULES if r.syscall == "socket"):
        (match,) = rule.args
        assert rule.errno == errno.EAFNOSUPPORT
        if (match.op == "eq" and family == match.value) or (
            match.op == "ge" and family >= match.value
        ):
            return True
    return False


def test_socket_families_other_than_unix_inet_inet6_get_eafnosupport() -> None:
    for family in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6):
        assert not denied_family(family)
    for family in (socket.AF_NETLINK, socket.AF_PACKET, 40, 45, 46, 47, 255, 2**31 - 1):
        assert denied_family(family), family
    assert all(denied_family(f) for f in range(64) if f not in (1, 2, 10))


def test_compile_bpf_produces_a_program_and_is_cached() -> None:
    program = seccomp.compile_bpf(RULES)
    assert program and len(program) % 8 == 0  # struct sock_filter is 8 bytes
    assert seccomp.default_bpf() is seccomp.default_bpf()
    assert seccomp.default_bpf() == program


def test_bpf_fd_is_a_fresh_fd_at_offset_zero() -> None:
    program = seccomp.default_bpf()
    first, second = seccomp.bpf_fd(program), seccomp.bpf_fd(program)
    try:
        assert first != second
        assert os.lseek(first, 0, os.SEEK_CUR) == 0
        assert os.read(first, len(program) + 1) == program
        assert os.lseek(second, 0, os.SEEK_CUR) == 0
    finally:
        os.close(first)
        os.close(second)
