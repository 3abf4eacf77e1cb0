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

What pid 1 sends is one end record (`END_HEADER`: magic, the command's exit code, the
report's length; then the report). Every run gets the pipe, a run() action or not:
the record says the action has ended and all its processes are dead, so the worker
can answer without waiting for the pid namespace's teardown (`ended`). A sandbox killed
from outside (timeout, cancel, flood) sends none; the run then ends on bwrap's exit.
"""

from __future__ import annotations

import contextlib
import os
import struct
from typing import Any

import trio

from attune.jsonsafe import DataInvalid, DataLimits, DataRefused, decode_json
from attune.runner.output import BoundedBuffer

CHUNK = 64 * 1024
END_MAGIC = b"ATTUNEND"
END_HEADER = struct.Struct(">8siI")  # magic, exit code, report length (attune_init.c)


class EndRecord:
    """Incremental parser of pid 1's end record (sans I/O: bytes in, state out)."""

    def __init__(self, limit: int) -> None:
        self.buffer = BoundedBuffer(limit)
        self._head = bytearray()
        self._left = -1  # report bytes still to come; -1 until the header is whole
        self.exit_code: int | None = None  # set once the whole record has arrived
        self.garbled = False

    def feed(self, data: bytes) -> None:
        if self.garbled or self.exit_code is not None:
            return
        if self._left < 0:
            need = END_HEADER.size - len(self._head)
            self._head += data[:need]
            data = data[need:]
            if len(self._head) < END_HEADER.size:
                return
            magic, code, length = END_HEADER.unpack(bytes(self._head))
            if magic != END_MAGIC:
                self.garbled = True
                return
            self._code, self._left = code, length
        take = data[: self._left]
        self.buffer.feed(take)
        self._left -= len(take)
        if self._left == 0:
            self.exit_code = self._code


class ResultPipe:
    """One run's result pipe: the read end (pumped, bounded) and, until the spawn, the
    write end that pid 1 of the sandbox inherits."""

    def __init__(self, limit: int) -> None:
        read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)  # inherited only through pass_fds
        self._stream = trio.lowlevel.FdStream(read_fd)
        self.record = EndRecord(limit)
        self.buffer = self.record.buffer
        self.done = trio.Event()  # end-of-file: the sandbox is gone
        self.ended = trio.Event()  # the whole end record is here: the action has ended

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
                self.record.feed(chunk)
                if self.record.exit_code is not None:
                    self.ended.set()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.done.set()

    @property
    def exit_code(self) -> int | None:
        """The action's exit code as pid 1 reported it (bwrap's convention), once ended."""
        return self.record.exit_code

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
