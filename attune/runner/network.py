"""Egress networking, the I/O part: attach a user-mode network to a waiting sandbox.

The sandbox is started with its gate (egress.gate_command) and stops before the action:
the worker (root) opens the sandbox's network namespace, loads the nftables ruleset into
it (netns.py, from a thread inside that namespace) while slirp4netns attaches the tap
interface, sets the IPv6 address, and only then tells the gate to go. A parked sandbox
of the warm pool needs no gate: `attach` is called with the launcher's ready byte as
its `ready`, before any action exists (Sandbox.park).

Nothing outlives the run: slirp4netns holds the read end of an exit pipe whose write end
only the worker has (close-on-exec), so it exits when the kernel closes that pipe
because the worker died; after a normal run the worker closes it and kills slirp4netns
at once (the sandbox is gone, so it has nothing left to do). The namespace and its rules
vanish with the last process in it. This module is the only one that runs slirp4netns.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from attune.errors import ExecutionError, SandboxUnavailable
from attune.runner import egress, netns, process

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
    return netns.probe(egress.ruleset(egress.EgressPolicy(), egress.HostNetwork()))


# --- attach and tear down ---------------------------------------------------------------


class Attachment:
    """A running slirp4netns serving one sandbox; `close` makes it exit and reaps it."""

    def __init__(self, slirp: subprocess.Popen[bytes], exit_w: int, log: int, ready_r: int) -> None:
        self.slirp = slirp
        self._exit_w = exit_w
        self._log = log
        self.ready_r = ready_r

    def running(self) -> bool:
        return self._exit_w >= 0 and self.slirp.poll() is None

    def release(self) -> None:
        """End slirp4netns now: close the exit pipe and SIGKILL it (the sandbox is gone,
        so it has nothing left to do; by the pipe alone it takes tens of ms). Never
        blocks; `close` reaps it."""
        if self._exit_w >= 0:
            with contextlib.suppress(OSError):
                os.close(self._exit_w)
            self._exit_w = -1
        if self.slirp.poll() is None:
            with contextlib.suppress(OSError):
                self.slirp.send_signal(signal.SIGKILL)

    async def close(self) -> None:
        """Release, then reap slirp4netns (bounded): for a run that failed to start."""
        self.release()
        with trio.move_on_after(EXIT_WAIT):
            await _wait(self.slirp)
        self._close_fds()

    def discard(self) -> None:
        """Release and leave the reaping to `reap_dying`: the SIGKILLed process tears
        its mount namespaces down for a few ms, which need not delay the result."""
        self.release()
        self._close_fds()
        if self.slirp.poll() is None:
            _dying.append(self.slirp)
        reap_dying()

    def _close_fds(self) -> None:
        for fd in (self._log, self.ready_r):
            if fd >= 0:
                os.close(fd)
        self._log = self.ready_r = -1

    def problem(self) -> str:
        text = os.pread(self._log, 4096, 0).decode("utf-8", "replace").strip()
        return text.splitlines()[-1] if text else f"exit status {self.slirp.poll()}"


_dying: list[subprocess.Popen[bytes]] = []  # SIGKILLed slirp4netns not yet reaped


def reap_dying() -> int:
    """Reap the killed slirp4netns processes that have exited; returns how many remain.

    Called after every egress run; whatever is still exiting then is reaped by a later
    call (or by init, should the worker exit first).
    """
    _dying[:] = [proc for proc in _dying if proc.poll() is None]
    return len(_dying)


async def reap_all_dying(timeout: float = EXIT_WAIT) -> int:
    """Wait (bounded) until every killed slirp4netns is reaped; returns how many remain.

    For a process about to exit (`attune exec`): otherwise the killed process would be
    left to whoever inherits it, a zombie under a subreaper that never waits.
    """
    with trio.move_on_after(timeout):
        for proc in list(_dying):
            await _wait(proc)
    return reap_dying()


async def _wait(proc: subprocess.Popen[bytes]) -> None:
    """Wait until `proc` has exited and is reaped; at once if it already was (a pidfd
    cannot be opened on a reaped pid: a slirp4netns that failed is waited for twice)."""
    if proc.poll() is not None:
        return
    pidfd = os.pidfd_open(proc.pid)
    try:
        while proc.poll() is None:
            await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)


async def attach(
    init_pid: int, rules: str, *, dns: egress.DnsMode, ready: Callable[[], Awaitable[None]]
) -> Attachment:
    """Load `rules` into the namespace of `init_pid` and attach slirp4netns to it.

    The rules go in and slirp4netns creates its tap at once, while bwrap still sets the
    sandbox up; the tap is configured only after `ready()` returns (the sandbox's gate
    spoke: bwrap is done with its loopback). Returns once the ruleset is in place and
    the tap is configured. Raises SandboxUnavailable (the host cannot do it) with the
    tool's own words.
    """
    try:
        netns_fd = os.open(f"/proc/{init_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ExecutionError(
            f"egress: the sandbox's network namespace is gone ({exc.strerror})"
        ) from None
    attachment: Attachment | None = None
    try:
        with trio.fail_after(ATTACH_TIMEOUT):
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(netns.load_rules, netns_fd, rules)
                    nursery.start_soon(ready)
                    attachment = _start_slirp(netns_fd, dns)
                    await _slirp_ready(attachment)
            except BaseExceptionGroup as group:
                raise _first(group) from None
            await netns.configure_tap(netns_fd)
    except BaseException as exc:
        if attachment is not None:
            with trio.CancelScope(shield=True):
                await attachment.close()
        if isinstance(exc, trio.TooSlowError):
            raise SandboxUnavailable("egress: attaching the network took too long") from None
        raise
    finally:
        os.close(netns_fd)
    assert attachment is not None
    return attachment


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real error of a nursery's group (the caller reports one reason)."""
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


def _start_slirp(netns_fd: int, dns: egress.DnsMode) -> Attachment:
    exit_r, exit_w = os.pipe2(os.O_CLOEXEC)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    log = os.memfd_create("slirp4netns-log", os.MFD_CLOEXEC)  # its stderr, for errors
    try:
        slirp = subprocess.Popen(
            egress.slirp_argv(netns_fd, exit_r, ready_w, dns=dns, ipv6=True),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            pass_fds=(netns_fd, exit_r, ready_w),
            close_fds=True,
            env={},
            cwd="/",
        )
    except OSError as exc:
        for fd in (exit_r, exit_w, ready_r, ready_w, log):
            os.close(fd)
        raise SandboxUnavailable(f"egress: cannot start slirp4netns: {exc.strerror}") from None
    for fd in (exit_r, ready_w):  # slirp4netns holds them now: EOF means it is gone
        os.close(fd)
    return Attachment(slirp, exit_w, log, ready_r)


async def _slirp_ready(attachment: Attachment) -> None:
    """slirp4netns writes "1" once the tap is up; EOF means it died (its log says why)."""
    await trio.lowlevel.wait_readable(attachment.ready_r)
    data = b""
    with contextlib.suppress(OSError):
        data = os.read(attachment.ready_r, 16)
    if data != b"1":
        with trio.move_on_after(1):
            await _wait(attachment.slirp)
        raise SandboxUnavailable(f"egress: slirp4netns failed: {attachment.problem()}")


# --- the two steps every egress sandbox goes through (actions and pack builds) ---------


async def prepare(policy: egress.EgressPolicy, base_hosts: str, etc: Path) -> str:
    """Resolve the allowlisted names, write the run's /etc files into `etc` (created),
    and return the nftables ruleset of the run."""
    resolved = await resolve(policy)
    rules = egress.ruleset(egress.resolve_names(policy, resolved), host_network())
    etc.mkdir(mode=0o755)
    os.chmod(etc, 0o755)
    files = {
        "hosts": egress.hosts_file(base_hosts, resolved if policy.dns == "hosts" else {}),
        "nsswitch.conf": egress.nsswitch(policy.dns),
        "resolv.conf": egress.resolv_conf(policy.dns),
    }
    for name, text in files.items():
        (etc / name).write_text(text)
        os.chmod(etc / name, 0o644)
    return rules


async def attach_started(
    proc: process.SandboxProcess,
    rules: str,
    dns: egress.DnsMode,
    ready: Callable[[], Awaitable[None]],
) -> Attachment:
    """Attach the network to a sandbox bwrap has started, once `ready` returns: its
    init is named on --info-fd first (a cold run behind its gate, a parked one)."""
    with trio.fail_after(ATTACH_TIMEOUT):
        await proc.read_info()  # bwrap names the sandbox's init as soon as it exists
    init_pid = proc.learn_init()
    if init_pid is None:
        raise SandboxUnavailable("egress: the sandbox ended before its network was attached")
    return await attach(init_pid, rules, dns=dns, ready=ready)


async def attach_sandbox(
    proc: process.SandboxProcess, rules: str, dns: egress.DnsMode
) -> Attachment:
    """Load the rules, attach the network once the gate speaks, then let the command go.

    The sandbox must run under `egress.gate_command` (or the python wrapper's gate).
    Any failure kills the sandbox before the command's first instruction.
    """

    async def gate_ready() -> None:
        ready = await proc.pipes.stdout.receive_some(len(egress.GATE_READY))
        if ready != egress.GATE_READY:
            raise ExecutionError("egress: the sandbox ended before its network was attached")

    try:
        attachment = await attach_started(proc, rules, dns, gate_ready)
    except BaseException as exc:
        with trio.CancelScope(shield=True):
            await proc.kill_and_wait()
        if isinstance(exc, trio.TooSlowError):
            raise ExecutionError("egress: the sandbox did not start in time") from None
        if isinstance(exc, SandboxUnavailable):
            raise ExecutionError(str(exc)) from None
        raise
    try:
        await proc.pipes.stdin.send_all(egress.GATE_GO)
    except BaseException:
        with trio.CancelScope(shield=True):
            await attachment.close()
        raise
    return attachment
