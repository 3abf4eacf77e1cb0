"""Runtime profiles: what a runtime's sandbox looks like, read strictly from TOML.

A profile is data, not code, so that operators can tighten a runtime without touching
Python; strict decoding means a typo in a limit is an error instead of a silent default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec

from attune.errors import ConfigError
from attune.models import OutputFormat

REPO_PROFILES_DIR = Path(__file__).resolve().parent.parent.parent / "profiles"


class Mounts(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    ro_bind: list[str] = msgspec.field(default_factory=lambda: ["/usr"])
    # Bound only when they exist on the host (bwrap --ro-bind-try).
    ro_bind_try: list[str] = msgspec.field(default_factory=list)
    symlinks: dict[str, str] = msgspec.field(default_factory=dict)


class Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    cpu_seconds: int = 300
    address_space_mb: int = 2048
    open_files: int = 256
    file_size_mb: int = 64
    processes: int = 256
    tmpfs_mb: int = 64
    memory_mb: int = 512
    # CPUs a run may use at once (a cgroup cpu.max / cfs quota); 0 = no quota. Applied
    # only where per-run cgroups are active; cpu_seconds bounds CPU time everywhere.
    cpus: float = 1.0
    max_stdout_bytes: int = 10 * 1024 * 1024
    max_stderr_bytes: int = 10 * 1024 * 1024
    max_result_bytes: int = 1024 * 1024  # a run() return value, through pid 1's pipe
    work_dir_mb: int = 256


POSITIVE_LIMITS = frozenset(
    {
        "tmpfs_mb",
        "work_dir_mb",
        "max_stdout_bytes",
        "max_stderr_bytes",
        "max_result_bytes",
    }
)


class Seccomp(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    policy: Literal["default"] = "default"


class Profile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    command: list[str]
    description: str = ""
    extensions: list[str] = msgspec.field(default_factory=list)
    shebang: list[str] = msgspec.field(default_factory=list)
    # A file of sandbox/ that calls the action's run(**params) (python only).
    function_wrapper: str | None = None
    params_as_env: bool = False
    default_timeout: int = 300
    default_output_format: OutputFormat = "text"
    env: dict[str, str] = msgspec.field(default_factory=dict)
    mounts: Mounts = msgspec.field(default_factory=Mounts)
    limits: Limits = msgspec.field(default_factory=Limits)
    seccomp: Seccomp = msgspec.field(default_factory=Seccomp)


def load_profile(path: Path) -> Profile:
    """Decode one profile file; every problem names the file and the key."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"profile {path}: cannot read: {exc.strerror}") from None
    try:
        profile = msgspec.toml.decode(data, type=Profile)
    except msgspec.ValidationError as exc:
        hint = (
            "; the host-network profile key is gone: an action that needs the network "
            "declares `network: egress` and the worker's config enables `network.egress`"
            if "`network`" in str(exc)
            else ""
        )
        raise ConfigError(f"profile {path}: {exc}{hint}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"profile {path}: invalid TOML: {exc}") from None
    _check(profile, path)
    return profile


def _check(profile: Profile, path: Path) -> None:
    if not profile.command:
        raise ConfigError(f"profile {path}: `command` must not be empty")
    if not profile.command[0].startswith("/"):
        raise ConfigError(f"profile {path}: `command[0]` must be an absolute path")
    for name, value in msgspec.structs.asdict(profile.limits).items():
        if value < 0:
            raise ConfigError(f"profile {path}: `limits.{name}` must not be negative")
        # 0 means "unlimited" for rlimits, but a tmpfs of size 0 is unbounded and an
        # output cap of 0 would keep nothing: these must be set.
        if value == 0 and name in POSITIVE_LIMITS:
            raise ConfigError(f"profile {path}: `limits.{name}` must be positive")


def load_profiles(directory: Path | None = None) -> dict[str, Profile]:
    """All profiles of a directory by name (python, shell, ...)."""
    directory = directory or REPO_PROFILES_DIR
    if not directory.is_dir():
        raise ConfigError(f"profiles directory {directory} does not exist")
    profiles: dict[str, Profile] = {}
    for path in sorted(directory.glob("*.toml")):
        profile = load_profile(path)
        if profile.name in profiles:
            raise ConfigError(f"profile {path}: duplicate runtime name {profile.name!r}")
        profiles[profile.name] = profile
    if not profiles:
        raise ConfigError(f"profiles directory {directory} holds no *.toml profile")
    return profiles


def resolve_profile(value: str, profiles: dict[str, Profile]) -> Profile:
    """`--profile NAME|PATH`: a known name, else a path to a TOML file."""
    if value in profiles:
        return profiles[value]
    path = Path(value)
    if path.suffix == ".toml" or "/" in value:
        return load_profile(path)
    known = ", ".join(sorted(profiles))
    raise ConfigError(f"unknown profile {value!r}; known profiles: {known}")


def choose_runtime(
    profiles: dict[str, Profile],
    filename: str,
    first_line: bytes,
    explicit: str | None = None,
) -> Profile:
    """Pick the runtime: explicit name, else file extension, else the shebang."""
    known = ", ".join(sorted(profiles))
    if explicit is not None:
        if explicit not in profiles:
            raise ConfigError(f"unknown runtime {explicit!r}; known runtimes: {known}")
        return profiles[explicit]
    suffix = Path(filename).suffix.lower()
    for profile in profiles.values():
        if suffix and suffix in profile.extensions:
            return profile
    interpreter = _shebang_interpreter(first_line)
    if interpreter:
        for profile in profiles.values():
            if interpreter in profile.shebang:
                return profile
    raise ConfigError(
        f"cannot tell the runtime of {filename!r} (extension {suffix or 'none'!s}, "
        f"shebang {interpreter or 'none'!s}); pass --runtime, known runtimes: {known}"
    )


def _shebang_interpreter(first_line: bytes) -> str | None:
    if not first_line.startswith(b"#!"):
        return None
    parts = first_line[2:].decode("utf-8", "replace").split()
    if not parts:
        return None
    name = Path(parts[0]).name
    if name == "env" and len(parts) > 1:
        name = Path(parts[1]).name
    # python3.11 and python3 both mean the python runtime's "python" entry
    return "python" if name.startswith("python") else name


def capped_output(profiles: dict[str, Profile], stdout: int, stderr: int) -> dict[str, Profile]:
    """Profiles whose output limits are at most the worker-wide `worker.max_std*_bytes`."""

    def cap(profile: Profile) -> Profile:
        limits = msgspec.structs.replace(
            profile.limits,
            max_stdout_bytes=min(profile.limits.max_stdout_bytes, stdout),
            max_stderr_bytes=min(profile.limits.max_stderr_bytes, stderr),
        )
        return msgspec.structs.replace(profile, limits=limits)

    return {name: cap(p) for name, p in profiles.items()}
