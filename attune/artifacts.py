"""Per-execution artifact files: live logs while a run goes, the result when it ends.

Layout (the reference worker's): `{artifacts_dir}/{worker_name}/execution_{id}/` with
`stdout.log`, `stderr.log` and `result.json`. The logs receive only what the sandbox
kept (the per-stream cap is applied before), so they are bounded like the result.

They hold what actions printed: files are 0640 and the directories this module creates
0750, whatever the worker's umask (modes are set with fchmod/chmod, not left to it).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_MODE = 0o640
DIR_MODE = 0o750


def _make_dirs(directory: Path) -> None:
    """mkdir -p; the run's own directory and every one created here get DIR_MODE
    (pre-existing parents, e.g. an operator's artifacts_dir, keep theirs)."""
    missing = [p for p in directory.parents if not p.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    for created in (*reversed(missing), directory):
        with contextlib.suppress(OSError):
            os.chmod(created, DIR_MODE)


def _open_private(path: Path, flags: int) -> int:
    """Open for writing at FILE_MODE even if the file existed with another mode."""
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


class RunArtifacts:
    """Open log files of one execution; append-only, closed when the run ends."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        _make_dirs(directory)
        self._fds = {
            name: _open_private(directory / f"{name}.log", _FLAGS | os.O_TRUNC)
            for name in ("stdout", "stderr")
        }

    async def write(self, stream: str, chunk: bytes) -> None:
        """Sink for Sandbox.run(on_output=...): small local appends, no thread hop."""
        fd = self._fds.get(stream)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.write(fd, chunk)

    def write_result(self, status: str, result: dict[str, Any]) -> None:
        data = json.dumps({"status": status, "result": result}, ensure_ascii=False, indent=2)
        tmp = self.directory / "result.json.tmp"
        fd = _open_private(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        )
        with os.fdopen(fd, "w") as handle:
            handle.write(data + "\n")
        tmp.replace(self.directory / "result.json")

    def close(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()


class ArtifactStore:
    def __init__(self, base_dir: Path, worker_name: str) -> None:
        self.root = base_dir / worker_name

    def path_for(self, execution_id: int) -> Path:
        return self.root / f"execution_{execution_id}"

    def open_run(self, execution_id: int) -> RunArtifacts:
        return RunArtifacts(self.path_for(execution_id))

    def prune(self, *, max_age_seconds: float, max_count: int, now: float | None = None) -> int:
        """Delete run directories older than the age limit, then the oldest beyond the count."""
        now = time.time() if now is None else now
        try:
            entries = [
                (p.stat().st_mtime, p)
                for p in self.root.iterdir()
                if p.is_dir() and p.name.startswith("execution_")
            ]
        except FileNotFoundError:
            return 0
        entries.sort(reverse=True)
        doomed = [
            p
            for i, (mtime, p) in enumerate(entries)
            if now - mtime > max_age_seconds or i >= max_count
        ]
        for path in doomed:
            shutil.rmtree(path, ignore_errors=True)
        return len(doomed)
