"""Per-pack Python environments through the worker: built on pack.registered, used, removed."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from attune import pack_env
from attune.config import Config, load_config
from attune.messages import (
    EXCHANGE_EVENTS,
    PACK_DELETED,
    ROUTING_PACK_DELETED,
    PackDeleted,
    encode_message,
)
from attune.pack_events import publish_registered
from attune.pip_config import settings_from
from tests.integration.worker_kit import Stack, WorkerProcess
from tests.sandbox.helpers import make_wheel

pytestmark = pytest.mark.services

REPO = Path(__file__).resolve().parents[2]
REPORT = REPO / "examples" / "packs" / "report"


@pytest.fixture
def reachable_dirs() -> Iterator[tuple[Path, Path]]:
    """(wheels, runtime_envs_dir) where the build uid can reach them, and a local wheel."""
    root = Path(tempfile.mkdtemp(prefix="attune-envs-test-"))
    root.chmod(0o755)
    wheels, envs = root / "wheels", root / "envs"
    make_wheel(wheels)
    wheels.chmod(0o755)
    try:
        yield wheels, envs
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def _wait_log(worker: WorkerProcess, needle: str, count: int = 1) -> None:
    with trio.fail_after(120):
        while worker.log().count(needle) < count:
            await trio.sleep(0.1)


def _config(stack: Stack, envs: Path) -> Config:
    return load_config(
        None,
        {"ATTUNE__PACKS_BASE_DIR": str(stack.packs_dir), "ATTUNE__RUNTIME_ENVS_DIR": str(envs)},
    )


async def test_example_pack_runs_with_its_dependency_from_the_pack_environment(
    stack: Stack, reachable_dirs: tuple[Path, Path]
) -> None:
    wheels, envs = reachable_dirs
    await stack.load_pack(REPORT)
    worker = await stack.start_worker(
        ATTUNE__RUNTIME_ENVS_DIR=str(envs), PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels)
    )
    # Not built yet: the run fails with the reason, it never runs without its dependency.
    early = await stack.wait(await stack.submit("report.render", {"name": "pack"}))
    assert early.status == "failed"
    assert "environment not ready for pack report" in early.result["error"]
    assert "has not been built" in early.result["error"]

    await publish_registered(stack.broker, 1, "report", "1.0.0", ["python"])
    await _wait_log(worker, "event=pack_event_handled")
    assert "report: ready" in worker.log()
    status = pack_env.status(envs, "report", stack.packs_dir / "report")
    assert status.state == "ready" and status.path is not None

    row = await stack.wait(await stack.submit("report.render", {"name": "pack"}))
    assert row.status == "completed", row.result
    assert row.result["data"]["text"] == "HELLO, PACK!"  # data file + lib/ + the dependency
    assert row.result["data"]["dependency"].startswith(f"{status.path}/lib/")

    # pack.deleted removes the pack's environments.
    deleted = encode_message(PACK_DELETED, PackDeleted(pack_id=1, pack_ref="report"))
    await stack.broker.publish(EXCHANGE_EVENTS, ROUTING_PACK_DELETED, deleted)
    await _wait_log(worker, "event=pack_event_handled", 2)
    assert not status.path.exists()
    assert pack_env.status(envs, "report", stack.packs_dir / "report").state == "missing"


async def test_environment_is_rebuilt_only_when_the_manifest_changes(
    stack: Stack, reachable_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    wheels, envs = reachable_dirs
    await stack.load_pack(REPORT)
    cfg = _config(stack, envs)
    pip = settings_from({"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels)}, {})
    cold = await pack_env.build(cfg, "report", stack.packs_dir / "report", pip=pip)
    warm = await pack_env.build(cfg, "report", stack.packs_dir / "report", pip=pip)
    assert (cold.built, warm.built) == (True, False)
    assert cold.status == warm.status and cold.status.state == "ready"
    # A new pack version with other requirements gets another environment directory.
    changed = tmp_path / "report"
    shutil.copytree(REPORT, changed)
    (changed / "requirements.txt").write_text("attune-example-dep>=1.0\n")
    await stack.load_pack(changed)
    again = await pack_env.build(cfg, "report", stack.packs_dir / "report", pip=pip)
    assert again.built and again.status.path != cold.status.path
