"""Building the bubblewrap command line: a pure function of profile and run layout.

Everything the sandbox is made of is decided here, so it can be golden-tested without
spawning anything. The options go to bwrap through `--args FD`, never on its command
line, so /proc/1/cmdline inside the sandbox shows only the command (attune-init with the
result pipe's fd number and byte limit, interpreter, action path), never the mounts, host
paths or environment of the run.

Nothing the action writes reaches the host's disk. The work dir (/work) is a tmpfs of
`limits.work_dir_mb`, like /tmp and /dev/shm of `limits.tmpfs_mb` each. RLIMIT_FSIZE
caps one file, not the total: a host-backed work dir (or a writable host out dir) would
let an action fill the worker's disk with many files below the file-size limit long
before an after-run size check could notice. tmpfs pages are charged to the run's
memory cgroup where there is one and vanish with the sandbox's mount namespace, so there
is nothing to clean up either (no chmod-000 trees left for the worker to remove).

The action's return value takes no host path either: /attune/out is a tmpfs of its
own, owned by the sandbox uid and sized by `out_dir_size` (the result limit, the
parameter and secrets files, a little slack), where the wrapper writes result.json.
attune-init (pid 1) forwards that file to the worker through a pipe only pid 1 holds,
after the action has ended (resultpipe.py, `init_options`). So the run dir is never
mounted into the sandbox and /proc/self/mountinfo shows no host path of the run: the
host paths it shows are the profile's read-only system binds and, for a pack, the pack
and its venv (bound at their own paths by design). Everything else the run needs (the
synthetic /etc files, the action code, the wrappers, the parameter and secrets files,
attune-init) is copied by bwrap from an fd (`--file`) onto the sandbox's root tmpfs,
which is remounted read-only, or onto /attune/out: no mount, no host path.
Nothing reads the work dir after a run today; an artifact collector would need it
host-visible (e.g. a sized tmpfs the worker mounts) and must keep the size bound.

The spawn chain is one process that execs each step in turn (`spawn_argv`):

    setpriv (slot uid, parent-death signal) -> prlimit (the run's rlimits)
      -> bwrap (namespaces, mounts, seccomp) -> attune-init (pid 1) -> the command

so every process of the sandbox, bwrap and its pid 1 included, carries the run's limits
from its first instruction (lowering one's own limits needs no capability; prlimit(2)
on another process would need CAP_SYS_RESOURCE and race the uid switch), and nothing is
set from inside the sandbox. pid 1 is attune-init (sandbox/attune_init.c, `--as-pid-1`),
copied in by bwrap from an fd (`--file`): it makes itself non-dumpable, so the action
can neither read nor write its memory, environment or fds, nor signal it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from attune.runner.profiles import Profile

SANDBOX_UID = 1000
SANDBOX_GID = 1000
# Paths inside the sandbox.
WORK_DIR = "/work"
ATTUNE_DIR = "/attune"  # read-only: the action code and the wrapper
OUT_DIR = "/attune/out"  # the run's own sized tmpfs, the action's: holds the files below
RESULT_FILE = "/attune/out/result.json"  # the wrapper's report, forwarded by attune-init
PARAMS_FILE = "/attune/out/parameters"  # parameter_delivery = file, 0400
SECRETS_FILE = "/attune/out/secrets.json"  # keystore secrets of the run, 0400
ACTION_DIR = "/attune/action"  # the run's own tmpfs: the action file (copied or handed over)
PARKED_LAUNCHER = "parked.py"  # sandbox/parked.py, the command of a parked sandbox
LAUNCHER_PYTHON = ("/usr/bin/python3", "-B", "-I", "-S")  # parks non-Python runtimes
INIT_PATH = "/attune-init"  # pid 1, on the sandbox's read-only root (not a host mount)
MiB = 1024 * 1024
PAGE = 4096
# What /attune/out holds beyond the result limit and the copied-in files: a report one
# byte over the limit must still fit (so the worker can say "exceeds the N byte limit"
# rather than the wrapper "no space"), plus the JSON envelope around the value.
OUT_SLACK = 64 * 1024
OUT_FILES_BUDGET = 1024 * 1024  # the least room for parameter and secrets files
NET_ETC_FILES = ("hosts", "nsswitch.conf", "resolv.conf")  # per run with egress

# Host-wide /proc files an action has no use for that tell about the host or leak timing
# (kernel memory, keyrings, timers and scheduler internals, disks and their I/O,
# interrupt counters, file locks, the kernel's build config and command line): /dev/null
# is bound over each, so opening one fails with EACCES (a device node on a nodev mount).
# Directories of the same kind (ACPI, sound, SCSI, dynamic debug, pressure stall data)
# get an empty read-only tmpfs. Each mask is a mount (set-up and tear-down time per
# run), so entries the action cannot open anyway (owner-only, see present_proc_masks)
# and low-value ones are left alone. What stays: the process's own entries and
# namespace-scoped ones (self, net, sysvipc, mounts), /proc/sys read-only, and the usual
# system summary and trivia (cpuinfo, meminfo, stat, vmstat, loadavg, uptime, version,
# filesystems, crypto, devices, misc, tty, driver, bus, fs, irq, kallsyms with its
# addresses zeroed, iomem/ioports without addresses, buddyinfo, zoneinfo, swaps, ...).
MASKED_PROC_FILES = (
    "cmdline",
    "config.gz",
    "diskstats",
    "interrupts",
    "kcore",
    "key-users",
    "keys",
    "kmsg",
    "kpagecgroup",
    "kpagecount",
    "kpageflags",
    "latency_stats",
    "locks",
    "modules",
    "pagetypeinfo",
    "partitions",
    "sched_debug",
    "schedstat",
    "slabinfo",
    "softirqs",
    "sysrq-trigger",
    "timer_list",
    "timer_stats",
    "vmallocinfo",
)
MASKED_PROC_DIRS = ("acpi", "asound", "dynamic_debug", "pressure", "scsi")


@dataclass(frozen=True)
class RunLayout:
    """Host paths of one run, prepared by the caller before the argv is built."""

    action_file: str  # file name under /attune/action
    wrapper: str | None  # file name under /attune that runs the action, if any
    seccomp_fd: int
    init_fd: int  # the attune-init binary, copied to INIT_PATH by bwrap
    env: dict[str, str] = field(default_factory=dict)
    # (fd, path inside) copied in read-only by bwrap: /etc files, the action, wrappers,
    # parameter and secrets files (`run_files` names the paths).
    files: tuple[tuple[int, str], ...] = ()
    # The masked /proc entries this kernel has, with whether each is a directory: bwrap
    # cannot mount over an entry that does not exist (`present_proc_masks`).
    proc_masks: tuple[tuple[str, bool], ...] = ()
    pack: PackMount | None = None  # the action's whole pack, when it comes from one
    # A parked sandbox (pool.py): started before its action is known, the launcher
    # writes the action's files itself when the handoff arrives.
    parked: bool = False
    # The result channel: the write end of the run's result pipe, handed to attune-init
    # (`init_options`); None when nothing reads a result (no run() function).
    result_fd: int | None = None
    result_max: int = 0  # limits.max_result_bytes: what the worker keeps
    out_size: int = 0  # /attune/out's tmpfs in bytes (`out_dir_size`); 0: OUT_SLACK alone


def out_dir_size(max_result_bytes: int, file_sizes: Sequence[int]) -> int:
    """/attune/out's tmpfs size: the result limit, room for the parameter and secrets
    files (each rounded up to whole pages as tmpfs stores them, at least
    OUT_FILES_BUDGET), and OUT_SLACK.

    Whatever the action writes there is bounded by this, in memory charged to the run's
    cgroup; a report larger than it fails with ENOSPC, which the wrapper reports. The
    files' room has a floor so that a parked sandbox (pool.py), made before its run's
    files are known, gets the same size as a cold one: a run whose files need more
    than the floor runs cold, with room for exactly its files.
    """
    pages = sum(-(-size // PAGE) * PAGE for size in file_sizes)
    return max_result_bytes + max(pages, OUT_FILES_BUDGET) + OUT_SLACK


def present_proc_masks(kind: Callable[[str], bool | None]) -> tuple[tuple[str, bool], ...]:
    """The masked /proc entries that need a mount, as (path, is_dir).

    `kind(path)` says None for an entry that needs none (missing on this kernel, or a
    file only its owner may open: the owner is the host's root, never the action), else
    whether it is a directory. The caller looks at the host's /proc: the sandbox's own
    /proc is the same kernel's. Each mount costs sandbox set-up time, hence the filter.
    """
    found = []
    for name in (*MASKED_PROC_FILES, *MASKED_PROC_DIRS):
        is_dir = kind(f"/proc/{name}")
        if is_dir is not None:
            found.append((f"/proc/{name}", is_dir))
    return tuple(found)


def proc_mask_args(masks: Sequence[tuple[str, bool]]) -> list[str]:
    args: list[str] = []
    for path, is_dir in masks:
        if is_dir:
            args += ["--perms", "0555", "--tmpfs", path, "--remount-ro", path]
        else:
            args += ["--ro-bind", "/dev/null", path]
    return args


# The synthetic /etc: copies of sandbox/etc/, the only files an action sees there besides
# what a profile binds (docs/sandbox.md guarantee 4).
ETC_FILES = ("passwd", "group", "hosts", "nsswitch.conf")


def run_files(
    action_file: str,
    wrapper: str | None,
    *,
    params: bool,
    secrets: bool,
    net: bool = False,
    parked: bool = False,
) -> list[tuple[str, str]]:
    """What one run gets copied in, as (source key, path inside): the key is an
    `etc/NAME` or sandbox asset name, `net/NAME` (an egress run's own hosts,
    nsswitch.conf and resolv.conf), `action`, `parameters` or `secrets`; the caller
    opens an fd for each. A parked sandbox gets the launcher and the run() wrapper
    instead of the action's files, which its launcher writes once they arrive."""
    files = [
        (f"net/{name}" if net and name in NET_ETC_FILES else f"etc/{name}", f"/etc/{name}")
        for name in dict.fromkeys((*ETC_FILES, *NET_ETC_FILES))
        if name in ETC_FILES or net
    ]
    if parked:
        for asset in (PARKED_LAUNCHER, "python_wrapper.py", "attune_secrets.py"):
            files.append((asset, f"{ATTUNE_DIR}/{asset}"))
        return files
    files.append(("action", run_file_path("action", action_file)))
    if wrapper is not None:
        files.append((wrapper, f"{ATTUNE_DIR}/{wrapper}"))
    files.append(("attune_secrets.py", f"{ATTUNE_DIR}/attune_secrets.py"))
    for key, wanted in (("parameters", params), ("secrets", secrets)):
        if wanted:
            files.append((key, run_file_path(key, action_file)))
    return files


def run_file_path(key: str, action_file: str) -> str:
    """Where a run's own file (`action`, `parameters`, `secrets`) is inside the sandbox,
    whether bwrap copies it in or a parked sandbox's launcher writes it."""
    if key == "action":
        return f"{ACTION_DIR}/{action_file}"
    return {"parameters": PARAMS_FILE, "secrets": SECRETS_FILE}[key]


def file_mode(path: str) -> int:
    """A file put into the sandbox is read-only; the parameter and secrets files are
    readable by the action's uid only."""
    return 0o400 if path in (PARAMS_FILE, SECRETS_FILE) else 0o444


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


PRLIMIT = "/usr/bin/prlimit"
SETPRIV = "/usr/bin/setpriv"
CPU_HARD_GRACE = 1  # seconds between SIGXCPU (soft) and SIGKILL (hard)


def become_prefix(uid: int | None, gid: int | None) -> list[str]:
    """The uid switch and the parent-death signal: the first step of the spawn chain.

    Popen(user=...) must fork (not vfork) the whole worker, under the GIL, to change
    uid in the child; setpriv (util-linux) switches uid and gid and drops supplementary
    groups after a cheap vfork+exec, then execs the next step in the same process, so
    the pid, the pidfd and the inherited fds end up bwrap's. Leaving uid 0 clears every
    capability. `--pdeathsig SIGKILL` (applied after the uid switch, kept across exec)
    covers the gate: bwrap only arms its own --die-with-parent once it has read its
    options, and a worker killed before that would otherwise leave it running.
    """
    prefix = [SETPRIV, "--pdeathsig", "SIGKILL"]
    if uid is not None:
        prefix += [f"--reuid={uid}", f"--regid={gid if gid is not None else uid}", "--clear-groups"]
    return [*prefix, "--"]


def spawn_argv(
    bwrap: str,
    *,
    become: Sequence[str],
    rlimits: Sequence[str],
    args_fd: int,
    info_fd: int,
    command: Sequence[str],
) -> list[str]:
    """The whole spawn chain as one argv (see the module docstring), step by step."""
    sandbox = [bwrap, "--args", str(args_fd), "--info-fd", str(info_fd), "--"]
    return [*become, *rlimits, *sandbox, *command]


def rlimit_prefix(profile: Profile) -> list[str]:
    """The run's limits, set on the spawn chain before bwrap starts, soft == hard.

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


def parked_command(profile: Profile, pack: PackMount | None) -> list[str]:
    """The launcher's interpreter: the profile's own Python (its flags, a pack's venv)
    for a Python profile, so a run() action runs in exactly the interpreter a cold run
    starts; a bare, quick-starting python3 for the others, which exec their command."""
    if profile.function_wrapper is not None:
        return [*interpreter_command(profile, pack), f"{ATTUNE_DIR}/{PARKED_LAUNCHER}"]
    return [*LAUNCHER_PYTHON, f"{ATTUNE_DIR}/{PARKED_LAUNCHER}"]


def action_target(*, layout_action: str, pack: PackMount | None) -> str:
    """The action's path inside the sandbox: its place in its pack, or its copy."""
    return pack.action_path if pack is not None else f"{ACTION_DIR}/{layout_action}"


def init_options(result_fd: int | None, result_max: int) -> list[str]:
    """attune-init's options: the result pipe's fd number and the byte limit, nothing
    secret (the action can read /proc/1/cmdline)."""
    if result_fd is None:
        return []
    return [f"--result-fd={result_fd}", f"--result-max={result_max}", "--"]


def action_command(profile: Profile, layout: RunLayout) -> list[str]:
    """What bwrap runs as pid 1: attune-init, which forks and execs the rest."""
    if layout.parked:
        return [
            INIT_PATH,
            *init_options(layout.result_fd, layout.result_max),
            *parked_command(profile, layout.pack),
        ]
    wrapper = [f"{ATTUNE_DIR}/{layout.wrapper}"] if layout.wrapper else []
    target = action_target(layout_action=layout.action_file, pack=layout.pack)
    return [
        INIT_PATH,
        *init_options(layout.result_fd, layout.result_max),
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
        "--as-pid-1",  # the command is attune-init: no bwrap init the action could reach
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
        *proc_mask_args(layout.proc_masks),
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
    args += ["--perms", "0755", "--dir", ATTUNE_DIR]
    # The action file lives on a tmpfs of the run's own: a parked sandbox's launcher
    # writes it there, a cold one gets it copied in; the same place either way.
    args += ["--size", str(profile.limits.tmpfs_mb * MiB), "--perms", "0755", "--tmpfs", ACTION_DIR]
    # The action's own sized tmpfs, mounted before the files copied into it.
    args += [
        "--perms",
        "0700",
        "--size",
        str(layout.out_size or OUT_SLACK),
        "--tmpfs",
        OUT_DIR,
    ]
    for fd, path in layout.files:
        args += ["--perms", f"{file_mode(path):04o}", "--file", str(fd), path]
    args += [
        "--perms",
        "0555",
        "--file",
        str(layout.init_fd),
        INIT_PATH,
    ]
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
