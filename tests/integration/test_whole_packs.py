"""Actions run inside their whole pack: lib/ importable, files by relative path, keys honoured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.worker_kit import Stack

pytestmark = pytest.mark.services

FULL = Path(__file__).resolve().parents[1] / "packs" / "fullformat"


async def test_python_action_imports_lib_and_reads_pack_files_by_relative_path(
    stack: Stack,
) -> None:
    await stack.load_pack(FULL)
    await stack.start_worker()
    execution_id = await stack.submit("fullformat.everything", {"name": "pack"})
    row = await stack.wait(execution_id)
    assert row.status == "completed", row.result
    data = row.result["data"]
    assert data["greeting"] == "hello pack!"  # lib/fullformat_helpers.py + data/suffix.txt
    assert data["cwd"] == str((stack.packs_dir / "fullformat").resolve())


async def test_disabled_action_is_refused_with_a_clear_error(stack: Stack) -> None:
    await stack.load_pack(FULL)
    await stack.start_worker()
    row = await stack.wait(await stack.submit("fullformat.disabled", {}))
    assert row.status == "failed"
    assert "disabled" in row.result["error"] and "enabled: false" in row.result["error"]


async def test_http_request_shaped_shell_action_reads_dotenv_and_prints_json(
    stack: Stack,
) -> None:
    # No egress here: curl cannot connect, and the action reports that as its JSON.
    await stack.load_pack(FULL)
    await stack.start_worker()
    params = {"url": "http://127.0.0.1:9/", "headers": {"X-Test": "1"}, "timeout": 2}
    row = await stack.wait(await stack.submit("fullformat.http_request", params))
    assert row.status == "failed", row.result
    # Like the reference, a failed run's stdout is not parsed: the JSON is in stdout.
    assert json.loads(row.result["stdout"]) == {
        "status_code": 0,
        "body": "",
        "success": False,
        "error": "curl error code 7",
    }, row.result
