"""Building the bubblewrap command line: a pure function of profile and run layout.

Everything the sandbox is made of is decided here, so it can be golden-tested without
spawning anything. The options go to bwrap through `--args FD`, never on its command
line, so /proc/1/cmdline inside the sandbox shows nothing of the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from attune.runner.profiles import Profile

SANDBOX_UID = 1000
SANDBOX_GID = 1000
# Paths inside the sandbox.
WORK_DIR = "/work"
ATTUNE_DIR = "/attune"  # read-only: the action code and the wrapper
OUT_DIR = "/attune/out"  # writable: result file, parameter file
ACTION_DIR = "/attune/action"
MiB = 1024 * 1024


@dataclass(frozen=True)
class RunLayout:
    """Host paths of one run, prepared by the caller before the argv is built."""

    code_dir: str  # host dir bound read-only at /attune (holds action/ and out/)
    work_dir: str  # host dir bound read-write at /work
    out_dir: str  # host dir bound read-write at /attune/out
    etc_dir: str  # host dir with the synthetic passwd, group, hosts
    action_file: str  # file name under /attune/action
    wrapper: str | None  # file name under /attune that runs the action, if any
    seccomp_fd: int
    env: dict[str, str] = field(default_factory=dict)


def sandbox_env(profile: Profile, extra: dict[str, str]) -> dict[str, str]:
    """The action's whole environment: profile baseline, then the run's variables."""
    env = dict(profile.env)
    env.update(extra)
    return env


PRLIMIT = "/usr/bin/prlimit"


def rlimit_prefix(profile: Profile) -> list[str]:
    """Limits set inside the sandbox, soft == hard, before the interpreter starts.

    A limit of 0 means "not limited" except for core dumps, which are always off.
    """
    lim = profile.limits
    pairs = [
        ("cpu", lim.cpu_seconds),
        ("as", lim.address_space_mb * MiB),
        ("nofile", lim.open_files),
        ("fsize", lim.file_size_mb * MiB),
        ("nproc", lim.processes),
    ]
    opts = [f"--{name}={value}:{value}" for name, value in pairs if value > 0]
    return [PRLIMIT, "--core=0:0", *opts, "--"]


def action_command(profile: Profile, layout: RunLayout) -> list[str]:
    wrapper = [f"{ATTUNE_DIR}/{layout.wrapper}"] if layout.wrapper else []
    return [*rlimit_prefix(profile), *profile.command, *wrapper,
            f"{ACTION_DIR}/{layout.action_file}"]


def bwrap_args(profile: Profile, layout: RunLayout) -> list[str]:
    """bwrap's options, sent through `--args FD`; the command goes on its real argv.

    bwrap stops parsing an --args file at the first non-option, so the command itself
    cannot travel there; it holds no secret (parameters go through stdin or a file).
    """
    args: list[str] = [
        "--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-uts",
        "--unshare-cgroup-try", "--disable-userns",
        "--die-with-parent", "--new-session",
        "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID),
        "--hostname", "sandbox",
        "--cap-drop", "ALL",
    ]
    if not profile.network:
        args.append("--unshare-net")
    for path in profile.mounts.ro_bind:
        args += ["--ro-bind", path, path]
    for path in profile.mounts.ro_bind_try:
        args += ["--ro-bind-try", path, path]
    for link, target in sorted(profile.mounts.symlinks.items()):
        args += ["--symlink", target, link]
    args += [
        "--proc", "/proc",
        "--ro-bind", "/proc/sys", "/proc/sys",
        "--dev", "/dev",
        "--size", str(profile.limits.tmpfs_mb * MiB), "--tmpfs", "/tmp",
        "--dir", "/etc",
    ]
    for name in ("passwd", "group", "hosts", "nsswitch.conf"):
        args += ["--ro-bind", f"{layout.etc_dir}/{name}", f"/etc/{name}"]
    args += [
        "--bind", layout.work_dir, WORK_DIR,
        "--ro-bind", layout.code_dir, ATTUNE_DIR,
        "--bind", layout.out_dir, OUT_DIR,
        "--chdir", WORK_DIR,
        "--remount-ro", "/",
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
