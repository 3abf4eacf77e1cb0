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


async def test_artifact_files_are_0640_in_0750_directories_whatever_the_umask(
    tmp_path: Path,
) -> None:
    old = os.umask(0)
    try:
        store = ArtifactStore(tmp_path / "artifacts", "w1")
        fresh = store.open_run(10)  # creates artifacts/, w1/ and execution_10/
        fresh.close()
        directory = store.path_for(9)
        directory.mkdir(parents=True)
        (directory / "stdout.log").write_text("from an earlier attempt")
        os.chmod(directory / "stdout.log", 0o666)  # an old mode is not kept
        os.chmod(directory, 0o777)
        run = store.open_run(9)
        await run.write("stdout", b"out\n")
        run.write_result("completed", {"succeeded": True})
        run.close()
    finally:
        os.umask(old)
    for name in ("stdout.log", "stderr.log", "result.json"):
        assert oct((directory / name).stat().st_mode & 0o777) == oct(0o640), name
    for created in (tmp_path / "artifacts", store.root, store.path_for(10), directory):
        assert oct(created.stat().st_mode & 0o777) == oct(0o750), created
    await trio.sleep(0)
