"""Deployment shapes: the reference's shared configuration file, a worker without root."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.worker_kit import Stack

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
