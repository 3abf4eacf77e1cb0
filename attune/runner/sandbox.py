"""One run of one action in a fresh sandbox: prepare, spawn, pump, wait, interpret.

`Sandbox.run` is the single code path of both `attune exec` and the worker. The caller
owns the deadline (`timeout`) and may cancel through a `RunControl`; either way the
whole sandbox is killed, the partial output kept, and the run recorded as timeout or
cancelled (supervise.py). Cancellation from outside (worker shutdown) also kills the
sandbox and then propagates, so nothing outlives the task that started it.

The code, the parameters and the secrets reach the sandbox as
in-memory files that bwrap copies in (or, in a parked sandbox of the warm pool, as one
handoff message its launcher unpacks: handoff.py, pool.py); a `run()` action's return
value comes back through a pipe that only the sandbox's pid 1 writes (resultpipe.py),
from a file on the run's own sized tmpfs. Nothing the action writes is stored on the
host's disk, and the run directory on the host (egress /etc files at most) is never
mounted into the sandbox, so none of its paths shows in the sandbox's mount table.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from attune.errors import ExecutionError, SandboxUnavailable
from attune.models import OutputFormat, ParameterDelivery, ParameterFormat
from attune.runner import argv as argv_mod
from attune.runner import egress, network, process
from attune.runner.cgroups import RunCgroup
from attune.runner.handoff import RunInputs, encode_handoff, run_inputs
from attune.runner.host import HostFacts, untraversable_ancestors
from attune.runner.output import RunReport, Status, build_result
from attune.runner.profiles import Profile
from attune.runner.resultpipe import ResultPipe
from attune.runner.seccomp import bpf_fd, default_bpf
from attune.runner.supervise import OutputSink, RunControl, supervise
from attune.runner.teardown import Teardown

SANDBOX_ASSETS = Path(__file__).resolve().parent.parent.parent / "sandbox"
_RUN_FUNCTION = re.compile(rb"^(?:async[ \t]+)?def[ \t]+run[ \t]*\(", re.MULTILINE)


def defines_run(code: bytes) -> bool:
    """A top-level `def run(` (at column 0) selects the function-call contract."""
    return _RUN_FUNCTION.search(code) is not None


@dataclass(frozen=True)
class RunSpec:
    """Everything one run needs; built by `attune exec` or the worker's pipeline."""

    profile: Profile
    code: bytes
    code_name: str
    params: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    parameter_delivery: ParameterDelivery = "stdin"
    parameter_format: ParameterFormat = "json"
    output_format: OutputFormat | None = None
    label: str = "exec"
    secrets: dict[str, str] = field(default_factory=dict)  # keystore: name -> value
    pack: PackSource | None = None  # run the action in place inside its whole pack
    # Egress: a user-mode network limited by this policy; None keeps loopback only.
    network: egress.EgressPolicy | None = None


@dataclass(frozen=True)
class PackSource:
    """Host paths of an action's pack: `action_path` is a file under `pack_dir`.

    `env_dir` is the pack's built Python environment, or None to use the system
    interpreter (a pack without dependencies, or a shell action).
    """

    pack_dir: str
    action_path: str
    env_dir: str | None = None


@dataclass(frozen=True)
class RunOutcome:
    status: Status
    result: dict[str, Any]


@dataclass(frozen=True)
class _NetworkPlan:
    policy: egress.EgressPolicy
    rules: str  # the nftables script of this run
    etc_dir: Path  # hosts, nsswitch.conf and resolv.conf of this run


@dataclass
class _RunDir:
    root: Path  # host-only: the egress /etc files of the run, if any; never mounted
    uid: int | None  # the host uid the run's sandbox runs as


@dataclass
class _Box:
    """One sandbox's host side, from its run dir to its cleanup (cold or parked)."""

    rd: _RunDir
    pipe: ResultPipe | None = None
    cgroup: RunCgroup | None = None
    proc: process.SandboxProcess | None = None
    plan: _NetworkPlan | None = None
    attachment: network.Attachment | None = None
    started: float = 0.0  # when the action's clock starts: spawn (cold) or handoff
    on_closed: Callable[[], None] | None = None  # the pool takes its uid back

    @property
    def uid(self) -> int | None:
        return self.rd.uid

    def alive(self) -> bool:
        """The sandbox runs, and so does its network's slirp4netns if it has one."""
        return (
            self.proc is not None
            and self.proc.running()
            and (self.attachment is None or self.attachment.running())
        )


class PoolLike(Protocol):
    """What the runner needs of a warm pool (pool.py): a parked sandbox for a run."""

    def take(self, spec: RunSpec) -> _Box | None: ...


def write_etc(etc: Path) -> Path:
    """The synthetic /etc files bound into sandboxes, readable by the sandbox uids."""
    etc.mkdir(exist_ok=True)
    os.chmod(etc, 0o755)
    for name in argv_mod.ETC_FILES:
        shutil.copyfile(SANDBOX_ASSETS / "etc" / name, etc / name)
        os.chmod(etc / name, 0o644)
    return etc


class Sandbox:
    """Runs actions; one instance per process, shared by all concurrent runs."""

    def __init__(self, facts: HostFacts, run_dir: Path, *, slot_uid_base: int = 100000) -> None:
        if not facts.usable or facts.bwrap is None or facts.init is None:
            raise SandboxUnavailable("; ".join(facts.problems()) or "bubblewrap not found")
        self.facts = facts
        self.bwrap = facts.bwrap
        self.init = facts.init
        self.run_dir = run_dir
        self.slot_uid_base = slot_uid_base
        self._bpf = default_bpf()
        # Sandbox inits orphaned by a dead bwrap come back to us and are reaped by
        # pidfd (process.py); harmless if the worker already asked for it.
        self.subreaper = process.become_subreaper()
        self._prepare_base()
        self._proc_masks = argv_mod.present_proc_masks(_entry_kind)
        self.teardown: Teardown | None = None  # set by the worker: cleanup after the answer
        self.pool: PoolLike | None = None  # set by the worker: parked sandboxes

    def _prepare_base(self) -> None:
        missing = [p for p in (self.run_dir, *self.run_dir.parents) if not p.exists()]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for created in missing:  # whatever the umask, slot uids traverse, never list
            os.chmod(created, 0o711)
        os.chmod(self.run_dir, 0o711)
        blocked = untraversable_ancestors(self.run_dir) if self.facts.is_root else []
        if blocked:
            raise SandboxUnavailable(
                f"run_dir {self.run_dir} is unreachable for the sandbox uids: "
                f"{blocked[0]} is not searchable by others (chmod o+x {blocked[0]}, "
                "or choose another sandbox.run_dir)"
            )

    def slot_uid(self, slot: int) -> int | None:
        return self.slot_uid_base + slot if self.facts.is_root else None

    def _make_run_dir(self, label: str, uid: int | None) -> _RunDir:
        root = self.run_dir / f"{label}-{os.urandom(6).hex()}"
        root.mkdir(mode=0o711)
        try:
            os.chmod(root, 0o711)  # modes are set explicitly: the worker's umask may be 027
        except BaseException:
            _remove_tree(root)
            raise
        return _RunDir(root, uid)

    async def run(
        self,
        spec: RunSpec,
        *,
        timeout: float,
        slot: int = 0,
        control: RunControl | None = None,
        on_output: OutputSink | None = None,
    ) -> RunOutcome:
        """Run `spec` in a parked sandbox of the warm pool if one fits, else a cold one."""
        _check_code_name(spec.code_name)
        profile = spec.profile
        wrapped = profile.function_wrapper is not None and defines_run(spec.code)
        inputs = run_inputs(
            profile,
            code=spec.code,
            params=spec.params,
            env=spec.env,
            delivery=spec.parameter_delivery,
            fmt=spec.parameter_format,
            secrets=spec.secrets,
        )
        parked: _Box | None = None
        if self.pool is not None and fits_parked(profile, inputs):
            # Encoded before a sandbox is taken: what cannot be encoded (NUL, a lone
            # surrogate) fails the run as it would cold, and the parked one stays.
            pack = _pack_mount(spec.pack)
            handoff = encode_handoff(
                profile,
                inputs,
                spec.code_name,
                target=argv_mod.action_target(layout_action=spec.code_name, pack=pack),
                command=None if wrapped else argv_mod.interpreter_command(profile, pack),
            )
            parked = self.pool.take(spec)
        if parked is not None:
            box = parked
            stdin_data = handoff
            box.started = trio.current_time()
        else:
            box = _Box(self._make_run_dir(spec.label, self.slot_uid(slot)))
        try:
            if parked is None:
                stdin_data = inputs.stdin
                await self._start_cold(box, spec, inputs, wrapped)
            assert box.proc is not None and box.pipe is not None
            if parked is None and box.plan is not None:
                box.attachment = await self._attach_network(box.proc, box.plan)
            report = await supervise(
                box.proc,
                profile.limits,
                spec.output_format or profile.default_output_format,
                stdin_data,
                timeout,
                control,
                on_output,
                box.started,
                wrapped,
                box.pipe,
            )
            if box.cgroup is not None and box.cgroup.oom_killed():
                report = _replace(report, oom_killed=True)
            # Parsing and normalising up to 10 MiB of output takes a while: off the trio
            # thread, so other runs and the heartbeat never wait for it. A few KiB are
            # cheaper inline than a thread hop (about 0.5 ms on the answer's path).
            if _output_size(report, box.pipe) <= INLINE_RESULT_BYTES:
                status, result = build_result(report)
            else:
                status, result = await trio.to_thread.run_sync(build_result, report)
            return RunOutcome(status, result)
        finally:
            # A sandbox that sent its end record is still tearing its namespace down:
            # with a Teardown running, that is waited for after the answer.
            tail = functools.partial(self._finish, box)
            if not (
                self.teardown is not None
                and box.proc is not None
                and box.proc.running()
                and self.teardown.defer_tail(tail)
            ):
                await tail()

    async def _finish(self, box: _Box) -> None:
        """The end of every sandbox: bwrap gone (killed past a grace), its init reaped,
        fds closed, then the run dir, cgroup and uid (`_close_box`)."""
        with trio.CancelScope(shield=True):
            proc = box.proc
            if box.attachment is not None:
                box.attachment.release()  # slirp4netns ends while we clean up
            if proc is not None:
                if box.pipe is None or not box.pipe.ended.is_set():
                    proc.kill()  # never ended by itself (an error, or never handed a run)
                with trio.move_on_after(process.KILL_GRACE_SECONDS):
                    await proc.exited()
                if proc.running():
                    await proc.kill_and_wait()
                await proc.reap_init()
                proc.close()
            await self._close_box(box)

    async def _start_cold(self, box: _Box, spec: RunSpec, inputs: RunInputs, wrapped: bool) -> None:
        """Make the run's result channel, network plan and cgroup, then spawn it."""
        profile = spec.profile
        box.pipe = ResultPipe(profile.limits.max_result_bytes)
        env = dict(inputs.env)
        wrapper = profile.function_wrapper if wrapped else None
        box.plan = await self._plan_network(spec.network, box.rd) if spec.network else None
        if box.plan is not None and wrapper is not None:
            # The wrapper holds the action itself, after the interpreter's start-up,
            # which then overlaps with attaching the network.
            env[egress.GATE_ENV] = "stdio"
        box.cgroup = self._make_cgroup(box.rd.root.name, profile)
        pack_mount = _pack_mount(spec.pack)
        wanted = argv_mod.run_files(
            spec.code_name,
            wrapper,
            params="parameters" in inputs.contents,
            secrets="secrets" in inputs.contents,
            net=box.plan is not None,
        )
        sources = _net_sources(box.plan)
        gated = box.plan is not None and wrapper is None  # held until the network is there
        await self._spawn(
            box,
            profile,
            wanted,
            inputs.contents,
            sources,
            env,
            spec.code_name,
            wrapper,
            pack_mount,
            out_size=inputs.out_dir_size(profile.limits.max_result_bytes),
            gated=gated,
        )

    async def park(
        self,
        profile: Profile,
        pack: argv_mod.PackMount | None,
        uid: int | None,
        policy: egress.EgressPolicy | None = None,
    ) -> _Box:
        """Start a sandbox of `profile` (in `pack`, with `policy`'s network) that waits
        for its action.

        It is made exactly like a cold one (uid, cgroup, limits, seccomp, mounts, the
        pack bound at its path; with a policy, the network prepared and its /etc files
        copied in as for a cold egress run), with the launcher (sandbox/parked.py) as
        its command and no file of any execution. With a policy, slirp4netns is
        attached and the rules loaded while it is parked: no gate is needed, since
        nothing of any action is in it before its handoff, which only a box this
        returns can get. Returns once the launcher has said it is ready (and the
        network is up); a failure leaves nothing behind.
        """
        box = _Box(self._make_run_dir("parked", uid))
        try:
            box.pipe = ResultPipe(profile.limits.max_result_bytes)
            box.plan = await self._plan_network(policy, box.rd) if policy else None
            box.cgroup = self._make_cgroup(box.rd.root.name, profile)
            wanted = argv_mod.run_files(
                "", None, params=False, secrets=False, net=policy is not None, parked=True
            )
            sources = _net_sources(box.plan)
            out_size = parked_out_size(profile)
            await self._spawn(
                box,
                profile,
                wanted,
                {},
                sources,
                {},
                "",
                None,
                pack,
                out_size=out_size,
                parked=True,
            )
            assert box.proc is not None
            if box.plan is None:
                await box.proc.read_info()
                await _launcher_ready(box.proc)
            else:
                # The launcher's byte also says bwrap is done with the sandbox's
                # loopback: the tap is configured only after it (network.attach).
                box.attachment = await network.attach_started(
                    box.proc,
                    box.plan.rules,
                    box.plan.policy.dns,
                    functools.partial(_launcher_ready, box.proc),
                )
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.discard(box)
            raise
        return box

    async def discard(self, box: _Box) -> None:
        """Kill a parked sandbox that will never run anything, and clean it up."""
        await self._finish(box)  # no end record: killed first

    async def _spawn(
        self,
        box: _Box,
        profile: Profile,
        wanted: list[tuple[str, str]],
        contents: dict[str, bytes],
        sources: dict[str, Path],
        env: dict[str, str],
        action_file: str,
        wrapper: str | None,
        pack_mount: argv_mod.PackMount | None,
        *,
        out_size: int,
        gated: bool = False,
        parked: bool = False,
    ) -> None:
        assert box.pipe is not None
        seccomp_fd = bpf_fd(self._bpf)
        opened = [seccomp_fd]
        try:
            init_fd = _open_source(self.init)
            opened.append(init_fd)
            files = []
            for key, path in wanted:
                fd = (
                    process.data_fd(key, contents[key])
                    if key in contents
                    else _open_source(sources.get(key, SANDBOX_ASSETS / key))
                )
                opened.append(fd)
                files.append((fd, path))
            layout = argv_mod.RunLayout(
                result_fd=box.pipe.write_fd,
                result_max=profile.limits.max_result_bytes,
                out_size=out_size,
                proc_masks=self._proc_masks,
                action_file=action_file,
                wrapper=wrapper,
                seccomp_fd=seccomp_fd,
                init_fd=init_fd,
                env=env,
                files=tuple(files),
                pack=pack_mount,
                parked=parked,
            )
            args = argv_mod.encode_args(argv_mod.bwrap_args(profile, layout))
            command = argv_mod.action_command(profile, layout)
            if gated:
                command = egress.gate_command(command)
            box.started = trio.current_time()
            box.proc = await process.spawn(
                self.bwrap,
                args,
                command,
                pass_fds=(*opened, box.pipe.write_fd),
                uid=box.uid,
                gid=box.uid,
                rlimits=argv_mod.rlimit_prefix(profile),
                cgroup_procs=box.cgroup.procs_files if box.cgroup else (),
            )
        finally:
            for fd in opened:
                os.close(fd)
            box.pipe.spawned()  # the sandbox's pid 1 holds the only write end now

    async def _close_box(self, box: _Box) -> None:
        if box.pipe is not None:
            box.pipe.close()
        if box.attachment is not None:
            box.attachment.discard()  # killed now, reaped after it has torn down
        # The run dir and the cgroup go after the answer when a Teardown runs
        # (teardown.py); the run dir holds none of the execution's data. Removing a
        # cgroup may block briefly (rmdir retries while a process exits).
        job = functools.partial(_cleanup, box.rd.root, box.cgroup)
        if self.teardown is None or not self.teardown.defer(job):
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(job)
        if box.on_closed is not None:
            box.on_closed()

    async def _plan_network(self, policy: egress.EgressPolicy, rd: _RunDir) -> _NetworkPlan:
        """Resolve the allowlisted names, render the rules, write the run's /etc files."""
        etc = rd.root / "etc"
        rules = await network.prepare(policy, (SANDBOX_ASSETS / "etc" / "hosts").read_text(), etc)
        return _NetworkPlan(policy, rules, etc)

    async def _attach_network(
        self, proc: process.SandboxProcess, plan: _NetworkPlan
    ) -> network.Attachment:
        return await network.attach_sandbox(proc, plan.rules, plan.policy.dns)

    def _make_cgroup(self, name: str, profile: Profile) -> RunCgroup | None:
        if self.facts.cgroups.version == 0:
            return None
        try:
            return RunCgroup(
                self.facts.cgroups,
                name,
                profile.limits.memory_mb * 1024 * 1024,
                profile.limits.processes,
                profile.limits.cpus,
            )
        except OSError:
            return None


async def _launcher_ready(proc: process.SandboxProcess) -> None:
    """A parked sandbox's launcher writes "r" once it waits for its handoff."""
    ready = await proc.pipes.stdout.receive_some(1)
    if ready != b"r":
        detail = b""
        with trio.move_on_after(1):
            detail = await proc.pipes.stderr.receive_some(4096)
        raise SandboxUnavailable(
            "a parked sandbox did not start: "
            + (detail.decode(errors="replace").strip() or "no ready signal")
        )


def _net_sources(plan: _NetworkPlan | None) -> dict[str, Path]:
    """An egress sandbox's own /etc files, under their `net/NAME` keys (run_files)."""
    if plan is None:
        return {}
    return {f"net/{name}": plan.etc_dir / name for name in argv_mod.NET_ETC_FILES}


INLINE_RESULT_BYTES = 64 * 1024


def _output_size(report: RunReport, pipe: ResultPipe | None) -> int:
    kept = len(report.stdout.kept) + len(report.stderr.kept)
    return kept + (len(pipe.buffer.kept) if pipe is not None else 0)


def parked_out_size(profile: Profile) -> int:
    """A parked sandbox's /attune/out: a cold run's size for files within the floor."""
    return argv_mod.out_dir_size(profile.limits.max_result_bytes, [])


def fits_parked(profile: Profile, inputs: RunInputs) -> bool:
    """Do the run's parameter and secrets files fit a parked sandbox's /attune/out?"""
    return inputs.out_dir_size(profile.limits.max_result_bytes) <= parked_out_size(profile)


def _pack_mount(pack: PackSource | None) -> argv_mod.PackMount | None:
    if pack is None:
        return None
    return argv_mod.PackMount(
        pack_dir=pack.pack_dir, action_path=pack.action_path, env_dir=pack.env_dir
    )


def _check_code_name(name: str) -> None:
    """The action's file name becomes a path inside the sandbox: one plain component."""
    if "/" in name or name in ("", ".", ".."):
        raise ExecutionError(f"invalid action file name {name!r}")


def _open_source(path: str | Path) -> int:
    """A read-only fd on a file bwrap copies into the sandbox (a fresh offset per run)."""
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)


def _entry_kind(path: str) -> bool | None:
    """For argv.present_proc_masks: True for a directory, False for a file others may
    read or write, None for a missing entry or one closed to others already."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    if stat.S_ISDIR(mode):
        return True
    return False if mode & 0o006 else None


def _cleanup(root: Path, cgroup: RunCgroup | None) -> None:
    _remove_tree(root)
    if cgroup is not None:
        cgroup.remove()


def _remove_tree(path: Path) -> None:
    """Remove a run dir; only the worker ever wrote there."""

    def make_writable_and_retry(func: Callable[..., Any], name: str, _exc: Any) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(name), 0o700)
            func(name)

    shutil.rmtree(path, onerror=make_writable_and_retry)
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)


def _replace(report: RunReport, **changes: Any) -> RunReport:
    import dataclasses

    return dataclasses.replace(report, **changes)
