"""The sandbox's own pid 1 is out of the action's reach (catalog rows 70-73), real bwrap.

pid 1 is attune-init: non-dumpable, started with the run's limits already set by the
spawn chain. The action can neither read nor write its memory, environment or fds, nor
signal it; every process of the sandbox, bwrap on the host included, carries the run's
limits; the run ends when the action's own process ends; and a SIGKILLed worker leaves
nothing behind even after the action cleared every parent-death signal it could reach.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest
import trio

from attune.runner.profiles import Profile
from attune.runner.sandbox import Sandbox
from tests.sandbox.conftest import RunCode
from tests.sandbox.helpers import HostProcess, catches_sigusr1, of_uids

pytestmark = pytest.mark.sandbox

MiB = 2**20
REPO = Path(__file__).resolve().parents[2]


def code(text: str) -> str:
    return textwrap.dedent(text).lstrip()


def with_limits(profile: Profile, **limits: int) -> Profile:
    return msgspec.structs.replace(
        profile, limits=msgspec.structs.replace(profile.limits, **limits)
    )


# Every process of the sandbox outside the action's own tree (pid 1 only, by design),
# and what the action got trying to reach each of them.
REACH_PID1 = code("""
    import errno, os, signal

    def err(fn):
        try:
            fn()
        except OSError as exc:
            return errno.errorcode[exc.errno]
        return "OK"

    def parents():
        out = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                with open(f"/proc/{name}/stat", "rb") as f:
                    data = f.read()
                out[int(name)] = int(data[data.rfind(b")") + 2:].split()[1])
        return out

    def run():
        ppid = parents()
        mine = {os.getpid()}
        for pid in sorted(ppid):  # children have larger pids here, but be thorough
            for p in ppid:
                if ppid[p] in mine:
                    mine.add(p)
        others = sorted(set(ppid) - mine)
        seen = {}
        for pid in others:
            seen[pid] = {
                "mem_rw": err(lambda: os.close(os.open(f"/proc/{pid}/mem", os.O_RDWR))),
                "mem_ro": err(lambda: os.close(os.open(f"/proc/{pid}/mem", os.O_RDONLY))),
                "environ": err(lambda: open(f"/proc/{pid}/environ", "rb").read()),
                "fds": err(lambda: os.listdir(f"/proc/{pid}/fd")),
                "maps": err(lambda: open(f"/proc/{pid}/maps", "rb").read()),
                "cwd": err(lambda: os.readlink(f"/proc/{pid}/cwd")),
            }
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGSEGV,
                    signal.SIGUSR1, signal.SIGSTOP, signal.SIGKILL):
            os.kill(1, sig)
        with open("/proc/1/status") as f:
            state = next(l.split()[1] for l in f if l.startswith("State:"))
        init = open("/proc/1/cmdline", "rb").read().decode().split("\\0")
        return {"others": others, "seen": seen, "pid1_state_after_signals": state,
                "pid1_program": init[0], "pid1_options": init[1:4]}
""")


async def test_70_pid1_is_unreadable_unwritable_and_unsignalable(run_code: RunCode) -> None:
    outcome = await run_code(REACH_PID1)
    assert outcome.status == "completed", outcome.result
    data = outcome.result["data"]
    assert data["others"] == [1]  # nothing else but init outside the action's tree
    assert data["seen"] == {
        "1": {
            "mem_rw": "EACCES",
            "mem_ro": "EACCES",
            "environ": "EACCES",
            "fds": "EACCES",
            "maps": "EACCES",
            "cwd": "EACCES",
        }
    }
    assert data["pid1_state_after_signals"] == "S"  # still waiting for its child
    assert data["pid1_program"] == "/attune-init"
    # the result pipe's fd number and the byte limit, nothing secret (the fd itself is
    # close-on-exec in pid 1: test_3_32 writes to every fd >= 3 of the action)
    fd_option, max_option, end = data["pid1_options"]
    assert re.fullmatch(r"--result-fd=\d+", fd_option)
    assert (max_option, end) == ("--result-max=1048576", "--")


async def test_70_shell_cannot_read_or_kill_pid1(run_code: RunCode) -> None:
    outcome = await run_code(
        code("""
        cat /proc/1/environ >/dev/null 2>&1; echo "environ=$?"
        dd if=/proc/1/mem of=/dev/null bs=1 count=1 2>/dev/null; echo "mem=$?"
        kill -TERM 1; kill -KILL 1; kill -STOP 1
        echo "alive=$(sed -n 's/^State:\\t\\(.\\).*/\\1/p' /proc/1/status)"
    """),
        runtime="shell",
    )
    assert outcome.status == "completed", outcome.result
    assert outcome.result["stdout"].split() == ["environ=1", "mem=1", "alive=S"]


LIMITS_PROBE = code("""
    import os, signal, sys

    NAMES = {"Max cpu time": "cpu", "Max file size": "fsize", "Max address space": "as",
             "Max open files": "nofile", "Max processes": "nproc", "Max core file size": "core"}

    def limits(pid):
        out = {}
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                for prefix, key in NAMES.items():
                    if line.startswith(prefix):
                        out[key] = line[len(prefix):].split()[:2]
        return out

    def run():
        child = os.fork()
        if child == 0:
            signal.pause()
        seen = {"init": limits(1), "self": limits(os.getpid()), "child": limits(child)}
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        got = []
        signal.signal(signal.SIGUSR1, lambda *_: got.append(1))
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        print("ready", flush=True)
        if not got:
            signal.sigwait({signal.SIGUSR1})  # the test has read the host side
        return seen
""")


def host_limits(pid: int) -> dict[str, list[str]]:
    names = {
        "Max cpu time": "cpu",
        "Max file size": "fsize",
        "Max address space": "as",
        "Max open files": "nofile",
        "Max processes": "nproc",
        "Max core file size": "core",
    }
    out: dict[str, list[str]] = {}
    with open(f"/proc/{pid}/limits") as handle:
        for line in handle:
            for prefix, key in names.items():
                if line.startswith(prefix):
                    out[key] = line[len(prefix) :].split()[:2]
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs per-slot uids to tell runs apart")
async def test_71_every_process_carries_the_run_limits_from_its_first_instruction(
    run_code: RunCode, profiles: dict[str, Profile], sandbox: Sandbox
) -> None:
    profile = with_limits(
        profiles["python"],
        cpu_seconds=77,
        file_size_mb=5,
        address_space_mb=1500,
        open_files=99,
        processes=55,
    )
    slot = 1
    uid = sandbox.slot_uid(slot)
    assert uid is not None
    on_host: dict[int, tuple[str, dict[str, list[str]]]] = {}

    async def on_output(stream: str, chunk: bytes) -> None:
        if stream != "stdout" or b"ready" not in chunk:
            return
        for proc in of_uids({uid}):
            on_host[proc.pid] = (proc.cmdline.split(" ")[0], host_limits(proc.pid))
        for proc in of_uids({uid}):
            if catches_sigusr1(proc.pid):
                os.kill(proc.pid, signal.SIGUSR1)

    outcome = await run_code(LIMITS_PROBE, profile=profile, slot=slot, on_output=on_output)
    assert outcome.status == "completed", outcome.result
    expected = {
        "cpu": ["77", "78"],
        "fsize": [str(5 * MiB), str(5 * MiB)],
        "as": [str(1500 * MiB), str(1500 * MiB)],
        "nofile": ["99", "99"],
        "nproc": ["55", "55"],
        "core": ["0", "0"],
    }
    assert outcome.result["data"] == {"init": expected, "self": expected, "child": expected}
    programs = sorted(program for program, _ in on_host.values())
    # outer bwrap (setpriv and prlimit exec'd into it), attune-init, the action
    assert programs == ["/attune-init", "/usr/bin/bwrap", "/usr/bin/python3"], on_host
    for program, limits in on_host.values():
        assert limits == expected, program


async def test_72_the_run_ends_with_the_actions_own_process(run_code: RunCode) -> None:
    outcome = await run_code(
        code("""
        import os, signal, subprocess
        subprocess.Popen(["/usr/bin/sleep", "1000"], start_new_session=True)
        os.kill(1, signal.SIGTERM)  # ignored: pid 1 outlives nothing of the action
        os._exit(7)
    """)
    )
    assert outcome.status == "failed"
    assert outcome.result["exit_code"] == 7
    killed = await run_code("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n")
    assert killed.result["exit_code"] == 128 + signal.SIGTERM
    assert "SIGTERM" in killed.result["error"]


# Runs one action through Sandbox.run in a process of its own, streaming the action's
# stdout: the test SIGKILLs this stand-in worker once the action says it is ready.
MINI_WORKER = """
import sys
from pathlib import Path

import trio

from attune.runner import host
from attune.runner.profiles import load_profiles
from attune.runner.sandbox import RunSpec, Sandbox


async def main() -> None:
    run_dir, base, slot, action = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    sandbox = Sandbox(host.detect(), run_dir, slot_uid_base=base)

    async def out(stream: str, chunk: bytes) -> None:
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()

    spec = RunSpec(profile=load_profiles()["python"], code=Path(action).read_bytes(),
                   code_name="victim.py", label="killed")
    await sandbox.run(spec, timeout=120, slot=slot, on_output=out)


trio.run(main)
"""

# Clears the parent-death signal of every process it can reach, leaves a setsid daemon
# that ignores every catchable signal, and tries to reach pid 1 (and so bwrap) too.
DISARM = code("""
    import ctypes, errno, os, signal, time
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1

    def clear_pdeathsig():
        libc.prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0)
        for sig in range(1, 32):
            if sig not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_IGN)

    clear_pdeathsig()
    tried = {}
    for path in ("/proc/1/mem", "/proc/1/environ"):
        try:
            os.close(os.open(path, os.O_RDWR))
            tried[path] = "OPENED"
        except OSError as exc:
            tried[path] = errno.errorcode[exc.errno]
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            clear_pdeathsig()
            time.sleep(1000)
        os._exit(0)
    os.wait()
    print("ready", tried, flush=True)
    time.sleep(1000)
""")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs per-slot uids to find leftovers")
async def test_73_a_sigkilled_worker_leaves_nothing_even_after_pdeathsig_is_cleared(
    sandbox: Sandbox, run_base: Path, tmp_path: Path
) -> None:
    action = tmp_path / "victim.py"
    action.write_text(DISARM)
    slot = 3
    uid = sandbox.slot_uid(slot)
    assert uid is not None
    run_dir = run_base / "killed-worker"
    worker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            MINI_WORKER,
            str(run_dir),
            str(sandbox.slot_uid_base),
            str(slot),
            str(action),
        ],
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert worker.stdout is not None
        line = await trio.to_thread.run_sync(worker.stdout.readline)
        assert line.startswith(b"ready"), line
        assert b"'/proc/1/mem': 'EACCES'" in line and b"'/proc/1/environ': 'EACCES'" in line
        assert len(of_uids({uid})) >= 4  # bwrap, init, the action, its daemon
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        if worker.stdout is not None:
            worker.stdout.close()
    # The stand-in worker's bwrap and init are reparented to this process (a subreaper,
    # like the real worker's parent would not be): reap them as they exit.
    left: list[HostProcess] = []
    with trio.move_on_after(10):
        while left := of_uids({uid}):
            for proc in left:
                if proc.ppid == os.getpid() and proc.state.startswith("Z"):
                    os.waitpid(proc.pid, os.WNOHANG)
            await trio.sleep(0.02)
    assert not left, f"sandbox processes outlived the SIGKILLed worker: {left}"
    shutil.rmtree(run_dir, ignore_errors=True)
