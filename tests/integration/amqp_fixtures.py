"""RabbitMQ fixtures and helpers for integration tests: a fresh vhost per test.

The fixtures are loaded as a plugin (`pytest_plugins` in tests/conftest.py), so any
test asks for them by name; the helpers are imported as usual.

- `amqp_vhost`: name of a new, empty vhost the test owns (guest has full rights on it).
- `amqp_url`: `amqp://guest:guest@host:port/<vhost>` for it; give it to the worker.
- `amqp_broker`: an open `Broker` on that vhost with the §1 exchanges declared.
- `execution_events`: a `Collector` of what the worker publishes on `attune.executions`
  (keys `execution.status.changed` and `execution.completed`) from the fixture's start.
- `collect(broker, exchange, key, *more_keys)`: the same for any exchange and keys.
- `close_connections(vhost)`: force-close every client connection of a vhost (a fault).

Isolation is by vhost, so tests may run in any order or at the same time as other
sessions on the same broker. Creating a vhost costs one `rabbitmqctl` run (~0.6 s), so
vhosts are made in batches and all deleted in one run at the end of the session.
Without a broker: skip, or fail when CI=true (CI must never pass by skipping).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import NoReturn
from urllib.parse import quote, urlsplit

import msgspec
import pytest
import trio

from attune.broker import Broker, Delivery, open_broker
from attune.messages import (
    EXCHANGE_EXECUTIONS,
    ROUTING_COMPLETED,
    ROUTING_STATUS_CHANGED,
    Envelope,
    decode_envelope,
)
from tests.unavailable import unavailable

AMQP_BASE_URL = os.environ.get("ATTUNE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
_BATCH = 16
_RABBITMQCTL_TIMEOUT = 60


def _unavailable(reason: str) -> NoReturn:
    unavailable(f"RabbitMQ: {reason}")


def _rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args],
        capture_output=True,
        text=True,
        timeout=_RABBITMQCTL_TIMEOUT,
        check=False,
    )


def _erl_list(names: list[str]) -> str:
    # Vhost names are generated here from [a-z0-9-], so no Erlang escaping is needed.
    return "[" + ",".join(f'<<"{name}">>' for name in names) + "]"


class _VhostPool:
    """Makes vhosts in batches (one rabbitmqctl run each) and deletes them all at the end."""

    def __init__(self) -> None:
        self.prefix = f"attune-test-{os.getpid()}-{secrets.token_hex(3)}"
        self._counter = 0
        self._free: list[str] = []
        self.created: list[str] = []

    def take(self) -> str:
        if not self._free:
            self._make_batch()
        return self._free.pop(0)

    def _make_batch(self) -> None:
        names = [f"{self.prefix}-{self._counter + i}" for i in range(_BATCH)]
        self._counter += _BATCH
        # Internal API, one node round trip for the whole batch; the fallback below uses
        # only the documented commands (slower) in case a RabbitMQ version renames it.
        script = (
            f'lists:foreach(fun(V) -> ok = rabbit_vhost:add(V, <<"attune-tests">>), '
            f'ok = rabbit_auth_backend_internal:set_permissions(<<"guest">>, V, '
            f'<<".*">>, <<".*">>, <<".*">>, <<"attune-tests">>) end, '
            f"{_erl_list(names)})."
        )
        done = _rabbitmqctl("eval", script)
        if done.returncode != 0:
            names = names[:1]
            for name in names:
                steps = (
                    ("add_vhost", name),
                    ("set_permissions", "-p", name, "guest", ".*", ".*", ".*"),
                )
                for step in steps:
                    done = _rabbitmqctl(*step)
                    if done.returncode != 0:
                        _unavailable(f"rabbitmqctl {step[0]}: {done.stderr.strip()[:200]}")
        self.created.extend(names)
        self._free.extend(names)

    def delete_all(self) -> None:
        if self.created:
            script = (
                f'lists:foreach(fun(V) -> rabbit_vhost:delete(V, <<"attune-tests">>) '
                f"end, {_erl_list(self.created)})."
            )
            if _rabbitmqctl("eval", script).returncode != 0:
                for name in self.created:
                    _rabbitmqctl("delete_vhost", name)
            self.created.clear()


@pytest.fixture(scope="session")
def _amqp_vhost_pool() -> Iterator[_VhostPool]:
    parts = urlsplit(AMQP_BASE_URL)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or 5672), timeout=2
        ):
            pass
    except OSError as exc:
        _unavailable(f"{parts.hostname}:{parts.port}: {exc.strerror or exc}")
    if shutil.which("rabbitmqctl") is None:
        _unavailable("rabbitmqctl not found (needed to create test vhosts)")
    pool = _VhostPool()
    yield pool
    pool.delete_all()


@pytest.fixture
def amqp_vhost(_amqp_vhost_pool: _VhostPool) -> str:
    """A vhost no other test has used."""
    return _amqp_vhost_pool.take()


@pytest.fixture
def amqp_url(amqp_vhost: str) -> str:
    """AMQP URL of this test's own vhost."""
    parts = urlsplit(AMQP_BASE_URL)
    return f"{parts.scheme}://{parts.netloc}/{quote(amqp_vhost, safe='')}"


@pytest.fixture
async def amqp_broker(amqp_url: str) -> AsyncIterator[Broker]:
    """An open Broker on the test's vhost, topology declared, fast reconnects."""
    async with open_broker(amqp_url, reconnect_interval=0.3, connect_timeout=5) as broker:
        await broker.declare_topology()
        yield broker


class Collector:
    """Messages routed to a private queue, kept in arrival order."""

    def __init__(self, receive: trio.MemoryReceiveChannel[Delivery]) -> None:
        self._receive = receive
        self.deliveries: list[Delivery] = []

    async def next(self, *, timeout: float = 5.0) -> Delivery:
        """The next message; fails the test if none comes in time."""
        with trio.move_on_after(timeout):
            delivery = await self._receive.receive()
            await delivery.ack()
            self.deliveries.append(delivery)
            return delivery
        pytest.fail(f"no message within {timeout}s (got {len(self.deliveries)} so far)")

    async def take(self, count: int, *, timeout: float = 5.0) -> list[Delivery]:
        """The next `count` messages."""
        with trio.move_on_after(timeout):
            return [await self.next(timeout=timeout) for _ in range(count)]
        pytest.fail(f"fewer than {count} messages within {timeout}s")

    async def envelopes(self, count: int, *, timeout: float = 5.0) -> list[Envelope]:
        """The next `count` messages as envelopes (payload still raw)."""
        return [decode_envelope(d.body) for d in await self.take(count, timeout=timeout)]

    async def assert_quiet(self, seconds: float = 0.3) -> None:
        """Fail if anything else arrives within `seconds`."""
        with trio.move_on_after(seconds):
            extra = await self._receive.receive()
            pytest.fail(f"unexpected message {msgspec.json.decode(extra.body)!r}")


@asynccontextmanager
async def collect(
    broker: Broker, exchange: str, routing_key: str, *more_keys: str
) -> AsyncIterator[Collector]:
    """Bind a private auto-deleted queue to `exchange` with each routing key and collect."""
    name = f"test.collect.{secrets.token_hex(4)}"
    await broker.declare_queue(name, durable=False, exclusive=True, auto_delete=True)
    for key in (routing_key, *more_keys):
        await broker.bind_queue(name, exchange, key)
    async with broker.consume(name, prefetch=100) as receive:
        yield Collector(receive)


@pytest.fixture
async def execution_events(amqp_broker: Broker) -> AsyncIterator[Collector]:
    """What the worker publishes on `attune.executions`, from now on.

    Bound to `execution.status.changed` and `execution.completed` only: `execution.#`
    would also catch the dispatches and cancels that tests themselves publish.
    """
    async with collect(
        amqp_broker, EXCHANGE_EXECUTIONS, ROUTING_STATUS_CHANGED, ROUTING_COMPLETED
    ) as collector:
        yield collector


async def close_connections(vhost: str) -> None:
    """Make the broker drop every client connection of `vhost`, like a network fault."""
    done = await trio.run_process(
        ["rabbitmqctl", "-q", "close_all_connections", "--vhost", vhost, "attune test fault"],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"rabbitmqctl close_all_connections: {done.stderr.decode()[:200]}")
