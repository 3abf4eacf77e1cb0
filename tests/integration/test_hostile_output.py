"""Hostile output through a live worker: every run ends terminal and announced, and what
is stored is valid for PostgreSQL jsonb and strict JSON readers (docs/security.md
catalog rows 48-57: output, amplification and environment injection)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.integration.amqp_fixtures import Collector
from tests.integration.test_secrets import load_probe_pack
from tests.integration.worker_kit import Stack

pytestmark = [pytest.mark.services, pytest.mark.sandbox]


def meta(name: str, runner: str, entry: str, output_format: str = "text") -> str:
    return (
        f"ref: probe.{name}\nlabel: {name}\ndescription: hostile output\n"
        f"runner_type: {runner}\nentry_point: {entry}\noutput_format: {output_format}\n"
    )


BOMB = (
    'print(\'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\')\n'
    'for p, c in zip("abcdefgh", "bcdefghi"):\n'
    "    print(f\"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\")\n"
)
DEEP_RUN = "def run():\n    v = []\n    for _ in range(899):\n        v = [v]\n    return v\n"
DEEP_FILE = (
    "import os\n"
    "def run():\n"
    "    fd = os.open('/attune/out/result.json', os.O_WRONLY | os.O_CREAT, 0o600)\n"
    "    os.write(fd, b'{\"ok\": true, \"value\": ' + b'[' * 200000 + b']' * 200000 + b'}')\n"
    "    os._exit(0)\n"
)
# name -> (metadata, code file name, code)
PROBES: dict[str, tuple[str, str, str]] = {
    "nul": ("shell", "nul.sh", "printf 'a\\0b\\n'; printf 'e\\0x\\n' >&2\n"),
    "nan": ("python", "nan.py", 'print(\'{"x": NaN, "y": -Infinity, "z": 1e999}\')\n'),
    "date": (
        "python",
        "date.py",
        "print('when: 2024-01-01\\nat: !!timestamp 2024-01-01T10:00:00Z\\n"
        "bin: !!binary aGk=\\ns: !!set {a, b}\\nt: !custom x')\n",
    ),
    "deep_stdout": ("python", "deep_stdout.py", "print('[' * 100000 + ']' * 100000)\n"),
    "deep_run": ("python", "deep_run.py", DEEP_RUN),
    "deep_file": ("python", "deep_file.py", DEEP_FILE),
    "bomb": ("python", "bomb.py", BOMB),
    "lists": ("python", "lists.py", "print('[' + '[],' * (3 * 2**20) + '[]]')\n"),
    "ctrl": (
        "python",
        "ctrl.py",
        "import sys\nsys.stdout.buffer.write(b'\\x01' * (10 * 2**20))\n"
        "sys.stderr.buffer.write(b'\\x02' * (10 * 2**20))\n",
    ),
    "ps4": ("shell", "ps4.sh", 'set -x\necho "greeting=$GREETING"\n'),
}
FORMATS = {"nan": "json", "date": "yaml", "deep_stdout": "json", "bomb": "yaml", "lists": "json"}


def strict(value: Any) -> None:
    """What PostgreSQL jsonb and serde_json accept: no NaN, no NUL, UTF-8."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    text.encode("utf-8")
    assert "\\u0000" not in text


async def announced(events: Collector, ids: list[int]) -> dict[int, list[str]]:
    """execution id -> message types and statuses published for it (3 per run)."""
    seen: dict[int, list[str]] = defaultdict(list)
    for delivery in await events.take(3 * len(ids), timeout=120):
        body = msgspec.json.decode(delivery.body)
        payload = body["payload"]
        status = payload.get("new_status") or payload.get("status")
        seen[payload["execution_id"]].append(f"{body['message_type']}:{status}")
    return seen


async def test_hostile_output_ends_terminal_announced_and_storable(
    stack: Stack, execution_events: Collector, tmp_path: Path
) -> None:
    actions = {
        name: (meta(name, runner, entry, FORMATS.get(name, "text")), code)
        for name, (runner, entry, code) in PROBES.items()
    }
    await load_probe_pack(stack, tmp_path, actions)
    worker = await stack.start_worker()
    ids: dict[str, int] = {}
    for name in PROBES:
        env = (
            {
                "PS4": "$(echo INJECTED >&2; cat /attune/out/secrets.json >&2)",
                "PROMPT_COMMAND": "echo INJECTED >&2",
                "BASH_ENV": "/attune/out/parameters",
                "SHELLOPTS": "xtrace",
                "GREETING": "hi",
            }
            if name == "ps4"
            else None
        )
        ids[name] = await stack.submit(f"probe.{name}", {}, env_vars=env)
    rows = {name: await stack.wait(i, timeout=120) for name, i in ids.items()}
    for name, row in rows.items():
        strict(row.result)
        assert row.result["duration_ms"] >= 0, name
    messages = await announced(execution_events, list(ids.values()))
    for name, execution_id in ids.items():
        status = rows[name].status
        assert messages[execution_id] == [
            "ExecutionStatusChanged:running",
            f"ExecutionStatusChanged:{status}",
            f"ExecutionCompleted:{status.capitalize()}",
        ], (name, messages[execution_id])

    nul = rows["nul"]
    assert nul.status == "completed"
    assert nul.result["stdout"] == "a\ufffdb\n" and nul.result["stderr"] == "e\ufffdx\n"
    assert rows["nan"].result["data"] == {"x": "NaN", "y": "-Infinity", "z": "Infinity"}
    assert rows["date"].status == "completed", rows["date"].result
    assert rows["date"].result["data"] == {
        "when": "2024-01-01",
        "at": "2024-01-01T10:00:00+00:00",
        "bin": "aGk=",
        "s": ["a", "b"],
        "t": "x",
    }
    for name in ("deep_stdout", "deep_run", "deep_file"):
        assert rows[name].status == "failed", name
        assert "nested deeper than 100 levels" in rows[name].result["error"], name
    assert rows["bomb"].status == "failed"
    assert "aliases expanded" in rows["bomb"].result["error"]
    assert rows["lists"].status == "failed"
    assert "more than 250000 values" in rows["lists"].result["error"]
    ctrl = rows["ctrl"]
    assert ctrl.status == "completed" and ctrl.result["stdout_truncated"] is True
    for stream in ("stdout", "stderr"):  # bounded once stored, not only as raw bytes
        stored = json.dumps(ctrl.result[stream], ensure_ascii=False).encode()
        assert len(stored) <= 10 * 2**20 + 100
    ps4 = rows["ps4"]
    assert ps4.status == "completed", ps4.result
    assert ps4.result["stdout"] == "greeting=hi\n"
    assert "INJECTED" not in json.dumps(ps4.result)
    assert "+ echo greeting=hi" in ps4.result["stderr"]  # set -x ran, with the default PS4
    # the worker kept serving and its artifacts are bounded like the result
    result_file = await stack.result_file(worker, ids["ctrl"])
    assert result_file.stat().st_size < 25 * 2**20
    strict(json.loads(result_file.read_text()))
