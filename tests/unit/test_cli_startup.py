"""What `attune` costs to start: no service or metrics library at import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def test_the_cli_imports_no_service_or_metrics_library_at_start_up() -> None:
    code = (
        "import sys, attune.cli; heavy = ('prometheus_client', 'psycopg', 'aio_pika', "
        "'yaml', 'trio_asyncio'); print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "[]"
