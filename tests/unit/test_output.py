"""Bounded capture, output parsing and the result JSON of docs/protocol.md §7 (pure)."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from attune.runner.output import (
    OUTPUT_KILL_FACTOR,
    BoundedBuffer,
    RunReport,
    build_result,
    parse_output,
    signal_error,
    truncation_notice,
)

NOTICE = "\n\n[OUTPUT TRUNCATED: stdout exceeded size limit]\n"


def buf(data: bytes = b"", limit: int = 1024) -> BoundedBuffer:
    b = BoundedBuffer(limit)
    b.feed(data)
    return b


def report(**kw: Any) -> RunReport:
    kw.setdefault("exit_code", 0)
    kw.setdefault("duration_ms", 12)
    if not isinstance(kw.get("stdout"), BoundedBuffer):
        kw["stdout"] = buf(kw.get("stdout", b""))
    if not isinstance(kw.get("stderr"), BoundedBuffer):
        kw["stderr"] = buf(kw.get("stderr", b""))
    return RunReport(**kw)


# --- BoundedBuffer --------------------------------------------------------------------


def test_notice_text_is_exact() -> None:
    assert truncation_notice("stdout") == NOTICE
    assert truncation_notice("stderr") == "\n\n[OUTPUT TRUNCATED: stderr exceeded size limit]\n"


def test_buffer_keeps_up_to_the_cap_and_counts_the_rest() -> None:
    b = BoundedBuffer(10)
    assert b.feed(b"12345") == b"12345"
    assert b.feed(b"67890abc") == b"67890"
    assert b.feed(b"defg") == b""
    assert bytes(b.kept) == b"1234567890"
    assert b.dropped == 7
    assert b.truncated
    assert b.text("stdout") == "1234567890" + NOTICE


def test_buffer_exactly_at_the_cap_is_not_truncated() -> None:
    b = buf(b"x" * 10, limit=10)
    assert not b.truncated and b.dropped == 0
    assert b.text("stdout") == "x" * 10


def test_one_huge_chunk_is_cut_not_stored() -> None:
    b = BoundedBuffer(1000)
    b.feed(b"y" * 5_000_000)
    assert len(b.kept) == 1000
    assert b.dropped == 4_999_000
    assert len(b.tail) <= 4096


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    assert buf(b"ok \xff\xfe").text("stdout") == "ok \ufffd\ufffd"


def test_last_line_comes_from_the_end_of_the_stream_even_when_truncated() -> None:
    b = BoundedBuffer(8)
    b.feed(b"warning 1\n" * 1000)
    b.feed(b"RuntimeError: the real reason\n\n")
    assert b.last_line() == "RuntimeError: the real reason"


# --- parse_output ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "stdout", "expected"),
    [
        ("text", '{"a": 1}', (False, None)),
        ("json", '  {"a": 1}\n', (True, {"a": 1})),
        ("json", "[1,\n 2]\n", (True, [1, 2])),
        ("json", 'progress 1\nprogress 2\n{"done": true}\n', (True, {"done": True})),
        ("json", "not json\nat all\n", (False, None)),
        ("json", "   \n", (False, None)),
        ("json", "", (False, None)),
        ("yaml", "a: 1\nb: [x, y]\n", (True, {"a": 1, "b": ["x", "y"]})),
        ("yaml", "a: [unclosed\n", (False, None)),
        ("jsonl", '{"a":1}\nnoise\n{"b":2}\n', (True, [{"a": 1}, {"b": 2}])),
        ("jsonl", "noise only\n", (False, None)),
    ],
)
def test_parse_output(fmt: Any, stdout: str, expected: tuple[bool, Any]) -> None:
    assert parse_output(stdout, fmt) == expected


# --- build_result: one test per row of docs/protocol.md §7 ----------------------------------


def test_success_with_parsed_data_drops_stdout() -> None:
    status, result = build_result(report(stdout=b'{"x": 3}\n', output_format="json"))
    assert status == "completed"
    assert result == {"succeeded": True, "exit_code": 0, "duration_ms": 12, "data": {"x": 3}}


def test_success_without_parse_keeps_stdout() -> None:
    status, result = build_result(report(stdout=b"Hello, World!\n", output_format="text"))
    assert status == "completed"
    assert result == {
        "succeeded": True,
        "exit_code": 0,
        "duration_ms": 12,
        "stdout": "Hello, World!\n",
    }


def test_success_of_a_run_function_has_data_and_its_prints() -> None:
    _, result = build_result(report(stdout=b"log\n", wrapper={"ok": True, "value": [1]}))
    assert result == {
        "succeeded": True,
        "exit_code": 0,
        "duration_ms": 12,
        "data": [1],
        "stdout": "log\n",
    }
    _, quiet = build_result(report(wrapper={"ok": True, "value": None}))
    assert quiet == {"succeeded": True, "exit_code": 0, "duration_ms": 12, "data": None}


def test_non_zero_exit_error_is_the_last_stderr_line() -> None:
    status, result = build_result(report(exit_code=2, stderr=b"first\nsecond problem\n\n"))
    assert status == "failed"
    assert result == {
        "succeeded": False,
        "exit_code": 2,
        "duration_ms": 12,
        "error": "second problem",
        "stdout": "",
        "stderr": "first\nsecond problem\n\n",
    }


def test_non_zero_exit_without_stderr() -> None:
    status, result = build_result(report(exit_code=3))
    assert status == "failed"
    assert result["error"] == "Command exited with code 3"
    assert set(result) == {"succeeded", "exit_code", "duration_ms", "error", "stdout"}


def test_run_function_exception_is_the_wrapper_error() -> None:
    _, result = build_result(
        report(
            exit_code=1,
            stderr=b"Traceback...\nValueError: bad\n",
            wrapper={"ok": False, "error": "ValueError: bad"},
        )
    )
    assert result["error"] == "ValueError: bad"
    assert result["stderr"].startswith("Traceback")


def test_wrapper_problem_on_exit_zero_fails() -> None:
    status, result = build_result(report(wrapper_problem="refused the result file"))
    assert status == "failed"
    assert result["error"] == "refused the result file"
    assert result["succeeded"] is False


def test_timeout_row() -> None:
    status, result = build_result(
        report(exit_code=137, timed_out=True, timeout_seconds=5.0, stdout=b"partial")
    )
    assert status == "timeout"
    assert result == {
        "succeeded": False,
        "timed_out": True,
        "exit_code": -1,
        "duration_ms": 12,
        "error": "Execution timed out after 5 seconds",
        "stdout": "partial",
    }


def test_timeout_with_fractional_seconds() -> None:
    _, result = build_result(report(timed_out=True, timeout_seconds=1.5))
    assert result["error"] == "Execution timed out after 1.5 seconds"


def test_cancelled_row() -> None:
    status, result = build_result(report(exit_code=137, cancelled=True))
    assert status == "cancelled"
    assert result == {
        "succeeded": False,
        "cancelled": True,
        "exit_code": 137,
        "duration_ms": 12,
        "error": "Execution cancelled by user",
        "stdout": "",
    }
    _, other = build_result(report(cancelled=True, cancel_reason="Worker shutting down"))
    assert other["error"] == "Worker shutting down"


def test_truncation_is_recorded_per_stream() -> None:
    out = BoundedBuffer(4)
    out.feed(b"abcdefgh")
    err = BoundedBuffer(2)
    err.feed(b"xyz\n")
    status, result = build_result(report(stdout=out, stderr=err, exit_code=0))
    assert status == "completed"
    assert result["stdout"] == "abcd" + NOTICE
    assert result["stdout_truncated"] is True
    assert result["stdout_bytes_truncated"] == 4
    assert result["stderr_truncated"] is True
    assert result["stderr_bytes_truncated"] == 2
    assert result["stderr"] == "xy\n\n[OUTPUT TRUNCATED: stderr exceeded size limit]\n"


def test_untruncated_result_has_no_truncation_keys() -> None:
    _, result = build_result(report(stdout=b"x"))
    assert not any("truncated" in key for key in result)


def test_oom_kill_says_memory() -> None:
    status, result = build_result(report(exit_code=137, signal=9, oom_killed=True))
    assert status == "failed"
    assert result["oom_killed"] is True
    assert "memory" in result["error"]


def test_output_flood_kill_is_recorded() -> None:
    out = BoundedBuffer(10)
    out.feed(b"z" * 100)
    status, result = build_result(
        report(exit_code=137, signal=9, stdout=out, output_exceeded="stdout")
    )
    assert status == "failed"
    assert result["output_limit_exceeded"] == "stdout"
    assert result["error"] == (
        f"Execution killed: stdout exceeded {OUTPUT_KILL_FACTOR}x its 10 byte output limit"
    )
    assert result["stdout_truncated"] is True and result["stdout_bytes_truncated"] == 90


@pytest.mark.parametrize(
    ("signo", "expected"),
    [
        (signal.SIGXFSZ, "Command killed by SIGXFSZ (file size limit exceeded)"),
        (signal.SIGXCPU, "Command killed by SIGXCPU (CPU time limit exceeded)"),
        (signal.SIGSYS, "Command killed by SIGSYS (forbidden system call)"),
        (signal.SIGKILL, "Command killed by SIGKILL"),
        (signal.SIGABRT, "Command killed by SIGABRT"),
        (63, "Command killed by signal 63"),
    ],
)
def test_signal_errors_name_the_limit(signo: int, expected: str) -> None:
    assert signal_error(signo) == expected
    _, result = build_result(report(exit_code=128 + signo, signal=signo, stderr=b"noise\n"))
    assert result["error"] == expected


# --- what the stored result can hold (attune.jsonsafe) --------------------------------


def stored(result: dict[str, Any]) -> str:
    import json

    text = json.dumps(result, ensure_ascii=False, allow_nan=False)
    text.encode("utf-8")
    assert "\\u0000" not in text
    return text


def test_nul_in_text_output_is_stored_as_the_replacement_character() -> None:
    status, result = build_result(report(stdout=b"a\0b\n", stderr=b"e\0"))
    assert status == "completed"
    assert result["stdout"] == "a\ufffdb\n" and result["stderr"] == "e\ufffd"
    stored(result)


def test_nan_in_json_output_is_stored_as_text() -> None:
    status, result = build_result(report(stdout=b'{"x": NaN, "y": Infinity}', output_format="json"))
    assert status == "completed"
    assert result["data"] == {"x": "NaN", "y": "Infinity"}
    stored(result)


def test_yaml_date_output_stays_text() -> None:
    status, result = build_result(report(stdout=b"when: 2024-01-01\n", output_format="yaml"))
    assert (status, result["data"]) == ("completed", {"when": "2024-01-01"})


@pytest.mark.parametrize("fmt", ["json", "jsonl", "yaml"])
def test_deeply_nested_output_fails_the_run_with_the_bound(fmt: Any) -> None:
    deep = b"[" * 5000 + b"]" * 5000
    status, result = build_result(report(stdout=deep, output_format=fmt))
    assert status == "failed"
    assert "nested deeper than" in result["error"]
    assert "data" not in result and result["stdout"]
    stored(result)


def test_yaml_alias_bomb_output_fails_the_run() -> None:
    bomb = b'a: &a ["x","x","x","x","x","x","x","x","x","x"]\n' + b"".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n".encode()
        for p, c in zip("abcdefg", "bcdefgh", strict=True)
    )
    status, result = build_result(report(stdout=bomb, output_format="yaml"))
    assert status == "failed" and "aliases" in result["error"]


def test_a_run_function_value_nested_900_deep_fails_cleanly() -> None:
    value: list[Any] = []
    cur = value
    for _ in range(899):
        cur.append([])
        cur = cur[0]
    status, result = build_result(report(wrapper={"ok": True, "value": value}))
    assert status == "failed"
    assert result["error"] == "Result refused: the return value is nested deeper than 100 levels"


def test_control_bytes_are_bounded_once_escaped() -> None:
    b = buf(b"\x01" * 6000, limit=6000)
    _, result = build_result(report(stdout=b))
    text = result["stdout"]
    assert text.endswith(NOTICE) and result["stdout_truncated"]
    assert len(stored({"s": text[: -len(NOTICE)]})) - 9 <= 6000
    assert result["stdout_bytes_truncated"] == 6000 - text.count("\x01")
