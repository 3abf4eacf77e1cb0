"""The action contract through a real sandbox: examples, run(), parameters, timeouts, cancel."""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path

import pytest
import trio

from attune.runner.sandbox import Sandbox
from attune.runner.supervise import RunControl
from tests.sandbox.conftest import RunCode
from tests.sandbox.helpers import outer_bwrap_of, token, wait_until_gone, with_token

pytestmark = pytest.mark.sandbox

REPO = Path(__file__).resolve().parents[2]


def code(text: str) -> str:
    return textwrap.dedent(text).lstrip()


# --- the two examples -----------------------------------------------------------------


async def test_example_add_py(run_code: RunCode) -> None:
    outcome = await run_code((REPO / "examples/add.py").read_bytes(), params={"x": 1, "y": 2})
    assert outcome.status == "completed"
    assert outcome.result["data"] == 3
    assert outcome.result["succeeded"] is True and outcome.result["exit_code"] == 0


async def test_example_hello_sh(run_code: RunCode) -> None:
    outcome = await run_code(
        (REPO / "examples/hello.sh").read_bytes(), runtime="shell", params={"name": "World"}
    )
    assert outcome.status == "completed"
    assert outcome.result["stdout"] == "Hello, World!\n"


async def test_attune_exec_cli_runs_the_example() -> None:
    proc = await trio.run_process(
        [str(REPO / ".venv/bin/attune"), "exec", "examples/add.py", "-p", "x=1", "-p", "y=2"],
        cwd=REPO,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["data"] == 3


# --- python run() contract -------------------------------------------------------------


async def test_prints_go_to_stdout_and_the_value_to_data(run_code: RunCode) -> None:
    outcome = await run_code(
        code("""
        def run(name):
            print("hello", name)
            return {"greeting": f"hi {name}", "n": [1, 2]}
    """),
        params={"name": "bob"},
    )
    assert outcome.status == "completed"
    assert outcome.result["data"] == {"greeting": "hi bob", "n": [1, 2]}
    assert outcome.result["stdout"] == "hello bob\n"


async def test_async_run_and_none(run_code: RunCode) -> None:
    outcome = await run_code("import asyncio\nasync def run():\n    await asyncio.sleep(0)\n")
    assert outcome.status == "completed"
    assert outcome.result["data"] is None


async def test_exception_fails_with_type_and_message(run_code: RunCode) -> None:
    outcome = await run_code("def run():\n    raise ValueError('msg')\n")
    assert outcome.status == "failed"
    assert outcome.result["error"] == "ValueError: msg"
    assert outcome.result["exit_code"] == 1
    assert "Traceback (most recent call last)" in outcome.result["stderr"]
    assert "ValueError: msg" in outcome.result["stderr"]


async def test_non_json_return_value_fails_clearly(run_code: RunCode) -> None:
    outcome = await run_code("def run():\n    return {1, 2}\n")
    assert outcome.status == "failed"
    assert outcome.result["error"].startswith("Return value is not JSON-serialisable")
    assert "set" in outcome.result["error"]


TOO_LARGE = "The return value is larger than the result size limit"


async def test_a_value_larger_than_the_result_cap_is_refused(run_code: RunCode) -> None:
    """The out tmpfs holds the limit, room for the parameter files and some slack (about
    2 MiB): the wrapper's write of 3 MiB fails (ENOSPC)."""
    outcome = await run_code("def run():\n    return 'x' * (3 * 2**20)\n")
    assert outcome.status == "failed"
    assert outcome.result["error"] == TOO_LARGE


async def test_a_value_past_the_file_size_limit_never_reaches_a_disk(run_code: RunCode) -> None:
    """65 MiB: the out tmpfs (memory of the run) fills at the limit plus slack."""
    outcome = await run_code("def run():\n    return 'x' * (65 * 2**20)\n")
    assert outcome.status == "failed"
    assert outcome.result["error"] == TOO_LARGE


async def test_missing_parameter_is_a_type_error(run_code: RunCode) -> None:
    outcome = await run_code("def run(x, y):\n    return x + y\n", params={"x": 1})
    assert outcome.status == "failed"
    assert outcome.result["error"].startswith("TypeError:")
    assert "'y'" in outcome.result["error"]


async def test_run_that_exits_without_reporting_fails(run_code: RunCode) -> None:
    outcome = await run_code("import os\ndef run():\n    os._exit(0)\n")
    assert outcome.status == "failed"
    assert outcome.result["error"] == "the action ended without reporting a return value"


async def test_script_without_run_reads_one_json_line_on_stdin(run_code: RunCode) -> None:
    outcome = await run_code(
        code("""
        import json, sys
        params = json.loads(sys.stdin.readline())
        rest = sys.stdin.read()
        print("working...")
        print(json.dumps({"got": params, "rest": rest}))
    """),
        params={"a": 1, "b": "two"},
        output_format="json",
    )
    assert outcome.status == "completed"
    assert outcome.result["data"] == {"got": {"a": 1, "b": "two"}, "rest": ""}
    assert "stdout" not in outcome.result


async def test_script_exit_code_and_last_stderr_line(run_code: RunCode) -> None:
    outcome = await run_code(
        "import sys\nprint('first', file=sys.stderr)\n"
        "print('the reason', file=sys.stderr)\nsys.exit(4)\n"
    )
    assert outcome.status == "failed"
    assert outcome.result["exit_code"] == 4
    assert outcome.result["error"] == "the reason"
    quiet = await run_code("import sys\nsys.exit(5)\n")
    assert quiet.result["error"] == "Command exited with code 5"


@pytest.mark.parametrize(
    ("fmt", "stdout", "data"),
    [
        ("json", 'noise\n{"k": [1]}\n', {"k": [1]}),
        ("yaml", "k: v\nl: [1, 2]\n", {"k": "v", "l": [1, 2]}),
        ("jsonl", '{"a": 1}\nskip\n{"b": 2}\n', [{"a": 1}, {"b": 2}]),
    ],
)
async def test_output_formats(run_code: RunCode, fmt: str, stdout: str, data: object) -> None:
    outcome = await run_code(f"import sys\nsys.stdout.write({stdout!r})\n", output_format=fmt)
    assert outcome.status == "completed"
    assert outcome.result["data"] == data


# --- shell parameters ------------------------------------------------------------------


async def test_shell_gets_param_env_and_the_json_line(run_code: RunCode) -> None:
    params = {
        "name": "World",
        "my-key": "v w",
        "n": 3,
        "flag": True,
        "obj": {"a": 1},
        "none": None,
        "quote": "it's",
    }
    outcome = await run_code(
        code("""
        echo "NAME=$PARAM_NAME"
        echo "MY_KEY=$PARAM_MY_KEY"
        echo "N=$PARAM_N FLAG=$PARAM_FLAG"
        echo "OBJ=$PARAM_OBJ"
        echo "NONE=[${PARAM_NONE-unset}]"
        echo "QUOTE=$PARAM_QUOTE"
        read -r line
        echo "STDIN=$line"
    """),
        runtime="shell",
        params=params,
    )
    assert outcome.status == "completed"
    lines = outcome.result["stdout"].splitlines()
    assert lines[:6] == [
        "NAME=World",
        "MY_KEY=v w",
        "N=3 FLAG=true",
        'OBJ={"a":1}',
        "NONE=[]",
        "QUOTE=it's",
    ]
    assert json.loads(lines[6].removeprefix("STDIN=")) == params


async def test_python_profile_does_not_get_param_env(run_code: RunCode) -> None:
    outcome = await run_code(
        "import os\ndef run(x):\n"
        "    return sorted(k for k in os.environ if k.startswith('PARAM'))\n",
        params={"x": 1},
    )
    assert outcome.result["data"] == []


# --- parameter delivery and formats ----------------------------------------------------


async def test_parameter_file_delivery(run_code: RunCode) -> None:
    outcome = await run_code(
        code("""
        import json, os, stat, sys
        path = os.environ["ATTUNE_PARAMETER_FILE"]
        info = os.stat(path)
        try:
            open(path, "a")
            writable = True
        except OSError:
            writable = False
        print(json.dumps({
            "path": path, "mode": oct(stat.S_IMODE(info.st_mode)), "uid": info.st_uid,
            "content": open(path).read(), "stdin": sys.stdin.read(),
            "delivery": os.environ["ATTUNE_PARAMETER_DELIVERY"],
            "format": os.environ["ATTUNE_PARAMETER_FORMAT"], "writable": writable,
        }))
    """),
        params={"secret": "s", "n": 1},
        parameter_delivery="file",
    )
    assert outcome.status == "completed", outcome.result
    assert outcome.result["data"] == {
        "path": "/attune/out/parameters",
        "mode": "0o400",
        "uid": 1000,
        "content": '{"secret":"s","n":1}\n',
        "stdin": "",
        "delivery": "file",
        "format": "json",
        "writable": False,
    }


PARAMS = {"name": "O'Brien", "text": "two\nlines", "n": 2, "nested": {"k": "v"}}


@pytest.mark.parametrize("delivery", ["stdin", "file"])
@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("json", PARAMS),
        ("yaml", PARAMS),
        ("dotenv", {"name": "O'Brien", "text": "two\nlines", "n": "2", "nested.k": "v"}),
    ],
)
async def test_run_receives_every_format_and_delivery(
    run_code: RunCode, delivery: str, fmt: str, expected: object
) -> None:
    outcome = await run_code(
        "def run(**kw):\n    return kw\n",
        params=PARAMS,
        parameter_delivery=delivery,
        parameter_format=fmt,
    )
    assert outcome.status == "completed", outcome.result
    assert outcome.result["data"] == expected


async def test_dotenv_file_can_be_sourced_by_a_shell_action(run_code: RunCode) -> None:
    outcome = await run_code(
        code("""
        set -a; . "$ATTUNE_PARAMETER_FILE"; set +a
        printf '%s|' "$name" "$n"
    """),
        runtime="shell",
        params={"name": "O'Brien $(id)", "n": 2},
        parameter_delivery="file",
        parameter_format="dotenv",
    )
    assert outcome.status == "completed", outcome.result
    assert outcome.result["stdout"] == "O'Brien $(id)|2|"


# --- timeouts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("runtime", "source"),
    [
        ("python", "import time\ntime.sleep(60)\n"),
        (
            "python",
            "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "signal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)\n",
        ),
        ("python", "while True:\n    pass\n"),
        ("shell", "trap '' TERM INT HUP\nsleep 60\n"),
    ],
    ids=["sleep", "ignores-sigterm", "busy-loop", "shell-trap"],
)
async def test_timeout_is_recorded_within_a_second_of_the_limit(
    run_code: RunCode, runtime: str, source: str
) -> None:
    started = trio.current_time()
    outcome = await run_code(source, runtime=runtime, timeout=1.5)
    elapsed = trio.current_time() - started
    assert outcome.status == "timeout"
    assert outcome.result["error"] == "Execution timed out after 1.5 seconds"
    assert outcome.result["timed_out"] is True and outcome.result["exit_code"] == -1
    assert 1.5 <= elapsed < 2.5
    assert 1500 <= outcome.result["duration_ms"] < 2500


async def test_timeout_keeps_the_partial_output(run_code: RunCode) -> None:
    outcome = await run_code(
        "import time\nprint('before', flush=True)\ntime.sleep(60)\n", timeout=1
    )
    assert outcome.status == "timeout"
    assert outcome.result["stdout"] == "before\n"


@pytest.mark.long_run
async def test_long_run_outlives_trios_helper_thread_idle_timeout(run_code: RunCode) -> None:
    """sleep 11 with a 20 s limit: --die-with-parent must not fire when a thread exits."""
    outcome = await run_code(
        "import time\ndef run():\n    time.sleep(11)\n    return 'done'\n", timeout=20
    )
    assert outcome.status == "completed", outcome.result
    assert outcome.result["data"] == "done"
    assert outcome.result["duration_ms"] >= 11000


# --- cancellation ----------------------------------------------------------------------


async def test_cancel_through_run_control(run_code: RunCode) -> None:
    mark = token()
    control = RunControl()
    outcome = None

    async def runner() -> None:
        nonlocal outcome
        outcome = await run_code(f"sleep {mark}\n", runtime="shell", timeout=30, control=control)

    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner)
        with trio.fail_after(5):
            while not with_token(mark):
                await trio.sleep(0.02)
        control.cancel()
    assert trio.current_time() - started < 3
    assert outcome is not None
    assert outcome.status == "cancelled"
    assert outcome.result["cancelled"] is True
    assert outcome.result["error"] == "Execution cancelled by user"
    assert await wait_until_gone(mark) == []


async def test_cancel_before_start_and_custom_reason(run_code: RunCode) -> None:
    control = RunControl()
    control.cancel("Worker shutting down")
    with trio.fail_after(3):
        outcome = await run_code("sleep 30\n", runtime="shell", control=control)
    assert outcome.status == "cancelled"
    assert outcome.result["error"] == "Worker shutting down"


async def test_outer_cancellation_kills_the_sandbox_and_propagates(
    run_code: RunCode, sandbox: Sandbox
) -> None:
    mark = token()
    with trio.move_on_after(0.7) as scope:
        await run_code(f"import subprocess\nsubprocess.run(['sleep', '{mark}'])\n", timeout=30)
    assert scope.cancelled_caught
    assert await wait_until_gone(mark) == []


async def test_on_output_streams_what_is_kept(run_code: RunCode) -> None:
    seen: list[tuple[str, bytes]] = []

    async def sink(stream: str, data: bytes) -> None:
        seen.append((stream, data))

    outcome = await run_code("echo out; echo err >&2", runtime="shell", on_output=sink)
    assert outcome.status == "completed"
    assert b"".join(d for s, d in seen if s == "stdout") == b"out\n"
    assert b"".join(d for s, d in seen if s == "stderr") == b"err\n"


async def test_bad_code_name_is_refused_before_anything_runs(run_code: RunCode) -> None:
    from attune.errors import ExecutionError

    with pytest.raises(ExecutionError):
        await run_code("echo hi", runtime="shell", code_name="../escape.sh")


async def test_worker_process_is_a_subreaper(sandbox: Sandbox) -> None:
    """Inits orphaned by a dead bwrap come back to the worker, which reaps them by pidfd."""
    assert sandbox.subreaper is True


async def test_bwrap_killed_from_outside_orphans_nothing(
    run_code: RunCode, sandbox: Sandbox
) -> None:
    """If bwrap itself dies (OOM killer, an operator), its init is orphaned: the worker,
    a subreaper, gets it back and reaps it through its pidfd; no zombie of the slot uid
    is left to count against RLIMIT_NPROC, and the run says how it ended."""
    mark = token()
    name = f"orphan_{mark.replace('.', '_')}.sh"
    outcome = None

    async def runner() -> None:
        nonlocal outcome
        outcome = await run_code(f"sleep {mark}\n", runtime="shell", timeout=30, code_name=name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner)
        with trio.fail_after(5):
            while (outer := outer_bwrap_of(f"sleep {mark}")) is None:
                await trio.sleep(0.02)
        os.kill(outer.pid, signal.SIGKILL)
    assert outcome is not None
    assert outcome.status == "failed"
    assert outcome.result["error"] == "Command killed by SIGKILL"
    assert await wait_until_gone(mark) == []
