"""Working inside a sandbox's network namespace from the worker, without a process.

Loading the rules with `nsenter ... nft -f -` and configuring the interface with
`nsenter ... ip` would cost process starts on every egress run, a large part of its
start-up on a loaded host. Instead a fresh thread of the worker joins the namespace
(setns is per thread for network namespaces), loads the ruleset through libnftables
(the library behind `nft`) or sends the rtnetlink messages of netlink.py, then ends:
it never returns to a thread pool, so no other work of the worker can run in the
sandbox's namespace. This module is the only user of libnftables and of setns/unshare.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

import trio

from attune.errors import SandboxUnavailable
from attune.runner import egress, netlink

CLONE_NEWNET = 0x40000000
LIBNFTABLES = "libnftables.so.1"
T = TypeVar("T")


class _Libnftables:
    def __init__(self) -> None:
        lib = ctypes.CDLL(LIBNFTABLES, use_errno=True)
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        self.lib = lib

    def load(self, script: str) -> None:
        """Run an nft script in the calling thread's network namespace."""
        ctx = self.lib.nft_ctx_new(0)
        if not ctx:
            raise SandboxUnavailable("egress: libnftables could not create a context")
        try:
            self.lib.nft_ctx_buffer_output(ctx)
            self.lib.nft_ctx_buffer_error(ctx)
            if self.lib.nft_run_cmd_from_buffer(ctx, script.encode()) != 0:
                error = (self.lib.nft_ctx_get_error_buffer(ctx) or b"").decode("utf-8", "replace")
                lines = error.strip().splitlines()
                raise SandboxUnavailable(
                    f"egress: nftables refused the ruleset: {lines[0] if lines else 'error'}"
                )
        finally:
            self.lib.nft_ctx_free(ctx)


_nft: _Libnftables | None = None


def _libnftables() -> _Libnftables:
    global _nft
    if _nft is None:
        try:
            _nft = _Libnftables()
        except OSError as exc:
            raise SandboxUnavailable(
                f"egress: cannot load {LIBNFTABLES} ({exc}); apt-get install nftables"
            ) from None
    return _nft


_LIBC = ctypes.CDLL(None, use_errno=True)  # the process's own libc: setns, unshare


def _in_thread(netns_fd: int | None, work: Callable[[], T]) -> T:
    """Run `work` in a new thread that joined `netns_fd` (None: a new empty namespace)."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            if netns_fd is not None:
                rc = _LIBC.setns(netns_fd, CLONE_NEWNET)
            else:
                rc = _LIBC.unshare(CLONE_NEWNET)
            if rc != 0:
                error = ctypes.get_errno()
                raise SandboxUnavailable(
                    f"egress: cannot enter the network namespace: {os.strerror(error)}"
                )
            box["value"] = work()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="attune-netns", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def _configure_tap() -> None:
    ifindex = socket.if_nametoindex(egress.TAP)
    messages = netlink.configure_tap(
        ifindex,
        mtu=egress.MTU,
        addresses=[(egress.SANDBOX_ADDR4, 24), (egress.SANDBOX_ADDR6, 64)],
        gateways=[str(egress.GATEWAY4), str(egress.GATEWAY6)],
    )
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as nl:
        nl.settimeout(5)
        for message in messages:
            nl.send(message)
        errors: dict[int, int] = {}
        while len(errors) < len(messages):
            errors.update(netlink.ack_errors(nl.recv(65536)))
    failed = {seq: code for seq, code in errors.items() if code}
    if failed:
        raise SandboxUnavailable(
            "egress: cannot configure the sandbox's interface: "
            + ", ".join(os.strerror(code) for code in failed.values())
        )


async def load_rules(netns_fd: int, rules: str) -> None:
    """Load `rules` into the namespace open at `netns_fd`."""
    nft = _libnftables()
    await trio.to_thread.run_sync(_in_thread, netns_fd, lambda: nft.load(rules))


async def configure_tap(netns_fd: int) -> None:
    """Link up, addresses and default routes of the tap slirp4netns made (netlink.py)."""
    await trio.to_thread.run_sync(_in_thread, netns_fd, _configure_tap)


def probe(rules: str) -> str | None:
    """Load `rules` into a throw-away namespace; None when it works, else why not."""
    try:
        nft = _libnftables()
        _in_thread(None, lambda: nft.load(rules))
    except SandboxUnavailable as exc:
        return str(exc).removeprefix("egress: ")
    return None
