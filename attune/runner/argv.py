"""Building the bubblewrap command line: a pure function of profile and run layout.

Everything the sandbox is made of is decided here, so it can be golden-tested without
spawning anything. The options go to bwrap through `--args FD`, never on its command
line, so /proc/1/cmdline inside the sandbox shows only the command (interpreter, rlimits,
action path), never the mounts, host paths or environment of the run.

Nothing the action writes reaches the host's disk. The work dir (/work) is a tmpfs of
`limits.work_dir_mb`, like /tmp and /dev/shm of `limits.tmpfs_mb` each. RLIMIT_FSIZE
caps one file, not the total: a host-backed work dir (or a writable host out dir) would
let an action fill the worker's disk with many files below the file-size limit long
before an after-run size check could notice. tmpfs pages are charged to the run's
memory cgroup where there is one and vanish with the sandbox's mount namespace, so there
is nothing to clean up either (no chmod-000 trees left for the worker to remove).

The only host path the action can write is the result FIFO (resultpipe.py), bound alone
at /attune/out/result.json: it cannot replace, rename or turn it into a symlink (its
parent is part of the read-only /attune), and what it writes there stays in the pipe
until the worker reads it, capped. The parameter file is bound read-only beside it.
Nothing reads the work dir after a run today; an artifact collector would need it
host-visible (e.g. a sized tmpfs the worker mounts) and must keep the size bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from attune.runner.profiles import Profile

SANDBOX_UID = 1000
SANDBOX_GID = 1000
# Paths inside the sandbox.
WORK_DIR = "/work"
ATTUNE_DIR = "/attune"  # read-only: the action code and the wrapper
OUT_DIR = "/attune/out"  # read-only; holds the two files below
RESULT_FILE = "/attune/out/result.json"  # the result FIFO, the one writable host path
PARAMS_FILE = "/attune/out/parameters"  # parameter_delivery = file, read-only
SECRETS_FILE = "/attune/out/secrets.json"  # keystore secrets of the run, read-only
ACTION_DIR = "/attune/action"
MiB = 1024 * 1024
NET_ETC_FILES = ("hosts", "nsswitch.conf", "resolv.conf")  # per run with egress


@dataclass(frozen=True)
class RunLayout:
    """Host paths of one run, prepared by the caller before the argv is built."""

    code_dir: str  # host dir bound read-only at /attune (holds action/ and out/)
    result_file: str  # host FIFO bound read-write at /attune/out/result.json
    params_file: str | None  # host file bound read-only at /attune/out/parameters
    etc_dir: str  # host dir with the synthetic passwd, group, hosts
    action_file: str  # file name under /attune/action
    wrapper: str | None  # file name under /attune that runs the action, if any
    seccomp_fd: int
    env: dict[str, str] = field(default_factory=dict)
    secrets_file: str | None = None  # host file bound read-only at /attune/out/secrets.json
    pack: PackMount | None = None  # the action's whole pack, when it comes from one
    # Egress runs: a dir with this run's hosts, nsswitch.conf and resolv.conf.
    net_etc_dir: str | None = None


@dataclass(frozen=True)
class PackMount:
    """The action's pack (and its Python environment) as the sandbox sees them.

    Both are bound read-only at the same paths as on the host, the paths the
    reference's worker uses: the action runs as `{pack_dir}/actions/<entry>` with the
    pack directory as its working directory. A venv must sit at its build path: its
    scripts and pyvenv.cfg carry it.
    """

    pack_dir: str  # absolute path, inside and outside the sandbox
    action_path: str  # absolute path of the action file under pack_dir
    env_dir: str | None = None  # the pack's Python environment (a venv), if it has one


def sandbox_env(profile: Profile, extra: dict[str, str]) -> dict[str, str]:
    """The action's whole environment: profile baseline, then the run's variables."""
    env = dict(profile.env)
    env.update(extra)
    return env


# The synthetic /etc: copies of sandbox/etc/, the only files an action sees there besides
# what a profile binds (docs/sandbox.md guarantee 4).
ETC_FILES = ("passwd", "group", "hosts", "nsswitch.conf")

PRLIMIT = "/usr/bin/prlimit"
CPU_HARD_GRACE = 1  # seconds between SIGXCPU (soft) and SIGKILL (hard)


def rlimit_prefix(profile: Profile) -> list[str]:
    """Limits set inside the sandbox before the interpreter starts, soft == hard.

    A limit of 0 means "not limited" except for core dumps, which are always off.
    CPU is the exception to soft == hard: at the soft limit the kernel sends SIGXCPU
    (so the result can say "CPU time limit"), SIGKILL one second later at the hard one;
    with soft == hard the kernel skips SIGXCPU and sends SIGKILL straight away.
    """
    lim = profile.limits
    pairs = [
        ("cpu", lim.cpu_seconds, lim.cpu_seconds + CPU_HARD_GRACE),
        ("as", lim.address_space_mb * MiB, lim.address_space_mb * MiB),
        ("nofile", lim.open_files, lim.open_files),
        ("fsize", lim.file_size_mb * MiB, lim.file_size_mb * MiB),
        ("nproc", lim.processes, lim.processes),
    ]
    opts = [f"--{name}={soft}:{hard}" for name, soft, hard in pairs if soft > 0]
    return [PRLIMIT, "--core=0:0", *opts, "--"]


def interpreter_command(profile: Profile, pack: PackMount | None) -> list[str]:
    """The profile's command, adapted to a pack: its venv's python, PYTHONPATH honoured.

    `-I` (isolated mode) would ignore PYTHONPATH, which is how a pack's lib/ reaches
    its actions (as in the reference); `-s` keeps the one part of it that matters here
    (no user site-packages). The environment is cleared by bwrap, so PYTHONPATH holds
    only what the worker sets; execution env_vars cannot set PYTHON* names.
    """
    command = list(profile.command)
    if pack is None or "-I" not in command:
        return command
    command[command.index("-I")] = "-s"
    if pack.env_dir is not None:
        command[0] = f"{pack.env_dir}/bin/python3"
    return command


def action_command(profile: Profile, layout: RunLayout) -> list[str]:
    wrapper = [f"{ATTUNE_DIR}/{layout.wrapper}"] if layout.wrapper else []
    target = (
        layout.pack.action_path if layout.pack is not None else f"{ACTION_DIR}/{layout.action_file}"
    )
    return [
        *rlimit_prefix(profile),
        *interpreter_command(profile, layout.pack),
        *wrapper,
        target,
    ]


def isolation_args(hostname: str) -> list[str]:
    """The namespaces, identity and capabilities every sandbox of this worker starts with."""
    return [
        "--unshare-user",
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--uid",
        str(SANDBOX_UID),
        "--gid",
        str(SANDBOX_GID),
        "--hostname",
        hostname,
        "--cap-drop",
        "ALL",
        "--unshare-net",  # always: egress attaches its own network to this namespace
    ]


def bwrap_args(profile: Profile, layout: RunLayout) -> list[str]:
    """bwrap's options, sent through `--args FD`; the command goes on its real argv.

    bwrap stops parsing an --args file at the first non-option, so the command itself
    cannot travel there; it holds no secret (parameters go through stdin or a file).
    """
    args = isolation_args("sandbox")
    for path in profile.mounts.ro_bind:
        args += ["--ro-bind", path, path]
    for path in profile.mounts.ro_bind_try:
        args += ["--ro-bind-try", path, path]
    for link, target in sorted(profile.mounts.symlinks.items()):
        args += ["--symlink", target, link]
    args += [
        "--proc",
        "/proc",
        "--ro-bind",
        "/proc/sys",
        "/proc/sys",
        # bwrap's /dev is a writable tmpfs of half the RAM: give /dev/shm (POSIX shm,
        # multiprocessing's semaphores) its own capped tmpfs and make /dev read-only.
        "--dev",
        "/dev",
        "--size",
        str(profile.limits.tmpfs_mb * MiB),
        "--tmpfs",
        "/dev/shm",
        "--remount-ro",
        "/dev",
        "--size",
        str(profile.limits.tmpfs_mb * MiB),
        "--tmpfs",
        "/tmp",
        "--perms",
        "0700",
        "--size",
        str(profile.limits.work_dir_mb * MiB),
        "--tmpfs",
        WORK_DIR,
        "--dir",
        "/etc",
    ]
    for name in dict.fromkeys((*ETC_FILES, *NET_ETC_FILES)):
        if name in NET_ETC_FILES and layout.net_etc_dir is not None:
            args += ["--ro-bind", f"{layout.net_etc_dir}/{name}", f"/etc/{name}"]
        elif name in ETC_FILES:
            args += ["--ro-bind", f"{layout.etc_dir}/{name}", f"/etc/{name}"]
    args += [
        "--ro-bind",
        layout.code_dir,
        ATTUNE_DIR,
        "--bind",
        layout.result_file,
        RESULT_FILE,
    ]
    if layout.params_file is not None:
        args += ["--ro-bind", layout.params_file, PARAMS_FILE]
    if layout.secrets_file is not None:
        args += ["--ro-bind", layout.secrets_file, SECRETS_FILE]
    pack = layout.pack
    if pack is not None:
        args += ["--ro-bind", pack.pack_dir, pack.pack_dir]
        if pack.env_dir is not None:
            args += ["--ro-bind", pack.env_dir, pack.env_dir]
    args += [
        "--chdir",
        pack.pack_dir if pack is not None else WORK_DIR,
        "--remount-ro",
        "/",
        "--clearenv",
    ]
    for key, value in sorted(sandbox_env(profile, layout.env).items()):
        args += ["--setenv", key, value]
    args += ["--seccomp", str(layout.seccomp_fd)]
    return args


def encode_args(args: list[str]) -> bytes:
    """bwrap's `--args FD` format: NUL-separated, NUL-terminated."""
    for arg in args:
        if "\0" in arg:
            raise ValueError("a sandbox argument cannot contain NUL")
    return b"".join(arg.encode() + b"\0" for arg in args)
