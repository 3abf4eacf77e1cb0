"""Golden bwrap command lines: any change to the sandbox's shape must change this file."""

from __future__ import annotations

import dataclasses

import pytest

from attune.runner import argv
from attune.runner.profiles import Limits, Profile, load_profiles

PROFILES = load_profiles()
OUT_SIZE = 1048576 + 65536  # out_dir_size(1 MiB, no files)


def layout(
    *, wrapper: str | None = None, params: bool = False, env: dict[str, str] | None = None
) -> argv.RunLayout:
    wanted = argv.run_files("action.py", wrapper, params=params, secrets=False)
    return argv.RunLayout(
        result_fd=9 if wrapper is not None else None,
        result_max=1048576,
        out_size=OUT_SIZE,
        files=tuple((20 + i, path) for i, (_, path) in enumerate(wanted)),
        action_file="action.py",
        wrapper=wrapper,
        seccomp_fd=7,
        init_fd=8,
        env=env if env is not None else {"ATTUNE_EXEC_ID": "42"},
    )


COMMON_HEAD = [
    "--unshare-user",
    "--unshare-ipc",
    "--unshare-pid",
    "--unshare-uts",
    "--unshare-cgroup-try",
    "--disable-userns",
    "--as-pid-1",
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
    "--perms",
    "0755",
    "--dir",
    "/attune",
    "--perms",
    "0755",
    "--dir",
    "/attune/action",
    "--perms",
    "0700",
    "--size",
    str(OUT_SIZE),
    "--tmpfs",
    "/attune/out",
    "--perms",
    "0444",
    "--file",
    "20",
    "/etc/passwd",
    "--perms",
    "0444",
    "--file",
    "21",
    "/etc/group",
    "--perms",
    "0444",
    "--file",
    "22",
    "/etc/hosts",
    "--perms",
    "0444",
    "--file",
    "23",
    "/etc/nsswitch.conf",
    "--perms",
    "0444",
    "--file",
    "24",
    "/attune/action/action.py",
]
WRAPPER = ["--perms", "0444", "--file", "25", "/attune/python_wrapper.py"]


def helper(fd: int) -> list[str]:
    return ["--perms", "0444", "--file", str(fd), "/attune/attune_secrets.py"]


TAIL = [
    "--perms",
    "0555",
    "--file",
    "8",
    "/attune-init",
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
        *WRAPPER,
        *helper(26),
        *TAIL,
    ]
    assert argv.action_command(profile, lay) == [
        "/attune-init",
        "--result-fd=9",
        "--result-max=1048576",
        "--",
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
    assert argv.bwrap_args(profile, lay) == [
        *COMMON_HEAD,
        *SYMLINKS,
        *FILESYSTEMS,
        *helper(25),
        *TAIL,
    ]
    assert argv.action_command(profile, lay) == [
        "/attune-init",
        "/bin/bash",
        "/attune/action/action.py",
    ]


def test_parameter_file_is_copied_in_readable_by_the_action_only() -> None:
    args = argv.bwrap_args(PROFILES["shell"], layout(params=True))
    i = args.index("/attune/out/parameters")
    assert args[i - 4 : i] == ["--perms", "0400", "--file", "26"]
    # onto the out tmpfs: mounted first (bwrap applies its options in order)
    assert args.index("--tmpfs", args.index("--size", args.index("/work"))) < i


def test_no_host_path_of_the_run_is_mounted_and_nothing_host_is_writable() -> None:
    """Only the profile's system paths (and /proc/sys, /dev/null masks) come from the
    host, read-only: the result travels through attune-init's pipe, not a bind."""
    profile = PROFILES["python"]
    args = argv.bwrap_args(profile, layout(wrapper="python_wrapper.py", params=True))
    binds = {
        args[i + 1]
        for i, a in enumerate(args)
        if a in ("--bind", "--bind-try", "--dev-bind", "--ro-bind", "--ro-bind-try")
    }
    allowed = {*profile.mounts.ro_bind, *profile.mounts.ro_bind_try, "/proc/sys", "/dev/null"}
    assert binds <= allowed
    assert not {"--bind", "--bind-try", "--dev-bind"} & set(args)


def test_the_out_dir_is_sized_for_the_result_limit_its_files_and_some_slack() -> None:
    assert argv.out_dir_size(1000, []) == 1000 + argv.OUT_SLACK
    # tmpfs stores whole pages: a 1-byte file takes one, 4097 bytes take two
    assert argv.out_dir_size(1000, [1, 4097, 0]) == 1000 + 3 * 4096 + argv.OUT_SLACK


def test_attune_init_gets_the_result_pipe_only_for_a_run_function() -> None:
    assert argv.init_options(None, 1048576) == []
    assert argv.init_options(11, 500) == ["--result-fd=11", "--result-max=500", "--"]
    assert "--result-fd" not in " ".join(argv.action_command(PROFILES["python"], layout()))


def test_every_sandbox_has_its_own_network_namespace() -> None:
    assert "--unshare-net" in argv.bwrap_args(PROFILES["shell"], layout())
    assert not hasattr(PROFILES["shell"], "network")  # no host-network profile key


def test_egress_run_gets_its_own_hosts_nsswitch_and_resolv_conf() -> None:
    files = dict(argv.run_files("a.py", None, params=False, secrets=False, net=True))
    assert {key: path for key, path in files.items() if key.startswith("net/")} == {
        "net/hosts": "/etc/hosts",
        "net/nsswitch.conf": "/etc/nsswitch.conf",
        "net/resolv.conf": "/etc/resolv.conf",
    }
    assert files["etc/passwd"] == "/etc/passwd"
    plain = dict(argv.run_files("a.py", None, params=False, secrets=False))
    assert "/etc/resolv.conf" not in plain.values()
    assert plain["etc/hosts"] == "/etc/hosts"


def test_remount_ro_root_comes_after_every_mount_and_seccomp_is_last() -> None:
    args = argv.bwrap_args(PROFILES["python"], layout(params=True))
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


def test_spawn_chain_switches_uid_then_sets_limits_then_starts_bwrap() -> None:
    chain = argv.spawn_argv(
        "/usr/bin/bwrap",
        become=argv.become_prefix(100001, 100001),
        rlimits=argv.rlimit_prefix(PROFILES["python"]),
        args_fd=5,
        info_fd=6,
        command=argv.action_command(PROFILES["shell"], layout()),
    )
    assert chain == [
        "/usr/bin/setpriv",
        "--pdeathsig",
        "SIGKILL",
        "--reuid=100001",
        "--regid=100001",
        "--clear-groups",
        "--",
        *RLIMITS,
        "/usr/bin/bwrap",
        "--args",
        "5",
        "--info-fd",
        "6",
        "--",
        "/attune-init",
        "/bin/bash",
        "/attune/action/action.py",
    ]


def test_a_non_root_worker_keeps_its_uid_but_still_arms_the_parent_death_signal() -> None:
    assert argv.become_prefix(None, None) == ["/usr/bin/setpriv", "--pdeathsig", "SIGKILL", "--"]


def test_proc_masks_cover_only_entries_this_kernel_has() -> None:
    kinds = {"/proc/keys": False, "/proc/pressure": True, "/proc/partitions": False}
    masks = argv.present_proc_masks(kinds.get)
    assert masks == (("/proc/keys", False), ("/proc/partitions", False), ("/proc/pressure", True))
    lay = argv.RunLayout(**{**layout().__dict__, "proc_masks": masks})
    args = argv.bwrap_args(PROFILES["shell"], lay)
    i = args.index("/proc/sys") + 1  # the bind's source, then its destination
    assert args[i + 1 : i + 1 + 12] == [
        "--ro-bind",
        "/dev/null",
        "/proc/keys",
        "--ro-bind",
        "/dev/null",
        "/proc/partitions",
        "--perms",
        "0555",
        "--tmpfs",
        "/proc/pressure",
        "--remount-ro",
        "/proc/pressure",
    ]
    assert args.index("/proc/pressure") < args.index("--dev")


def test_the_masked_proc_lists_hold_what_container_runtimes_mask() -> None:
    for name in ("kcore", "keys", "timer_list", "sched_debug", "partitions", "config.gz"):
        assert name in argv.MASKED_PROC_FILES
    for name in ("pressure", "acpi", "scsi", "asound"):
        assert name in argv.MASKED_PROC_DIRS
    for kept in ("cpuinfo", "meminfo", "stat", "loadavg", "uptime", "self", "sys", "net"):
        assert kept not in argv.MASKED_PROC_FILES + argv.MASKED_PROC_DIRS


PACK = argv.PackMount(
    pack_dir="/var/lib/attune/packs/p",
    action_path="/var/lib/attune/packs/p/actions/a.py",
    env_dir="/var/lib/attune/runtime_envs/p/python-0123456789abcdef",
)


def _with_pack(pack: argv.PackMount) -> argv.RunLayout:
    return dataclasses.replace(layout(), pack=pack)


def test_whole_pack_is_bound_read_only_at_its_host_path_and_is_the_working_dir() -> None:
    args = argv.bwrap_args(PROFILES["python"], _with_pack(PACK))
    i = args.index("--ro-bind", args.index("/attune-init"))
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
