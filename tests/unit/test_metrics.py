"""The metrics object and its HTTP endpoint: what Prometheus scrapes."""

from __future__ import annotations

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from attune.metrics import Metrics, http_response


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def test_a_finished_execution_counts_by_status_and_runtime_and_records_truncation() -> None:
    m = Metrics()
    m.execution_finished("python", "completed", {"duration_ms": 40}, 0.065)
    m.execution_finished(
        "shell",
        "failed",
        {"duration_ms": 5, "stdout_bytes_truncated": 1000, "stderr_bytes_truncated": 7},
        0.02,
    )
    s = _samples(m)
    assert s[("attune_executions_total", (("runtime", "python"), ("status", "completed")))] == 1
    assert s[("attune_executions_total", (("runtime", "shell"), ("status", "failed")))] == 1
    assert s[("attune_execution_duration_seconds_count", (("runtime", "python"),))] == 1
    assert s[("attune_execution_duration_seconds_sum", (("runtime", "python"),))] == 0.065
    assert s[("attune_sandbox_overhead_seconds_sum", (("runtime", "python"),))] == pytest.approx(
        0.025
    )
    assert s[("attune_output_truncated_bytes_total", (("stream", "stdout"),))] == 1000
    assert s[("attune_output_truncated_bytes_total", (("stream", "stderr"),))] == 7


def test_a_result_without_a_duration_records_no_overhead() -> None:
    m = Metrics()
    m.execution_finished("other", "failed", {"succeeded": False, "error": "no code"}, 0.01)
    s = _samples(m)
    assert ("attune_sandbox_overhead_seconds_count", (("runtime", "other"),)) not in s


def test_live_levels_are_read_at_scrape_time_and_a_failing_source_is_skipped() -> None:
    m = Metrics()
    runs = {1: object()}

    def broken() -> float:
        raise RuntimeError("gone")

    m.bind(
        worker="w1",
        version="0.1.0",
        in_flight=lambda: len(runs),
        capacity=lambda: 4,
        reconnects=broken,
        outbox_pending=lambda: 0,
        outbox_dropped=lambda: 2,
    )
    assert _samples(m)[("attune_executions_in_flight", ())] == 1
    runs.clear()
    s = _samples(m)
    assert s[("attune_executions_in_flight", ())] == 0
    assert s[("attune_capacity", ())] == 4
    assert s[("attune_outbox_dropped_total", ())] == 2
    assert s[("attune_worker_info", (("version", "0.1.0"), ("worker", "w1")))] == 1
    assert ("attune_broker_reconnects_total", ()) not in s


def test_each_metrics_object_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.heartbeat("ok")
    a.message_dead_lettered("executions", "undecodable")
    assert _samples(a)[("attune_heartbeats_total", (("outcome", "ok"),))] == 1
    assert _samples(b)[("attune_heartbeats_total", (("outcome", "ok"),))] == 0
    key = (
        "attune_messages_dead_lettered_total",
        (("queue", "executions"), ("reason", "undecodable")),
    )
    assert _samples(a)[key] == 1 and _samples(b)[key] == 0


def test_the_http_endpoint_answers_metrics_root_and_rejects_the_rest() -> None:
    def render() -> bytes:
        return b"x 1\n"

    ok = http_response(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n", render)
    head, _, body = ok.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK")
    assert f"Content-Type: {CONTENT_TYPE_LATEST}".encode() in head
    assert b"Content-Length: 4" in head and body == b"x 1\n"
    assert http_response(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n", render).endswith(b"x 1\n")
    assert http_response(b"HEAD /metrics HTTP/1.1\r\n\r\n", render).endswith(b"\r\n\r\n")
    assert http_response(b"GET / HTTP/1.0\r\n\r\n", render).startswith(b"HTTP/1.0 200")
    assert http_response(b"GET /nope HTTP/1.1\r\n\r\n", render).startswith(b"HTTP/1.0 404")
    assert http_response(b"POST /metrics HTTP/1.1\r\n\r\n", render).startswith(b"HTTP/1.0 405")
    assert http_response(b"\x16\x03\x01garbage", render).startswith(b"HTTP/1.0 400")


def test_a_render_error_is_a_500_not_a_crash() -> None:
    def render() -> bytes:
        raise ValueError("boom")

    assert http_response(b"GET /metrics HTTP/1.1\r\n\r\n", render).startswith(b"HTTP/1.0 500")
