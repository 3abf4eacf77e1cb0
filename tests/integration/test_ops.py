"""Operating the worker: doctor, metrics, workers/executions views, live output, JSON logs.

Everything against a real `attune run-worker` process, real PostgreSQL and RabbitMQ, and
the real CLI as an operator would run it.
"""

from __future__ import annotations

import json
import os
import pty
import pwd
import signal
import socket
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from attune.messages import (
    EXCHANGE_EXECUTIONS,
    ExecutionCancelRequested,
    OutgoingMessage,
    cancel_routing_key,
    dispatch_routing_key,
    encode_message,
)
from tests.integration.worker_kit import ATTUNE, REPO, Stack, WorkerProcess

pytestmark = [pytest.mark.services, pytest.mark.sandbox]

# A pack of our own: output that arrives over time, and output past the 10 MiB cap.
OPS_PACK = {
    "pack.yaml": "ref: ops\nlabel: Ops\ndescription: actions for the operator tests\n"
    "version: 1.0.0\n",
    "actions/ticker.yaml": "ref: ops.ticker\nlabel: Ticker\ndescription: output over time\n"
    "runner_type: shell\nentry_point: ticker.sh\ntimeout: 30\n",
    "actions/ticker.sh": "echo 'tick 1'\nsleep 2\necho 'tick 2'\necho warn >&2\n",
    "actions/waiter.yaml": "ref: ops.waiter\nlabel: Waiter\ndescription: one line, then waits\n"
    "runner_type: shell\nentry_point: waiter.sh\ntimeout: 120\n",
    "actions/waiter.sh": "echo 'tick 1'\nsleep 100\necho 'never'\n",
    "actions/big.yaml": "ref: ops.big\nlabel: Big\ndescription: 11 MiB of stdout\n"
    "runner_type: python\nentry_point: big.py\ntimeout: 30\n"
    "output_format: text\n",
    "actions/big.py": "import sys\nsys.stdout.write('x' * (11 * 1024 * 1024))\n",
}
CAP = 10 * 1024 * 1024


async def _load_ops_pack(stack: Stack) -> None:
    root = stack.root / "ops-src"
    for name, text in OPS_PACK.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    await stack.load_pack(root)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _cli(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [ATTUNE, *args],
        env=stack.env(**env),
        cwd=REPO,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )


async def _cli_json(stack: Stack, *args: str) -> Any:
    done = await _cli(stack, *args, "--json")
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def _http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def _garbage_dispatch(stack: Stack, worker_name: str) -> None:
    worker_id = await stack.worker_id(worker_name)
    msg = OutgoingMessage(body=b"not json at all", message_id=str(uuid.uuid4()), correlation_id="c")
    await stack.broker.publish(EXCHANGE_EXECUTIONS, dispatch_routing_key(worker_id), msg)


# --- metrics -----------------------------------------------------------------------------


async def test_metrics_endpoint_counts_executions_heartbeats_dead_letters_and_truncation(
    stack: Stack,
) -> None:
    await _load_ops_pack(stack)
    port = _free_port()
    worker = await stack.start_worker(ATTUNE__WORKER__METRICS_PORT=str(port))
    url = f"http://127.0.0.1:{port}"
    before = _samples((await trio.to_thread.run_sync(_http_get, url + "/metrics"))[1])
    assert before[("attune_capacity", frozenset())] == 4
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("demo.add", {"x": 1, "y": 2}, "completed"),
        ("demo.fail", {"message": "boom"}, "failed"),
        ("ops.big", {}, "completed"),
    ]
    for ref, params, status in cases:
        row = await stack.wait(await stack.submit(ref, params))
        assert row.status == status, (ref, row.result)
    await _garbage_dispatch(stack, worker.name)
    await worker.wait_log("event=dispatch_rejected")
    heartbeat_ok = ("attune_heartbeats_total", frozenset({("outcome", "ok")}))
    with trio.fail_after(20):  # the heartbeat interval is 1 s: wait for the first one
        while True:
            code, text = await trio.to_thread.run_sync(_http_get, url + "/metrics")
            assert code == 200
            s = _samples(text)
            if s.get(heartbeat_ok, 0) >= 1:
                break
            await trio.sleep(0.2)
    assert (
        s[("attune_executions_total", frozenset({("status", "completed"), ("runtime", "python")}))]
        == 2
    )
    assert (
        s[("attune_executions_total", frozenset({("status", "failed"), ("runtime", "python")}))]
        == 1
    )
    assert s[("attune_execution_duration_seconds_count", frozenset({("runtime", "python")}))] == 3
    assert s[("attune_sandbox_overhead_seconds_count", frozenset({("runtime", "python")}))] == 3
    assert (
        s[("attune_output_truncated_bytes_total", frozenset({("stream", "stdout")}))]
        == 11 * 1024 * 1024 - CAP
    )
    assert s[("attune_heartbeats_total", frozenset({("outcome", "ok")}))] >= 1
    assert (
        s[
            (
                "attune_messages_dead_lettered_total",
                frozenset({("queue", "executions"), ("reason", "undecodable")}),
            )
        ]
        == 1
    )
    assert s[("attune_executions_in_flight", frozenset())] == 0
    assert s[("attune_broker_reconnects_total", frozenset())] == 0
    assert (
        s[("attune_worker_info", frozenset({("worker", worker.name), ("version", "0.1.0")}))] == 1
    )
    assert (await trio.to_thread.run_sync(_http_get, url + "/nope"))[0] == 404

    worker.signal(signal.SIGTERM)  # the server is a task of the tree: it stops with it
    assert await worker.wait_exit() == 0
    with pytest.raises(OSError):
        await trio.to_thread.run_sync(_http_get, url + "/metrics")


async def test_a_metrics_port_in_use_stops_start_up_with_a_clear_error(stack: Stack) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = WorkerProcess(
            name=f"w-{uuid.uuid4().hex[:8]}",
            env=stack.env(ATTUNE__WORKER__METRICS_PORT=str(port)),
            log_path=stack.root / "busy-port.log",
        )
        stack.workers.append(worker)
        worker.start()
        assert await worker.wait_exit(timeout=30) != 0
    assert f"worker.metrics_port {port}: cannot listen" in worker.log()
    assert "Traceback" not in worker.log()


# --- doctor ------------------------------------------------------------------------------


async def test_doctor_checks_host_and_services_and_exits_by_the_worst_status(
    stack: Stack,
) -> None:
    done = await _cli(stack, "doctor", "--json")
    report = json.loads(done.stdout)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["database"]["status"] == "OK", checks["database"]
    assert checks["broker"]["status"] == "OK", checks["broker"]
    assert checks["bubblewrap"]["status"] == "OK"
    assert checks["sandbox_run"]["status"] == "OK", checks["sandbox_run"]  # a real run
    assert {
        "user_namespaces",
        "seccomp",
        "cgroups",
        "interpreter",
        "per_slot_uids",
        "umask",
        "disk_run_dir",
        "disk_artifacts_dir",
    } <= set(checks)
    assert done.returncode == (0 if report["ok"] else 1)

    down = await _cli(stack, "doctor", ATTUNE__MESSAGE_QUEUE__URL="amqp://guest:guest@127.0.0.1:1/")
    assert down.returncode == 1
    text = down.stdout.decode()
    broker_line = next(line for line in text.splitlines() if " broker " in line)
    assert broker_line.startswith("FAIL")
    assert "fix: start RabbitMQ, or set message_queue.url (ATTUNE__MESSAGE_QUEUE__URL)" in text
    assert "guest:guest" not in text


async def test_doctor_fails_an_unmigrated_database_and_names_the_command(
    db_url: str, amqp_url: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTUNE")}
    env |= {
        "ATTUNE__DATABASE__URL": db_url,
        "ATTUNE__MESSAGE_QUEUE__URL": amqp_url,
        "ATTUNE__ARTIFACTS_DIR": str(tmp_path),
    }
    done = await trio.run_process(
        [ATTUNE, "doctor", "--json"], env=env, capture_stdout=True, capture_stderr=True, check=False
    )
    assert done.returncode == 1
    database = next(c for c in json.loads(done.stdout)["checks"] if c["name"] == "database")
    assert database["status"] == "FAIL" and "not migrated" in database["detail"]
    assert database["fix"] == "attune db migrate"


@pytest.mark.skipif(os.geteuid() != 0, reason="per-slot uids exist only for a root worker")
async def test_the_worker_refuses_slot_uids_of_an_existing_account_unless_told_unsafe(
    stack: Stack,
) -> None:
    account = pwd.getpwnam("nobody")
    env = {
        "ATTUNE__SANDBOX__SLOT_UID_BASE": str(account.pw_uid),
        "ATTUNE__WORKER__MAX_CONCURRENT_TASKS": "1",
    }
    refused = WorkerProcess(
        name=f"w-{uuid.uuid4().hex[:8]}", env=stack.env(**env), log_path=stack.root / "refused.log"
    )
    stack.workers.append(refused)
    refused.start()
    assert await refused.wait_exit(timeout=30) != 0
    log = refused.log()
    assert "refusing to start" in log and "per_slot_uids" in log and "nobody" in log
    assert "Traceback" not in log  # one clear error line, not a stack
    assert await stack.db.list_workers() == []  # it never registered

    forced = await stack.start_worker(
        capacity=1,
        ATTUNE__SANDBOX__SLOT_UID_BASE=str(account.pw_uid),
        ATTUNE__SANDBOX__ALLOW_UNSAFE="true",
    )
    assert "event=UNSAFE_SANDBOX_OVERRIDE" in forced.log()
    assert "CRITICAL" in forced.log()


# --- workers and executions ----------------------------------------------------------------


async def test_workers_and_executions_commands_show_load_filters_rows_and_logs(
    stack: Stack,
) -> None:
    await _load_ops_pack(stack)
    worker = await stack.start_worker()
    ok = await stack.submit("demo.add", {"x": 2, "y": 3})
    bad = await stack.submit("demo.fail", {"message": "boom"})
    ticker = await stack.submit("ops.ticker")
    for execution_id in (ok, bad, ticker):
        await stack.wait(execution_id)
        await stack.result_file(worker, execution_id)  # written after the answer

    workers = await _cli_json(stack, "workers")
    (mine,) = [w for w in workers if w["name"] == worker.name]
    assert mine["status"] == "active" and not mine["stale"]
    assert mine["heartbeat_age_seconds"] < 10
    assert (mine["running"], mine["capacity"]) == (0, 4)
    assert sorted(mine["runtimes"]) == ["python", "shell"]
    table = (await _cli(stack, "workers")).stdout.decode()
    assert table.startswith("ID") and worker.name in table and "0/4" in table

    failed = await _cli_json(stack, "executions", "--status", "failed")
    assert [e["id"] for e in failed] == [bad]
    assert failed[0]["worker"] == worker.name
    mine_only = await _cli_json(stack, "executions", "--worker", worker.name, "--limit", "2")
    assert [e["id"] for e in mine_only] == [ticker, bad]
    listing = (await _cli(stack, "executions")).stdout.decode()
    assert "demo.add" in listing and "completed" in listing and "failed" in listing
    unknown = await _cli(stack, "executions", "--worker", "no-such-worker")
    assert unknown.returncode == 2 and b"no worker named" in unknown.stderr

    shown = await _cli_json(stack, "executions", "show", str(ok))
    assert shown["status"] == "completed" and shown["result"]["data"] == 5
    artifacts = shown["artifacts"]
    assert artifacts["present"] is True
    assert artifacts["dir"] == str(stack.artifacts_dir / worker.name / f"execution_{ok}")
    assert json.loads(Path(artifacts["result"]).read_text())["status"] == "completed"
    text = (await _cli(stack, "executions", "show", str(bad))).stdout.decode()
    assert "status:" in text and "RuntimeError: boom" in text

    logs = await _cli(stack, "executions", "logs", str(ticker))
    assert logs.returncode == 0
    assert logs.stdout == b"tick 1\ntick 2\n" and logs.stderr == b"warn\n"
    missing = await _cli(stack, "executions", "show", "999999")
    assert missing.returncode == 2 and b"no execution 999999" in missing.stderr


async def test_logs_follow_prints_output_while_the_execution_runs(stack: Stack) -> None:
    await _load_ops_pack(stack)
    worker = await stack.start_worker()
    execution_id = await stack.submit("ops.waiter")
    proc = await trio.lowlevel.open_process(
        [ATTUNE, "executions", "logs", str(execution_id), "--follow"],
        env=stack.env(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    seen = b""
    with trio.fail_after(60):
        while b"tick 1\n" not in seen:
            seen += await proc.stdout.receive_some(4096)
        # The action is still asleep: what arrived was followed live, not read afterwards.
        row = await stack.db.get_execution(execution_id)
        assert row is not None and row.status == "running"
        worker_id = await stack.worker_id(worker.name)
        cancel = encode_message(
            "ExecutionCancelRequested",
            ExecutionCancelRequested(execution_id=execution_id, worker_id=worker_id),
        )
        await stack.broker.publish(EXCHANGE_EXECUTIONS, cancel_routing_key(worker_id), cancel)
        while chunk := await proc.stdout.receive_some(4096):
            seen += chunk
        assert await proc.wait() == 0  # following stops once the execution ended
    assert seen == b"tick 1\n"


# --- submit --wait --------------------------------------------------------------------------


async def test_submit_wait_keeps_stdout_to_the_result_when_not_on_a_terminal(
    stack: Stack,
) -> None:
    await _load_ops_pack(stack)
    await stack.start_worker()
    done = await _cli(stack, "submit", "ops.ticker", "--wait")
    assert done.returncode == 0
    result = json.loads(done.stdout)
    assert result["succeeded"] is True and result["stdout"] == "tick 1\ntick 2\n"
    assert b"tick" not in done.stderr and b"after" not in done.stderr


def _run_with_terminal_stderr(argv: list[str], env: dict[str, str]) -> tuple[int, bytes, bytes]:
    """Run argv with stderr on a pseudo-terminal; returns (rc, stdout, terminal bytes)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        argv, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL
    )
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the last writer closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.stdout is not None
    out = proc.stdout.read()
    return proc.wait(), out, seen


async def test_submit_wait_on_a_terminal_shows_live_output_and_elapsed_time(
    stack: Stack,
) -> None:
    await _load_ops_pack(stack)
    await stack.start_worker()
    argv = [ATTUNE, "submit", "ops.ticker", "--wait"]
    rc, out, terminal = await trio.to_thread.run_sync(_run_with_terminal_stderr, argv, stack.env())
    assert rc == 0
    assert json.loads(out)["succeeded"] is True
    text = terminal.decode().replace("\r\n", "\n")
    assert "tick 1\n" in text and "tick 2\n" in text and "warn\n" in text
    first, second = text.index("tick 1"), text.index("tick 2")
    # The clock ran between the two lines: the first was shown while the action ran.
    assert ": running " in text[first:second]
    assert "completed after " in text[second:]


# --- logs -------------------------------------------------------------------------------------


async def test_json_logs_are_one_object_per_line_with_the_execution_fields(
    stack: Stack,
) -> None:
    worker = WorkerProcess(
        name=f"w-{uuid.uuid4().hex[:8]}",
        env=stack.env(),
        log_path=stack.root / "json.log",
        extra_args=["--log-format", "json"],
    )
    stack.workers.append(worker)
    worker.start()
    with trio.fail_after(20):
        while '"event": "worker_ready"' not in worker.log():
            assert worker.proc is not None and worker.proc.poll() is None, worker.log()
            await trio.sleep(0.05)
    ok = await stack.submit("demo.add", {"x": 1, "y": 1})
    bad = await stack.submit("demo.fail", {"message": "boom"})
    for execution_id in (ok, bad):
        await stack.wait(execution_id)
    worker.signal(signal.SIGTERM)
    assert await worker.wait_exit() == 0

    lines = [line for line in worker.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line, not just ours
    assert all({"ts", "level", "logger", "event", "message"} <= r.keys() for r in records)
    finished = {r["execution_id"]: r for r in records if r["event"] == "execution_finished"}
    assert set(finished) == {ok, bad}
    for execution_id, status in ((ok, "completed"), (bad, "failed")):
        r = finished[execution_id]
        assert r["action_ref"] in ("demo.add", "demo.fail")
        assert r["worker"] == worker.name and r["status"] == status
        assert isinstance(r["duration_ms"], int)
    assert finished[bad]["error"] == "RuntimeError: boom"
    started = [r for r in records if r["event"] == "execution_started"]
    assert {r["execution_id"] for r in started} == {ok, bad}
    assert all(r["worker"] == worker.name and r["status"] == "running" for r in started)
    events = [r["event"] for r in records]
    assert events.index("worker_registered") < events.index("worker_ready")
    assert "worker_stopped" in events
