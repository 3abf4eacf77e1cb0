"""Prometheus metrics of one worker: an explicit object, its own registry, a trio server.

`Metrics` is created by `run_worker` and handed down in the `WorkerContext`, so there is
no module-level state beyond what prometheus-client keeps per registry; each `Metrics`
owns a fresh `CollectorRegistry`, which keeps tests (and two workers in one process)
apart. Events (an execution finished, a heartbeat, a dead-lettered message) update
counters and histograms as they happen; levels that already live somewhere else (runs
in flight, capacity, broker reconnects, outbox backlog) are read at scrape time through
callbacks bound once the worker has them, so there is one source of truth for each.

The endpoint is a small trio TCP server (`serve_metrics`) rather than
`prometheus_client.start_http_server`:
- it is a task in the worker's nursery tree: it stops when the worker drains, and a
  port that cannot be bound fails start-up with a clear error instead of a traceback
  in a daemon thread;
- scrapes run on the trio thread, so the callbacks read trio-owned state (the runs
  dict, the outbox list) without any locking;
- it is one request per connection, bounded in size, time and concurrency, which is
  all a Prometheus scrape needs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, Literal

import trio
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from attune.errors import ConfigError
from attune.log import log_event

log = logging.getLogger("attune.metrics")

# The wall time of one execution: from a sub-second function call to the hour-long
# upper end of task_timeout.
RUN_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# The sandbox's own cost around the action (run dir, cgroup, filter fd, teardown):
# milliseconds normally (docs/sandbox.md measures 8-25 ms), seconds when the host struggles.
OVERHEAD_BUCKETS: Final = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
STREAMS: Final = ("stdout", "stderr")
# The ways the worker rejects a message without requeue (pre-created so they read 0).
DEAD_LETTER_REASONS: Final = (
    ("executions", "undecodable"),
    ("executions", "no_such_execution"),
    ("executions", "handler_error"),
    ("cancel", "undecodable"),
)

HeartbeatOutcome = Literal["ok", "failed", "lost"]
Kind = Literal["counter", "gauge"]


class _LiveValues:
    """A collector whose values are read from callbacks at scrape time."""

    def __init__(self) -> None:
        self.sources: dict[str, tuple[Kind, str, Callable[[], float]]] = {}

    def collect(self) -> Iterator[Metric]:
        for name, (kind, doc, read) in self.sources.items():
            try:
                value = float(read())
            except Exception:  # a scrape must never take the worker down
                log.debug("metric %s could not be read", name, exc_info=True)
                continue
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(name, doc, value=value)


class Metrics:
    """Every metric the worker exports; one instance per worker process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.info = Gauge(
            "attune_worker_info",
            "Constant 1, labelled with the worker's name and version.",
            ["worker", "version"],
            registry=r,
        )
        self.executions = Counter(
            "attune_executions",
            "Executions this worker ran to an end, by terminal status and runtime.",
            ["status", "runtime"],
            registry=r,
        )
        self.run_seconds = Histogram(
            "attune_execution_duration_seconds",
            "Wall time of one execution from the "
            "claim to the result (code resolution, sandbox, action, teardown).",
            ["runtime"],
            buckets=RUN_BUCKETS,
            registry=r,
        )
        self.overhead_seconds = Histogram(
            "attune_sandbox_overhead_seconds",
            "Wall time of a sandboxed run outside the "
            "action's own measured duration: run directory, cgroup, seccomp fd, argv, "
            "and teardown.",
            ["runtime"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.heartbeats = Counter(
            "attune_heartbeats",
            "Heartbeats by outcome: ok, failed (database "
            "unavailable), lost (the worker row is gone).",
            ["outcome"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "attune_messages_dead_lettered",
            "Messages rejected without requeue (they go to attune.dlx), by queue and reason.",
            ["queue", "reason"],
            registry=r,
        )
        self.oom_kills = Counter(
            "attune_oom_kills",
            "Executions whose sandbox the kernel killed for exceeding the run's memory "
            "cgroup limit (only where per-run cgroups are active).",
            ["runtime"],
            registry=r,
        )
        self.truncated_bytes = Counter(
            "attune_output_truncated_bytes",
            "Output bytes discarded past the per-stream cap.",
            ["stream"],
            registry=r,
        )
        self._live = _LiveValues()
        r.register(self._live)  # type: ignore[arg-type]
        for outcome in ("ok", "failed", "lost"):  # export zeros before the first event
            self.heartbeats.labels(outcome)
        for stream in STREAMS:
            self.truncated_bytes.labels(stream)
        for queue, reason in DEAD_LETTER_REASONS:
            self.dead_lettered.labels(queue, reason)

    # --- levels read at scrape time ----------------------------------------------------

    def bind(
        self,
        *,
        worker: str,
        version: str,
        in_flight: Callable[[], float],
        capacity: Callable[[], float],
        reconnects: Callable[[], float],
        outbox_pending: Callable[[], float],
        outbox_dropped: Callable[[], float],
    ) -> None:
        """Attach the live sources once the worker has registered and built its context."""
        self.info.labels(worker, version).set(1)
        self._live.sources.update(
            {
                "attune_executions_in_flight": ("gauge", "Executions running now.", in_flight),
                "attune_capacity": (
                    "gauge",
                    "Executions this worker runs at once (max_concurrent_tasks).",
                    capacity,
                ),
                "attune_broker_reconnects": (
                    "counter",
                    "Times the RabbitMQ connection came back after a loss.",
                    reconnects,
                ),
                "attune_outbox_pending": (
                    "gauge",
                    "Status messages waiting for the broker.",
                    outbox_pending,
                ),
                "attune_outbox_dropped": (
                    "counter",
                    "Status messages dropped because the outbox was full.",
                    outbox_dropped,
                ),
            }
        )

    def bind_pool(
        self,
        *,
        parked: Callable[[], float],
        taken: Callable[[], float],
        cold: Callable[[], float],
    ) -> None:
        """The warm pool's gauges, when the worker keeps one (sandbox.warm_pool > 0)."""
        self._live.sources.update(
            {
                "attune_warm_pool_parked": (
                    "gauge",
                    "Sandboxes parked and ready for an action now.",
                    parked,
                ),
                "attune_warm_pool_taken": (
                    "counter",
                    "Runs that started in a parked sandbox.",
                    taken,
                ),
                "attune_warm_pool_cold": (
                    "counter",
                    "Runs that could have used a parked sandbox but found none ready.",
                    cold,
                ),
            }
        )

    # --- events -------------------------------------------------------------------------

    def execution_finished(
        self, runtime: str, status: str, result: Mapping[str, Any], seconds: float
    ) -> None:
        """Count one finished execution; `seconds` is the worker's wall time for it."""
        self.executions.labels(status, runtime).inc()
        self.run_seconds.labels(runtime).observe(max(seconds, 0.0))
        action_ms = result.get("duration_ms")
        if isinstance(action_ms, int | float) and not isinstance(action_ms, bool):
            self.overhead_seconds.labels(runtime).observe(max(seconds - action_ms / 1000, 0.0))
        if result.get("oom_killed") is True:
            self.oom_kills.labels(runtime).inc()
        for stream in STREAMS:
            dropped = result.get(f"{stream}_bytes_truncated")
            if isinstance(dropped, int) and not isinstance(dropped, bool) and dropped > 0:
                self.truncated_bytes.labels(stream).inc(dropped)

    def heartbeat(self, outcome: HeartbeatOutcome) -> None:
        self.heartbeats.labels(outcome).inc()

    def message_dead_lettered(self, queue: str, reason: str) -> None:
        self.dead_lettered.labels(queue, reason).inc()

    # --- exposition ---------------------------------------------------------------------

    def render(self) -> bytes:
        """The Prometheus text exposition format, as prometheus-client writes it."""
        return generate_latest(self.registry)


MAX_REQUEST_BYTES: Final = 8192
REQUEST_TIMEOUT: Final = 5.0
MAX_CONNECTIONS: Final = 8


def http_response(request: bytes, render: Callable[[], bytes]) -> bytes:
    """The whole HTTP/1.0 response to one request (pure, apart from `render`).

    `GET /metrics` (any query string) is the exposition; `/` names the endpoint;
    everything else is a 4xx. `HEAD` gets the headers alone.
    """
    line = request.split(b"\n", 1)[0].strip().decode("latin-1")
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return _response(400, "text/plain; charset=utf-8", b"bad request\n")
    method, target, _ = parts
    if method not in ("GET", "HEAD"):
        return _response(
            405, "text/plain; charset=utf-8", b"method not allowed\n", extra="Allow: GET, HEAD\r\n"
        )
    path = target.split("?", 1)[0]
    if path == "/metrics":
        try:
            body = render()
        except Exception:
            log.exception("rendering metrics failed")
            return _response(500, "text/plain; charset=utf-8", b"metrics unavailable\n")
        return _response(200, CONTENT_TYPE_LATEST, body, head=method == "HEAD")
    if path == "/":
        return _response(
            200,
            "text/plain; charset=utf-8",
            b"attune worker: metrics at /metrics\n",
            head=method == "HEAD",
        )
    return _response(404, "text/plain; charset=utf-8", b"not found\n")


_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
}


def _response(
    code: int, content_type: str, body: bytes, *, head: bool = False, extra: str = ""
) -> bytes:
    header = (
        f"HTTP/1.0 {code} {_REASONS[code]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    )
    return header.encode("latin-1") + (b"" if head else body)


async def _read_request(stream: trio.abc.Stream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < MAX_REQUEST_BYTES:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
    return data


async def serve_metrics(
    metrics: Metrics,
    port: int,
    *,
    host: str | None = None,
    task_status: trio.TaskStatus[list[int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `/metrics` on `port` (all interfaces unless `host`) until cancelled.

    Reports the bound port(s) through `task_status` (useful with port 0). A client that
    is slow, sends too much, or finds MAX_CONNECTIONS busy is simply disconnected.
    """
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        raise ConfigError(
            f"worker.metrics_port {port}: cannot listen: {exc.strerror or exc}"
        ) from None
    limiter = trio.CapacityLimiter(MAX_CONNECTIONS)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            limiter.acquire_nowait()
        except trio.WouldBlock:
            await stream.aclose()
            return
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                request = await _read_request(stream)
                await stream.send_all(http_response(request, metrics.render))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the scraper went away; nothing to report
        finally:
            limiter.release()
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await stream.aclose()

    ports = sorted({listener.socket.getsockname()[1] for listener in listeners})
    log_event(log, "metrics_listening", port=ports[0] if ports else port, host=host or "*")
    task_status.started(ports)
    await trio.serve_listeners(handle, listeners)  # type: ignore[arg-type]


__all__ = ["Metrics", "http_response", "serve_metrics"]
