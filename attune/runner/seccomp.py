"""The seccomp denylist: a pure rule list, compiled to BPF once per process.

Default allow keeps ordinary Python (threads, fork, subprocess, multiprocessing)
working; the list removes what an untrusted action could use to attack the kernel or
escape its namespaces. Some calls get ENOSYS instead of EPERM so that glibc and other
libraries fall back to older calls (clone3 -> clone, io_uring -> read/write, the new
mount API -> nothing useful).

Two things keep the denylist from failing open:
- A name the installed libseccomp does not know is denied by its number
  (`SYSCALL_NUMBERS`; numbers from 424 up are the same on every architecture); a rule
  that can be resolved neither way is a build error, never silently skipped.
- Every syscall number above `SYSCALL_HORIZON` (the newest call this list was reviewed
  against) fails with ENOSYS, as under an allowlist: a BPF prefix in front of
  libseccomp's program (`horizon_prefix`). A kernel that adds a call does not widen the
  sandbox; libraries see "not implemented" and fall back.
"""

from __future__ import annotations

import errno
import platform
import socket
import struct
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
# socket() protocols: the default (0), ICMP/ICMPv6 datagram sockets, TCP and UDP. MPTCP,
# UDP-Lite, SCTP, DCCP and every other protocol module get EPROTONOSUPPORT.
ALLOWED_SOCKET_PROTOCOLS = (0, 1, 6, 17, 58)
MAX_SOCKET_PROTOCOL = 256  # protocols (and any value with high bits set) >= this: refused

# The newest syscall number this list was reviewed against (futex_requeue, Linux 6.7).
# Everything above, from statmount/listmount (457/458), the LSM calls, mseal and the
# *xattrat calls to open_tree_attr and file_getattr/file_setattr (467-469) and whatever
# comes later, fails with ENOSYS.
SYSCALL_HORIZON = 456
# Numbers for denied calls an older libseccomp may not know. 424 and up are the same on
# every architecture; modify_ldt and uretprobe are x86_64 numbers (x86 only).
SYSCALL_NUMBERS = {
    "memfd_secret": 447,
    "modify_ldt": 154,
}
# Calls that exist on some architectures only: absent here means nothing to deny.
ARCH_SPECIFIC = frozenset({"iopl", "ioperm", "modify_ldt", "create_module", "nfsservctl"})
# seccomp_data offsets and the BPF opcodes of the horizon prefix.
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
X32_SYSCALL_BIT = 0x40000000
_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGE_K = 0x35
_BPF_JGT_K = 0x25
_BPF_RET_K = 0x06
_SECCOMP_RET_ERRNO = 0x00050000

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
    "modify_ldt",  # x86 LDT entries: a kernel attack surface with no use here
    "memfd_secret",  # memory hidden even from the kernel's direct map
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
    # socket() protocols outside the allowed set, as aligned blocks of values.
    rules += [
        Rule("socket", errno.EPROTONOSUPPORT, (ArgMatch(2, "masked_eq", start, mask),))
        for start, mask in denied_blocks(ALLOWED_SOCKET_PROTOCOLS, MAX_SOCKET_PROTOCOL)
    ]
    rules.append(Rule("socket", errno.EPROTONOSUPPORT, (ArgMatch(2, "ge", MAX_SOCKET_PROTOCOL),)))
    # socketpair() exists for AF_UNIX only; other families would create a socket
    # (netlink, vsock) before failing.
    rules.append(Rule("socketpair", errno.EAFNOSUPPORT, (ArgMatch(0, "ne", socket.AF_UNIX),)))
    return rules


def denied_blocks(allowed: tuple[int, ...], limit: int) -> list[tuple[int, int]]:
    """Values in [0, limit) outside `allowed`, as (start, mask) pairs of aligned
    power-of-two blocks: `value & mask == start` matches exactly one block. `limit` must
    be a power of two; values >= limit need their own rule."""
    blocks: list[tuple[int, int]] = []
    full = (1 << 64) - 1
    value = 0
    while value < limit:
        if value in allowed:
            value += 1
            continue
        size = 1
        while (
            value % (size * 2) == 0
            and value + size * 2 <= limit
            and not any(value <= a < value + size * 2 for a in allowed)
        ):
            size *= 2
        blocks.append((value, full & ~(size - 1)))
        value += size
    return blocks


def horizon_prefix(audit_arch: int, horizon: int) -> bytes:
    """Classic BPF run before libseccomp's program: a native-ABI syscall numbered above
    `horizon` returns ENOSYS; everything else falls through to libseccomp's program
    unchanged (which re-checks the architecture and kills foreign ABIs and x32)."""

    def insn(code: int, jt: int, jf: int, k: int) -> bytes:
        return struct.pack("=HBBI", code, jt, jf, k)

    return b"".join(
        (
            insn(_BPF_LD_W_ABS, 0, 0, 4),  # A = seccomp_data.arch
            insn(_BPF_JEQ_K, 0, 4, audit_arch),  # foreign: straight to libseccomp
            insn(_BPF_LD_W_ABS, 0, 0, 0),  # A = seccomp_data.nr
            insn(_BPF_JGE_K, 2, 0, X32_SYSCALL_BIT),  # x32: libseccomp kills it
            insn(_BPF_JGT_K, 0, 1, horizon),
            insn(_BPF_RET_K, 0, 0, _SECCOMP_RET_ERRNO | errno.ENOSYS),
        )
    )


def compile_bpf(rules: list[Rule]) -> bytes:
    """Compile the rules for the native architecture; foreign ABIs (i386, x32) kill.

    On an architecture without a known audit arch the horizon prefix is left out (the
    denylist alone applies); x86_64 and aarch64 get it.
    """
    import pyseccomp as sc

    ops = {"eq": sc.EQ, "ne": sc.NE, "ge": sc.GE, "masked_eq": sc.MASKED_EQ}
    flt = sc.SyscallFilter(sc.ALLOW)
    # Syscalls made through a foreign ABI kill the process (libseccomp's bad-arch action).
    flt.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    for rule in rules:
        number = syscall_number(rule.syscall, sc.resolve_syscall(sc.system_arch(), rule.syscall))
        if number is None:
            continue
        args = [
            # MASKED_EQ compares (arg & mask) == value: libseccomp takes (mask, value).
            sc.Arg(a.index, ops[a.op], a.mask, a.value)
            if a.op == "masked_eq"
            else sc.Arg(a.index, ops[a.op], a.value)
            for a in rule.args
        ]
        flt.add_rule(sc.ERRNO(rule.errno), number, *args)
    with tempfile.TemporaryFile() as out:
        flt.export_bpf(out)
        out.seek(0)
        program = out.read()
    audit_arch = AUDIT_ARCH.get(platform.machine())
    if audit_arch is None:
        return program
    return horizon_prefix(audit_arch, SYSCALL_HORIZON) + program


def syscall_number(name: str, resolved: int) -> int | None:
    """The number to deny `name` by: libseccomp's (`resolved`, negative when it does not
    know the name), else ours; None only for a call this architecture does not have."""
    if resolved >= 0:
        return resolved
    if name in SYSCALL_NUMBERS and (name not in ARCH_SPECIFIC or platform.machine() == "x86_64"):
        return SYSCALL_NUMBERS[name]
    if name in ARCH_SPECIFIC:
        return None
    raise ValueError(f"seccomp: cannot resolve {name!r} to a syscall number: refusing to build")


@cache
def default_bpf() -> bytes:
    """Built once per process: the filter takes about a millisecond to build."""
    return compile_bpf(default_rules())


def bpf_fd(program: bytes) -> int:
    """A fresh read-only fd holding the program; one per run (a shared offset races)."""
    from attune.runner.process import data_fd

    return data_fd("seccomp", program)
