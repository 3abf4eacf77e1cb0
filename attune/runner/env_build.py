"""Building a pack's Python environment inside a sandbox: `pip install` is untrusted code.

A package's setup.py or build backend runs during `pip install`, so the install runs
as a build uid in a bubblewrap sandbox of its own, never as root on the host:

- the file system is read-only except a size-capped tmpfs mounted at the environment's
  final path (the venv is created and filled there, so its absolute paths are right)
  and a staging directory the finished tree is copied into; the copy can hold no more
  than the tmpfs did, so the disk bound is `disk_mb`;
- it sees /usr, the pack (read-only, the working directory), the host's pip
  configuration (copies the build uid can read, bound where pip looks for them) and
  the local paths it names, and nothing else of the host: no /etc beyond certificates
  and name service files, no /home, /root, /var;
- its network is a parameter: `BuildNetwork()` unshares it (local find-links and
  file:// indexes only); with an egress policy (pack_env.py narrows the operator's to
  the package indexes) the user-mode network is attached behind its rules;
- time, address space, file size and process count are capped (prlimit, timeout).

The worker then makes the copied tree root-owned and read-only and only then marks it
ready (attune/pack_env.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import trio

from attune.errors import ExecutionError, SandboxUnavailable
from attune.pip_config import PipSettings
from attune.runner import egress, network, process
from attune.runner.argv import ETC_FILES, NET_ETC_FILES, PRLIMIT, encode_args, isolation_args
from attune.runner.seccomp import bpf_fd, default_bpf

SYSTEM_PYTHON = "/usr/bin/python3"
STAGE = "/attune-out"  # the host staging directory inside the build sandbox
MANIFEST = "/attune-build/requirements.txt"
MiB = 1024 * 1024
MAX_LOG_BYTES = 256 * 1024

# Runs inside the sandbox: make the venv, install into it with the system pip, copy out.
_SCRIPT = (
    'set -e; "$0" -m venv --without-pip "$1"; '
    '"$0" -m pip --python "$1/bin/python" install --no-input --disable-pip-version-check '
    '--no-cache-dir --progress-bar off -r "$2"; '
    f'cp -a "$1/." {STAGE}/'
)


@dataclass(frozen=True)
class BuildNetwork:
    """The build sandbox's network. Default: none (a local index or find-links only).

    The sandbox always gets a network namespace of its own (`--unshare-net` in
    isolation_args). With `policy` (egress, narrowed to the package indexes) the worker
    attaches a user-mode network behind that policy's nftables rules before pip starts,
    and the sandbox's hosts/nsswitch.conf/resolv.conf are the run's own. `extra_args`
    are added bwrap options.
    """

    policy: egress.EgressPolicy | None = None
    extra_args: tuple[str, ...] = ()

    def bwrap_args(self) -> list[str]:
        return list(self.extra_args)


@dataclass(frozen=True)
class BuildLimits:
    timeout_seconds: float = 600.0
    address_space_mb: int = 4096
    disk_mb: int = 1024
    file_size_mb: int = 512
    processes: int = 256


@dataclass(frozen=True)
class BuildPlan:
    """Host paths of one build (all absolute)."""

    env_dir: str  # final path of the environment (a tmpfs there inside the sandbox)
    stage_dir: str  # host dir, writable by the build uid, that receives the tree
    pack_dir: str
    manifest_file: str  # host file with the requirement lines
    etc_dir: str  # passwd/group/hosts/nsswitch.conf for the sandbox
    pip: PipSettings
    config_copies: tuple[tuple[str, str], ...] = ()  # (readable copy, path pip reads)
    network: BuildNetwork = field(default_factory=BuildNetwork)
    limits: BuildLimits = field(default_factory=BuildLimits)


def build_args(plan: BuildPlan, seccomp_fd: int, net_etc_dir: str | None = None) -> list[str]:
    """bwrap's options for a build (sent through --args FD); pure, golden-testable."""
    lim = plan.limits
    args = [
        *isolation_args("build"),
        *plan.network.bwrap_args(),
        "--ro-bind",
        "/usr",
        "/usr",
        "--symlink",
        "usr/bin",
        "/bin",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--symlink",
        "usr/sbin",
        "/sbin",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(256 * MiB),
        "--tmpfs",
        "/tmp",
        "--dir",
        "/etc",
    ]
    for name in dict.fromkeys((*ETC_FILES, *NET_ETC_FILES)):
        if net_etc_dir is not None and name in NET_ETC_FILES:
            args += ["--ro-bind", f"{net_etc_dir}/{name}", f"/etc/{name}"]
        elif name in ETC_FILES:
            args += ["--ro-bind", f"{plan.etc_dir}/{name}", f"/etc/{name}"]
    for path in ("/etc/ld.so.cache", "/etc/ssl", "/etc/ca-certificates"):
        args += ["--ro-bind-try", path, path]
    if net_etc_dir is None:
        args += ["--ro-bind-try", "/etc/resolv.conf", "/etc/resolv.conf"]
    for copy, path in plan.config_copies:
        args += ["--ro-bind", copy, path]
    for path in plan.pip.local_paths:
        args += ["--ro-bind-try", path, path]
    args += [
        "--ro-bind",
        plan.pack_dir,
        plan.pack_dir,
        "--ro-bind",
        plan.manifest_file,
        MANIFEST,
        "--size",
        str(lim.disk_mb * MiB),
        "--tmpfs",
        plan.env_dir,
        "--bind",
        plan.stage_dir,
        STAGE,
        "--chdir",
        plan.pack_dir,
        "--remount-ro",
        "/",
        "--clearenv",
    ]
    env = {
        **plan.pip.env,
        "PATH": "/usr/bin:/bin",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PIP_NO_INPUT": "1",
    }
    for key, value in sorted(env.items()):
        args += ["--setenv", key, value]
    args += ["--seccomp", str(seccomp_fd)]
    return args


def build_command(plan: BuildPlan) -> list[str]:
    lim = plan.limits
    return [
        PRLIMIT,
        "--core=0:0",
        f"--as={lim.address_space_mb * MiB}",
        f"--fsize={lim.file_size_mb * MiB}",
        f"--nproc={lim.processes}",
        "--",
        "/bin/sh",
        "-c",
        _SCRIPT,
        SYSTEM_PYTHON,
        plan.env_dir,
        MANIFEST,
    ]


@dataclass(frozen=True)
class BuildResult:
    ok: bool
    output: str  # pip's stdout and stderr, interleaved, the last MAX_LOG_BYTES
    reason: str = ""


async def run_build(plan: BuildPlan, bwrap: str, uid: int | None) -> BuildResult:
    """Run one build sandbox to the end (or the time limit); pip errors are a result.

    With an egress policy the command waits behind the gate until the worker has loaded
    the rules into the sandbox's network namespace and attached the user-mode network.
    """
    if not Path(bwrap).exists():
        raise SandboxUnavailable(f"bubblewrap not found at {bwrap}")
    policy = plan.network.policy
    net_etc: Path | None = None
    rules = ""
    output = bytearray()
    seccomp_fd = -1
    try:
        if policy is not None:
            net_etc = Path(f"{plan.stage_dir}.net-etc")
            shutil.rmtree(net_etc, ignore_errors=True)
            base_hosts = Path(plan.etc_dir, "hosts").read_text()
            rules = await network.prepare(policy, base_hosts, net_etc)
        seccomp_fd = bpf_fd(default_bpf())
        args = build_args(plan, seccomp_fd, None if net_etc is None else str(net_etc))
        command = build_command(plan)
        if policy is not None:
            command = egress.gate_command(command)
        proc = await process.spawn(
            bwrap, encode_args(args), command, pass_fds=(seccomp_fd,), uid=uid, gid=uid
        )
        os.close(seccomp_fd)
        seccomp_fd = -1
        code = await _supervise(proc, plan, policy, rules, output)
    except ExecutionError as exc:  # the network could not be attached
        return BuildResult(False, _tail(output), str(exc))
    finally:
        if seccomp_fd >= 0:
            os.close(seccomp_fd)
        if net_etc is not None:
            shutil.rmtree(net_etc, ignore_errors=True)
    if code is None:
        limit = plan.limits.timeout_seconds
        return BuildResult(False, _tail(output), f"timed out after {limit:g} s")
    if code != 0:
        return BuildResult(False, _tail(output), f"pip install failed (exit {code})")
    return BuildResult(True, _tail(output))


async def _supervise(
    proc: process.SandboxProcess,
    plan: BuildPlan,
    policy: egress.EgressPolicy | None,
    rules: str,
    output: bytearray,
) -> int | None:
    """Attach the network if any, collect output, wait; None when the time ran out."""
    attachment: network.Attachment | None = None
    code: int | None = None
    try:
        with trio.move_on_after(plan.limits.timeout_seconds):
            if policy is not None:
                attachment = await network.attach_sandbox(proc, rules, policy.dns)
            await proc.pipes.stdin.aclose()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_collect, proc.pipes.stdout, output)
                nursery.start_soon(_collect, proc.pipes.stderr, output)
                code = await proc.wait()
        if code is None:
            with trio.CancelScope(shield=True):
                await proc.kill_and_wait()
    finally:
        if attachment is not None:
            attachment.release()
        with trio.CancelScope(shield=True):
            await proc.reap_init()
        proc.close()
        if attachment is not None:
            attachment.discard()
    return code


async def _collect(stream: trio.lowlevel.FdStream, output: bytearray) -> None:
    """Keep (bounded) what the build prints; stdout and stderr interleave in `output`."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        while chunk := await stream.receive_some(65536):
            output += chunk
            if len(output) > 4 * MAX_LOG_BYTES:
                del output[: len(output) - MAX_LOG_BYTES]


def _tail(output: bytearray) -> str:
    return bytes(output[-MAX_LOG_BYTES:]).decode("utf-8", "replace")
