"""The operator views of `attune workers` and `attune executions`: pure rendering."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

from attune.cli.ops_cmd import (
    LiveView,
    age_text,
    execution_view,
    render_table,
    worker_view,
    workers_table,
)
from attune.models import Execution, Worker


def _worker(beat: datetime | None, status: str = "active") -> Worker:
    return Worker(
        id=3,
        name="w-a",
        worker_type="local",
        status=status,
        capabilities={
            "runtimes": ["python", "shell"],
            "max_concurrent_executions": 4,
            "worker_version": "0.1.0",
        },
        last_heartbeat=beat,
        running=1,
    )


def test_a_worker_view_has_heartbeat_age_load_and_staleness() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    fresh = worker_view(_worker(now - timedelta(seconds=5)), now)
    assert fresh["heartbeat_age_seconds"] == 5 and not fresh["stale"]
    assert (fresh["running"], fresh["capacity"]) == (1, 4)
    assert fresh["runtimes"] == ["python", "shell"]
    assert fresh["egress"] is False  # not advertised: no egress actions go there
    stale = worker_view(_worker(now - timedelta(seconds=300)), now)
    assert stale["stale"]
    table = workers_table([fresh, stale])
    assert "5s ago" in table and "5m ago (stale)" in table and "1/4" in table
    assert worker_view(_worker(None), now)["stale"]


def test_ages_read_naturally() -> None:
    assert [age_text(s) for s in (None, -3, 59, 600, 10800, 864000)] == [
        "never",
        "0s ago",
        "59s ago",
        "10m ago",
        "3h ago",
        "10d ago",
    ]


def test_tables_align_columns_and_right_align_numbers() -> None:
    text = render_table(["ID", "NAME"], [["7", "a"], ["123", "bb"]], right={0})
    assert text.splitlines() == [" ID  NAME", "  7  a", "123  bb"]


def test_an_execution_view_names_its_worker_and_leaves_env_values_out() -> None:
    e = Execution(
        id=9,
        action=1,
        action_ref="demo.add",
        config={"x": 1},
        env_vars={"TOKEN": "s3cret"},
        worker=3,
        status="completed",
        result={"duration_ms": 12},
        started_at=None,
        timeout_seconds=None,
        created=datetime(2026, 1, 1, tzinfo=UTC),
    )
    view = execution_view(e, {3: "w-a"})
    assert view["worker"] == "w-a" and view["duration_ms"] == 12
    assert "s3cret" not in json.dumps(view)


def test_the_live_view_never_draws_the_clock_inside_a_line_of_output() -> None:
    out = io.BytesIO()
    ticks = iter([0.0, 1.0, 2.0, 3.5])
    view = LiveView(out, label="execution 1", clock=lambda: next(ticks))
    view.tick("running")  # at 1.0 s
    view.output("stdout", b"partial")  # the clock line is erased first
    view.tick("running")  # mid-line: not drawn (no clock read)
    view.output("stderr", b" line\n")
    view.tick("running")  # at 2.0 s
    view.done("completed")  # at 3.5 s
    text = out.getvalue().decode()
    assert text == (
        "execution 1: running 1.0s\r\x1b[Kpartial line\n"
        "execution 1: running 2.0s\r\x1b[Kexecution 1: completed after 3.50s\n"
    )
