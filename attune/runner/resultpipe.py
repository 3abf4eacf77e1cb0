"""The result channel: a FIFO the action writes and the worker reads, capped, as it goes.

A `run()` action's return value used to travel through a host file bound into the
sandbox, so any action could put as much on the host's disk as its file-size limit
allowed (64 MiB per run, times the capacity). The path the wrapper writes
(`/attune/out/result.json`) is now a FIFO created by the worker: what the action writes
lives only in the pipe's kernel buffer (64 KiB) until the worker has read it, and the
worker keeps at most `limits.max_result_bytes` (1 MiB by default) and only counts the
rest. Nothing the action writes there ever reaches a disk.

The worker holds both ends from before the sandbox starts: the read end (so the
action's open() never blocks) and a write end (so a read never sees end-of-file while
the action has not opened the FIFO yet); then it makes the FIFO write-only (0200), so
an action that reads every file it sees gets EACCES instead of a read that never ends.
Once the sandbox is gone, `writers_gone` drops the worker's write end and the pump reads
to end-of-file.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Any

import trio

from attune.errors import ExecutionError
from attune.jsonsafe import DataInvalid, DataLimits, DataRefused, decode_json
from attune.runner.output import BoundedBuffer

CHUNK = 64 * 1024
_OPEN = os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW


def make_fifo(path: Path, uid: int | None) -> None:
    """Create the FIFO the sandbox binds at /attune/out/result.json."""
    os.mkfifo(path, 0o600)
    os.chmod(path, 0o600)
    if uid is not None:
        os.chown(path, uid, uid)


class ResultPipe:
    """Both ends of one run's result FIFO and what was read from it (bounded)."""

    def __init__(self, path: Path, limit: int) -> None:
        read_fd = os.open(path, os.O_RDONLY | _OPEN)
        try:
            if not stat.S_ISFIFO(os.fstat(read_fd).st_mode):
                raise ExecutionError(f"{path} is not the FIFO the worker made")
            self._keep = os.open(path, os.O_WRONLY | _OPEN)
            # Write-only from now on: an action that reads every file it can see gets
            # EACCES here instead of blocking forever on an empty pipe.
            os.fchmod(read_fd, 0o200)
        except BaseException:
            os.close(read_fd)
            raise
        self._stream = trio.lowlevel.FdStream(read_fd)
        self.buffer = BoundedBuffer(limit)
        self.done = trio.Event()

    async def pump(self) -> None:
        """Read until end-of-file (after `writers_gone`), keeping up to the limit."""
        try:
            while chunk := await self._stream.receive_some(CHUNK):
                self.buffer.feed(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.done.set()

    def writers_gone(self) -> None:
        """The sandbox has ended: drop our write end so the pump reaches end-of-file."""
        if self._keep >= 0:
            with contextlib.suppress(OSError):
                os.close(self._keep)
            self._keep = -1

    def close(self) -> None:
        self.writers_gone()
        with contextlib.suppress(OSError):
            self._stream.close()

    def report(self) -> tuple[dict[str, Any] | None, str | None]:
        return parse_wrapper_report(bytes(self.buffer.kept), self.buffer.dropped, self.buffer.limit)


def parse_wrapper_report(
    data: bytes, dropped: int, max_bytes: int
) -> tuple[dict[str, Any] | None, str | None]:
    """(report, None) or (None, why it is unusable) for what the wrapper wrote."""
    if dropped:
        return None, f"result exceeds the {max_bytes} byte limit"
    if not data:
        return None, "the action ended without reporting a return value"
    try:
        report = decode_json(
            data,
            what="the return value",
            limits=DataLimits(max_bytes=max_bytes + 1024),
            normalised=False,  # build_result normalises the value
        )
    except DataInvalid:
        return None, "the result file is not valid JSON"
    except DataRefused as exc:
        return None, f"Result refused: {exc}"
    if not isinstance(report, dict) or "ok" not in report:
        return None, "the result file is malformed"
    return report, None
