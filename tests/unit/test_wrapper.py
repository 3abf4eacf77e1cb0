"""sandbox/python_wrapper.py in-process: parameter decoding and the run() report.

The wrapper runs inside the sandbox under a bare /usr/bin/python3; here it is imported
from its file so its logic is checked in milliseconds. The sandbox tests run it for real.
"""

from __future__ import annotations

import errno
import importlib.util
import io
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio

from attune.params import encode_params
from attune.runner.resultpipe import ResultPipe, parse_wrapper_report

WRAPPER = Path(__file__).resolve().parents[2] / "sandbox" / "python_wrapper.py"


@pytest.fixture
def wrapper(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("python_wrapper_under_test", WRAPPER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "RESULT_PATH", str(tmp_path / "result.json"))
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "action", raising=False)
    for name in ("ATTUNE_PARAMETER_DELIVERY", "ATTUNE_PARAMETER_FORMAT", "ATTUNE_PARAMETER_FILE"):
        monkeypatch.delenv(name, raising=False)
    return module


PARAMS: dict[str, Any] = {
    "name": "O'Brien",
    "multi": "line one\nline 'two'\n",
    "n": 3,
    "flag": True,
    "nested": {"a": {"b": "deep"}},
    "list": [1, "x"],
    "empty": "",
}


def deliver(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fmt: str, delivery: str, params: dict[str, Any]
) -> None:
    payload = encode_params(params, fmt)  # type: ignore[arg-type]
    monkeypatch.setenv("ATTUNE_PARAMETER_FORMAT", fmt)
    monkeypatch.setenv("ATTUNE_PARAMETER_DELIVERY", delivery)
    if delivery == "file":
        path = tmp_path / "parameters"
        path.write_bytes(payload)
        monkeypatch.setenv("ATTUNE_PARAMETER_FILE", str(path))
    else:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(payload), "utf-8"))


@pytest.mark.parametrize("delivery", ["stdin", "file"])
@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_structured_formats_round_trip(
    wrapper: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fmt: str, delivery: str
) -> None:
    deliver(monkeypatch, tmp_path, fmt, delivery, PARAMS)
    assert wrapper._read_params() == PARAMS


@pytest.mark.parametrize("delivery", ["stdin", "file"])
def test_dotenv_round_trips_quotes_and_newlines(
    wrapper: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, delivery: str
) -> None:
    deliver(monkeypatch, tmp_path, "dotenv", delivery, PARAMS)
    assert wrapper._read_params() == {
        "name": "O'Brien",
        "multi": "line one\nline 'two'\n",
        "n": "3",
        "flag": "true",
        "nested.a.b": "deep",
        "list": '[1,"x"]',
        "empty": "",
    }


def test_no_parameters_is_an_empty_dict(
    wrapper: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert wrapper._read_params() == {}


def run_main(
    wrapper: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    code: str,
    params: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    action = tmp_path / "action.py"
    action.write_text(code)
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(params or {}) + "\n"))
    rc = wrapper.main(str(action))
    report = json.loads(Path(wrapper.RESULT_PATH).read_text())
    return rc, report


def test_value_is_reported(
    wrapper: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rc, report = run_main(
        wrapper,
        monkeypatch,
        tmp_path,
        "def run(x, y):\n    print('hi')\n    return x + y\n",
        {"x": 1, "y": 2},
    )
    assert (rc, report) == (0, {"ok": True, "value": 3})


def test_async_run_is_awaited(
    wrapper: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rc, report = run_main(wrapper, monkeypatch, tmp_path, "async def run():\n    return 'a'\n")
    assert (rc, report) == (0, {"ok": True, "value": "a"})


def test_exception_is_type_and_message(
    wrapper: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc, report = run_main(
        wrapper, monkeypatch, tmp_path, "def run():\n    raise ValueError('bad input')\n"
    )
    assert (rc, report) == (1, {"ok": False, "error": "ValueError: bad input"})
    assert "Traceback" in capsys.readouterr().err


def test_non_serialisable_value_is_a_clear_error(
    wrapper: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rc, report = run_main(wrapper, monkeypatch, tmp_path, "def run():\n    return object()\n")
    assert rc == 1 and report["ok"] is False
    assert report["error"].startswith("Return value is not JSON-serialisable:")
    rc, report = run_main(wrapper, monkeypatch, tmp_path, "def run():\n    return float('nan')\n")
    assert rc == 1 and "not JSON-serialisable" in report["error"]


def test_sys_exit_zero_is_a_none_result(
    wrapper: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rc, report = run_main(
        wrapper, monkeypatch, tmp_path, "import sys\ndef run():\n    sys.exit(0)\n"
    )
    assert (rc, report) == (0, {"ok": True, "value": None})


def test_parameters_that_are_not_an_object_are_refused(
    wrapper: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    action = tmp_path / "action.py"
    action.write_text("def run(): pass\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO("[1, 2]\n"))
    assert wrapper.main(str(action)) == 2
    report = json.loads(Path(wrapper.RESULT_PATH).read_text())
    assert report == {"ok": False, "error": "Invalid parameters: parameters must be a JSON object"}


def test_unexpected_parameter_is_a_type_error(
    wrapper: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rc, report = run_main(
        wrapper, monkeypatch, tmp_path, "def run(x):\n    return x\n", {"x": 1, "y": 2}
    )
    assert rc == 1
    assert report["error"].startswith("TypeError:") and "'y'" in report["error"]


def test_result_symlink_is_not_followed(
    wrapper: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    target = tmp_path / "host-file"
    target.write_text("precious")
    Path(wrapper.RESULT_PATH).symlink_to(target)
    with pytest.raises(OSError):
        wrapper._write_report({"ok": True, "value": 1})
    assert target.read_text() == "precious"


# --- the worker's side: the result pipe (resultpipe.py) ----------------------------------


def test_report_is_parsed() -> None:
    assert parse_wrapper_report(b'{"ok": true, "value": [1, 2]}', 0, 1000) == (
        {"ok": True, "value": [1, 2]},
        None,
    )


@pytest.mark.parametrize(
    ("content", "dropped", "problem"),
    [
        (b"", 0, "the action ended without reporting a return value"),
        (b"x" * 1000, 1, "result exceeds the 1000 byte limit"),
        (b"{not json", 0, "the result file is not valid JSON"),
        (b"[1, 2]", 0, "the result file is malformed"),
        (b'{"value": 1}', 0, "the result file is malformed"),
        (b'{"ok": true, "value": ' + b"[" * 5000 + b"]" * 5000 + b"}", 0, None),
    ],
)
def test_bad_reports(content: bytes, dropped: int, problem: str | None) -> None:
    report, found = parse_wrapper_report(content, dropped, 100_000)
    if problem is None:  # deep: refused by its bound, never a RecursionError
        assert report is None and found is not None and "nested deeper" in found
    else:
        assert (report, found) == (None, problem.replace("1000 byte", "100000 byte"))


async def test_the_write_end_is_never_inherited_by_accident_and_dropped_after_the_spawn() -> None:
    pipe = ResultPipe(100)
    write_fd = pipe.write_fd
    assert not os.get_inheritable(write_fd)  # reaches the sandbox only through pass_fds
    pipe.spawned()
    assert pipe.write_fd == -1
    with pytest.raises(OSError):
        os.fstat(write_fd)
    pipe.close()


async def test_the_pipe_is_read_to_end_of_file_as_written_and_capped() -> None:
    pipe = ResultPipe(100)
    writer = os.dup(pipe.write_fd)  # what pid 1 of the sandbox holds
    pipe.spawned()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pipe.pump)
        os.write(writer, b'{"ok": true, ')
        os.write(writer, b'"value": 1}' + b" " * 200)
        assert not pipe.done.is_set()
        os.close(writer)  # the sandbox is gone: end-of-file
        with trio.fail_after(5):
            await pipe.done.wait()
    pipe.close()
    assert pipe.buffer.dropped == 124
    assert pipe.report() == (None, "result exceeds the 100 byte limit")


async def test_nothing_forwarded_is_a_missing_return_value() -> None:
    pipe = ResultPipe(100)
    pipe.spawned()
    with trio.fail_after(5):
        await pipe.pump()
    pipe.close()
    assert pipe.report() == (None, "the action ended without reporting a return value")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG])
def test_a_value_too_large_for_the_out_dir_is_a_clear_error(
    wrapper: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, code: int
) -> None:
    """ENOSPC: the out tmpfs (result limit + slack) is full; EFBIG: RLIMIT_FSIZE."""
    real_write = os.write

    def bounded_write(fd: int, data: bytes) -> int:
        if len(data) > 1000:
            raise OSError(code, os.strerror(code))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", bounded_write)
    rc, report = run_main(wrapper, monkeypatch, tmp_path, "def run():\n    return 'x' * 5000\n")
    assert (rc, report) == (
        1,
        {"ok": False, "error": "The return value is larger than the result size limit"},
    )


def test_a_lone_surrogate_in_the_value_is_written_as_its_escape(
    wrapper: ModuleType, tmp_path: Path
) -> None:
    wrapper._write_report({"ok": True, "value": {"\ud800k": "x\udfff"}})
    data = (tmp_path / "result.json").read_bytes()
    data.decode("utf-8")  # valid UTF-8
    report, problem = parse_wrapper_report(data, 0, 1000)
    assert problem is None and report is not None
    from attune.jsonsafe import normalise

    assert normalise(report["value"]) == {"\ufffdk": "x\ufffd"}
