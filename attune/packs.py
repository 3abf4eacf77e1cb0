"""Packs on disk: strict loading, installing, and code resolution that cannot escape.

The worker reads action code as root before handing it to the sandbox, so every path
that comes from the database or a pack file is treated as hostile: it must stay inside
its pack directory and be a plain regular file. Loading is strict (unknown action keys,
links and special files are refused) because a pack that loads here is what later runs
on every worker; an error caught at load time is one that never reaches a run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import re
import shutil
import stat
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec

from attune.errors import ExecutionError, InputError
from attune.pack_format import (
    RUNNER_RUNTIMES,
    ActionSpec,
    NetworkMode,
    PackYaml,
    action_fields,
    pack_fields,
)
from attune.schema_form import schema_form
from attune.yamlsafe import load_yaml

PACK_REF_RE = re.compile(r"^[a-z][a-z0-9_-]*$")
_ACTION_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]*$")
_MAX_YAML_BYTES = 1024 * 1024
_MAX_PACK_ENTRIES = 10_000
_DEFAULT_MAX_CODE_BYTES = 4 * 1024 * 1024


class PackSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A validated pack: its pack.yaml fields, where it was loaded from, its actions.

    `warnings` are problems that do not stop the load (a shell entry_point with no
    file is inline code; a runner_type this worker has no runtime for).
    """

    meta: PackYaml
    path: str
    actions: tuple[ActionSpec, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return self.meta.ref

    @property
    def label(self) -> str:
        return self.meta.label or self.meta.ref

    @property
    def version(self) -> str:
        return self.meta.version

    @property
    def description(self) -> str | None:
        return self.meta.description

    @property
    def network(self) -> NetworkMode:
        return self.meta.network

    def network_of(self, action: ActionSpec) -> NetworkMode:
        """An action's own `network`, else its pack's."""
        return action.network or self.meta.network


class ResolvedCode(msgspec.Struct, frozen=True, kw_only=True):
    """Exactly one of `path` (a file inside the pack) or `inline` (shell code text)."""

    path: Path | None
    inline: str | None


# --- loading ---------------------------------------------------------------------------


def load_pack(path: Path) -> PackSpec:
    """Load and validate the pack at `path`; every problem is an InputError naming the file."""
    root = Path(os.path.realpath(path))
    if not root.is_dir():
        raise InputError(f"{path}: not a pack directory")
    check_pack_tree(root)
    meta_file = root / "pack.yaml"
    meta = pack_fields(_read_yaml(meta_file), meta_file)
    if not PACK_REF_RE.match(meta.ref):
        raise InputError(
            f"{meta_file}: ref: {meta.ref!r} must match {PACK_REF_RE.pattern} "
            "(lowercase letter first, then lowercase letters, digits, '-' or '_')"
        )
    if not meta.version.strip():
        raise InputError(f"{meta_file}: version: must not be empty")
    warnings: list[str] = []
    actions = _load_actions(root, meta.ref, warnings)
    return PackSpec(meta=meta, path=str(root), actions=actions, warnings=tuple(warnings))


def check_pack_tree(root: Path) -> None:
    """Refuse anything but regular files and directories, and hard-linked files.

    A symlink or hard link could make the worker (root) read a host file as "code";
    devices and FIFOs could hang or leak it. Checked with lstat, never following links.
    """
    seen = 0
    stack = [root]
    while stack:
        current = stack.pop()
        try:
            entries = sorted(os.scandir(current), key=lambda e: e.name)
        except OSError as exc:
            raise InputError(f"{current}: cannot list directory: {exc.strerror}") from None
        for entry in entries:
            seen += 1
            if seen > _MAX_PACK_ENTRIES:
                raise InputError(f"{root}: more than {_MAX_PACK_ENTRIES} entries in the pack")
            st = entry.stat(follow_symlinks=False)
            where = Path(entry.path)
            if stat.S_ISLNK(st.st_mode):
                raise InputError(f"{where}: symlinks are not allowed in a pack")
            if stat.S_ISDIR(st.st_mode):
                stack.append(where)
            elif stat.S_ISREG(st.st_mode):
                if st.st_nlink > 1:
                    raise InputError(f"{where}: hard-linked files are not allowed in a pack")
            else:
                raise InputError(
                    f"{where}: only regular files and directories are allowed in a pack "
                    "(found a device, FIFO or socket)"
                )


def _read_yaml(file: Path) -> Any:
    try:
        with open(file, "rb") as fh:
            raw = fh.read(_MAX_YAML_BYTES + 1)
    except FileNotFoundError:
        raise InputError(f"{file}: file is missing") from None
    except OSError as exc:
        raise InputError(f"{file}: cannot read: {exc.strerror}") from None
    if len(raw) > _MAX_YAML_BYTES:
        raise InputError(f"{file}: larger than {_MAX_YAML_BYTES} bytes")
    return load_yaml(raw, source=str(file))


def _load_actions(root: Path, pack_ref: str, warnings: list[str]) -> tuple[ActionSpec, ...]:
    actions_dir = root / "actions"
    if not actions_dir.exists():
        return ()
    if not actions_dir.is_dir():
        raise InputError(f"{actions_dir}: must be a directory")
    specs: list[ActionSpec] = []
    where_ref: dict[str, Path] = {}
    files = sorted([*actions_dir.glob("*.yaml"), *actions_dir.glob("*.yml")])
    for file in files:
        spec = action_fields(_read_yaml(file), file)
        _validate_action(spec, file, pack_ref, actions_dir, warnings)
        if spec.ref in where_ref:
            raise InputError(f"{file}: ref: {spec.ref!r} is also defined in {where_ref[spec.ref]}")
        where_ref[spec.ref] = file
        specs.append(spec)
    return tuple(specs)


def _validate_action(
    spec: ActionSpec, file: Path, pack_ref: str, actions_dir: Path, warnings: list[str]
) -> None:
    prefix = f"{pack_ref}."
    if not spec.ref.startswith(prefix) or not _ACTION_NAME_RE.match(spec.ref[len(prefix) :]):
        raise InputError(
            f"{file}: ref: {spec.ref!r} must be '{prefix}<name>' with a lowercase name "
            f"matching {_ACTION_NAME_RE.pattern}"
        )
    if spec.label is not None and not spec.label.strip():
        raise InputError(f"{file}: label: must not be empty")
    if spec.workflow_file is not None:
        _validate_relative(spec.workflow_file, file, actions_dir, "workflow_file")
        warnings.append(f"{file}: workflow actions load but this worker cannot run them")
    else:
        if spec.runtime is None:
            warnings.append(
                f"{file}: runner_type {spec.runner_type!r}: this worker has no such runtime "
                f"(it runs {', '.join(sorted(set(RUNNER_RUNTIMES.values())))}); the action "
                "loads but its runs fail"
            )
        present = _validate_relative(spec.entry_point, file, actions_dir, "entry_point")
        if not present:
            if spec.runtime != "shell":
                raise InputError(
                    f"{file}: entry_point: {actions_dir / spec.entry_point} does not exist"
                )
            warnings.append(
                f"{file}: entry_point {spec.entry_point!r} is not a file under actions/; "
                "it runs as inline shell code"
            )
    for field in ("parameters", "output", "output_schema"):
        schema = getattr(spec, field)
        if schema is not None:
            _validate_schema(schema, file, field)


def _validate_relative(entry: str, file: Path, actions_dir: Path, field: str) -> bool:
    """A path under actions/ that cannot escape; True if it names an existing file."""
    pure = PurePosixPath(entry)
    if not entry or "\x00" in entry or "\n" in entry:
        raise InputError(f"{file}: {field}: must be a file name under actions/")
    if any(c.isspace() for c in entry):
        return False  # inline shell code, not a path
    if pure.is_absolute() or ".." in pure.parts:
        raise InputError(f"{file}: {field}: {entry!r} must stay under actions/")
    target = actions_dir / pure
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise InputError(f"{file}: {field}: {target}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{file}: {field}: {target} is not a regular file")
    return True


def _validate_schema(schema: dict[str, Any], file: Path, field: str) -> None:
    """Light checks of either schema form, flat or JSON Schema: enough to catch typos.

    `parameters` must describe an object (flat: one mapping per parameter); `output`
    may be any JSON Schema (`{type: number}`) or the flat per-field form.
    """
    typ = schema.get("type")
    json_form = schema_form(schema) == "json-schema"
    if field == "parameters" and isinstance(typ, str) and typ != "object":
        raise InputError(f"{file}: {field}.type: must be 'object', got {typ!r}")
    if json_form:
        props = schema.get("properties", {})
        where = f"{field}.properties"
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise InputError(f"{file}: {field}.required: must be a list of property names")
    else:
        props, where, required = schema, field, []
    if not isinstance(props, dict):
        raise InputError(f"{file}: {where}: must be a mapping")
    for name, prop in props.items():
        if not isinstance(prop, dict):
            raise InputError(f"{file}: {where}.{name}: must be a mapping")
        if "secret" in prop and not isinstance(prop["secret"], bool):
            raise InputError(f"{file}: {where}.{name}.secret: must be true or false")
        if not json_form and not isinstance(prop.get("type", "string"), str | list):
            raise InputError(f"{file}: {where}.{name}.type: must be a string")
    for name in required:
        if name not in props:
            raise InputError(f"{file}: {field}.required: {name!r} is not in properties")


# --- installing ------------------------------------------------------------------------


def install_pack(spec: PackSpec, packs_base_dir: Path) -> Path:
    """Copy the pack to `{packs_base_dir}/{ref}`, replacing what is there in one step.

    Workers may be running actions from the old copy, so the new tree is built beside
    it and swapped in by rename: a reader sees the old pack or the new one, never half.
    Modes are normalised (0644/0755) so sandbox uids can read the code but not write it.
    """
    base = Path(packs_base_dir)
    base.mkdir(mode=0o755, parents=True, exist_ok=True)
    target = base / spec.ref
    source = Path(spec.path)
    if os.path.realpath(source) == os.path.realpath(target):
        return target
    check_pack_tree(source)
    tmp = base / f".{spec.ref}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        _copy_tree(source, tmp)
        _swap_into_place(tmp, target)
    finally:
        if tmp.exists() or tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _copy_tree(src: Path, dst: Path) -> None:
    os.mkdir(dst, 0o755)
    os.chmod(dst, 0o755)
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        s, d = Path(entry.path), dst / entry.name
        if entry.is_dir(follow_symlinks=False):
            _copy_tree(s, d)
        elif entry.is_file(follow_symlinks=False):
            _copy_file(s, d)
        else:
            raise InputError(f"{s}: only regular files and directories are allowed in a pack")


def _copy_file(src: Path, dst: Path) -> None:
    try:
        fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise InputError(f"{src}: cannot read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
            raise InputError(f"{src}: changed into a non-regular or hard-linked file")
        out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        with os.fdopen(out, "wb") as fout:
            while chunk := os.read(fd, 1 << 20):
                fout.write(chunk)
            os.fchmod(fout.fileno(), 0o644)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _swap_into_place(new: Path, target: Path) -> None:
    """Rename `new` to `target`; if `target` exists, exchange them atomically first."""
    if not target.exists() and not target.is_symlink():
        os.rename(new, target)
        return
    if _renameat2_exchange(new, target):
        shutil.rmtree(new)  # now holds the old tree
        return
    # No RENAME_EXCHANGE (old kernel or filesystem): two renames, a short gap.
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:12]}")
    os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _renameat2_exchange(a: Path, b: Path) -> bool:
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


# --- code resolution (docs/protocol.md §7) ---------------------------------------------------


def resolve_code(
    packs_base_dir: Path, pack_ref: str, entrypoint: str, runtime: str
) -> ResolvedCode:
    """Find an action's code: a file inside its pack, or inline shell text.

    The entrypoint comes from the database, so it is checked as if hostile: no `..`,
    not absolute, and its realpath must stay inside the pack directory. Shell
    entrypoints holding whitespace can never be a file name here, so they are inline
    code (run inside the sandbox; the worker reads nothing from the host for them).
    """
    if not PACK_REF_RE.match(pack_ref):
        raise ExecutionError(f"invalid pack ref {pack_ref!r}")
    if not entrypoint or "\x00" in entrypoint:
        raise ExecutionError(f"action of pack {pack_ref!r} has an empty or invalid entrypoint")
    is_shell = runtime.lower() == "shell"
    pack_dir = Path(os.path.realpath(Path(packs_base_dir) / pack_ref))
    if is_shell and any(c.isspace() for c in entrypoint):
        return ResolvedCode(path=None, inline=entrypoint)
    pure = PurePosixPath(entrypoint)
    if pure.is_absolute():
        raise ExecutionError(f"entrypoint {entrypoint!r} is absolute; it must be under actions/")
    if ".." in pure.parts:
        raise ExecutionError(f"entrypoint {entrypoint!r} contains '..'")
    candidate = pack_dir / "actions" / pure
    real = Path(os.path.realpath(candidate))
    if not real.is_relative_to(pack_dir):
        raise ExecutionError(f"entrypoint {entrypoint!r} resolves outside pack {pack_ref!r}")
    if not os.path.lexists(candidate):
        if is_shell:
            return ResolvedCode(path=None, inline=entrypoint)
        raise ExecutionError(f"action code not found: {candidate}")
    if not real.is_file():
        raise ExecutionError(f"action code is not a regular file: {candidate}")
    return ResolvedCode(path=real, inline=None)


def read_code(path: Path, *, max_bytes: int = _DEFAULT_MAX_CODE_BYTES) -> bytes:
    """Read action code without following a final symlink or blocking on a FIFO."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ExecutionError(f"action code is a symlink: {path}") from None
        raise ExecutionError(f"cannot open action code {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ExecutionError(f"action code is not a regular file: {path}")
        if st.st_size > max_bytes:
            raise ExecutionError(f"action code {path} is larger than {max_bytes} bytes")
        chunks: list[bytes] = []
        total = 0
        while total <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ExecutionError(f"action code {path} is larger than {max_bytes} bytes")
    return data
