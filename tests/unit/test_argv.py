"""Golden bwrap command lines: any change to the sandbox's shape must change this file."""

from __future__ import annotations

import dataclasses

import pytest

from attune.runner import argv
from attune.runner.profiles import Limits, Profile, load_profiles

PROFILES = load_profiles()


def layout(
    *, wrapper: str | None = None, params_file: str | None = None, env: dict[str, str] | None = None
) -> argv.RunLayout:
    return argv.RunLayout(
        code_dir="/runs/r1/code",
        result_file="/runs/r1/out/result.json",
        params_file=params_file,
        etc_dir="/runs/.etc",
        action_file="action.py",
        wrapper=wrapper,
        seccomp_fd=7,
        env=env if env is not None else {"ATTUNE_EXEC_ID": "42"},
    )


COMMON_HEAD = [
    "--unshare-user",
    "--unshare-ipc",
    "--unshare-pid",
    "--unshare-uts",
    "--unshare-cgroup-try",
    "--disable-userns",
    "--die-with-parent",
    "--new-session",
    "--uid",
    "1000",
    "--gid",
    "1000",
    "--hostname",
    "sandbox",
    "--cap-drop",
    "ALL",
    "--unshare-net",
    "--ro-bind",
    "/usr",
    "/usr",
    "--ro-bind-try",
    "/etc/ld.so.cache",
    "/etc/ld.so.cache",
    "--ro-bind-try",
    "/etc/localtime",
    "/etc/localtime",
    "--ro-bind-try",
    "/etc/ssl",
    "/etc/ssl",
    "--ro-bind-try",
    "/etc/ca-certificates",
    "/etc/ca-certificates",
    # /usr/bin/awk and friends are links through /etc/alternatives.
    "--ro-bind-try",
    "/etc/alternatives",
    "/etc/alternatives",
]
SYMLINKS = [
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
]
FILESYSTEMS = [
    "--proc",
    "/proc",
    "--ro-bind",
    "/proc/sys",
    "/proc/sys",
    "--dev",
    "/dev",
    "--size",
    "67108864",
    "--tmpfs",
    "/dev/shm",
    "--remount-ro",
    "/dev",
    "--size",
    "67108864",
    "--tmpfs",
    "/tmp",
    "--perms",
    "0700",
    "--size",
    "268435456",
    "--tmpfs",
    "/work",
    "--dir",
    "/etc",
    "--ro-bind",
    "/runs/.etc/passwd",
    "/etc/passwd",
    "--ro-bind",
    "/runs/.etc/group",
    "/etc/group",
    "--ro-bind",
    "/runs/.etc/hosts",
    "/etc/hosts",
    "--ro-bind",
    "/runs/.etc/nsswitch.conf",
    "/etc/nsswitch.conf",
    "--ro-bind",
    "/runs/r1/code",
    "/attune",
    "--bind",
    "/runs/r1/out/result.json",
    "/attune/out/result.json",
]
TAIL = [
    "--chdir",
    "/work",
    "--remount-ro",
    "/",
    "--clearenv",
    "--setenv",
    "ATTUNE_EXEC_ID",
    "42",
    "--setenv",
    "HOME",
    "/work",
    "--setenv",
    "LANG",
    "C.UTF-8",
    "--setenv",
    "PATH",
    "/usr/local/bin:/usr/bin:/bin",
    "--setenv",
    "TMPDIR",
    "/tmp",
    "--seccomp",
    "7",
]
RLIMITS = [
    "/usr/bin/prlimit",
    "--core=0:0",
    "--cpu=300:301",
    "--as=2147483648:2147483648",
    "--nofile=256:256",
    "--fsize=67108864:67108864",
    "--nproc=256:256",
    "--",
]


def test_python_profile_golden_argv() -> None:
    profile = PROFILES["python"]
    lay = layout(wrapper="python_wrapper.py")
    assert argv.bwrap_args(profile, lay) == [
        *COMMON_HEAD,
        *SYMLINKS,
        *FILESYSTEMS,
        *TAIL,
    ]
    assert argv.action_command(profile, lay) == [
        *RLIMITS,
        "/usr/bin/python3",
        "-u",
        "-B",
        "-I",
        "-X",
        "utf8",
        "/attune/python_wrapper.py",
        "/attune/action/action.py",
    ]


def test_python_script_without_run_is_started_directly() -> None:
    assert argv.action_command(PROFILES["python"], layout())[-2:] == [
        "utf8",
        "/attune/action/action.py",
    ]


def test_shell_profile_golden_argv() -> None:
    profile = PROFILES["shell"]
    lay = layout()
    assert argv.bwrap_args(profile, lay) == [*COMMON_HEAD, *SYMLINKS, *FILESYSTEMS, *TAIL]
    assert argv.action_command(profile, lay) == [*RLIMITS, "/bin/bash", "/attune/action/action.py"]


def test_parameter_file_is_bound_read_only_beside_the_result() -> None:
    args = argv.bwrap_args(PROFILES["shell"], layout(params_file="/runs/r1/out/parameters"))
    i = args.index("/attune/out/result.json")
    assert args[i + 1 : i + 4] == ["--ro-bind", "/runs/r1/out/parameters", "/attune/out/parameters"]


def test_every_sandbox_has_its_own_network_namespace() -> None:
    assert "--unshare-net" in argv.bwrap_args(PROFILES["shell"], layout())
    assert not hasattr(PROFILES["shell"], "network")  # no host-network profile key


def test_egress_run_binds_its_own_hosts_nsswitch_and_resolv_conf() -> None:
    lay = dataclasses.replace(layout(), net_etc_dir="/runs/r1/etc")
    args = argv.bwrap_args(PROFILES["python"], lay)
    for name in ("hosts", "nsswitch.conf", "resolv.conf"):
        i = args.index(f"/etc/{name}")
        assert args[i - 2 : i] == ["--ro-bind", f"/runs/r1/etc/{name}"]
    assert args[args.index("/etc/passwd") - 1] == "/runs/.etc/passwd"
    assert "/etc/resolv.conf" not in argv.bwrap_args(PROFILES["python"], layout())


def test_remount_ro_root_comes_after_every_mount_and_seccomp_is_last() -> None:
    args = argv.bwrap_args(PROFILES["python"], layout(params_file="/p"))
    ro = args.index("--remount-ro", args.index("/dev/shm"))
    root_ro = len(args) - 1 - args[::-1].index("--remount-ro")
    assert args[root_ro + 1] == "/"
    mounts = {
        "--bind",
        "--ro-bind",
        "--ro-bind-try",
        "--tmpfs",
        "--dir",
        "--symlink",
        "--proc",
        "--dev",
    }
    assert max(i for i, a in enumerate(args) if a in mounts) < root_ro
    assert args[ro + 1] == "/dev"
    assert args[-2:] == ["--seccomp", "7"]


def test_run_env_overrides_the_profile_baseline_and_is_sorted() -> None:
    args = argv.bwrap_args(PROFILES["shell"], layout(env={"ZED": "z", "ATTUNE_ACTION": "a.b"}))
    pairs = [(args[i + 1], args[i + 2]) for i, a in enumerate(args) if a == "--setenv"]
    assert pairs == [
        ("ATTUNE_ACTION", "a.b"),
        ("HOME", "/work"),
        ("LANG", "C.UTF-8"),
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("TMPDIR", "/tmp"),
        ("ZED", "z"),
    ]


def test_rlimit_prefix_follows_the_limits_and_zero_means_unlimited() -> None:
    limits = Limits(cpu_seconds=5, address_space_mb=0, open_files=64, file_size_mb=1, processes=0)
    profile = Profile(name="t", command=["/bin/sh"], limits=limits)
    assert argv.rlimit_prefix(profile) == [
        "/usr/bin/prlimit",
        "--core=0:0",
        "--cpu=5:6",
        "--nofile=64:64",
        "--fsize=1048576:1048576",
        "--",
    ]


def test_core_dumps_are_always_off() -> None:
    profile = Profile(
        name="t",
        command=["/bin/sh"],
        limits=Limits(cpu_seconds=0, address_space_mb=0, open_files=0, file_size_mb=0, processes=0),
    )
    assert argv.rlimit_prefix(profile) == ["/usr/bin/prlimit", "--core=0:0", "--"]


def test_encode_args_is_nul_terminated_and_refuses_nul() -> None:
    assert argv.encode_args(["--a", "b c"]) == b"--a\0b c\0"
    with pytest.raises(ValueError):
        argv.encode_args(["bad\0arg"])


def test_sandbox_env_is_profile_then_run() -> None:
    env = argv.sandbox_env(PROFILES["python"], {"HOME": "/elsewhere", "X": "1"})
    assert env == {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/elsewhere",
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
        "X": "1",
    }


PACK = argv.PackMount(
    pack_dir="/var/lib/attune/packs/p",
    action_path="/var/lib/attune/packs/p/actions/a.py",
    env_dir="/var/lib/attune/runtime_envs/p/python-0123456789abcdef",
)


def _with_pack(pack: argv.PackMount) -> argv.RunLayout:
    return dataclasses.replace(layout(), pack=pack)


def test_whole_pack_is_bound_read_only_at_its_host_path_and_is_the_working_dir() -> None:
    args = argv.bwrap_args(PROFILES["python"], _with_pack(PACK))
    i = args.index("--ro-bind", args.index("/attune/out/result.json"))
    assert args[i : i + 6] == [
        "--ro-bind",
        PACK.pack_dir,
        PACK.pack_dir,
        "--ro-bind",
        PACK.env_dir,
        PACK.env_dir,
    ]
    assert args[args.index("--chdir") + 1] == PACK.pack_dir
    assert args.index("--remount-ro", i) > i  # the root is read-only after the pack binds


def test_pack_action_runs_in_place_with_its_venv_python_and_pythonpath_honoured() -> None:
    cmd = argv.action_command(PROFILES["python"], _with_pack(PACK))
    python = cmd.index(f"{PACK.env_dir}/bin/python3")
    assert "-I" not in cmd and "-s" in cmd[python:]
    assert cmd[-1] == PACK.action_path


def test_pack_without_venv_keeps_the_system_python() -> None:
    no_env = argv.PackMount(pack_dir=PACK.pack_dir, action_path=PACK.action_path)
    cmd = argv.action_command(PROFILES["python"], _with_pack(no_env))
    assert "/usr/bin/python3" in cmd and "-I" not in cmd
    shell = argv.action_command(PROFILES["shell"], _with_pack(no_env))
    assert shell[-1] == PACK.action_path
