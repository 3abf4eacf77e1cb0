"""docs/sandbox.md guarantees 1-10, each checked on a real bubblewrap.

Many attack-catalog rows (test_attacks.py) also prove a guarantee; this file checks the
positive shape of the sandbox: exactly which env, fds, files, uids, limits it has.
"""

from __future__ import annotations

import json
import os
import textwrap
import uuid
from pathlib import Path

import pytest
import trio

from attune.runner import argv, host
from attune.runner.pool import WarmPool
from attune.runner.profiles import Profile
from attune.runner.sandbox import RunOutcome, Sandbox
from attune.runner.supervise import RunControl
from tests.sandbox.conftest import RunCode
from tests.sandbox.helpers import (
    SYSCALLS,
    HostProcess,
    of_uids,
    token,
    wait_until_gone,
    with_token,
)
from tests.unavailable import unavailable

pytestmark = pytest.mark.sandbox

MiB = 2**20


def code(text: str) -> str:
    return textwrap.dedent(text).lstrip()


async def listener() -> tuple[trio.SocketListener, int]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    sock = listeners[0].socket
    return listeners[0], sock.getsockname()[1]


# --- 1. network ------------------------------------------------------------------------


async def test_1_only_loopback_and_host_services_unreachable(run_code: RunCode) -> None:
    lst, port = await listener()
    async with lst:
        outcome = await run_code(
            SYSCALLS
            + code(f"""
            def connect(host, port):
                s = socket.socket()
                s.settimeout(2)
                return oserr(s.connect, (host, port))
            def run():
                ifaces = [l.split(":")[0].strip() for l in open("/proc/net/dev").readlines()[2:]]
                try:
                    socket.getaddrinfo("example.com", 80)
                    dns = "resolved"
                except socket.gaierror as exc:
                    dns = "gaierror"
                return {{"ifaces": ifaces, "worker_listener": connect("127.0.0.1", {port}),
                         "outside": connect("1.1.1.1", 80), "dns": dns,
                         "pg_socket_dir": os.path.exists("/run/postgresql")}}
        """)
        )
    assert outcome.status == "completed", outcome.result
    assert outcome.result["data"] == {
        "ifaces": ["lo"],
        "worker_listener": "ECONNREFUSED",
        "outside": "ENETUNREACH",
        "dns": "gaierror",
        "pg_socket_dir": False,
    }


# --- 2. environment --------------------------------------------------------------------

EXPECTED_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/work",
    "LANG": "C.UTF-8",
    "TMPDIR": "/tmp",
    "ATTUNE_EXEC_ID": "test",
    "ATTUNE_ACTION": "tests.action",
    "ATTUNE_PACK_REF": "tests",
    "ATTUNE_PARAMETER_DELIVERY": "stdin",
    "ATTUNE_PARAMETER_FORMAT": "json",
    "EXTRA": "from env_vars",
    # bwrap sets PWD after --chdir (and every shell would): the cwd, nothing of the host.
    "PWD": "/work",
}
DUMP_EVERYTHING = """
import glob, json, os
seen = {"environ": dict(os.environ), "proc": {}}
for path in glob.glob("/proc/[0-9]*/environ") + glob.glob("/proc/[0-9]*/cmdline"):
    try:
        seen["proc"][path] = open(path, "rb").read().decode("utf-8", "replace")
    except OSError as exc:
        seen["proc"][path] = f"unreadable: {exc.strerror}"
print(json.dumps(seen))
"""


@pytest.mark.parametrize("runtime", ["python", "shell"])
async def test_2_31_environment_is_exactly_the_documented_one(
    run_code: RunCode, monkeypatch: pytest.MonkeyPatch, runtime: str
) -> None:
    """Row 31 too: print os.environ, read /proc/1/environ; no worker secret anywhere."""
    secret = f"worker-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("ATTUNE_TEST_DB_PASSWORD", secret)
    monkeypatch.setenv("DATABASE_URL", f"postgresql://u:{secret}@127.0.0.1/db")
    source = (
        DUMP_EVERYTHING
        if runtime == "python"
        else (
            "env; cat /proc/1/environ /proc/1/cmdline; echo\n"
            f"/usr/bin/python3 - <<'PY'\n{DUMP_EVERYTHING}\nPY\n"
        )
    )
    outcome = await run_code(
        source, runtime=runtime, env={"EXTRA": "from env_vars"}, output_format="text"
    )
    assert outcome.status == "completed", outcome.result
    assert secret not in json.dumps(outcome.result)
    seen = json.loads(outcome.result["stdout"].splitlines()[-1])
    env = seen["environ"]
    if runtime == "shell":  # bash's own bookkeeping, exported to its children
        assert env.pop("SHLVL") in ("1", "2")
        assert env.pop("_") == "/usr/bin/python3"
    assert env == EXPECTED_ENV
    init_env = seen["proc"]["/proc/1/environ"]
    assert init_env.startswith("unreadable")  # pid 1 is non-dumpable (row 70)
    init_cmd = seen["proc"]["/proc/1/cmdline"]
    assert init_cmd.startswith("/attune-init\0")
    for leak in ("--setenv", "ATTUNE_", "--bind", "/var/lib", "/runs"):
        assert leak not in init_cmd


# --- 3. file descriptors ---------------------------------------------------------------


@pytest.mark.parametrize("delivery", ["stdin", "file"])
async def test_3_32_only_fds_0_1_2_are_open(run_code: RunCode, delivery: str) -> None:
    """Row 32 too: list /proc/self/fd and write to every fd >= 3."""
    outcome = await run_code(
        SYSCALLS
        + code("""
        import stat
        def run():
            listed = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
            open_fds = [fd for fd in range(3, 4096) if oserr(os.fstat, fd) != "EBADF"]
            writes = {fd: oserr(os.write, fd, b"x") for fd in range(3, 64)}
            return {"listed": listed, "open": open_fds,
                    "writes": sorted(set(writes.values())),
                    "stdin_is_pipe": stat.S_ISFIFO(os.fstat(0).st_mode),
                    "stdin_rest": sys.stdin.read()}
    """),
        parameter_delivery=delivery,
    )
    assert outcome.status == "completed", outcome.result
    data = outcome.result["data"]
    assert data["listed"] in ([0, 1, 2], [0, 1, 2, 3])  # 3: listdir's own directory fd
    assert data["open"] == []
    assert data["writes"] == ["EBADF"]
    assert data["stdin_is_pipe"] is True and data["stdin_rest"] == ""


async def test_3_32_shell_sees_only_0_1_2(run_code: RunCode) -> None:
    outcome = await run_code(
        code("""
        # an external echo: bash's builtins park saved fds at 10+ during redirections
        ( exec 2>/dev/null
          for fd in $(seq 3 254); do /bin/echo x >&"$fd" && echo "WROTE $fd"; done )
        ls /proc/$$/fd
    """),
        runtime="shell",
    )
    assert outcome.status == "completed"
    # 255 is bash's own handle on the script it runs (close-on-exec)
    assert outcome.result["stdout"].split() == ["0", "1", "2", "255"]


# --- 4. filesystem ---------------------------------------------------------------------


@pytest.mark.parametrize("runtime", ["python", "shell"])
async def test_4_filesystem_is_minimal_and_read_only(run_code: RunCode, runtime: str) -> None:
    probe = SYSCALLS + code("""
        def run():
            def writable(d):
                path = os.path.join(d, ".probe")
                r = oserr(lambda: os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)))
                if r == "OK":
                    os.unlink(path)
                return r
            dirs = ["/", "/etc", "/usr", "/usr/bin", "/attune", "/attune/out",
                    "/attune/action", "/dev", "/proc", "/work", "/tmp", "/dev/shm"]
            root_mount = [l.split()[3].split(",")[0] for l in open("/proc/self/mounts")
                          if l.split()[1] == "/"]
            return {
                "root": sorted(os.listdir("/")),
                "etc": sorted(os.listdir("/etc")),
                "absent": {p: os.path.lexists(p) for p in
                           ["/root", "/home", "/sys", "/etc/shadow", "/var", "/run",
                            "/boot", "/mnt", "/opt", "/srv", "/media"]},
                "writable": {d: writable(d) for d in dirs},
                "root_mount": root_mount,
                "bin": os.readlink("/bin"),
            }
    """)
    if runtime == "shell":
        probe = (
            "/usr/bin/python3 - <<'PY'\n"
            + probe.replace("def run():", "def run_():")
            + "\nprint(json.dumps(run_()))\nPY\n"
        )
    outcome = await run_code(probe, runtime=runtime, output_format="json")
    assert outcome.status == "completed", outcome.result
    data = outcome.result["data"]
    assert data["root"] == [
        "attune",
        "attune-init",
        "bin",
        "dev",
        "etc",
        "lib",
        "lib64",
        "proc",
        "sbin",
        "tmp",
        "usr",
        "work",
    ]
    etc = ["group", "hosts", "ld.so.cache", "localtime", "nsswitch.conf", "passwd"]
    etc = sorted([*etc, "alternatives", "ca-certificates", "ssl"])  # read-only binds
    assert data["etc"] == etc
    assert not any(data["absent"].values()), data["absent"]
    # The run's own tmpfs mounts: scratch space, and the action's file and result (what a
    # parked sandbox's launcher writes); each sized, none a host path.
    scratch = {"/work", "/tmp", "/dev/shm", "/attune/action", "/attune/out"}
    assert {d for d, r in data["writable"].items() if r == "OK"} == scratch
    assert data["writable"]["/"] == "EROFS" and data["writable"]["/usr"] == "EROFS"
    assert data["root_mount"] == ["ro"]
    assert data["bin"] == "usr/bin"


async def test_4_synthetic_passwd_names_the_action_user(run_code: RunCode) -> None:
    outcome = await run_code(
        "import pwd, os\ndef run():\n    return "
        "[pwd.getpwuid(os.getuid()).pw_name, open('/etc/passwd').read()]\n"
    )
    name, passwd = outcome.result["data"]
    assert name == "action"
    assert "x:0:0" in passwd and "/root" not in passwd


# --- 5. uids ---------------------------------------------------------------------------


def _made_here_by(uids: set[int]) -> list[HostProcess]:
    """A parked sandbox's processes carry the launcher's command line, not the action's
    file name: find the run by the file it made, then its processes by its host uid."""
    procs = of_uids(uids)
    maker = [p for p in procs if os.path.exists(f"/proc/{p.pid}/root/work/made-here")]
    return [p for p in procs if maker and p.uids[0] == maker[0].uids[0]]


async def sandbox_processes_while(
    run_code: RunCode, source: str, name: str, uids: set[int], **kw: object
) -> tuple[RunOutcome, list[HostProcess], int]:
    """Start a run, capture its host processes (and a file owner) while it sleeps."""
    seen: list[HostProcess] = []
    owner = -1
    outcome: RunOutcome | None = None

    async def runner() -> None:
        nonlocal outcome
        outcome = await run_code(source, code_name=name, **kw)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner)
        with trio.fail_after(5):
            while True:
                procs = with_token(name) or _made_here_by(uids)
                action = [p for p in procs if p.cmdline.startswith("/usr/bin/python3")]
                made = f"/proc/{action[0].pid}/root/work/made-here" if action else ""
                if action and os.geteuid() != 0:  # /proc/PID/root needs CAP_SYS_PTRACE
                    seen = procs
                    break
                if action and os.path.exists(made):
                    seen = procs
                    owner = os.stat(made).st_uid
                    break
                await trio.sleep(0.02)
    assert outcome is not None
    return outcome, seen, owner


@pytest.mark.parametrize("slot", [0, 1])
async def test_5_sandbox_runs_as_the_slot_uid_on_the_host(
    run_code: RunCode,
    sandbox: Sandbox,
    slot: int,
    slot_uids: set[int],
    warm_pool: WarmPool | None,
) -> None:
    name = f"uid_{uuid.uuid4().hex[:10]}.py"
    source = code("""
        import os, time
        def run():
            open("/work/made-here", "w").close()
            time.sleep(1.5)
            st = os.stat("/work/made-here")
            return {"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(),
                    "groups": os.getgroups(), "file_uid": st.st_uid}
    """)
    outcome, procs, owner = await sandbox_processes_while(
        run_code, source, name, slot_uids, slot=slot
    )
    assert outcome.status == "completed", outcome.result
    assert outcome.result["data"] == {
        "uid": 1000,
        "euid": 1000,
        "gid": 1000,
        "groups": [],
        "file_uid": 1000,
    }
    expected = sandbox.slot_uid(slot) if os.geteuid() == 0 else os.geteuid()
    if warm_pool is not None and warm_pool.taken and os.geteuid() == 0:
        # A parked sandbox has a uid of the pool's own, held by no other live sandbox.
        expected = procs[0].uids[0]
        assert expected in slot_uids and expected != sandbox.slot_uid(slot)
    assert expected != 0
    # outer bwrap, the sandbox's init, the action: all the slot's uid on the host
    assert len(procs) >= 3
    for proc in procs:
        assert set(proc.uids) == {expected}, proc
    if os.geteuid() == 0:
        assert owner == expected  # the work dir file, seen from the host


async def test_5_17_no_capabilities_and_no_new_privs(run_code: RunCode) -> None:
    outcome = await run_code(
        code("""
        def run():
            status = dict(l.split(":", 1) for l in open("/proc/self/status") if ":" in l)
            return {k: status[k].strip() for k in
                    ("NoNewPrivs", "CapEff", "CapPrm", "CapBnd", "CapAmb", "CapInh", "Seccomp")}
    """)
    )
    zero = "0000000000000000"
    assert outcome.result["data"] == {
        "NoNewPrivs": "1",
        "CapEff": zero,
        "CapPrm": zero,
        "CapBnd": zero,
        "CapAmb": zero,
        "CapInh": zero,
        "Seccomp": "2",
    }


# --- 6. syscall filter (positive side; the denials are rows 19-27) -------------------------


async def test_6_enosys_calls_and_personality(run_code: RunCode) -> None:
    outcome = await run_code(
        SYSCALLS
        + code("""
        def run():
            return {
                "clone3": sysc(435, 0, 0),
                "io_uring_enter": sysc(426, 0, 0, 0, 0, 0, 0),
                "io_uring_register": sysc(427, 0, 0, 0, 0),
                "fsopen": sysc(430, b"tmpfs", 0), "fsconfig": sysc(431, 0, 0, 0, 0, 0),
                "fsmount": sysc(432, 0, 0, 0), "fspick": sysc(433, -100, b"/", 0),
                "open_tree": sysc(428, -100, b"/", 0), "move_mount": sysc(429, 0, 0, 0, 0, 0),
                "mount_setattr": sysc(442, -100, b"/", 0, 0, 0),
                "personality_query": sysc(135, 0xffffffff),
                "personality_zero": sysc(135, 0),
                "personality_no_aslr": sysc(135, 0x0040000),
                "setns": sysc(308, 0, 0),
                "kcmp": sysc(312, 1, 1, 0, 0, 0), "pidfd_getfd": sysc(438, 0, 0, 0),
                "request_key": sysc(249, b"user", b"x", 0, 0),
                "syslog": sysc(103, 3, 0, 0), "acct": sysc(163, 0),
                "reboot": sysc(169, 0, 0, 0, 0), "swapoff": sysc(168, b"/x"),
                "iopl": sysc(172, 3), "ioperm": sysc(173, 0, 1, 1),
                "settimeofday": sysc(164, 0, 0), "clock_settime": sysc(227, 0, 0),
                "adjtimex": sysc(159, 0), "kexec_load": sysc(246, 0, 0, 0, 0),
                "init_module": sysc(175, 0, 0, 0), "delete_module": sysc(176, b"x", 0),
                "quotactl": sysc(179, 0, 0, 0, 0),
            }
    """)
    )
    data = outcome.result["data"]
    enosys = [
        "clone3",
        "io_uring_enter",
        "io_uring_register",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "open_tree",
        "move_mount",
        "mount_setattr",
    ]
    assert {k: data.pop(k) for k in enosys} == dict.fromkeys(enosys, "ENOSYS")
    assert data.pop("personality_zero") == "OK"
    assert data == dict.fromkeys(data, "EPERM")


async def test_6_normal_python_keeps_working(run_code: RunCode) -> None:
    outcome = await run_code(
        code("""
        import concurrent.futures, multiprocessing, subprocess, threading, ssl, sqlite3
        def square(x):
            return x * x
        def run():
            results = []
            t = threading.Thread(target=lambda: results.append(sum(range(10**5))))
            t.start(); t.join()
            with multiprocessing.Pool(3) as pool:
                pooled = sum(pool.map(square, range(200)))
            with concurrent.futures.ProcessPoolExecutor(2) as ex:
                proc_pool = sum(ex.map(square, range(50)))
            with concurrent.futures.ThreadPoolExecutor(4) as ex:
                threads = sum(ex.map(square, range(50)))
            q = multiprocessing.Queue(); p = multiprocessing.Process(target=q.put, args=(7,))
            p.start(); got = q.get(timeout=5); p.join()
            sub = subprocess.run(["sh", "-c", "echo $((6*7))"], capture_output=True, text=True)
            db = sqlite3.connect("/tmp/x.db"); db.execute("create table t(x)")
            return [results[0], pooled, proc_pool, threads, got, sub.stdout.strip(),
                    ssl.create_default_context().verify_mode == ssl.CERT_REQUIRED]
    """),
        timeout=20,
    )
    assert outcome.status == "completed", outcome.result
    assert outcome.result["data"] == [4999950000, 2646700, 40425, 40425, 7, "42", True]


async def test_6_foreign_architectures_are_killed(run_code: RunCode) -> None:
    """An x32 system call (nr | 0x40000000) kills the process with SIGSYS."""
    outcome = await run_code(
        SYSCALLS
        + code("""
        print("before", flush=True)
        sysc(0x40000000 + 39)  # x32 getpid
        print("survived", flush=True)
    """)
    )
    assert outcome.status == "failed"
    assert outcome.result["stdout"] == "before\n"
    assert outcome.result["exit_code"] == 128 + 31
    assert outcome.result["error"] == "Command killed by SIGSYS (forbidden system call)"


async def test_6_i386_int80_is_killed(run_code: RunCode) -> None:
    """The i386 ABI (int 0x80 from a 64-bit process) is a foreign architecture too."""
    outcome = await run_code(
        code("""
        import ctypes, mmap
        # mov eax, 20 (i386 getpid); int 0x80; ret
        shell = b"\\xb8\\x14\\x00\\x00\\x00\\xcd\\x80\\xc3"
        buf = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        buf.write(shell)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        print("before", flush=True)
        ctypes.CFUNCTYPE(ctypes.c_int)(addr)()
        print("survived", flush=True)
    """)
    )
    assert outcome.status == "failed"
    assert outcome.result["stdout"] == "before\n"
    # SIGSYS from seccomp; a kernel without IA32 emulation answers int 0x80 with SIGSEGV
    assert outcome.result["exit_code"] in (128 + 31, 128 + 11)


# --- 7. resource limits ----------------------------------------------------------------


async def test_7_rlimits_inside_match_the_profile(run_code: RunCode) -> None:
    outcome = await run_code(
        code("""
        import resource
        def run():
            names = ["CPU", "AS", "NOFILE", "FSIZE", "NPROC", "CORE"]
            return {n: list(resource.getrlimit(getattr(resource, "RLIMIT_" + n))) for n in names}
    """)
    )
    assert outcome.result["data"] == {
        "CPU": [300, 301],
        "AS": [2048 * MiB, 2048 * MiB],
        "NOFILE": [256, 256],
        "FSIZE": [64 * MiB, 64 * MiB],
        "NPROC": [256, 256],
        "CORE": [0, 0],
    }


async def test_7_tmpfs_sizes(run_code: RunCode) -> None:
    outcome = await run_code(
        code("""
        import os
        def run():
            return {d: os.statvfs(d).f_blocks * os.statvfs(d).f_frsize
                    for d in ("/tmp", "/work", "/dev/shm")}
    """)
    )
    assert outcome.result["data"] == {"/tmp": 64 * MiB, "/work": 256 * MiB, "/dev/shm": 64 * MiB}


async def test_7_the_run_has_its_own_memory_pids_and_cpu_cgroup(
    run_code: RunCode, facts: host.HostFacts
) -> None:
    if facts.cgroups.version == 0:
        unavailable(f"no cgroups here: {facts.cgroups.detail}")
    name = f"cg_{uuid.uuid4().hex[:10]}.py"
    found: dict[str, str] = {}
    outcome: RunOutcome | None = None

    async def runner() -> None:
        nonlocal outcome
        outcome = await run_code("import time\ntime.sleep(1.5)\n", code_name=name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner)
        with trio.fail_after(5):
            while not found:
                for proc in with_token(name):
                    if not proc.cmdline.startswith("/usr/bin/python3"):
                        continue
                    for line in Path(f"/proc/{proc.pid}/cgroup").read_text().splitlines():
                        _, controllers, path = line.split(":", 2)
                        for c in ("memory", "pids", "cpu"):
                            if c in controllers.split(",") or (
                                controllers == "" and facts.cgroups.version == 2
                            ):
                                found[c] = path
                await trio.sleep(0.02)
            if facts.cgroups.version == 1:
                mem = Path("/sys/fs/cgroup/memory") / found["memory"].lstrip("/")
                pids = Path("/sys/fs/cgroup/pids") / found["pids"].lstrip("/")
                assert (mem / "memory.limit_in_bytes").read_text().strip() == str(512 * MiB)
                assert (pids / "pids.max").read_text().strip() == "256"
                assert mem.parent == facts.cgroups.memory_parent
                if facts.cgroups.cpu_parent is not None:  # the profile's cpus = 1.0
                    cpu = Path("/sys/fs/cgroup/cpu") / found["cpu"].lstrip("/")
                    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "100000"
                    assert (cpu / "cpu.cfs_period_us").read_text().strip() == "100000"
            else:
                d = Path("/sys/fs/cgroup") / found["memory"].lstrip("/")
                assert (d / "memory.max").read_text().strip() == str(512 * MiB)
                assert (d / "memory.swap.max").read_text().strip() == "0"
                assert (d / "pids.max").read_text().strip() == "256"
                assert (d / "cpu.max").read_text().strip() == "100000 100000"
    assert outcome is not None and outcome.status == "completed"


async def test_7_layers_are_reported(facts: host.HostFacts) -> None:
    names = [layer.name for layer in facts.layers]
    assert names == [
        "bubblewrap",
        "user_namespaces",
        "seccomp",
        "interpreter",
        "sandbox_init",
        "network_isolation",
        "egress",
        "rlimits",
        "per_slot_uids",
        "cgroups",
    ]
    caps = facts.capabilities()
    assert caps["bubblewrap"] is True and caps["seccomp"] is True
    assert caps["cgroup_version"] == facts.cgroups.version


# --- 10. result file: the out dir is the action's own small tmpfs -------------------------


async def test_10_out_dir_is_the_actions_own_tmpfs_bounded_by_the_result_limit(
    run_code: RunCode, profiles: dict[str, Profile]
) -> None:
    """Whatever the action writes under /attune/out is memory of the run (charged to its
    cgroup), at most the result limit plus slack: never the host's disk, never more."""
    outcome = await run_code(
        SYSCALLS
        + code("""
        def run():
            p = "/attune/out"
            listing = sorted(os.listdir(p))
            vfs = os.statvfs(p)
            fd = os.open(p + "/junk", os.O_WRONLY | os.O_CREAT, 0o600)
            written, full = 0, "OK"
            try:
                while written < 64 * 2**20:
                    written += os.write(fd, b"x" * 65536)
            except OSError as exc:
                full = errno.errorcode[exc.errno]
            os.close(fd)
            os.unlink(p + "/junk")  # room again for the wrapper's report
            return {"listing": listing, "own": os.stat(p).st_uid == os.getuid(),
                    "mode": oct(os.stat(p).st_mode & 0o777),
                    "size": vfs.f_blocks * vfs.f_frsize, "full": full, "written": written}
    """)
    )
    assert outcome.status == "completed", outcome.result
    data = outcome.result["data"]
    size = argv.out_dir_size(profiles["python"].limits.max_result_bytes, [])
    assert data["listing"] == []  # parameters and secrets only when delivered as files
    assert data["own"] is True and data["mode"] == "0o700"
    assert data["size"] == size
    assert data["full"] == "ENOSPC" and data["written"] <= size


# --- 8. nothing survives (every test also checks the slot uids afterwards) ----------------


@pytest.mark.parametrize("how", ["timeout", "exit"])
async def test_8_daemons_die_with_the_run(run_code: RunCode, how: str) -> None:
    mark = token()
    source = code(f"""
        ( setsid sleep {mark} & )
        ( trap '' TERM HUP; exec -a hidden-{mark} sleep 1000 ) &
        mkdir -p /work/a/b /tmp/c; touch /work/a/b/f
        chmod 000 /work/a/b /work/a /tmp/c
        echo started
        {"sleep 60" if how == "timeout" else "exit 0"}
    """)
    outcome = await run_code(source, runtime="shell", timeout=1, output_format="text")
    assert outcome.status == ("timeout" if how == "timeout" else "completed")
    assert outcome.result["stdout"] == "started\n"
    assert await wait_until_gone(mark) == []
    # the run dir is gone: checked after every test


async def test_8_cancelled_runs_leave_nothing(run_code: RunCode) -> None:
    mark = token()
    control = RunControl()

    async def cancel_soon() -> None:
        with trio.fail_after(5):
            while not with_token(mark):
                await trio.sleep(0.02)
        control.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancel_soon)
        outcome = await run_code(
            f"( setsid sleep {mark} & )\nsleep 60\n", runtime="shell", timeout=30, control=control
        )
    assert outcome.status == "cancelled"
    assert await wait_until_gone(mark) == []
