"""The result channel: a pipe only the sandbox's pid 1 writes, read by the worker, capped.

A `run()` action's return value is written by the wrapper to /attune/out/result.json,
a file on the run's own small tmpfs (argv.py: `out_dir_size`), never on the host. The
worker makes one pipe per run and hands its write end down the spawn chain to
attune-init, pid 1 of the sandbox (`--result-fd`, sandbox/attune_init.c). pid 1 marks
it close-on-exec before it starts the command, so the action never holds it (it has
fds 0, 1 and 2 only). Once the command's process has ended, pid 1 kills and reaps the
rest of the sandbox, opens the report without following a symlink or blocking, and
forwards it only if it is a regular file, at most `limits.max_result_bytes` + 1 bytes.

The worker closes its own copy of the write end right after the spawn, so its read
end sees end-of-file once the sandbox (pid 1 and bwrap) is gone: no FIFO, no host
file, no host mount, and nothing of the run dir in the sandbox's mount table. The
worker keeps at most `limits.max_result_bytes` (1 MiB by default) and counts the rest.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import trio

from attune.jsonsafe import DataInvalid, DataLimits, DataRefused, decode_json
from attune.runner.output import BoundedBuffer

CHUNK = 64 * 1024


class ResultPipe:
    """One run's result pipe: the read end (pumped, bounded) and, until the spawn, the
    write end that pid 1 of the sandbox inherits."""

    def __init__(self, limit: int) -> None:
        read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)  # inherited only through pass_fds
        self._stream = trio.lowlevel.FdStream(read_fd)
        self.buffer = BoundedBuffer(limit)
        self.done = trio.Event()

    def spawned(self) -> None:
        """The sandbox holds the write end now (or never will): drop ours, so the pump
        reaches end-of-file as soon as the sandbox is gone."""
        if self.write_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.write_fd)
            self.write_fd = -1

    async def pump(self) -> None:
        """Read until end-of-file, keeping up to the limit."""
        try:
            while chunk := await self._stream.receive_some(CHUNK):
                self.buffer.feed(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.done.set()

    def close(self) -> None:
        self.spawned()
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
