"""Hostile inputs and outputs through a real sandbox and `attune exec` (docs/security.md
catalog rows 48-61: environment injection, parameter size, the result channel, bombs in
output and metadata)."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio

from attune.params import context_env
from tests.sandbox.conftest import RunCode

pytestmark = pytest.mark.sandbox

REPO = Path(__file__).resolve().parents[2]
ATTUNE = str(REPO / ".venv/bin/attune")
INJECT = "$(echo INJECTED >&2)"


def ctx(env_vars: dict[str, Any]) -> dict[str, str]:
    return context_env(
        exec_id="t",
        action_ref="tests.action",
        pack_ref="tests",
        delivery="stdin",
        fmt="json",
        env_vars=env_vars,
    )


# --- environment injection ------------------------------------------------------------


async def test_ps4_in_env_vars_runs_nothing_under_set_x(run_code: RunCode) -> None:
    code = 'set -x\necho "greeting=$GREETING"\n'
    # The attack is real: handed to bash directly, PS4 runs the caller's command ...
    raw = await run_code(code, runtime="shell", env={"PS4": INJECT, "GREETING": "hi"})
    assert "INJECTED" in raw.result["stderr"]
    # ... and through the execution's env_vars it never reaches the sandbox.
    env_vars = {
        "PS4": INJECT,
        "PS1": INJECT,
        "PROMPT_COMMAND": "echo INJECTED >&2",
        "BASH_ENV": "/attune/out/parameters",
        "ENV": "/attune/out/parameters",
        "SHELLOPTS": "xtrace",
        "GREETING": "hi",
    }
    outcome = await run_code(code, runtime="shell", env=ctx(env_vars), params={"x": INJECT})
    assert outcome.status == "completed", outcome.result
    assert outcome.result["stdout"] == "greeting=hi\n"
    assert "INJECTED" not in outcome.result["stderr"]
    assert outcome.result["stderr"] == "+ echo greeting=hi\n"


async def test_interpreter_steering_variables_never_reach_the_action(run_code: RunCode) -> None:
    refused = [
        "PS4", "IFS", "GLOBIGNORE", "LD_PRELOAD", "GCONV_PATH", "LOCPATH", "HOSTALIASES",
        "PYTHONSTARTUP", "PERL5OPT", "RUBYOPT", "NODE_OPTIONS", "JAVA_TOOL_OPTIONS",
        "OPENSSL_CONF", "LESSOPEN", "EDITOR", "TZ", "LC_ALL",
    ]  # fmt: skip
    env = ctx({**{name: "x" for name in refused}, "APP_MODE": "fast"})
    outcome = await run_code(
        "import json, os\nprint(json.dumps(sorted(os.environ)))\n", env=env, output_format="json"
    )
    seen = set(outcome.result["data"])
    assert "APP_MODE" in seen
    assert not seen & set(refused)


# --- parameters larger than the environment can hold --------------------------------


async def test_a_140_kb_shell_parameter_runs_and_stays_on_stdin(run_code: RunCode) -> None:
    big = "x" * 140_000
    outcome = await run_code(
        textwrap.dedent("""
            echo "env=${#PARAM_BIG} small=$PARAM_SMALL out=$ATTUNE_PARAMS_NOT_IN_ENV"
            read -r line; echo "stdin=${#line}"
        """),
        runtime="shell",
        params={"big": big, "small": "s"},
    )
    assert outcome.status == "completed", outcome.result
    lines = outcome.result["stdout"].splitlines()
    assert lines[0] == "env=0 small=s out=big"
    assert lines[1] == f"stdin={len(json.dumps({'big': big, 'small': 's'}, separators=(',', ':')))}"


# --- the result channel --------------------------------------------------------------


async def test_the_result_path_is_a_file_on_the_runs_own_tmpfs(run_code: RunCode) -> None:
    """No host path: /attune/out is a tmpfs of the sandbox, result.json the wrapper's."""
    outcome = await run_code(
        "import os\n"
        "def run():\n"
        "    mounts = [l.split() for l in open('/proc/self/mounts')]\n"
        "    return {'exists': os.path.lexists('/attune/out/result.json'),\n"
        "            'fs': [m[2] for m in mounts if m[1] == '/attune/out']}\n"
    )
    assert outcome.result["data"] == {"exists": False, "fs": ["tmpfs"]}


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        # fits in the out tmpfs's slack: forwarded, one byte over the limit is enough
        (10_000, "result exceeds the 1048576 byte limit"),
        # larger than the out tmpfs: ENOSPC in the wrapper
        (3 * 2**20, "The return value is larger than the result size limit"),
    ],
)
async def test_a_return_value_over_the_limit_is_a_clear_error(
    run_code: RunCode, extra: int, error: str
) -> None:
    outcome = await run_code(f"def run():\n    return 'x' * ({2**20} + {extra})\n")
    assert outcome.status == "failed"
    assert outcome.result["error"] == error


async def test_a_script_writing_the_result_path_endlessly_stores_nothing(
    run_code: RunCode, sandbox: Any
) -> None:
    """64 MiB into the result path: the out tmpfs is full past the limit plus slack
    (memory of the run, never the host's disk)."""
    outcome = await run_code(
        "import errno, os\n"
        "fd = os.open('/attune/out/result.json', os.O_WRONLY | os.O_CREAT, 0o600)\n"
        "n = 0\n"
        "try:\n"
        "    for _ in range(64):\n"
        "        n += os.write(fd, b'x' * 2**20)\n"
        "except OSError as exc:\n"
        "    print(errno.errorcode[exc.errno], n <= 2**20 + 65536)\n",
        output_format="text",
    )
    assert outcome.status == "completed" and outcome.result["stdout"] == "ENOSPC True\n"


# --- attune exec: valid JSON and the right exit code, whatever the action wrote ---------


async def exec_cli(tmp: Path, name: str, code: str, *args: str) -> tuple[int, Any, str]:
    path = tmp / name
    path.write_text(code)
    proc = await trio.run_process(
        [ATTUNE, "exec", str(path), *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**os.environ, "ATTUNE__SANDBOX__RUN_DIR": str(tmp / "runs")},
    )
    stdout = proc.stdout.decode()
    data = (
        json.loads(stdout, parse_constant=lambda c: pytest.fail(f"{c} printed")) if stdout else None
    )
    return proc.returncode, data, proc.stderr.decode()


@pytest.fixture
def exec_dir() -> Any:
    base = Path("/var/lib/attune/test-runs") if os.geteuid() == 0 else None
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="exec-", dir=base))
    os.chmod(path, 0o711)
    yield path
    import shutil

    shutil.rmtree(path, ignore_errors=True)


RUN_900 = "def run():\n    v = []\n    for _ in range(899):\n        v = [v]\n    return v\n"


@pytest.mark.parametrize(
    ("name", "code", "args", "rc", "check"),
    [
        ("nul.sh", "printf 'a\\0b'\n", (), 0, lambda r: r["stdout"] == "a\ufffdb"),
        ("nan.py", "print('[NaN, Infinity]')\n", (), 0, lambda r: r["data"] == ["NaN", "Infinity"]),
        ("date.py", "print('d: 2024-01-01')\n", ("--output-format", "yaml"), 0,
         lambda r: r["data"] == {"d": "2024-01-01"}),
        ("deep.py", "print('[' * 100000 + ']' * 100000)\n", (), 1,
         lambda r: "nested deeper than 100" in r["error"]),
        ("run900.py", RUN_900, (), 1, lambda r: "nested deeper than 100" in r["error"]),
        ("surrogate.py", "def run():\n    return {'\\ud800k': 'x\\udfff'}\n", (), 0,
         lambda r: r["data"] == {"\ufffdk": "x\ufffd"}),
        ("surrogate_json.py", "print('\"\\\\ud800\"')\n", (), 0, lambda r: r["data"] == "\ufffd"),
    ],
    ids=lambda v: v if isinstance(v, str) and "." in v else None,
)  # fmt: skip
async def test_attune_exec_prints_valid_json_and_the_exit_code(
    exec_dir: Path, name: str, code: str, args: tuple[str, ...], rc: int, check: Any
) -> None:
    code_rc, result, stderr = await exec_cli(exec_dir, name, code, *args)
    assert code_rc == rc, (result, stderr)
    assert "Traceback" not in stderr
    assert check(result), result


LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [
        f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    ]
)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        (LAUGHS + "\n", "aliases expanded"),
        ("parameters: " + "{a: " * 70 + "1" + "}" * 70 + "\n", "nested deeper than 64 levels"),
        ("timeout: -1\n", "timeout: must be a positive number of seconds"),
        ("timeout: .inf\n", "timeout: must be a positive number of seconds"),
        ("output_format: xml\n", "must be one of text, json, yaml, jsonl"),
    ],
    ids=["alias-bomb", "deep", "timeout-negative", "timeout-inf", "bad-format"],
)
async def test_attune_exec_refuses_bad_metadata_fast(
    exec_dir: Path, metadata: str, message: str
) -> None:
    (exec_dir / "a.yaml").write_text(metadata)
    with trio.fail_after(30):
        rc, result, stderr = await exec_cli(exec_dir, "a.py", "print(1)\n")
    assert rc == 2 and result is None
    assert message in stderr and "Traceback" not in stderr


async def test_attune_exec_refuses_an_alias_bomb_in_a_parameter_file(exec_dir: Path) -> None:
    (exec_dir / "p.yaml").write_text(LAUGHS + "\n")
    rc, _, stderr = await exec_cli(
        exec_dir, "a.py", "print(1)\n", "--params-file", str(exec_dir / "p.yaml")
    )
    assert rc == 2 and "aliases expanded" in stderr


async def test_attune_exec_refuses_deep_json_parameters(exec_dir: Path) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    rc, _, stderr = await exec_cli(exec_dir, "a.py", "print(1)\n", "--params-json", '{"a": 1}')
    assert rc == 0
    (exec_dir / "p.json").write_text('{"a": ' + deep + "}")
    rc, _, stderr = await exec_cli(
        exec_dir, "a.py", "print(1)\n", "--params-file", str(exec_dir / "p.json")
    )
    assert rc == 2 and "nested deeper" in stderr and "Traceback" not in stderr
