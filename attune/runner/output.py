"""Bounded output capture and the result JSON of docs/protocol.md §7 (pure).

A stream is kept up to its cap and the rest only counted, so a 100 MB line without a
newline costs the worker no more than the cap. The result builder is the single place
that decides status and result fields from what the sandbox reported.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any, Literal

from attune.jsonsafe import (
    DATA_LIMITS,
    DataInvalid,
    DataRefused,
    check_value_count,
    clean_text,
    decode_json,
    fit_text,
    normalise,
    utf8_len,
)
from attune.models import OutputFormat

Status = Literal["completed", "failed", "timeout", "cancelled"]


def truncation_notice(stream: str) -> str:
    return f"\n\n[OUTPUT TRUNCATED: {stream} exceeded size limit]\n"


TAIL_BYTES = 4096


@dataclass
class BoundedBuffer:
    """Keeps the first `limit` bytes of a stream and counts the rest.

    The last TAIL_BYTES of the whole stream are kept apart, so that a failed run's
    `error` is the real last stderr line even when the middle was discarded.
    """

    limit: int
    kept: bytearray = field(default_factory=bytearray)
    dropped: int = 0
    tail: bytearray = field(default_factory=bytearray)
    # Bytes of the kept text left out of the stored text so that, JSON-escaped, it
    # still fits `limit` (control bytes take 6 bytes each once escaped).
    cut: int = 0

    def feed(self, chunk: bytes) -> bytes:
        """Store what fits; return the part that was kept (for live streaming)."""
        self.tail += chunk[-TAIL_BYTES:]
        if len(self.tail) > TAIL_BYTES:
            del self.tail[:-TAIL_BYTES]
        room = self.limit - len(self.kept)
        if room >= len(chunk):
            self.kept += chunk
            return chunk
        keep = chunk[: max(room, 0)]
        self.kept += keep
        self.dropped += len(chunk) - len(keep)
        return keep

    @property
    def truncated(self) -> bool:
        return self.dropped + self.cut > 0

    @property
    def bytes_truncated(self) -> int:
        return self.dropped + self.cut

    def text(self, stream: str) -> str:
        """The stored text: at most `limit` bytes once in the result JSON, then a notice.

        Invalid UTF-8 and NUL become U+FFFD (see attune.jsonsafe).
        """
        text = clean_text(self.kept.decode("utf-8", "replace"))
        fitted = fit_text(text, self.limit)
        self.cut = utf8_len(text[len(fitted) :]) if len(fitted) < len(text) else 0
        return fitted + truncation_notice(stream) if self.truncated else fitted

    def last_line(self) -> str:
        """The last non-blank line of everything fed (kept or not)."""
        return _last_line(bytes(self.tail).decode("utf-8", "replace"))


def parse_output(stdout: str, fmt: OutputFormat) -> tuple[bool, Any]:
    """(parsed?, value) by output_format; only non-blank stdout is parsed.

    Output that is not JSON/YAML at all is simply not parsed (it stays text); output
    that parses but passes a bound of attune.jsonsafe (depth, values, size, YAML aliases)
    raises DataRefused: the run fails with that reason rather than storing it.
    """
    text = stdout.strip()
    if fmt == "text" or not text:
        return False, None
    if fmt == "json":
        try:
            return True, decode_json(text, what="stdout (JSON)")
        except DataInvalid:
            pass
        try:
            return True, decode_json(text.splitlines()[-1], what="the last line of stdout (JSON)")
        except DataInvalid:
            return False, None
    if fmt == "jsonl":
        check_value_count(text, DATA_LIMITS, "stdout (JSON lines)")
        items = []
        for number, line in enumerate(text.splitlines(), 1):
            try:
                items.append(decode_json(line, what=f"stdout line {number} (JSON lines)"))
            except DataInvalid:
                continue
        return (True, normalise(items, what="stdout (JSON lines)")) if items else (False, None)
    from attune.yamlsafe import OUTPUT_LIMITS, YamlInvalid, YamlRefused, load_yaml

    try:
        value = load_yaml(text, source="stdout (YAML)", limits=OUTPUT_LIMITS)
    except YamlInvalid:
        return False, None
    except YamlRefused as exc:
        raise DataRefused(str(exc)) from None
    return True, normalise(value, what="stdout (YAML)")


@dataclass(frozen=True)
class RunReport:
    """What the sandbox observed about one run, before interpretation."""

    exit_code: int
    duration_ms: int
    stdout: BoundedBuffer
    stderr: BoundedBuffer
    timed_out: bool = False
    timeout_seconds: float = 0
    cancelled: bool = False
    cancel_reason: str = "Execution cancelled by user"
    signal: int | None = None
    oom_killed: bool = False
    # The stream whose output went so far past its cap that the run was killed.
    output_exceeded: str | None = None
    # For python run() actions: the wrapper's report, already decoded.
    wrapper: dict[str, Any] | None = None
    wrapper_problem: str | None = None
    output_format: OutputFormat = "text"


# Past this many times its cap, a stream's run is killed rather than drained forever.
OUTPUT_KILL_FACTOR = 4

_SIGNAL_REASONS: dict[int, str] = {
    signal.SIGXFSZ: "file size limit exceeded",
    signal.SIGXCPU: "CPU time limit exceeded",
    signal.SIGSYS: "forbidden system call",
}


def signal_error(signo: int) -> str:
    """`Command killed by SIGXFSZ (file size limit exceeded)` and the like."""
    try:
        name = signal.Signals(signo).name
    except ValueError:
        return f"Command killed by signal {signo}"
    reason = _SIGNAL_REASONS.get(signo)
    return f"Command killed by {name} ({reason})" if reason else f"Command killed by {name}"


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def build_result(report: RunReport) -> tuple[Status, dict[str, Any]]:
    """Status and `execution.result` for one run (docs/protocol.md §7 table)."""
    stdout = report.stdout.text("stdout")
    stderr = report.stderr.text("stderr")
    result: dict[str, Any] = {
        "succeeded": False,
        "exit_code": report.exit_code,
        "duration_ms": report.duration_ms,
    }
    status: Status
    data: tuple[bool, Any] = (False, None)  # (parsed?, value) of a completed run
    if report.timed_out:
        status = "timeout"
        seconds = report.timeout_seconds
        shown = int(seconds) if float(seconds).is_integer() else seconds
        result.update(
            succeeded=False,
            timed_out=True,
            exit_code=-1,
            error=f"Execution timed out after {shown} seconds",
        )
    elif report.cancelled:
        status = "cancelled"
        result.update(succeeded=False, cancelled=True, error=report.cancel_reason)
    elif report.output_exceeded is not None:
        status = "failed"
        buf = report.stdout if report.output_exceeded == "stdout" else report.stderr
        result.update(
            succeeded=False,
            output_limit_exceeded=report.output_exceeded,
            error=f"Execution killed: {report.output_exceeded} exceeded "
            f"{OUTPUT_KILL_FACTOR}x its {buf.limit} byte output limit",
        )
    elif report.oom_killed:
        status = "failed"
        result.update(
            succeeded=False,
            oom_killed=True,
            error="Execution killed: out of memory (memory limit reached)",
        )
    elif report.exit_code != 0:
        status = "failed"
        error = None
        if report.wrapper is not None and not report.wrapper.get("ok", True):
            error = str(report.wrapper.get("error") or "")
        if not error and report.signal is not None:
            error = signal_error(report.signal)
        if not error:
            error = report.stderr.last_line() or f"Command exited with code {report.exit_code}"
        result.update(succeeded=False, error=error)
    elif report.wrapper_problem is not None:
        status = "failed"
        result.update(succeeded=False, error=report.wrapper_problem)
    else:
        status = "completed"
        result["succeeded"] = True
        try:
            if report.wrapper is not None:
                data = (True, normalise(report.wrapper.get("value"), what="the return value"))
            else:
                data = parse_output(stdout, report.output_format)
        except DataRefused as exc:
            status = "failed"
            result.update(succeeded=False, error=f"Result refused: {exc}")
        # stdout stays when nothing was parsed; a run() action's prints stay too.
        if not data[0] or (report.wrapper is not None and stdout):
            result["stdout"] = stdout
    if status != "completed":
        result["stdout"] = stdout
    if stderr:
        result["stderr"] = stderr
    for name, buf in (("stdout", report.stdout), ("stderr", report.stderr)):
        if buf.truncated:
            result[f"{name}_truncated"] = True
            result[f"{name}_bytes_truncated"] = buf.bytes_truncated
    # Every field is text or a number; `error` may quote the action (NUL, surrogates).
    result = normalise(result, what="the result")
    if status == "completed" and data[0]:
        head = {k: result.pop(k) for k in ("succeeded", "exit_code", "duration_ms")}
        result = {**head, "data": data[1], **result}
    return status, result
