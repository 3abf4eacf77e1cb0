"""The syscall filter fails closed (hostile-action catalog rows 65-67), on a real bwrap.

Raw x86_64 syscall numbers from inside the sandbox: calls the installed libseccomp has no
name for are still denied, every number above the reviewed horizon gets ENOSYS, and the
socket calls refuse families and protocols outside the allowed sets before the kernel
creates anything.
"""

from __future__ import annotations

import platform
import textwrap

import pytest

from tests.sandbox.conftest import RunCode
from tests.sandbox.helpers import SYSCALLS

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.skipif(platform.machine() != "x86_64", reason="x86_64 syscall numbers"),
]


async def probed(run_code: RunCode, body: str) -> dict[str, str]:
    outcome = await run_code(SYSCALLS + textwrap.dedent(body).lstrip())
    assert outcome.status == "completed", outcome.result
    data: dict[str, str] = outcome.result["data"]
    return data


async def test_65_syscalls_newer_than_the_filter_fail_with_enosys(run_code: RunCode) -> None:
    data = await probed(
        run_code,
        """
        def run():
            buf = ctypes.create_string_buffer(256)
            return {
                "statmount": sysc(457, buf, buf, 256, 0),
                "listmount": sysc(458, buf, buf, 16, 0),
                "lsm_list_modules": sysc(461, buf, buf, 0),
                "mseal": sysc(462, 0, 4096, 0),
                "setxattrat": sysc(463, -100, b"/work", 0, b"user.x", buf, 32),
                "getxattrat": sysc(464, -100, b"/work", 0, b"user.x", buf, 32),
                "removexattrat": sysc(466, -100, b"/work", 0, b"user.x"),
                "open_tree_attr": sysc(467, -100, b"/", 1, buf, 32),
                "file_getattr": sysc(468, -100, b"/work", buf, 32, 0),
                "file_setattr": sysc(469, -100, b"/work", buf, 32, 0),
                "unassigned_470": sysc(470, 0, 0, 0),
                "unassigned_511": sysc(511, 0, 0, 0),
                "unassigned_4095": sysc(4095, 0, 0, 0),
                "largest_native": sysc(0x3FFFFFFF, 0, 0, 0),
            }
        """,
    )
    assert data == dict.fromkeys(data, "ENOSYS")


async def test_65_reviewed_calls_below_the_horizon_still_reach_the_kernel(
    run_code: RunCode,
) -> None:
    data = await probed(
        run_code,
        """
        def run():
            return {
                "getpid": sysc(39),
                "fchmodat2": sysc(452, -100, b"/work/missing", 0o600, 0),
                "futex_wake": sysc(454, 0, 1, 1, 0),
            }
        """,
    )
    assert data == {"getpid": "OK", "fchmodat2": "ENOENT", "futex_wake": "EINVAL"}


async def test_66_calls_unknown_to_libseccomp_or_x86_only_are_denied(run_code: RunCode) -> None:
    data = await probed(
        run_code,
        """
        def run():
            buf = ctypes.create_string_buffer(16)
            return {
                "modify_ldt_read": sysc(154, 0, buf, 16),
                "modify_ldt_write": sysc(154, 1, buf, 16),
                "memfd_secret": sysc(447, 0),
            }
        """,
    )
    assert data == dict.fromkeys(data, "EPERM")


async def test_67_sockets_outside_the_allowed_families_and_protocols_are_never_created(
    run_code: RunCode,
) -> None:
    data = await probed(
        run_code,
        """
        def run():
            pair = (ctypes.c_int * 2)()
            def socketpair(family, kind):
                return sysc(53, family, kind, 0, pair)
            def sock(family, kind, proto):
                return oserr(lambda: socket.socket(family, kind, proto).close())
            before = len(os.listdir("/proc/self/fd"))
            seen = {
                "pair_netlink": socketpair(16, socket.SOCK_RAW),
                "pair_vsock": socketpair(40, socket.SOCK_STREAM),
                "pair_inet": socketpair(socket.AF_INET, socket.SOCK_STREAM),
                "pair_unix_high_bits": socketpair((1 << 32) | 1, socket.SOCK_STREAM),
                "mptcp": sock(socket.AF_INET, socket.SOCK_STREAM, 262),
                "mptcp6": sock(socket.AF_INET6, socket.SOCK_STREAM, 262),
                "mptcp_high_bits": sysc(41, socket.AF_INET, socket.SOCK_STREAM, (1 << 32) | 262),
                "udplite": sock(socket.AF_INET, socket.SOCK_DGRAM, 136),
                "sctp": sock(socket.AF_INET, socket.SOCK_STREAM, 132),
                "dccp": sysc(41, socket.AF_INET, 6, 33),
            }
            seen["fds_created"] = len(os.listdir("/proc/self/fd")) - before
            ok = {
                "pair_unix": socketpair(socket.AF_UNIX, socket.SOCK_STREAM),
                "tcp": sock(socket.AF_INET, socket.SOCK_STREAM, 0),
                "tcp_explicit": sock(socket.AF_INET6, socket.SOCK_STREAM, 6),
                "udp": sock(socket.AF_INET, socket.SOCK_DGRAM, 17),
                "unix": sock(socket.AF_UNIX, socket.SOCK_DGRAM, 0),
            }
            return {"denied": seen, "allowed": ok}
        """,
    )
    denied = data["denied"]
    assert denied.pop("fds_created") == 0  # type: ignore[attr-defined]
    families = {k: denied.pop(k) for k in list(denied) if k.startswith("pair_")}  # type: ignore[attr-defined]
    assert families == dict.fromkeys(families, "EAFNOSUPPORT")
    assert denied == dict.fromkeys(denied, "EPROTONOSUPPORT")
    assert data["allowed"] == dict.fromkeys(data["allowed"], "OK")
