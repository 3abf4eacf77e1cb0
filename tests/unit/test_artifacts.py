"""Artifact directories: live logs, the result file, and retention by age and count."""

from __future__ import annotations

import json
import os
from pathlib import Path

import trio

from attune.artifacts import ArtifactStore


async def test_run_artifacts_hold_streamed_logs_and_the_result(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, "w1")
    run = store.open_run(7)
    await run.write("stdout", b"hello ")
    await run.write("stdout", b"world\n")
    await run.write("stderr", b"warn\n")
    run.write_result("completed", {"succeeded": True, "data": 3})
    run.close()
    directory = tmp_path / "w1" / "execution_7"
    assert (directory / "stdout.log").read_text() == "hello world\n"
    assert (directory / "stderr.log").read_text() == "warn\n"
    assert json.loads((directory / "result.json").read_text()) == {
        "status": "completed",
        "result": {"succeeded": True, "data": 3},
    }
    await trio.sleep(0)


def _aged(store: ArtifactStore, execution_id: int, age_seconds: float, now: float) -> Path:
    path = store.path_for(execution_id)
    path.mkdir(parents=True)
    os.utime(path, (now - age_seconds, now - age_seconds))
    return path


def test_retention_prunes_by_age_then_keeps_the_newest_by_count(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, "w1")
    now = 1_000_000.0
    old = _aged(store, 1, 8 * 86400, now)
    recent = [_aged(store, i, i * 10, now) for i in range(2, 7)]
    removed = store.prune(max_age_seconds=7 * 86400, max_count=3, now=now)
    assert removed == 3
    assert not old.exists()
    assert [p.exists() for p in recent] == [True, True, True, False, False]


def test_retention_of_a_missing_directory_removes_nothing(tmp_path: Path) -> None:
    assert ArtifactStore(tmp_path / "none", "w").prune(max_age_seconds=1, max_count=1) == 0
