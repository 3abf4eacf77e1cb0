"""`Outbox`: the worker's announcements survive a broker outage, in order.

A status message is published at once while the broker is up. While it is away the
message waits here and a background task re-publishes the backlog in order once the
broker is back, so an outage delays announcements but loses none (up to `limit`
messages; past that each drop is logged and counted, never silent).

`publish_all` hands over messages that must arrive in order (an end's status change,
then its completion) in one go: the broker sends them back to back and waits for their
confirms together. If they cannot all be confirmed, all of them are kept, in order,
behind what is already waiting.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

import trio

from attune.errors import TransientError
from attune.log import log_event
from attune.messages import OutgoingMessage

log = logging.getLogger("attune.worker")


class Publisher(Protocol):
    """What the outbox needs of the broker (attune.broker.Broker is one)."""

    async def publish(
        self, exchange: str, routing_key: str, message: OutgoingMessage, *, timeout: float = ...
    ) -> None: ...
    async def publish_all(
        self,
        exchange: str,
        messages: Sequence[tuple[str, OutgoingMessage]],
        *,
        timeout: float = ...,
    ) -> None: ...


class Outbox:
    """Publishes now, or keeps the message and retries once the broker is back."""

    def __init__(self, broker: Publisher, *, limit: int = 100_000) -> None:
        self.broker = broker
        self.pending: list[tuple[str, str, OutgoingMessage]] = []
        self.limit = limit
        self.dropped = 0
        self.wakeup = trio.Event()
        self._empty = trio.Event()
        self._empty.set()

    async def publish(self, exchange: str, routing_key: str, message: OutgoingMessage) -> None:
        await self.publish_all(exchange, [(routing_key, message)])

    async def publish_all(
        self, exchange: str, messages: Sequence[tuple[str, OutgoingMessage]]
    ) -> None:
        """Publish the messages in order now, or keep them (in order) for the broker's return."""
        if not self.pending:
            try:
                await self.broker.publish_all(exchange, messages, timeout=10)
                return
            except TransientError as exc:
                log_event(log, "publish_deferred", logging.WARNING, reason=str(exc))
        for routing_key, message in messages:
            self._keep(exchange, routing_key, message)

    def _keep(self, exchange: str, routing_key: str, message: OutgoingMessage) -> None:
        if len(self.pending) >= self.limit:
            self.dropped += 1
            log_event(
                log,
                "publish_dropped",
                logging.ERROR,
                routing_key=routing_key,
                message_id=message.message_id,
                dropped=self.dropped,
                reason=f"outbox full ({self.limit} messages waiting for the broker)",
            )
            return
        self.pending.append((exchange, routing_key, message))
        self._empty = trio.Event() if self._empty.is_set() else self._empty
        self.wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drain the pending messages in order, pausing while the broker is away."""
        task_status.started()
        while True:
            await self.wakeup.wait()
            self.wakeup = trio.Event()
            while self.pending:
                exchange, routing_key, message = self.pending[0]
                try:
                    await self.broker.publish(exchange, routing_key, message, timeout=30)
                except TransientError:
                    await trio.sleep(1)
                    continue
                self.pending.pop(0)
            self._empty.set()

    async def wait_empty(self) -> None:
        """Return once every pending message has been published."""
        await self._empty.wait()
