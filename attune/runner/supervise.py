"""Supervising one started sandbox: its stdin, its capped output, its end.

A run ends on pid 1's end record (attune-init: the action and all its processes are
dead, its output already in the pipes) or, for a sandbox killed from outside, on
bwrap's exit. The deadline and a `RunControl` cancel it; either kills the whole
sandbox and the partial output is kept. Output is kept up to each stream's cap and the
rest counted; once a stream has thrown away OUTPUT_KILL_FACTOR times its cap the run
is killed (`output_limit_exceeded`), since draining a flood until the timeout would
burn a worker core for nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable

import trio

from attune.models import OutputFormat
from attune.runner import process
from attune.runner.output import OUTPUT_KILL_FACTOR, BoundedBuffer, RunReport
from attune.runner.profiles import Limits
from attune.runner.resultpipe import ResultPipe

CHUNK = 64 * 1024
DRAIN_SECONDS = 1.0

OutputSink = Callable[[str, bytes], Awaitable[None]]


class RunControl:
    """Lets another task cancel a run (a cancel request, a shutdown deadline).

    It holds an unbound `trio.CancelScope` that the run enters once. Cancelling before
    the run enters it leaves the scope cancelled, so the run ends as soon as it starts;
    the first reason given is the one recorded.
    """

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.reason: str | None = None

    def cancel(self, reason: str = "Execution cancelled by user") -> None:
        if self.reason is None:
            self.reason = reason
        self.scope.cancel()


async def supervise(
    proc: process.SandboxProcess,
    limits: Limits,
    output_format: OutputFormat,
    stdin_data: bytes,
    timeout: float,
    control: RunControl | None,
    on_output: OutputSink | None,
    started: float,
    wrapped: bool,
    pipe: ResultPipe,
) -> RunReport:
    """Feed stdin, pump the output (capped, streamed to `on_output`), and wait for the
    end record or bwrap's exit under the deadline and the control's scope.

    The caller owns the sandbox's teardown; a cancellation from outside has killed it.
    """
    stdout = BoundedBuffer(limits.max_stdout_bytes)
    stderr = BoundedBuffer(limits.max_stderr_bytes)
    drained = {"stdout": trio.Event(), "stderr": trio.Event()}
    exceeded: list[str] = []

    async def pump(name: str, stream: trio.lowlevel.FdStream, buf: BoundedBuffer) -> None:
        try:
            while chunk := await stream.receive_some(CHUNK):
                kept = buf.feed(chunk)
                if kept and on_output is not None:
                    await on_output(name, kept)
                if buf.dropped > OUTPUT_KILL_FACTOR * buf.limit:
                    # Draining a flood forever would burn a worker core until the
                    # timeout: kill the run, the truncation is already recorded.
                    exceeded.append(name)
                    proc.kill()
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            drained[name].set()

    async def feed_stdin() -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            if stdin_data:
                await proc.pipes.stdin.send_all(stdin_data)
        await proc.pipes.stdin.aclose()

    exit_code = -1
    ended = False  # pid 1's end record came before bwrap's exit
    with control.scope if control is not None else trio.CancelScope() as user_scope:
        with trio.move_on_after(timeout) as deadline:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(proc.read_info)
                nursery.start_soon(feed_stdin)
                nursery.start_soon(pump, "stdout", proc.pipes.stdout, stdout)
                nursery.start_soon(pump, "stderr", proc.pipes.stderr, stderr)
                nursery.start_soon(pipe.pump)
                ended = await end_or_exit(proc, pipe)
                if not ended:
                    exit_code = proc.returncode if proc.returncode is not None else -1
                    # The result pipe's writers (pid 1, bwrap) are gone with the sandbox.
                    with trio.move_on_after(DRAIN_SECONDS):
                        for event in (*drained.values(), pipe.done):
                            await event.wait()
                nursery.cancel_scope.cancel()
        if ended and pipe.exit_code is not None:
            # Every process of the action is dead: all its output is in the pipes
            # already. Take it without waiting for end-of-file, which only comes
            # once the namespace is torn down (after the answer: Sandbox.run).
            exit_code = pipe.exit_code
            for name, stream, buf in (
                ("stdout", proc.pipes.stdout, stdout),
                ("stderr", proc.pipes.stderr, stderr),
            ):
                for chunk in _available(stream):
                    kept = buf.feed(chunk)
                    if kept and on_output is not None:
                        await on_output(name, kept)
    duration_ms = int((trio.current_time() - started) * 1000)
    for stream in (proc.pipes.stdin, proc.pipes.stdout, proc.pipes.stderr):
        with contextlib.suppress(Exception):
            await stream.aclose()
    timed_out = deadline.cancelled_caught
    cancelled = user_scope.cancelled_caught and not timed_out
    if proc.returncode is not None and exit_code == -1 and not (timed_out or cancelled):
        exit_code = proc.returncode
    # bwrap reports the action's death by signal N as 128 + N; a negative code is
    # bwrap itself killed by a signal (the OOM killer, an operator).
    signal_no = (
        exit_code - 128 if 128 < exit_code < 128 + 65 else -exit_code if exit_code < -1 else None
    )
    wrapper_report, problem = (None, None)
    if wrapped and not (timed_out or cancelled or exceeded):
        wrapper_report, problem = pipe.report()
    return RunReport(
        exit_code=exit_code if not cancelled else (proc.returncode or -1),
        duration_ms=duration_ms,
        stdout=stdout,
        stderr=stderr,
        timed_out=timed_out,
        timeout_seconds=timeout,
        cancelled=cancelled,
        cancel_reason=(
            control.reason if control and control.reason else "Execution cancelled by user"
        ),
        signal=signal_no,
        wrapper=wrapper_report,
        wrapper_problem=problem,
        output_exceeded=exceeded[0] if exceeded else None,
        output_format=output_format,
    )


async def end_or_exit(proc: process.SandboxProcess, pipe: ResultPipe) -> bool:
    """Wait for pid 1's end record (True) or bwrap's exit (False), whichever is first.

    Any cancellation from outside (the deadline, a cancel request, shutdown) kills the
    whole sandbox before it propagates, as SandboxProcess.wait does.
    """
    try:
        async with trio.open_nursery() as race:

            async def record() -> None:
                await pipe.ended.wait()
                race.cancel_scope.cancel()

            race.start_soon(record)
            await proc.exited()
            race.cancel_scope.cancel()
    except BaseException:
        with trio.CancelScope(shield=True):
            await proc.kill_and_wait()
        raise
    return pipe.ended.is_set()


def _available(stream: trio.lowlevel.FdStream) -> list[bytes]:
    """What is in a pipe now, read without waiting (its writers are dead)."""
    chunks = []
    fd = stream.fileno()
    while True:
        try:
            chunk = os.read(fd, CHUNK)
        except OSError:  # EAGAIN: nothing more, or closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return chunks
