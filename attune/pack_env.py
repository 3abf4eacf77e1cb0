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

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from attune.config import Config
from attune.errors import ExecutionError, InputError
from attune.packs import PACK_REF_RE
from attune.runner.host import untraversable_ancestors
from attune.runner.sandbox import PackSource

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
        try:
            meta = yaml.safe_load(meta_raw)
        except yaml.YAMLError:
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


def status(runtime_envs_dir: Path, pack_ref: str, pack_dir: Path) -> EnvStatus:
    """The state of the environment the pack's current manifest calls for."""
    text = manifest(pack_dir)
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
