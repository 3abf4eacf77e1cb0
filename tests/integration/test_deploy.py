"""Deployment shapes: the reference's shared configuration file, a worker without root."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from attune.messages import (
    EXCHANGE_EXECUTIONS,
    ExecutionRequested,
    dispatch_routing_key,
    encode_message,
)
from attune.runner import host
from tests.integration.amqp_fixtures import Collector
from tests.integration.worker_kit import ATTUNE, Stack, wait_for_file
from tests.unavailable import unavailable

pytestmark = [pytest.mark.services, pytest.mark.sandbox]

REFERENCE_CONFIG = Path(__file__).resolve().parent.parent / "unit" / "reference_config.yaml"


async def test_worker_starts_from_a_reference_shaped_config_file_and_honours_its_keys(
    stack: Stack,
) -> None:
    # The file has every section of the reference's configuration; the environment
    # (higher precedence) points it at this test's database, vhost and directories.
    worker = await stack.start_worker(
        capacity=2,
        ATTUNE_CONFIG=str(REFERENCE_CONFIG),
        ATTUNE__LOG__FORMAT="text",
        ATTUNE__LOG__LEVEL="info",
    )
    registered = next(w for w in await stack.db.list_workers() if w.name == worker.name)
    caps = registered.capabilities
    assert caps["labels"] == {"zone": "eu-1", "gpu": "none"}
    assert caps["taints"] == [{"key": "dedicated", "value": "ci", "effect": "prefer_no_schedule"}]
    assert caps["max_concurrent_executions"] == 2  # measured, not the file's capabilities
    execution_id = await stack.submit("demo.add", {"x": 2, "y": 3})
    row = await stack.wait(execution_id)
    assert row.status == "completed" and row.result["data"] == 5


async def test_an_execution_whose_action_was_deleted_gets_no_completion_message(
    stack: Stack, pg: psycopg.Connection[tuple[object, ...]], execution_events: Collector
) -> None:
    # The reference's ExecutionCompleted.action_id is required; its worker publishes no
    # completion when the action row is gone, and neither does this one.
    worker = await stack.start_worker()
    worker_id = await stack.worker_id(worker.name)
    action = await stack.db.get_action("demo.add")
    assert action is not None
    orphan = await stack.db.create_execution(action, config={"x": 1, "y": 2}, worker_id=worker_id)
    pg.execute("DELETE FROM action WHERE ref = 'demo.add'")
    message = encode_message(
        "ExecutionRequested",
        ExecutionRequested(execution_id=orphan, action_ref="demo.add", worker_id=worker_id),
        source_service="executor",
    )
    await stack.broker.publish(EXCHANGE_EXECUTIONS, dispatch_routing_key(worker_id), message)
    assert (await stack.wait(orphan)).status == "failed"
    # The outbox publishes in order: once a later run's completion has arrived, a
    # completion for the orphan would have arrived before it.
    later = await stack.submit("demo.hello", {"name": "x"})
    completed: list[dict[str, Any]] = []
    with trio.fail_after(30):
        while not any(c["execution_id"] == later for c in completed):
            body = json.loads((await execution_events.next(timeout=30)).body)
            if body["message_type"] == "ExecutionCompleted":
                completed.append(body["payload"])
    assert [c for c in completed if c["execution_id"] == orphan] == []
    statuses = [
        json.loads(d.body)["payload"]
        for d in execution_events.deliveries
        if json.loads(d.body)["message_type"] == "ExecutionStatusChanged"
    ]
    assert any(p["execution_id"] == orphan and p["new_status"] == "failed" for p in statuses)


# --- a worker without root -----------------------------------------------------------------


@pytest.fixture
def unprivileged_home() -> Iterator[tuple[int, Path]]:
    """A uid of no account and a directory it owns for runs, packs and artifacts."""
    if os.geteuid() != 0:
        pytest.skip("the test drops from root to an ordinary uid")
    blocked = host.untraversable_ancestors(ATTUNE)
    if blocked:
        unavailable(f"an ordinary uid cannot reach the worker's venv through {blocked}")
    uid = 900_000 + os.getpid() % 10_000  # outside every slot uid block of the tests
    home = Path(f"/var/lib/attune/test-nonroot-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    home.mkdir(parents=True)
    os.chmod(home.parent, 0o711)
    os.chown(home, uid, uid)
    try:
        yield uid, home
    finally:
        subprocess.run(["pkill", "-KILL", "-U", str(uid)], check=False)  # this test's uid only
        shutil.rmtree(home, ignore_errors=True)


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


async def test_a_worker_without_root_runs_actions_in_the_sandbox(
    stack: Stack, unprivileged_home: tuple[int, Path]
) -> None:
    uid, home = unprivileged_home
    packs = home / "packs"
    shutil.copytree(stack.packs_dir, packs)
    subprocess.run(["chown", "-R", f"{uid}:{uid}", str(packs)], check=True)
    worker = await stack.start_worker(
        capacity=2,
        wrapper=["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"],
        HOME=str(home),
        ATTUNE__PACKS_BASE_DIR=str(packs),
        ATTUNE__ARTIFACTS_DIR=str(home / "artifacts"),
        ATTUNE__SANDBOX__RUN_DIR=str(home / "runs"),
    )
    assert worker.proc is not None and _uid_of(worker.proc.pid) == uid
    # doctor's start-up checks say what is lost, and the worker still starts
    log = worker.log()
    assert "check=privileges status=WARN" in log and "per-slot uids" in log
    registered = next(w for w in await stack.db.list_workers() if w.name == worker.name)
    sandbox = registered.capabilities["sandbox"]
    assert sandbox["seccomp"] is True and sandbox["network_isolation"] is True
    assert sandbox["per_slot_uids"] is False and sandbox["cgroups"] is False
    python = await stack.submit("demo.add", {"x": 20, "y": 22})
    shell = await stack.submit("demo.shell_json", {"name": "nr"})
    assert (await stack.wait(python)).result["data"] == 42
    row = await stack.wait(shell)
    assert row.status == "completed" and row.result["data"]["params"]["name"] == "nr"
    artifacts = await wait_for_file(
        home / "artifacts" / worker.name / f"execution_{python}" / "result.json"
    )
    assert artifacts.stat().st_uid == uid
