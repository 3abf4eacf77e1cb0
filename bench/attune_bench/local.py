"""Cases that need no services: the floors, the runner in-process, `attune exec`.

Every case is one async callable returning the seconds of one run, so the main loop
can interleave them round-robin. How each case is spawned:

- plain floors: `subprocess.Popen` on the trio thread and a pidfd wait, like the
  worker (minus bwrap);
- sandboxed floors: `attune.runner.process.spawn` with `argv.bwrap_args(profile, ...)`
  of the worker's own python/shell profile and a fresh `seccomp.bpf_fd(default_bpf())`
  per run, as the slot-0 uid the worker would use. The run layout (code dir, result
  file, synthetic /etc) is prepared once and reused, so the floor is exactly the
  worker's sandbox minus the runner logic (no per-run dir, cgroup, prlimit, wrapper,
  result read or cleanup);
- the runner: `Sandbox(host.detect(), run_dir).run(RunSpec(...))` in this process;
- `attune exec`: the CLI as a whole process, wall time from spawn to exit.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from attune.runner import argv as argv_mod
from attune.runner import host, process, seccomp
from attune.runner.cgroups import RunCgroup
from attune.runner.profiles import Profile, load_profiles
from attune.runner.sandbox import SANDBOX_ASSETS, RunSpec, Sandbox

REPO = Path(__file__).resolve().parent.parent.parent
VENV_PYTHON = str(REPO / ".venv" / "bin" / "python")
ATTUNE = str(REPO / ".venv" / "bin" / "attune")
SYSTEM_PYTHON = "/usr/bin/python3"
BASH = "/bin/bash"
PLAIN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}

PY_ACTION = b"def run():\n    return 1\n"
SH_ACTION = b":\n"
PY_NAME, SH_NAME = "noop.py", "noop.sh"
CASE_TIMEOUT = 60.0


class CaseError(Exception):
    """One run of a case did not do what it should (non-zero exit, wrong result)."""


@dataclass(frozen=True)
class Case:
    name: str
    label: str
    section: str
    run: Callable[[], Awaitable[float]]


async def _drain(stream: trio.lowlevel.FdStream, keep: list[bytes]) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        while chunk := await stream.receive_some(65536):
            if sum(map(len, keep)) < 65536:
                keep.append(chunk)


async def _wait_pidfd(popen: subprocess.Popen[bytes]) -> int:
    pidfd = os.pidfd_open(popen.pid)
    try:
        while popen.poll() is None:
            await trio.lowlevel.wait_readable(pidfd)
    except BaseException:
        popen.kill()
        popen.wait()
        raise
    finally:
        os.close(pidfd)
    return popen.returncode


async def run_plain(argv: Sequence[str], env: dict[str, str]) -> tuple[float, bytes]:
    """Popen on the trio thread, pidfd wait, both pipes drained; (seconds, stdout)."""
    started = time.perf_counter()
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    try:
        popen = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out_w, stderr=err_w, env=env, cwd="/"
        )
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    out: list[bytes] = []
    err: list[bytes] = []
    async with (
        trio.lowlevel.FdStream(out_r) as out_s,
        trio.lowlevel.FdStream(err_r) as err_s,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(_drain, out_s, out)
        nursery.start_soon(_drain, err_s, err)
        code = await _wait_pidfd(popen)
    seconds = time.perf_counter() - started
    if code != 0:
        raise CaseError(f"{' '.join(argv)} exited {code}: {b''.join(err)[-400:]!r}")
    return seconds, b"".join(out)


@dataclass
class FloorLayout:
    """A run layout prepared once per slot and reused by every floor run."""

    code_dir: Path


@dataclass
class LocalEnv:
    """What the local cases share: one host probe, one Sandbox, prepared floor layouts."""

    root: Path
    facts: host.HostFacts
    sandbox: Sandbox
    profiles: dict[str, Profile]
    bpf: bytes
    exec_env: dict[str, str]
    actions_dir: Path
    layouts: dict[int, FloorLayout] = field(default_factory=dict)

    @property
    def bwrap(self) -> str:
        assert self.facts.bwrap is not None
        return self.facts.bwrap

    def layout(self, slot: int) -> FloorLayout:
        if slot not in self.layouts:
            self.layouts[slot] = _make_layout(self.root / "floor" / f"slot-{slot}")
        return self.layouts[slot]


def _make_layout(root: Path) -> FloorLayout:
    """The files a run copies into its sandbox (action, wrapper), prepared once per slot."""
    code = root / "code"
    (code / "action").mkdir(parents=True)
    (code / "action" / PY_NAME).write_bytes(PY_ACTION)
    (code / "action" / SH_NAME).write_bytes(SH_ACTION)
    shutil.copyfile(SANDBOX_ASSETS / "python_wrapper.py", code / "python_wrapper.py")
    os.chmod(root.parent, 0o711)  # the slot uids traverse it, never list it
    for path in (root, code, code / "action"):
        os.chmod(path, 0o755)
    for path in (code / "action" / PY_NAME, code / "action" / SH_NAME, code / "python_wrapper.py"):
        os.chmod(path, 0o644)
    return FloorLayout(code)


def make_env(root: Path) -> LocalEnv:
    facts = host.detect()
    if not facts.usable:
        raise CaseError("sandbox unavailable: " + "; ".join(facts.problems()))
    run_dir = root / "runs"
    sandbox = Sandbox(facts, run_dir)
    actions = root / "actions"
    actions.mkdir()
    (actions / PY_NAME).write_bytes(PY_ACTION)
    (actions / SH_NAME).write_bytes(SH_ACTION)
    exec_env = {k: v for k, v in os.environ.items() if not k.startswith("ATTUNE")}
    exec_env["ATTUNE__SANDBOX__RUN_DIR"] = str(root / "exec-runs")
    return LocalEnv(
        root=root,
        facts=facts,
        sandbox=sandbox,
        profiles=load_profiles(),
        bpf=seccomp.default_bpf(),
        exec_env=exec_env,
        actions_dir=actions,
    )


async def _supervise(proc: process.SandboxProcess) -> tuple[int, bytes]:
    err: list[bytes] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(proc.read_info)
            nursery.start_soon(_drain, proc.pipes.stdout, [])
            nursery.start_soon(_drain, proc.pipes.stderr, err)
            await proc.pipes.stdin.aclose()
            code = await proc.wait()
    finally:
        with trio.CancelScope(shield=True):
            await proc.reap_init()
        proc.close()
        for stream in (proc.pipes.stdout, proc.pipes.stderr):
            with contextlib.suppress(Exception):
                await stream.aclose()
    return code, b"".join(err)


async def run_sandboxed(
    env: LocalEnv,
    profile: Profile,
    command: Sequence[str] | None,
    *,
    slot: int = 0,
    wrapper: str | None = None,
    action_file: str = PY_NAME,
) -> float:
    """One floor run: the worker's bwrap argv and seccomp, `command` inside; seconds.

    `command=None` runs what the runner would: `argv.action_command` (attune-init, the
    profile's interpreter, the wrapper if given, the action file of the prepared layout).
    """
    layout = env.layout(slot)
    uid = env.sandbox.slot_uid(slot)
    started = time.perf_counter()
    fd = seccomp.bpf_fd(env.bpf)
    init_fd = os.open(env.sandbox.init, os.O_RDONLY | os.O_CLOEXEC)
    sources = {"action": layout.code_dir / "action" / action_file}
    files = [
        (os.open(sources.get(key, SANDBOX_ASSETS / key), os.O_RDONLY | os.O_CLOEXEC), path)
        for key, path in argv_mod.run_files(action_file, wrapper, params=False, secrets=False)
    ]
    try:
        run_layout = argv_mod.RunLayout(
            files=tuple(files),
            action_file=action_file,
            wrapper=wrapper,
            seccomp_fd=fd,
            init_fd=init_fd,
            env={},
        )
        args = argv_mod.encode_args(argv_mod.bwrap_args(profile, run_layout))
        if command is None:
            command = argv_mod.action_command(profile, run_layout)
        proc = await process.spawn(
            env.bwrap,
            args,
            command,
            pass_fds=(fd, init_fd, *(file_fd for file_fd, _ in files)),
            uid=uid,
            gid=uid,
            rlimits=argv_mod.rlimit_prefix(profile),
        )
    finally:
        for opened in (fd, init_fd, *(file_fd for file_fd, _ in files)):
            os.close(opened)
    code, err = await _supervise(proc)
    seconds = time.perf_counter() - started
    if code != 0:
        raise CaseError(f"sandboxed {' '.join(command)} exited {code}: {err[-400:]!r}")
    return seconds


async def run_runner(env: LocalEnv, spec: RunSpec, slot: int = 0) -> float:
    started = time.perf_counter()
    outcome = await env.sandbox.run(spec, timeout=CASE_TIMEOUT, slot=slot)
    seconds = time.perf_counter() - started
    wrong = spec.code == PY_ACTION and outcome.result.get("data") != 1
    if outcome.status != "completed" or wrong:
        raise CaseError(f"runner: {outcome.status}: {outcome.result}")
    return seconds


def cases(env: LocalEnv) -> list[Case]:
    py, sh = env.profiles["python"], env.profiles["shell"]
    prlimit_py = [*argv_mod.rlimit_prefix(py), *py.command, "-c", "pass"]
    py_spec = RunSpec(profile=py, code=PY_ACTION, code_name=PY_NAME, label="bench")
    sh_spec = RunSpec(profile=sh, code=SH_ACTION, code_name=SH_NAME, label="bench")
    py_file = str(env.actions_dir / PY_NAME)
    sh_file = str(env.actions_dir / SH_NAME)

    async def plain(*argv: str) -> float:
        return (await run_plain(argv, PLAIN_ENV))[0]

    async def exec_cli(path: str) -> float:
        seconds, out = await run_plain([ATTUNE, "exec", path], env.exec_env)
        if b'"succeeded": true' not in out:
            raise CaseError(f"attune exec {path}: {out[-400:]!r}")
        return seconds

    async def venv(code: str) -> float:
        return (await run_plain([VENV_PYTHON, "-c", code], env.exec_env))[0]

    floors = "floors"
    diag = "diagnostics (what the runner adds, step by step; all sandboxed like the floor)"
    found = [
        Case("plain_python", "python3 -c pass", floors, lambda: plain(SYSTEM_PYTHON, "-c", "pass")),
        Case("plain_bash", "bash -c :", floors, lambda: plain(BASH, "-c", ":")),
        Case(
            "bwrap_python",
            "bwrap+seccomp python3 -c pass",
            floors,
            lambda: run_sandboxed(env, py, [SYSTEM_PYTHON, "-c", "pass"]),
        ),
        Case(
            "bwrap_bash",
            "bwrap+seccomp bash -c :",
            floors,
            lambda: run_sandboxed(env, sh, [BASH, "-c", ":"]),
        ),
        Case(
            "runner_python",
            "Sandbox.run python def run(): return 1",
            "runner (in-process)",
            lambda: run_runner(env, py_spec),
        ),
        Case(
            "runner_shell",
            "Sandbox.run shell ':'",
            "runner (in-process)",
            lambda: run_runner(env, sh_spec),
        ),
        Case(
            "exec_python",
            "attune exec noop.py",
            "attune exec (whole process)",
            lambda: exec_cli(py_file),
        ),
        Case(
            "exec_shell",
            "attune exec noop.sh",
            "attune exec (whole process)",
            lambda: exec_cli(sh_file),
        ),
        Case(
            "import_trio",
            ".venv python -c 'import trio'",
            "attune exec (whole process)",
            lambda: venv("import trio"),
        ),
        Case("diag_venv_python", ".venv python -c pass", diag, lambda: venv("pass")),
        Case(
            "diag_prlimit_python",
            "+ prlimit + python3 -u -B -I -X utf8 -c pass",
            diag,
            lambda: run_sandboxed(env, py, prlimit_py),
        ),
        Case(
            "diag_wrapper_python",
            "+ python_wrapper.py noop.py (no host-side runner work)",
            diag,
            lambda: run_sandboxed(env, py, None, wrapper="python_wrapper.py"),
        ),
        Case(
            "diag_prlimit_shell",
            "+ prlimit + bash noop.sh",
            diag,
            lambda: run_sandboxed(env, sh, None, action_file=SH_NAME),
        ),
        Case(
            "diag_host_detect",
            "host.detect() in-process, seccomp cache cleared",
            diag,
            lambda: _host_detect(),
        ),
    ]
    if env.facts.cgroups.version:
        found.append(
            Case(
                "diag_cgroup",
                "RunCgroup create + remove, no process",
                diag,
                lambda: _cgroup(env, py),
            )
        )
    return found


async def _host_detect() -> float:
    started = time.perf_counter()
    seccomp.default_bpf.cache_clear()
    host.detect()
    return time.perf_counter() - started


_cgroup_names = itertools.count()


async def _cgroup(env: LocalEnv, profile: Profile) -> float:
    started = time.perf_counter()
    cgroup = RunCgroup(
        env.facts.cgroups,
        f"bench-{os.getpid()}-{next(_cgroup_names)}",
        profile.limits.memory_mb * 1024 * 1024,
        profile.limits.processes,
    )
    cgroup.remove()
    return time.perf_counter() - started
