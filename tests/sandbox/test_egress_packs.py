"""A shell action shaped like the reference's core.http_request, through egress.

curl, dotenv parameters on stdin (nested `headers` flattened as `headers.<name>`), one
JSON object on stdout, against the test world's HTTP server (tests/sandbox/networld.py).
"""

from __future__ import annotations

from pathlib import Path

from tests.sandbox.networld import WEB4, World
from tests.sandbox.test_egress import world  # noqa: F401  (the world fixture)

HTTP_REQUEST = (
    Path(__file__).resolve().parents[1] / "packs" / "fullformat" / "actions" / "http_request.sh"
)


def test_http_request_shaped_action_fetches_through_egress(world: World) -> None:  # noqa: F811
    out = world.run(
        HTTP_REQUEST,
        "--network",
        "egress",
        "--params-json",
        f'{{"url": "http://{WEB4}:8000/status", "headers": {{"X-Probe": "attune"}}}}',
    )
    assert out["status"] == "completed", out
    data = out["result"]["data"]
    assert data["status_code"] == 200 and data["success"] is True
    assert data["body"].startswith(f"hello from {WEB4} (GET /status HTTP/1.1)")
    assert any(f"HTTP {WEB4} GET /status" in line for line in world.log_lines())
    assert world.stray() == 0
