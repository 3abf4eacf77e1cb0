"""The core.http_request-shaped action runs through a real worker with egress.

`attune run-worker` runs in the fake host of tests/sandbox/networld.py (its only way
out is the veth into the fake internet, whose stray counter sees every packet not for a
test server). The worker reaches this host's PostgreSQL and RabbitMQ through a
test-only relay (tests/sandbox/netns_relay.py) listening on the fake host's 127.0.0.1:
no route, no outside address. The action, a copy of the fullformat pack's
http_request with `network: egress`, fetches from the test HTTP server.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.integration.worker_kit import Stack
from tests.sandbox.networld import WEB4, World
from tests.sandbox.test_egress import world  # noqa: F401  (the world fixture)

pytestmark = pytest.mark.services

FULL = Path(__file__).resolve().parents[1] / "packs" / "fullformat"
RELAY = Path(__file__).resolve().parents[1] / "sandbox" / "netns_relay.py"
PG_RELAY, AMQP_RELAY = 15432, 15672  # 5432 of the fake host is its stand-in PostgreSQL


def _relayed(url: str, port: int) -> tuple[str, str]:
    """The URL as the worker in the fake host uses it, and the relay's target."""
    parts = urlsplit(url)
    target = f"{parts.hostname}:{parts.port}"
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    new = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
    return urlunsplit(parts._replace(netloc=new)), target


@pytest.fixture
def relayed(stack: Stack, world: World) -> Iterator[tuple[str, str]]:  # noqa: F811
    """(database URL, AMQP URL) usable inside the fake host."""
    db_url, db_target = _relayed(stack.db_url, PG_RELAY)
    amqp_url, amqp_target = _relayed(stack.amqp_url, AMQP_RELAY)
    ports = [f"{PG_RELAY}:{db_target}", f"{AMQP_RELAY}:{amqp_target}"]
    relay = subprocess.Popen(
        [sys.executable, str(RELAY), f"/run/netns/{world.host}", *ports],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert relay.stdout is not None and relay.stdout.readline().strip() == "ready"
        yield db_url, amqp_url
    finally:
        for worker in stack.workers:  # before the relay goes
            worker.kill()
        relay.kill()
        relay.wait()


async def test_http_request_shaped_action_runs_through_the_worker_with_egress(
    stack: Stack,
    world: World,  # noqa: F811
    relayed: tuple[str, str],
) -> None:
    pack = stack.root / "fullformat"
    shutil.copytree(FULL, pack)
    yaml = pack / "actions" / "http_request.yaml"
    yaml.write_text(yaml.read_text() + "network: egress\n")
    await stack.load_pack(pack)
    stray = world.stray()
    db_url, amqp_url = relayed
    await stack.start_worker(
        wrapper=["ip", "netns", "exec", world.host],
        ATTUNE__DATABASE__URL=db_url,
        ATTUNE__MESSAGE_QUEUE__URL=amqp_url,
        ATTUNE__NETWORK__EGRESS="true",
    )
    ok = {"url": f"http://{WEB4}:8000/status", "headers": {"X-Probe": "worker"}}
    row = await stack.wait(await stack.submit("fullformat.http_request", ok), timeout=60)
    print("through the worker:", json.dumps(row.result)[:400])
    assert row.status == "completed", row.result
    data = row.result["data"]
    assert data["status_code"] == 200 and data["success"] is True
    assert data["body"].startswith(f"hello from {WEB4} (GET /status HTTP/1.1)")
    assert any(f"HTTP {WEB4} GET /status" in line for line in world.log_lines())
    # The relay's port on the fake host's loopback (the worker's own database) is not.
    db = {"url": f"http://127.0.0.1:{PG_RELAY}/", "timeout": 5}
    row = await stack.wait(await stack.submit("fullformat.http_request", db), timeout=60)
    assert row.status == "failed", row.result
    assert json.loads(row.result["stdout"])["error"] == "curl error code 7", row.result
    assert world.stray() == stray
