"""The hostile-action catalog (docs/security.md, rows 1-35) against a real bubblewrap.

Each test asserts what the action saw (an errno name or a marker it printed) and what
the worker recorded (status, error, exit code); python and shell variants where the
row applies. Rows that need raw system calls have no shell variant: bash has no way to
make them (no ptrace, keyctl or io_uring tool in the sandbox's /usr).
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from attune.runner.profiles import Profile
from attune.runner.sandbox import RunOutcome, Sandbox
from tests.sandbox.conftest import RunCode
from tests.sandbox.helpers import SYSCALLS, token, wait_until_gone

pytestmark = pytest.mark.sandbox

MiB = 2**20
NOTICE = "\n\n[OUTPUT TRUNCATED: stdout exceeded size limit]\n"


def code(text: str) -> str:
    return textwrap.dedent(text).lstrip()


def probe(body: str) -> str:
    """A run() action with the raw-syscall helpers; returns what it saw."""
    return SYSCALLS + code(body)


async def completed(run_code: RunCode, source: str, **kw: Any) -> Any:
    outcome = await run_code(source, **kw)
    assert outcome.status == "completed", outcome.result
    assert outcome.result["exit_code"] == 0
    return outcome.result.get("data", outcome.result.get("stdout"))


def with_limits(profile: Profile, **limits: int) -> Profile:
    return msgspec.structs.replace(
        profile, limits=msgspec.structs.replace(profile.limits, **limits)
    )


# --- row 1: fork bomb --------------------------------------------------------------------

FORK_BOMB = {
    "python": code("""
        import errno, os
        told = False
        while True:
            try:
                os.fork()
            except OSError as exc:
                if not told:
                    told = True
                    os.write(1, f"FORK {errno.errorcode[exc.errno]}\\n".encode())
    """),
    "shell": ":(){ :|:& };:\nsleep 30\n",
}


@pytest.mark.parametrize("runtime", ["python", "shell"])
async def test_01_fork_bomb_is_contained_and_a_parallel_run_is_unaffected(
    run_code: RunCode, runtime: str
) -> None:
    results: dict[str, RunOutcome] = {}

    async def bomb() -> None:
        results["bomb"] = await run_code(FORK_BOMB[runtime], runtime=runtime, timeout=4, slot=0)

    async def neighbour() -> None:
        await trio.sleep(1)  # the bomb is at its limit by now
        results["neighbour"] = await run_code(
            "import os, subprocess\ndef run():\n"
            "    kids = [subprocess.run(['true']).returncode for _ in range(20)]\n"
            "    return [sum(range(10**5)), kids.count(0)]\n",
            timeout=20,
            slot=1,
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(bomb)
        nursery.start_soon(neighbour)
    bomb_result = results["bomb"]
    assert bomb_result.status == "timeout"
    assert bomb_result.result["error"] == "Execution timed out after 4 seconds"
    if runtime == "python":
        assert "FORK EAGAIN" in bomb_result.result["stdout"]
    else:
        assert "fork: retry: Resource temporarily unavailable" in bomb_result.result["stderr"]
    neighbour_result = results["neighbour"]
    assert neighbour_result.status == "completed", neighbour_result.result
    assert neighbour_result.result["data"] == [4999950000, 20]


# --- row 2: memory bomb ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("runtime", "source"),
    [
        ("python", "x = []\nwhile True:\n    x.append(bytearray(50 * 2**20))\n"),
        ("shell", 'a=x; while :; do a="$a$a"; done\n'),
    ],
)
async def test_02_memory_bomb_result_says_memory(
    run_code: RunCode, sandbox: Sandbox, runtime: str, source: str
) -> None:
    outcome = await run_code(source, runtime=runtime, timeout=20)
    assert outcome.status == "failed"
    assert "memory" in outcome.result["error"].lower()
    if sandbox.facts.cgroups.version:
        # 512 MB of memory cgroup is reached long before 2 GB of address space
        assert outcome.result["oom_killed"] is True
        assert outcome.result["exit_code"] == 137


async def test_02_address_space_limit_gives_memory_error(run_code: RunCode) -> None:
    outcome = await run_code(
        code("""
        def run():
            try:
                bytearray(3 * 2**30)
            except MemoryError:
                seen = "MemoryError"
            x = bytearray(3 * 2**30)
    """)
    )
    assert outcome.status == "failed"
    assert outcome.result["error"] == "MemoryError"
    assert outcome.result["exit_code"] == 1


# --- row 3: fill /tmp (and the other tmpfs) ---------------------------------------------


async def test_03_fill_tmp_work_and_shm_python(run_code: RunCode) -> None:
    data = await completed(
        run_code,
        probe("""
        def fill(d):
            total, i, chunk = 0, 0, b"\\0" * 2**20
            while True:
                with open(f"{d}/f{i}", "wb") as f:  # 8 MiB files: under the file-size limit
                    for _ in range(8):
                        try:
                            total += f.write(chunk)
                        except OSError as exc:
                            return errno.errorcode[exc.errno], total
                i += 1
        def run():
            seen = {}
            for d in ("/tmp", "/dev/shm", "/work"):
                seen[d] = fill(d)
                for name in os.listdir(d):
                    os.unlink(os.path.join(d, name))
            return seen
    """),
        timeout=20,
    )
    for d, cap in (("/tmp", 64), ("/dev/shm", 64), ("/work", 256)):
        err, total = data[d]
        assert err == "ENOSPC", d
        assert (cap - 2) * MiB <= total <= cap * MiB, (d, total)


async def test_03_fill_tmp_shell(run_code: RunCode) -> None:
    outcome = await run_code(
        code("""
        i=0
        while head -c 8388608 /dev/zero > /tmp/f$i; do i=$((i+1)); done
        echo "files=$i"
        du -sm /tmp
    """),
        runtime="shell",
        timeout=10,
    )
    assert outcome.status == "completed"
    assert "No space left on device" in outcome.result["stderr"]
    lines = outcome.result["stdout"].split()
    assert lines[0] in ("files=7", "files=8")
    assert int(lines[1]) <= 64


# --- row 4: one file past the file-size limit ------------------------------------------


async def test_04_file_size_limit_python_gets_efbig(run_code: RunCode) -> None:
    data = await completed(
        run_code,
        probe("""
        def run():
            written = 0
            with open("/work/big", "wb", buffering=0) as f:
                try:
                    for _ in range(70):
                        written += f.write(b"\\0" * 2**20)
                except OSError as exc:
                    return [errno.errorcode[exc.errno], written, os.path.getsize("/work/big")]
            return "no limit"
    """),
    )
    assert data == ["EFBIG", 64 * MiB, 64 * MiB]


async def test_04_file_size_limit_sigxfsz_is_recorded(run_code: RunCode) -> None:
    outcome = await run_code(
        "import signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_DFL)\n"
        "open('/work/big', 'wb').write(b'x' * (65 * 2**20))\n"
    )
    assert outcome.status == "failed"
    assert outcome.result["exit_code"] == 128 + 25
    assert outcome.result["error"] == "Command killed by SIGXFSZ (file size limit exceeded)"


async def test_04_file_size_limit_shell(run_code: RunCode) -> None:
    outcome = await run_code("head -c 70M /dev/zero > /work/big\n", runtime="shell")
    assert outcome.status == "failed"
    assert outcome.result["exit_code"] == 128 + 25
    assert "file size limit exceeded" in outcome.result["error"]
    assert "File size limit exceeded" in outcome.result["stderr"]


# --- rows 5 and 9: output flood ----------------------------------------------------------


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def run_watching_rss(run_code: RunCode, *args: Any, **kw: Any) -> tuple[RunOutcome, int]:
    """The run's outcome and how far the worker's RSS grew (KiB) while it ran."""
    before = rss_kib()
    peak = before
    outcome: RunOutcome | None = None

    async def runner() -> None:
        nonlocal outcome
        outcome = await run_code(*args, **kw)
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner)
        while True:
            peak = max(peak, rss_kib())
            await trio.sleep(0.01)
    assert outcome is not None
    return outcome, peak - before


@pytest.mark.parametrize(
    ("runtime", "source"),
    [
        ("python", "import sys\nwhile True:\n    sys.stdout.buffer.write(b'x' * 65536)\n"),
        ("shell", "cat /dev/zero\n"),
    ],
)
async def test_05_stdout_flood_is_capped_and_the_run_killed(
    run_code: RunCode, profiles: dict[str, Profile], runtime: str, source: str
) -> None:
    profile = with_limits(profiles[runtime], max_stdout_bytes=MiB)
    outcome, growth_kib = await run_watching_rss(
        run_code, source, runtime=runtime, profile=profile, timeout=30
    )
    result = outcome.result
    assert outcome.status == "failed"
    assert result["error"] == "Execution killed: stdout exceeded 4x its 1048576 byte output limit"
    assert result["output_limit_exceeded"] == "stdout"
    assert result["stdout_truncated"] is True
    assert result["stdout_bytes_truncated"] > 4 * MiB
    assert result["stdout"].endswith(NOTICE)
    # stored as at most the cap once in the result JSON (NUL is stored as U+FFFD)
    assert MiB - 4 < len(result["stdout"].encode()) <= MiB + len(NOTICE)
    assert result["duration_ms"] < 5000
    assert growth_kib < 30 * 1024


async def test_05_09_hundred_megabyte_line_is_not_buffered_whole(run_code: RunCode) -> None:
    """docs/sandbox.md guarantee 9: a 100 MB line without a newline at the default 10 MiB cap."""
    outcome, growth_kib = await run_watching_rss(
        run_code, "import sys\nsys.stdout.buffer.write(b'y' * (100 * 2**20))\n", timeout=20
    )
    result = outcome.result
    assert result["stdout_truncated"] is True
    assert len(result["stdout"]) == 10 * MiB + len(NOTICE)
    # killed once 4x the cap was discarded: the worker never held the line
    assert outcome.status == "failed" and result["output_limit_exceeded"] == "stdout"
    assert growth_kib < 64 * 1024


async def test_05_stderr_flood_under_the_kill_factor_keeps_the_last_line(
    run_code: RunCode, profiles: dict[str, Profile]
) -> None:
    profile = with_limits(profiles["shell"], max_stderr_bytes=64 * 1024)
    outcome = await run_code(
        "head -c 200000 /dev/zero | tr '\\0' 'w' >&2\n"
        "echo >&2; echo 'the real reason' >&2; exit 3\n",
        runtime="shell",
        profile=profile,
    )
    assert outcome.status == "failed"
    assert outcome.result["error"] == "the real reason"
    assert outcome.result["stderr_truncated"] is True
    assert outcome.result["stderr_bytes_truncated"] == 200000 + 1 + 16 - 64 * 1024


# --- row 6: busy loop; row 7: sleep ------------------------------------------------------


@pytest.mark.parametrize(
    ("runtime", "source"),
    [
        ("python", "while True:\n    pass\n"),
        ("shell", "while :; do :; done\n"),
        ("python", "import time\ntime.sleep(10**9)\n"),
        ("shell", "sleep 1000000000\n"),
    ],
    ids=["06-python-busy", "06-shell-busy", "07-python-sleep", "07-shell-sleep"],
)
async def test_06_07_killed_at_the_wall_limit(run_code: RunCode, runtime: str, source: str) -> None:
    outcome = await run_code(source, runtime=runtime, timeout=1.5)
    assert outcome.status == "timeout"
    assert outcome.result["timed_out"] is True
    assert outcome.result["error"] == "Execution timed out after 1.5 seconds"
    assert outcome.result["duration_ms"] < 2500


@pytest.mark.parametrize("runtime", ["python", "shell"])
async def test_06_cpu_limit_kills_with_sigxcpu(
    run_code: RunCode, profiles: dict[str, Profile], runtime: str
) -> None:
    source = "while True:\n    pass\n" if runtime == "python" else "while :; do :; done\n"
    outcome = await run_code(
        source, runtime=runtime, timeout=10, profile=with_limits(profiles[runtime], cpu_seconds=1)
    )
    assert outcome.status == "failed"
    assert outcome.result["exit_code"] == 128 + 24
    # The CPU limit, not the 10 s wall clock, ended it: a wall-clock kill says "timed out".
    # (No bound on duration_ms: on a loaded host CPU seconds accrue slower than wall time.)
    assert outcome.result["error"] == "Command killed by SIGXCPU (CPU time limit exceeded)"


# --- rows 8 and 9: leftovers ------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["python", "shell"])
async def test_08_background_sleep_does_not_hold_the_run(run_code: RunCode, runtime: str) -> None:
    mark = token()
    source = (
        f"import subprocess\nsubprocess.Popen(['sleep', '{mark}'])\nprint('started')\n"
        if runtime == "python"
        else f"sleep {mark} &\necho started\n"
    )
    started = trio.current_time()
    outcome = await run_code(source, runtime=runtime, output_format="text")
    assert trio.current_time() - started < 2
    assert outcome.status == "completed"
    assert outcome.result["stdout"] == "started\n"
    assert await wait_until_gone(mark) == []


@pytest.mark.parametrize("runtime", ["python", "shell"])
async def test_09_setsid_daemon_holding_stdout(run_code: RunCode, runtime: str) -> None:
    mark = token()
    source = (
        code(f"""
        import os
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execvp("sleep", ["sleep", "{mark}"])  # keeps stdout and stderr open
            os._exit(0)
        os.wait()
        print("parent done")
    """)
        if runtime == "python"
        else f"( setsid sleep {mark} & )\necho parent done\n"
    )
    started = trio.current_time()
    outcome = await run_code(source, runtime=runtime, timeout=30, output_format="text")
    assert trio.current_time() - started < 2
    assert outcome.status == "completed"
    assert outcome.result["stdout"] == "parent done\n"
    assert await wait_until_gone(mark) == []


# --- row 10: open files ------------------------------------------------------------------


async def test_10_open_files_until_emfile_python(run_code: RunCode) -> None:
    data = await completed(
        run_code,
        probe("""
        def run():
            fds = []
            while True:
                try:
                    fds.append(os.open("/dev/null", os.O_RDONLY))
                except OSError as exc:
                    for fd in fds:  # the wrapper needs one to write the report
                        os.close(fd)
                    return [errno.errorcode[exc.errno], max(fds)]
    """),
    )
    assert data == ["EMFILE", 255]


async def test_10_open_files_until_emfile_shell(run_code: RunCode) -> None:
    outcome = await run_code(
        code("""
        n=0
        while exec {fd}</dev/null; do n=$((n+1)); done
        echo "opened $n"
    """),
        runtime="shell",
    )
    assert outcome.status == "completed"
    assert "Too many open files" in outcome.result["stderr"]
    assert 200 < int(outcome.result["stdout"].split()[1]) < 256


# --- row 11: abort -----------------------------------------------------------------------


def core_files() -> set[str]:
    places = [Path.cwd(), Path("/tmp"), Path("/"), Path("/var/lib/attune")]
    return {str(p / n) for p in places if p.is_dir() for n in os.listdir(p) if n.startswith("core")}


@pytest.mark.parametrize("runtime", ["python", "shell"])
async def test_11_abort_leaves_no_core_file(run_code: RunCode, runtime: str) -> None:
    before = core_files()
    source = (
        code("""
        import json, os
        pid = os.fork()
        if pid == 0:
            os.abort()
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"signal": os.WTERMSIG(status), "core": os.WCOREDUMP(status),
                          "work": os.listdir("/work"), "tmp": os.listdir("/tmp")}), flush=True)
        os.abort()
    """)
        if runtime == "python"
        else code("""
        /usr/bin/python3 -c 'import os; os.abort()'
        echo "rc=$? work=[$(ls -A /work)] tmp=[$(ls -A /tmp)]"
        kill -ABRT $$
    """)
    )
    outcome = await run_code(source, runtime=runtime, output_format="text")
    assert outcome.status == "failed"
    assert outcome.result["exit_code"] == 128 + 6
    assert outcome.result["error"] == "Command killed by SIGABRT"
    if runtime == "python":
        assert json.loads(outcome.result["stdout"]) == {
            "signal": 6,
            "core": False,
            "work": [],
            "tmp": [],
        }
    else:
        assert outcome.result["stdout"] == "rc=134 work=[] tmp=[]\n"
    assert core_files() == before


# --- rows 12, 13, 14, 16: host files --------------------------------------------------------


async def test_12_13_14_16_host_files_python(run_code: RunCode) -> None:
    data = await completed(
        run_code,
        probe("""
        def write(p):
            return oserr(lambda: open(p, "w").close())
        def run():
            return {
                "shadow": oserr(open, "/etc/shadow"), "root": oserr(os.listdir, "/root"),
                "home": oserr(os.listdir, "/home"),
                "usr_x": write("/usr/x"), "etc_x": write("/etc/x"), "root_x": write("/x"),
                "core_pattern": write("/proc/sys/kernel/core_pattern"),
                "sysrq": write("/proc/sysrq-trigger"),
                "dev_mem": oserr(open, "/dev/mem"), "dev_kmsg": oserr(open, "/dev/kmsg"),
                "sys_kernel": oserr(os.listdir, "/sys/kernel"),
            }
    """),
    )
    assert data.pop("core_pattern") in ("EROFS", "EACCES")
    assert data.pop("sysrq") in ("EROFS", "EACCES", "ENOENT")
    assert data == {
        "shadow": "ENOENT",
        "root": "ENOENT",
        "home": "ENOENT",
        "usr_x": "EROFS",
        "etc_x": "EROFS",
        "root_x": "EROFS",
        "dev_mem": "ENOENT",
        "dev_kmsg": "ENOENT",
        "sys_kernel": "ENOENT",
    }


async def test_12_13_14_16_host_files_shell(run_code: RunCode) -> None:
    outcome = await run_code(
        code("""
        cat /etc/shadow; ls /root; ls /home
        for f in /usr/x /etc/x /x /proc/sys/kernel/core_pattern; do echo x > $f; done
        cat /dev/mem; ls /dev/kmsg /sys/kernel
        true
    """),
        runtime="shell",
    )
    assert outcome.status == "completed"
    err = outcome.result["stderr"]
    for path in ("/etc/shadow", "/root", "/home", "/dev/mem", "/dev/kmsg", "/sys/kernel"):
        assert any(
            path in line and "No such file or directory" in line for line in err.splitlines()
        ), path
    for path in ("/usr/x", "/etc/x", "/x"):
        assert f"{path}: Read-only file system" in err
    assert "core_pattern: Read-only file system" in err or "core_pattern: Permission" in err


# --- row 15: device nodes -------------------------------------------------------------------


async def test_15_mknod_python(run_code: RunCode) -> None:
    data = await completed(
        run_code,
        probe("""
        import stat
        def run():
            return [oserr(os.mknod, "/work/mem", stat.S_IFCHR | 0o600, os.makedev(1, 1)),
                    oserr(os.mknod, "/tmp/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))]
    """),
    )
    assert data == ["EPERM", "EPERM"]


async def test_15_mknod_shell(run_code: RunCode) -> None:
    outcome = await run_code("mknod /work/mem c 1 1\n", runtime="shell")
    assert outcome.status == "failed"
    assert outcome.result["error"] == "mknod: /work/mem: Operation not permitted"


# --- row 17: setuid programs --------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["python", "shell"])
async def test_17_setuid_programs_do_not_elevate(run_code: RunCode, runtime: str) -> None:
    source = code("""
        echo "nnp=$(grep NoNewPrivs /proc/self/status | cut -f2)"
        su -c id root </dev/null; echo "su=$?"
        sudo id; echo "sudo=$?"
        ping -c1 127.0.0.1; echo "ping=$?"
        mount -t tmpfs none /tmp; echo "mount=$?"
        ls -ln /usr/bin/su | cut -d' ' -f1
    """)
    if runtime == "python":
        source = f"import subprocess\nsubprocess.run(['bash', '-c', {source!r}])\n"
    outcome = await run_code(source, runtime=runtime, output_format="text")
    assert outcome.status == "completed"
    lines = outcome.result["stdout"].split()
    assert lines[0] == "nnp=1"
    assert lines[1] == "su=1"
    assert lines[2] == "sudo=127" and lines[3] == "ping=127"  # not even installed here
    assert lines[4] in ("mount=1", "mount=32")
    assert lines[5] == "-rwsr-xr-x"  # the setuid bit is there; NoNewPrivs makes it inert
    assert "uid=0" not in outcome.result["stdout"]


# --- row 18: signals --------------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["python", "shell"])
async def test_18_kill_everything_in_sight(
    run_code: RunCode, sandbox: Sandbox, runtime: str
) -> None:
    victim_uid = sandbox.slot_uid(0)
    victim = subprocess.Popen(["sleep", "30"], user=victim_uid)  # same host uid as the slot
    try:
        source = (
            probe("""
            import signal
            def run():
                pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
                kills = {p: oserr(os.kill, p, signal.SIGKILL) for p in pids if p != os.getpid()}
                return {"pids": pids, "me": os.getpid(), "kills": kills,
                        "all": oserr(os.kill, -1, signal.SIGKILL)}
        """)
            if runtime == "python"
            else code("""
            pids=$(ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' ')
            for p in $pids; do [ "$p" != $$ ] && kill -9 "$p" 2>/dev/null; done
            kill -9 -1
            echo "pids=$pids me=$$ survived"
        """)
        )
        outcome = await run_code(source, runtime=runtime, output_format="text")
        assert outcome.status == "completed", outcome.result
        if runtime == "python":
            data = outcome.result["data"]
            assert data["pids"] == [1, 2] and data["me"] == 2
            assert data["kills"] == {"1": "OK"}  # delivered, and ignored by the ns init
            assert data["all"] in ("OK", "ESRCH")  # nobody left to signal but pid 1
        else:
            out = outcome.result["stdout"]
            assert out.startswith("pids=1 2 ") and out.endswith("me=2 survived\n")
            assert all(int(p) < 10 for p in out.split("=")[1].split()[:-1])
        assert victim.poll() is None, "a host process of the slot uid was killed"
        assert os.getppid() > 0  # and the worker (this process) is alive to tell
    finally:
        victim.kill()
        victim.wait()


# --- rows 19-27: the syscall filter ----------------------------------------------------------


async def test_19_to_27_denied_system_calls(run_code: RunCode) -> None:
    data = await completed(
        run_code,
        probe("""
        import fcntl, termios
        def run():
            buf = ctypes.create_string_buffer(64)
            iov = (ctypes.c_void_p * 2)(ctypes.addressof(buf), 64)
            ptmx = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY)
            ch = ctypes.c_char(b"x")
            return {
                # 19
                "ptrace_attach": sysc(101, 16, 1, 0, 0),
                "ptrace_traceme": sysc(101, 0, 0, 0, 0),
                "process_vm_readv": sysc(310, 1, iov, 1, iov, 1, 0),
                "process_vm_writev": sysc(311, 1, iov, 1, iov, 1, 0),
                # 20
                "keyctl": sysc(250, 0, 0, 0, 0, 0),
                "add_key": sysc(248, b"user", b"k", b"v", 1, -2),
                # 21
                "unshare_user": libcall("unshare", 0x10000000),
                "unshare_ns": libcall("unshare", 0x00020000),
                "clone_newuser": sysc(56, 0x10000000 | 17, 0, 0, 0, 0),
                "clone_newpid": sysc(56, 0x20000000 | 17, 0, 0, 0, 0),
                "clone_newnet": sysc(56, 0x40000000 | 17, 0, 0, 0, 0),
                "setns": sysc(308, 0, 0x10000000),
                # 22
                "mount": libcall("mount", b"none", b"/tmp", b"tmpfs", 0, None),
                "umount2": libcall("umount2", b"/tmp", 0),
                "pivot_root": sysc(155, b"/tmp", b"/tmp"),
                "chroot": libcall("chroot", b"/tmp"),
                # 24
                "bpf": sysc(321, 0, 0, 0),
                "perf_event_open": sysc(298, 0, 0, -1, -1, 0),
                "userfaultfd": sysc(323, 0),
                # 25
                "open_by_handle_at": sysc(304, -100, 0, 0),
                "name_to_handle_at": sysc(303, -100, b"/", 0, 0, 0),
                # 26
                "tiocsti_stdin": sysc(16, 0, 0x5412, ctypes.byref(ch)),
                "tiocsti_high_bits": sysc(16, 0, (1 << 32) | 0x5412, ctypes.byref(ch)),
                "tiocsti_pty": oserr(fcntl.ioctl, ptmx, termios.TIOCSTI, b"x"),
                "tioclinux": sysc(16, 0, 0x541C, ctypes.byref(ch)),
            }
    """),
    )
    assert data == dict.fromkeys(data, "EPERM")


async def test_23_io_uring_is_enosys(run_code: RunCode) -> None:
    data = await completed(
        run_code,
        probe("""
        def run():
            params = ctypes.create_string_buffer(120)
            return [sysc(425, 8, params), sysc(426, 0, 0, 0, 0, 0, 0), sysc(427, 0, 0, 0, 0)]
    """),
    )
    assert data == ["ENOSYS", "ENOSYS", "ENOSYS"]


async def test_21_unshare_command_shell(run_code: RunCode) -> None:
    outcome = await run_code("unshare -Ur sh -c id\n", runtime="shell")
    assert outcome.status == "failed"
    assert (
        "Operation not permitted" in outcome.result["error"]
        or "No space left on device" in outcome.result["error"]
    )


async def test_22_mount_tools_shell(run_code: RunCode) -> None:
    outcome = await run_code(
        code("""
        /usr/sbin/chroot /tmp /bin/true; echo "chroot=$?"
        umount /tmp; echo "umount=$?"
        unshare -m true; echo "unshare=$?"
    """),
        runtime="shell",
    )
    assert outcome.status == "completed"
    assert outcome.result["stdout"].split() == ["chroot=125", "umount=32", "unshare=1"]
    assert (
        "cannot change root directory to '/tmp': Operation not permitted"
        in outcome.result["stderr"]
    )


async def test_27_socket_families(run_code: RunCode) -> None:
    data = await completed(
        run_code,
        probe("""
        def run():
            def sock(family, kind=socket.SOCK_RAW):
                return oserr(lambda: socket.socket(family, kind, 0).close())
            return {
                "netlink": sock(socket.AF_NETLINK), "packet": sock(socket.AF_PACKET),
                "vsock": sock(40, socket.SOCK_STREAM), "alg": sock(38, socket.SOCK_SEQPACKET),
                "bluetooth": sock(31), "raw_1000": sysc(41, 1000, 1, 0),
                "unix": sock(socket.AF_UNIX, socket.SOCK_STREAM),
                "inet": sock(socket.AF_INET, socket.SOCK_STREAM),
                "inet6": sock(socket.AF_INET6, socket.SOCK_DGRAM),
            }
    """),
    )
    assert {k: data.pop(k) for k in ("unix", "inet", "inet6")} == dict.fromkeys(
        ("unix", "inet", "inet6"), "OK"
    )
    assert data == dict.fromkeys(data, "EAFNOSUPPORT")


# --- rows 28-30: network -----------------------------------------------------------------------


async def test_28_29_30_network_python(run_code: RunCode) -> None:
    data = await completed(
        run_code,
        probe("""
        def connect(addr, family=socket.AF_INET):
            s = socket.socket(family, socket.SOCK_STREAM)
            s.settimeout(3)
            return oserr(s.connect, addr)
        def run():
            try:
                socket.getaddrinfo("example.com", 443)
                dns = "resolved"
            except socket.gaierror:
                dns = "gaierror"
            return {
                "outside": connect(("1.1.1.1", 80)), "outside6": connect(("2606:4700::1111", 80),
                                                                        socket.AF_INET6),
                "dns": dns, "postgres": connect(("127.0.0.1", 5432)),
                "rabbitmq": connect(("127.0.0.1", 5672)),
                "pg_socket": connect("/run/postgresql/.s.PGSQL.5432", socket.AF_UNIX),
            }
    """),
    )
    assert data == {
        "outside": "ENETUNREACH",
        "outside6": "ENETUNREACH",
        "dns": "gaierror",
        "postgres": "ECONNREFUSED",
        "rabbitmq": "ECONNREFUSED",
        "pg_socket": "ENOENT",
    }


async def test_28_29_30_network_shell(run_code: RunCode) -> None:
    outcome = await run_code(
        code("""
        : <>/dev/tcp/1.1.1.1/80
        getent hosts example.com; echo "dns=$?"
        : <>/dev/tcp/127.0.0.1/5432
        : <>/dev/tcp/127.0.0.1/5672
        ls /run/postgresql
        true
    """),
        runtime="shell",
    )
    assert outcome.status == "completed"
    assert outcome.result["stdout"] == "dns=2\n"
    err = outcome.result["stderr"]
    assert "1.1.1.1/80: Network is unreachable" in err
    assert "127.0.0.1/5432: Connection refused" in err
    assert "127.0.0.1/5672: Connection refused" in err
    assert "/run/postgresql" in err and "No such file or directory" in err


# --- row 33: the result file replaced by something else ------------------------------------
# attune-init forwards /attune/out/result.json only if it is a regular file, opened
# without following a symlink or blocking, after everything else of the run is dead.

NO_VALUE = "the action ended without reporting a return value"
REPLACE = {
    # a symlink to a file that holds a perfectly good report: never followed
    "symlink": "open('/work/r', 'w').write(FAKE); os.symlink('/work/r', P)",
    "symlink_to_host_path": "os.symlink('/etc/hostname', P)",
    # a FIFO (with a writer parked on it): never opened for a blocking read
    "fifo": "os.mkfifo(P); os.fork() or (os.setsid(), os.open(P, os.O_WRONLY), time.sleep(60))",
    "directory": "os.mkdir(P); open(P + '/x', 'w').write(FAKE)",
}


@pytest.mark.parametrize("kind", sorted(REPLACE))
async def test_33_a_result_file_that_is_not_a_regular_file_forwards_nothing(
    run_code: RunCode, kind: str
) -> None:
    secret = Path("/etc/hostname").read_text().strip() if Path("/etc/hostname").exists() else ""
    with trio.fail_after(15):
        outcome = await run_code(
            probe(f"""
            import time
            P = "/attune/out/result.json"
            FAKE = '{{"ok": true, "value": "planted"}}'
            def run():
                {REPLACE[kind]}
                os._exit(0)
        """),
            timeout=12,
        )
    assert outcome.status == "failed", outcome.result
    assert outcome.result["error"] == NO_VALUE
    assert "planted" not in json.dumps(outcome.result)
    assert not secret or secret not in json.dumps(outcome.result)


async def test_33_the_wrapper_never_writes_through_a_planted_symlink(run_code: RunCode) -> None:
    """The action plants the symlink and returns normally: the wrapper's O_NOFOLLOW
    refuses to write through it, and nothing is forwarded."""
    outcome = await run_code(
        probe("""
        def run():
            os.symlink("/work/elsewhere", "/attune/out/result.json")
            return "the real value"
    """)
    )
    assert outcome.status == "failed"
    assert "Too many levels of symbolic links" in outcome.result["error"]  # ELOOP
    assert "the real value" not in json.dumps(outcome.result)


async def test_33_a_sparse_huge_result_file_is_read_only_up_to_the_limit(
    run_code: RunCode,
) -> None:
    """60 MiB of apparent size on the out tmpfs costs no memory; pid 1 forwards one
    byte over the limit and the worker keeps the limit at most."""
    with trio.fail_after(15):
        outcome = await run_code(
            probe("""
            def run():
                with open("/attune/out/result.json", "wb") as f:
                    f.write(b'{"ok": true, "value": "')
                    f.truncate(60 * 2**20)
                os._exit(0)
        """)
        )
    assert outcome.status == "failed"
    assert outcome.result["error"] == "result exceeds the 1048576 byte limit"


async def test_33_a_daemon_writing_the_result_file_is_dead_before_it_is_read(
    run_code: RunCode,
) -> None:
    """A setsid daemon rewriting result.json forever: pid 1 kills it with the rest of
    the namespace before it opens the file, so the run ends at once, terminal."""
    mark = token()
    with trio.fail_after(15):
        outcome = await run_code(
            probe(f"""
            O = "/attune/out/"
            LOOP = f"while :; do printf x > {{O}}x; mv -f {{O}}x {{O}}result.json; done"
            def run():
                with open("/attune/out/result.json", "w") as f:
                    f.write('{{"ok": true, "value": "mine"}}')
                if os.fork() == 0:
                    os.setsid()
                    os.execv("/bin/sh", ["/bin/sh", "-c", LOOP, "{mark}"])
                os._exit(0)
        """),
            timeout=12,
        )
    assert outcome.status in ("completed", "failed"), outcome.result
    assert outcome.result.get("data") == "mine" or "not valid JSON" in outcome.result["error"]
    assert await wait_until_gone(mark) == []


# --- row 34: normal code -------------------------------------------------------------------------


async def test_34_threads_and_multiprocessing_python(run_code: RunCode) -> None:
    data = await completed(
        run_code,
        code("""
        import multiprocessing, threading
        def work(n):
            return sum(i * i for i in range(n))
        def run():
            out = []
            threads = [threading.Thread(target=lambda: out.append(work(10**5))) for _ in range(8)]
            for t in threads: t.start()
            for t in threads: t.join()
            with multiprocessing.Pool(4) as pool:
                pooled = pool.map(work, [10**5] * 8)
            return [len(out), len(set(out)), pooled == out]
    """),
        timeout=20,
    )
    assert data == [8, 1, True]


async def test_34_background_jobs_shell(run_code: RunCode) -> None:
    stdout = await completed(
        run_code,
        code("""
        for i in 1 2 3 4; do (seq 1 50000 | sort -rn | head -1) & done
        wait
        echo "$(( $(nproc) > 0 ))" | cat
    """),
        runtime="shell",
    )
    assert stdout.split() == ["50000"] * 4 + ["1"]


# --- row 35: parallel runs do not see each other ------------------------------------------------


@pytest.mark.parametrize("runtime", ["python", "shell"])
async def test_35_parallel_runs_do_not_see_each_other(run_code: RunCode, runtime: str) -> None:
    names = [f"mine-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    results: dict[int, RunOutcome] = {}

    def source(name: str) -> str:
        if runtime == "python":
            return code(f"""
                import json, os, time
                open("/tmp/{name}", "w").close(); open("/work/{name}", "w").close()
                time.sleep(1)
                print(json.dumps([sorted(os.listdir("/tmp")), sorted(os.listdir("/work"))]))
            """)
        return code(f"""
            touch /tmp/{name} /work/{name}
            sleep 1
            echo "[$(ls -A /tmp | sort | tr '\\n' ' ')] [$(ls -A /work | sort | tr '\\n' ' ')]"
        """)

    async def one(i: int) -> None:
        results[i] = await run_code(
            source(names[i]),
            runtime=runtime,
            slot=i,
            output_format="json" if runtime == "python" else "text",
        )

    async with trio.open_nursery() as nursery:
        for i in range(2):
            nursery.start_soon(one, i)
    for i, name in enumerate(names):
        assert results[i].status == "completed"
        if runtime == "python":
            assert results[i].result["data"] == [[name], [name]]
        else:
            assert results[i].result["stdout"] == f"[{name} ] [{name} ]\n"
