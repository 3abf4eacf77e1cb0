"""`network: egress` through the worker: metadata, capabilities, scheduling, refusal.

The egress runs here never open a connection (the host's real network is outside the
test's namespaces): they only look at their own interfaces. What egress lets through and
refuses is tested in tests/sandbox/test_egress.py, inside namespaces.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from attune.errors import TransientError
from attune.runner import host
from tests.integration.worker_kit import Stack
from tests.unavailable import unavailable

pytestmark = [pytest.mark.services, pytest.mark.sandbox]

IFACES = """
def run():
    return sorted(line.split(":")[0].strip() for line in open("/proc/net/dev").readlines()[2:])
"""


def write_pack(root: Path) -> Path:
    pack = root / "netpack"
    (pack / "actions").mkdir(parents=True)
    (pack / "pack.yaml").write_text(
        "ref: netpack\nlabel: Net\ndescription: egress\nversion: 1.0.0\nnetwork: egress\n"
    )
    for name, extra in (("fetch", ""), ("local", "network: none\n")):
        (pack / "actions" / f"{name}.py").write_text(IFACES)
        (pack / "actions" / f"{name}.yaml").write_text(
            f"ref: netpack.{name}\nlabel: {name}\ndescription: d\nrunner_type: python\n"
            f"entry_point: {name}.py\noutput_format: json\n{extra}"
        )
    return pack


async def dispatch_to(stack: Stack, ref: str, worker_id: int) -> int:
    """Schedule on a chosen worker, bypassing the egress check of `attune submit`."""
    action = await stack.db.get_action(ref)
    assert action is not None
    execution_id = await stack.db.create_execution(action, config={}, worker_id=worker_id)
    await stack.dispatch(execution_id, ref, worker_id)
    return execution_id


async def test_pack_network_key_reaches_the_action_rows(stack: Stack) -> None:
    await stack.load_pack(write_pack(stack.root))
    fetch = await stack.db.get_action("netpack.fetch")
    local = await stack.db.get_action("netpack.local")
    assert fetch is not None and fetch.network == "egress"  # the pack's default
    assert local is not None and local.network == "none"  # the action's own key wins
    demo = await stack.db.get_action("demo.add")
    assert demo is not None and demo.network == "none"


async def test_egress_action_fails_unrun_on_a_worker_that_does_not_offer_it(
    stack: Stack,
) -> None:
    await stack.load_pack(write_pack(stack.root))
    worker = await stack.start_worker(capacity=1)
    worker_id = await stack.worker_id(worker.name)
    row = next(w for w in await stack.db.list_workers() if w.id == worker_id)
    assert row.capabilities["egress"] is False
    with pytest.raises(TransientError, match="offers egress"):
        await stack.submit("netpack.fetch")
    execution = await stack.wait(await dispatch_to(stack, "netpack.fetch", worker_id))
    assert execution.status == "failed"
    assert "does not offer egress" in execution.result["error"]
    assert "exit_code" not in execution.result  # it never ran
    local = await stack.wait(await stack.submit("netpack.local"))
    assert local.status == "completed" and local.result["data"] == ["lo"]


async def test_submit_sends_egress_actions_to_a_worker_offering_egress(stack: Stack) -> None:
    ok, detail = host.egress_detail()
    if not ok or not host.detect(probe_version=False).is_root:
        unavailable(f"egress unavailable on this host: {detail}")
    await stack.load_pack(write_pack(stack.root))
    await stack.start_worker(capacity=1)
    offering = await stack.start_worker(capacity=1, ATTUNE__NETWORK__EGRESS="true")
    offering_id = await stack.worker_id(offering.name)
    row = next(w for w in await stack.db.list_workers() if w.id == offering_id)
    assert row.capabilities["egress"] is True
    for _ in range(3):
        execution = await stack.wait(await stack.submit("netpack.fetch"))
        assert execution.worker == offering_id
        assert execution.status == "completed", execution.result
        assert execution.result["data"] == ["lo", "tap0"]
