"""Egress networking, the I/O part: attach a user-mode network to a waiting sandbox.

The sandbox is started with its gate (egress.gate_command) and stops before the action:
the worker (root) opens the sandbox's network namespace, loads the nftables ruleset into
it (`nsenter ... nft -f -`) while slirp4netns attaches the tap interface, and only then
tells the gate to go. Both tools run beside each other to keep the start-up short.

Nothing outlives the run: slirp4netns holds the read end of an exit pipe whose write end
only the worker has (close-on-exec), so it exits when the worker closes it after the run
or when the kernel closes it because the worker died; the namespace and its rules vanish
with the last process in it. This module is the only one that runs these tools.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
from pathlib import Path

import trio

from attune.errors import ExecutionError, SandboxUnavailable
from attune.runner import egress

ATTACH_TIMEOUT = 10.0
EXIT_WAIT = 5.0


# --- the worker's own network, read from /proc (cheap enough for every run) -------------


def parse_fib_trie(text: str) -> list[egress.Address]:
    """Local IPv4 addresses: the `/32 host LOCAL` leaves of /proc/net/fib_trie."""
    found: list[egress.Address] = []
    last: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|-- "):
            last = stripped[4:]
        elif last and stripped.startswith("/32 host LOCAL"):
            found.append(ipaddress.ip_address(last))
    return sorted(set(found))  # type: ignore[type-var]


def parse_route(text: str) -> list[egress.Network]:
    """Directly connected IPv4 subnets (no gateway, not the default) of /proc/net/route."""
    subnets: list[egress.Network] = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        dest, gateway, mask = (int(fields[i], 16) for i in (1, 2, 7))
        if gateway or not mask:
            continue
        net = ipaddress.ip_network(
            (ipaddress.IPv4Address(dest.to_bytes(4, "little")), bin(mask).count("1")),
            strict=False,
        )
        subnets.append(net)
    return subnets


def parse_if_inet6(text: str) -> tuple[list[egress.Address], list[egress.Network]]:
    """IPv6 addresses and their on-link prefixes from /proc/net/if_inet6."""
    addresses: list[egress.Address] = []
    subnets: list[egress.Network] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        raw, prefix = fields[0], int(fields[2], 16)
        address = ipaddress.IPv6Address(bytes.fromhex(raw))
        addresses.append(address)
        if fields[5] != "lo" and not address.is_link_local and prefix < 128:
            subnets.append(ipaddress.ip_network((address, prefix), strict=False))
    return addresses, subnets


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def host_network() -> egress.HostNetwork:
    """The addresses and connected subnets of the worker's network namespace, now."""
    v4 = parse_fib_trie(_read("/proc/net/fib_trie"))
    v6, subnets6 = parse_if_inet6(_read("/proc/net/if_inet6"))
    subnets = [*parse_route(_read("/proc/net/route")), *subnets6]
    return egress.HostNetwork(tuple(v4 + v6), tuple(subnets))


async def resolve(policy: egress.EgressPolicy) -> dict[str, list[egress.Address]]:
    """Resolve the policy's host names the way the worker resolves anything.

    A name that does not resolve is left out (nothing is allowed for it) rather than
    failing the run: the action then sees a refused connection, as for any other
    destination it may not reach.
    """
    resolved: dict[str, list[egress.Address]] = {}
    for name in policy.names():
        try:
            infos = await trio.socket.getaddrinfo(name, None, type=trio.socket.SOCK_STREAM)
        except OSError:
            continue
        addresses = {ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos}
        resolved[name] = sorted(addresses, key=lambda a: (a.version, int(a)))
    return resolved


def probe_nftables() -> str | None:
    """Load a ruleset like the real one into a throw-away namespace; None when it works.

    `attune doctor` runs this: a kernel without nf_tables (or the reject expressions)
    would otherwise only show up as failing egress runs.
    """
    script = egress.ruleset(egress.EgressPolicy(), egress.HostNetwork())
    try:
        result = subprocess.run(
            [egress.UNSHARE, "--net", "--", egress.NFT, "-f", "-"],
            input=script.encode(),
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run nft in a new network namespace: {exc}"
    if result.returncode != 0:
        lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
        return f"nft refused the ruleset: {lines[-1] if lines else result.returncode}"
    return None


# --- attach and tear down ---------------------------------------------------------------


class Attachment:
    """A running slirp4netns serving one sandbox; `close` makes it exit and reaps it."""

    def __init__(
        self,
        slirp: subprocess.Popen[bytes],
        exit_w: int,
        log: int,
    ) -> None:
        self.slirp = slirp
        self._exit_w = exit_w
        self._log = log

    def release(self) -> None:
        """Start the teardown now (EOF on the exit pipe); cheap, never blocks."""
        if self._exit_w >= 0:
            with contextlib.suppress(OSError):
                os.close(self._exit_w)
            self._exit_w = -1

    async def close(self) -> None:
        """Release, then wait (bounded) for slirp4netns to exit; SIGKILL it if it does not."""
        self.release()
        with trio.move_on_after(EXIT_WAIT):
            await _wait(self.slirp)
        if self.slirp.poll() is None:
            with contextlib.suppress(OSError):
                self.slirp.send_signal(signal.SIGKILL)
            await _wait(self.slirp)
        if self._log >= 0:
            os.close(self._log)
            self._log = -1

    def problem(self) -> str:
        text = os.pread(self._log, 4096, 0).decode("utf-8", "replace").strip()
        return text.splitlines()[-1] if text else f"exit status {self.slirp.poll()}"


async def _wait(proc: subprocess.Popen[bytes]) -> None:
    pidfd = os.pidfd_open(proc.pid)
    try:
        while proc.poll() is None:
            await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)


async def attach(init_pid: int, rules: str, *, dns: egress.DnsMode) -> Attachment:
    """Load `rules` into the namespace of `init_pid` and attach slirp4netns to it.

    Returns once both are done: the ruleset is in place and the tap is configured.
    Raises SandboxUnavailable (the host cannot do it) with the tool's own words.
    """
    try:
        netns = os.open(f"/proc/{init_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ExecutionError(
            f"egress: the sandbox's network namespace is gone ({exc.strerror})"
        ) from None
    exit_r, exit_w = os.pipe2(os.O_CLOEXEC)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    log = os.memfd_create("slirp4netns-log", os.MFD_CLOEXEC)  # its stderr, for errors
    try:
        try:
            slirp = subprocess.Popen(
                egress.slirp_argv(netns, exit_r, ready_w, dns=dns, ipv6=True),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                pass_fds=(netns, exit_r, ready_w),
                close_fds=True,
                env={},
                cwd="/",
            )
        except OSError as exc:
            os.close(exit_w)
            os.close(log)
            raise SandboxUnavailable(f"egress: cannot start slirp4netns: {exc.strerror}") from None
        for fd in (exit_r, ready_w):  # slirp4netns holds them now: EOF means it is gone
            os.close(fd)
        exit_r = ready_w = -1
        attachment = Attachment(slirp, exit_w, log)
        try:
            with trio.fail_after(ATTACH_TIMEOUT):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_in_netns, egress.nft_argv(netns), rules, netns, "nft")
                    await _slirp_ready(attachment, ready_r)
                    await _in_netns(egress.ip_argv(netns), egress.ipv6_batch(), netns, "ip")
        except BaseException:
            with trio.CancelScope(shield=True):
                await attachment.close()
            raise
        return attachment
    except trio.TooSlowError:
        raise SandboxUnavailable("egress: attaching the network took too long") from None
    finally:
        for fd in (netns, exit_r, ready_r, ready_w):
            if fd >= 0:
                os.close(fd)


async def _slirp_ready(attachment: Attachment, ready_r: int) -> None:
    """slirp4netns writes "1" once the tap is up; EOF means it died (its log says why)."""
    await trio.lowlevel.wait_readable(ready_r)
    data = b""
    with contextlib.suppress(OSError):
        data = os.read(ready_r, 16)
    if data != b"1":
        with trio.move_on_after(1):
            await _wait(attachment.slirp)
        raise SandboxUnavailable(f"egress: slirp4netns failed: {attachment.problem()}")


async def _in_netns(argv: list[str], script: str, netns: int, tool: str) -> None:
    """Run one tool (nft, ip) with `script` on stdin inside the sandbox's namespace."""
    try:
        result = await trio.run_process(
            argv,
            stdin=script.encode(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            pass_fds=(netns,),
            env={},
        )
    except OSError as exc:
        raise SandboxUnavailable(f"egress: cannot run {tool}: {exc.strerror}") from None
    if result.returncode != 0:
        lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = lines[-1] if lines else f"exit status {result.returncode}"
        raise SandboxUnavailable(f"egress: {tool} failed in the sandbox's namespace: {detail}")
