"""Per-pack Python environments: what a pack needs, where it lives, whether it is ready.

A pack's Python dependencies are its `requirements.txt` plus `meta.python_dependencies`
of its pack.yaml. Together they are the manifest; the environment built from it is a
venv of /usr/bin/python3 at `{runtime_envs_dir}/{pack_ref}/python-{digest}`, where the
digest covers the manifest and the interpreter version. So a new pack version with the
same dependencies reuses the environment, a changed manifest gets a new directory, and
a run never sees an environment being rebuilt under it.

An environment is usable only once its READY marker exists: the builder writes the
marker last, after pip succeeded and the tree was made root-owned and read-only. A
directory without it is being built (a BUILDING file names the builder) or failed (a
FAILED file holds pip's output), and that pack's Python runs fail with
"environment not ready" and the reason instead of running against half an environment.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import os
import shutil
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import trio

from attune.config import Config
from attune.errors import ExecutionError, InputError
from attune.packs import PACK_REF_RE
from attune.pip_config import PipSettings, host_settings, index_destinations
from attune.runner import egress
from attune.runner.env_build import BuildLimits, BuildNetwork, BuildPlan, run_build
from attune.runner.host import detect, untraversable_ancestors
from attune.runner.sandbox import PackSource, write_etc
from attune.yamlsafe import load_yaml

READY = ".attune-ready"
BUILDING = ".attune-building"
FAILED = ".attune-failed"
REQUIREMENTS = "requirements.txt"
_MAX_MANIFEST_BYTES = 256 * 1024
_INTERPRETER = f"cpython-{sys.version_info.major}.{sys.version_info.minor}"

EnvState = Literal["none", "ready", "building", "failed", "missing"]


@dataclass(frozen=True)
class EnvStatus:
    """Where a pack's environment is and what state it is in; `path` None if it needs none."""

    state: EnvState
    path: Path | None
    reason: str = ""


def _read_small(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(_MAX_MANIFEST_BYTES + 1)
    if len(data) > _MAX_MANIFEST_BYTES:
        raise InputError(f"{path}: larger than {_MAX_MANIFEST_BYTES} bytes")
    return data


def manifest(pack_dir: Path) -> str | None:
    """The pack's requirement lines (requirements.txt, then python_dependencies), or None.

    Comments and blank lines are dropped so that reformatting the file does not cause a
    rebuild; the order is kept because pip options (`--find-links`) can depend on it.
    """
    lines: list[str] = []
    req = _read_small(pack_dir / REQUIREMENTS)
    if req is not None:
        for raw in req.decode("utf-8", "replace").splitlines():
            line = raw.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    meta_raw = _read_small(pack_dir / "pack.yaml")
    if meta_raw is not None:
        try:  # the bounded loader: a pack author wrote this (pack load refused worse)
            meta = load_yaml(meta_raw, source="pack.yaml")
        except InputError:
            meta = None
        deps = (meta or {}).get("meta", {}) if isinstance(meta, dict) else {}
        extra = deps.get("python_dependencies", []) if isinstance(deps, dict) else []
        lines += [d.strip() for d in extra if isinstance(d, str) and d.strip()]
    return "\n".join(lines) + "\n" if lines else None


def digest(manifest_text: str) -> str:
    """Content address of an environment: the manifest and the interpreter it is for."""
    h = hashlib.sha256(f"{_INTERPRETER}\n{manifest_text}".encode())
    return h.hexdigest()[:16]


def env_root(runtime_envs_dir: Path, pack_ref: str) -> Path:
    if not PACK_REF_RE.match(pack_ref):
        raise ExecutionError(f"invalid pack ref {pack_ref!r}")
    return Path(runtime_envs_dir) / pack_ref


def env_dir(runtime_envs_dir: Path, pack_ref: str, manifest_text: str) -> Path:
    return env_root(runtime_envs_dir, pack_ref) / f"python-{digest(manifest_text)}"


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _cached_manifest(pack_dir: Path, _stamps: object) -> str | None:
    return manifest(pack_dir)


def current_manifest(pack_dir: Path) -> str | None:
    """`manifest`, re-read only when pack.yaml or requirements.txt changed (every run asks)."""
    stamps = (_stamp(pack_dir / "pack.yaml"), _stamp(pack_dir / REQUIREMENTS))
    return _cached_manifest(pack_dir, stamps)


def status(runtime_envs_dir: Path, pack_ref: str, pack_dir: Path) -> EnvStatus:
    """The state of the environment the pack's current manifest calls for."""
    text = current_manifest(pack_dir)
    if text is None:
        return EnvStatus("none", None)
    path = env_dir(runtime_envs_dir, pack_ref, text)
    if (path / READY).is_file():
        return EnvStatus("ready", path)
    failed = path.parent / f"{path.name}{FAILED}"
    if failed.is_file():
        tail = failed.read_bytes()[-2000:].decode("utf-8", "replace").strip()
        return EnvStatus("failed", path, f"the last build failed: {tail}")
    if (path.parent / f"{path.name}{BUILDING}").is_file():
        return EnvStatus("building", path, "it is being built")
    return EnvStatus("missing", path, "it has not been built (attune pack env build)")


def pack_source(config: Config, pack_ref: str, action_path: Path, runtime: str) -> PackSource:
    """The pack an action file runs in; its Python environment when it needs one.

    Raises ExecutionError ("environment not ready") when the pack's Python actions need
    an environment that is not ready, naming why, so nothing runs against half of one.
    """
    pack_dir = Path(os.path.realpath(Path(config.packs_base_dir) / pack_ref))
    blocked = untraversable_ancestors(pack_dir / "x")
    if blocked:
        raise ExecutionError(
            f"pack directory {pack_dir} is unreachable for the sandbox uids: {blocked[0]} "
            f"is not searchable by others (chmod o+x {blocked[0]})"
        )
    env: Path | None = None
    if runtime == "python":
        st = status(Path(config.runtime_envs_dir), pack_ref, pack_dir)
        if st.state not in ("none", "ready"):
            raise ExecutionError(
                f"environment not ready for pack {pack_ref}: {st.reason} ({st.path})"
            )
        env = st.path
    return PackSource(
        pack_dir=str(pack_dir),
        action_path=str(action_path),
        env_dir=None if env is None else str(env),
    )


# --- building -------------------------------------------------------------------------


def _chain(path: Path) -> None:
    """Create `path` and missing parents traversable (0711): the build uid binds below."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for created in missing:
        os.chmod(created, 0o711)


def _seal(tree: Path) -> None:
    """Root-owned and read-only for everyone else; symlinks are left as they are."""
    for top, dirs, files in os.walk(tree):
        for name in (*dirs, *files):
            p = os.path.join(top, name)
            os.lchown(p, 0, 0)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                continue
            if stat.S_ISDIR(st.st_mode) or st.st_mode & 0o111:
                os.chmod(p, 0o755)
            else:
                os.chmod(p, 0o644)
    os.lchown(tree, 0, 0)
    os.chmod(tree, 0o755)


def _pip_config_copies(base: Path, pip: PipSettings) -> tuple[tuple[str, str], ...]:
    """World-readable copies of the host's pip config files (they may sit under /root)."""
    folder = base / ".pip-config"
    folder.mkdir(exist_ok=True)
    os.chmod(folder, 0o755)
    copies = []
    for i, source in enumerate(pip.config_files):
        copy = folder / f"{i}.conf"
        shutil.copyfile(source, copy)
        os.chmod(copy, 0o644)
        copies.append((str(copy), source))
    return tuple(copies)


def build_network(config: Config, pip: PipSettings, egress_available: bool) -> BuildNetwork:
    """The build sandbox's network: egress to the package indexes pip is configured
    for, and nothing else, when the operator turned egress on and this worker can
    provide it; otherwise none (local find-links and file:// indexes still work).

    The policy is the operator's narrowed to the index hosts (a packet must pass both),
    with their names resolved by the worker and written to /etc/hosts: the build gets
    no DNS resolver to talk to.
    """
    destinations = index_destinations(pip)
    if not (config.network.egress and egress_available and destinations):
        return BuildNetwork()
    narrowed = egress.narrow(config.network.policy(), destinations)
    return BuildNetwork(policy=dataclasses.replace(narrowed, dns="hosts"))


def offline_hint(pip: PipSettings, network: BuildNetwork) -> str:
    """What a failed offline build adds to its reason when pip wanted a remote index."""
    destinations = index_destinations(pip)
    if network.policy is not None or not destinations:
        return ""
    hosts = ", ".join(d.split()[0] for d in destinations)
    return (
        f"; the package index ({hosts}) was unreachable because egress is off for "
        "environment builds (network.egress: true on a root worker with the egress "
        "layer turns it on; local find-links and file:// indexes work without it)"
    )


def _egress_available() -> bool:
    return os.geteuid() == 0 and detect(probe_version=False).layer_active("egress")


@dataclass(frozen=True)
class BuildOutcome:
    status: EnvStatus
    built: bool  # False: it was ready already (or the pack needs none)
    seconds: float
    output: str = ""


async def build(
    config: Config,
    pack_ref: str,
    pack_dir: Path,
    *,
    pip: PipSettings | None = None,
    network: BuildNetwork | None = None,
    limits: BuildLimits | None = None,
    force: bool = False,
) -> BuildOutcome:
    """Make the pack's environment ready; a no-op when the manifest's one already is."""
    started = time.monotonic()
    text = manifest(pack_dir)
    if text is None:
        return BuildOutcome(EnvStatus("none", None), False, 0.0)
    base = Path(config.runtime_envs_dir)
    root = env_root(base, pack_ref)
    path = env_dir(base, pack_ref, text)
    _chain(root)
    lock_fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        await trio.to_thread.run_sync(fcntl.flock, lock_fd, fcntl.LOCK_EX, abandon_on_cancel=True)
        if (path / READY).is_file() and not force:
            return BuildOutcome(EnvStatus("ready", path), False, time.monotonic() - started)
        return await _build_locked(
            config, root, path, pack_dir, text, pip, network, limits, started
        )
    finally:
        os.close(lock_fd)


async def _build_locked(
    config: Config,
    root: Path,
    path: Path,
    pack_dir: Path,
    text: str,
    pip: PipSettings | None,
    network: BuildNetwork | None,
    limits: BuildLimits | None,
    started: float,
) -> BuildOutcome:
    building = path.parent / f"{path.name}{BUILDING}"
    failed = path.parent / f"{path.name}{FAILED}"
    building.write_text(f"{os.getpid()}\n")
    failed.unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)
    uid = config.sandbox.slot_uid_base + config.worker.max_concurrent_tasks
    is_root = os.geteuid() == 0
    manifest_file = root / f".manifest-{path.name}"
    try:
        path.mkdir(mode=0o700)
        manifest_file.write_text(text)
        os.chmod(manifest_file, 0o644)
        if is_root:
            os.chown(path, uid, uid)
        settings = pip if pip is not None else host_settings()
        if network is None:
            network = build_network(config, settings, _egress_available())
        plan = BuildPlan(
            env_dir=str(path),
            stage_dir=str(path),
            pack_dir=str(pack_dir),
            manifest_file=str(manifest_file),
            etc_dir=str(write_etc(root.parent / ".etc")),
            pip=settings,
            config_copies=_pip_config_copies(root.parent, settings),
            network=network,
            limits=limits or BuildLimits(),
        )
        bwrap = shutil.which("bwrap") or "/usr/bin/bwrap"
        result = await run_build(plan, bwrap, uid if is_root else None)
        if not result.ok:
            shutil.rmtree(path, ignore_errors=True)
            reason = result.reason + offline_hint(settings, network)
            failed.write_text(f"{reason}\n{result.output}")
            st = EnvStatus("failed", path, reason)
            return BuildOutcome(st, True, time.monotonic() - started, result.output)
        await trio.to_thread.run_sync(_seal, path)
        (path / READY).write_text(text)
        os.chmod(path / READY, 0o644)
        return BuildOutcome(
            EnvStatus("ready", path), True, time.monotonic() - started, result.output
        )
    finally:
        building.unlink(missing_ok=True)
        manifest_file.unlink(missing_ok=True)


def remove(config: Config, pack_ref: str) -> list[Path]:
    """Delete every environment of the pack (PackDeleted, `attune pack env remove`)."""
    root = env_root(Path(config.runtime_envs_dir), pack_ref)
    if not root.is_dir():
        return []
    gone = sorted(p for p in root.iterdir() if p.name.startswith("python-"))
    shutil.rmtree(root, ignore_errors=True)
    return gone


def listing(config: Config) -> list[tuple[str, str, str]]:
    """(pack_ref, environment dir name, state) for every environment on this host."""
    base = Path(config.runtime_envs_dir)
    rows: list[tuple[str, str, str]] = []
    if not base.is_dir():
        return rows
    for root in sorted(p for p in base.iterdir() if PACK_REF_RE.match(p.name) and p.is_dir()):
        for entry in sorted(root.iterdir()):
            if entry.is_dir() and entry.name.startswith("python-"):
                if (entry / READY).is_file():
                    state = "ready"
                elif (root / f"{entry.name}{BUILDING}").is_file():
                    state = "building"
                else:
                    state = "incomplete"
                rows.append((root.name, entry.name, state))
            elif entry.name.endswith(FAILED):
                rows.append((root.name, entry.name.removesuffix(FAILED), "failed"))
    return rows
