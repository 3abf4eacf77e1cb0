"""RabbitMQ for trio code: aio-pika behind trio-asyncio, and the only module that knows it.

Why this shape:
- `open_broker` opens its own `trio_asyncio.open_loop()`; nothing else in the process
  needs asyncio. Opening it inside another trio-asyncio loop also works (loops nest, each
  bound by a contextvar). Every call into aio-pika passes the broker's loop explicitly,
  so any trio task may use the Broker, even one started before `open_broker`.
- `connect_robust` reconnects by itself and restores, on each robust channel, the QoS,
  the exchanges and queues declared through it, their bindings and the consumers. What
  it does not do is replay a publish or keep an ack valid: a delivery's tag dies with its
  channel, the broker requeues it, and it comes back `redelivered`. So settling swallows
  the errors of a stale delivery, publishing retries, and handlers must be idempotent.
- Third-party errors become `TransientError` (unreachable, retry later) or `ConfigError`
  (credentials, vhost or a topology clash: retrying cannot help) here, and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Final

import aio_pika
import aiormq.exceptions
import trio
import trio_asyncio
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from attune.config import describe_amqp_url
from attune.errors import ConfigError, TransientError
from attune.messages import (
    CANCEL_QUEUE_ARGUMENTS,
    EXCHANGE_EXECUTIONS,
    EXCHANGES,
    EXECUTIONS_QUEUE_ARGUMENTS,
    OutgoingMessage,
    cancel_queue,
    cancel_routing_key,
    dispatch_routing_key,
    executions_queue,
)

log = logging.getLogger(__name__)

# What aio-pika raises while a connection is lost or being restored: AMQPError (closed
# channel/connection, nack'd confirm), RuntimeError (ChannelInvalidStateError: the robust
# channel has no live underlying channel), OSError (socket), TimeoutError, and a bare
# asyncio.CancelledError when aio-pika cancels its own pending futures on close. The last
# is only caught while trio itself is not cancelling: trio-asyncio turns a cancel coming
# from trio into trio.Cancelled, never into asyncio.CancelledError.
_LOST: Final = (
    aiormq.exceptions.AMQPError,
    RuntimeError,
    OSError,
    TimeoutError,
    asyncio.CancelledError,
)
_SETTLE_TIMEOUT: Final = 5.0
_CLOSE_TIMEOUT: Final = 5.0
_RETRY_PAUSE: Final = 0.2
_DECLARE_TIMEOUT: Final = 10.0


def _reply(exc: BaseException) -> str:
    """The broker's reply text of a channel error, e.g. `PRECONDITION_FAILED - ...`."""
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _reason(exc: BaseException) -> str:
    # Class name plus the OS reason only: aiormq messages can embed the connection URL.
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return type(exc).__name__


class Delivery:
    """One message taken off a queue; settle it exactly once with ack, nack or reject.

    Settling never raises and never waits long: it is shielded (a cancelled handler still
    settles) and bounded. If the channel died since delivery (a reconnect), the tag is
    void and the broker has already requeued the message, so the error is only logged
    and the method returns False.
    """

    __slots__ = (
        "_loop",
        "_message",
        "body",
        "content_type",
        "correlation_id",
        "delivery_mode",
        "delivery_tag",
        "message_id",
        "redelivered",
        "routing_key",
    )

    def __init__(self, message: AbstractIncomingMessage, loop: trio_asyncio.TrioEventLoop):
        self._message = message
        self._loop = loop
        self.body: bytes = message.body
        self.delivery_tag: int = message.delivery_tag or 0
        self.redelivered: bool = bool(message.redelivered)
        self.message_id: str | None = message.message_id
        self.correlation_id: str | None = message.correlation_id
        self.content_type: str | None = message.content_type
        self.delivery_mode: int | None = (
            int(message.delivery_mode) if message.delivery_mode is not None else None
        )
        self.routing_key: str | None = message.routing_key

    def __repr__(self) -> str:
        return (
            f"Delivery(tag={self.delivery_tag}, message_id={self.message_id!r}, "
            f"redelivered={self.redelivered})"
        )

    @property
    def stale(self) -> bool:
        """True once the channel it came on has closed: settling it can no longer work."""
        try:
            _ = self._message.channel
        except RuntimeError:
            return True
        return False

    async def ack(self) -> bool:
        """Done with it: the broker forgets the message."""
        return await self._settle("ack", self._message.ack)

    async def nack(self, *, requeue: bool) -> bool:
        """requeue=False dead-letters it to `attune.dlx` (bad body); True hands it back."""
        return await self._settle("nack", self._message.nack, requeue=requeue)

    async def reject(self, *, requeue: bool) -> bool:
        """Same effect as nack for one message; kept for callers that speak AMQP."""
        return await self._settle("reject", self._message.reject, requeue=requeue)

    async def _settle(self, what: str, method: Any, **kwargs: Any) -> bool:
        with trio.move_on_after(_SETTLE_TIMEOUT, shield=True) as scope:
            try:
                await trio_asyncio.aio_as_trio(method, loop=self._loop)(**kwargs)
            except _LOST as exc:
                log.warning(
                    "%s of delivery %d failed (%s); the broker redelivers it",
                    what,
                    self.delivery_tag,
                    _reason(exc),
                )
                return False
            return True
        if scope.cancelled_caught:
            log.warning("%s of delivery %d timed out", what, self.delivery_tag)
        return False


class Broker:
    """A robust connection with a topology channel and a confirming publish channel."""

    def __init__(
        self,
        connection: AbstractRobustConnection,
        loop: trio_asyncio.TrioEventLoop,
        topology: AbstractRobustChannel,
        publishing: AbstractRobustChannel,
        where: str,
    ) -> None:
        self._connection = connection
        self._loop = loop
        self._topology = topology
        self._publishing = publishing
        self._where = where
        self._exchanges: dict[str, AbstractExchange] = {}
        self._reconnects = 0
        connection.reconnect_callbacks.add(self._on_reconnect)

    def _on_reconnect(self, *_args: Any, **_kwargs: Any) -> None:
        self._reconnects += 1
        log.info("reconnected to RabbitMQ at %s (reconnect #%d)", self._where, self._reconnects)

    @property
    def connected(self) -> bool:
        """The transport is up (channels may still be restoring for a moment)."""
        return not self._connection.is_closed and self._connection.connected.is_set()

    @property
    def reconnects(self) -> int:
        """How many times the connection came back after a loss, for metrics."""
        return self._reconnects

    async def _aio(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await trio_asyncio.aio_as_trio(fn, loop=self._loop)(*args, **kwargs)

    async def _declare(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one topology call, retrying while the channel is down or being restored.

        A channel the broker closed (a reconnect, or an earlier refused declare) is
        reopened by aio-pika in the background; until then calls fail with
        ChannelInvalidStateError, so those are retried until `_DECLARE_TIMEOUT`.
        """
        last = "no attempt finished"
        try:
            with trio.fail_after(_DECLARE_TIMEOUT):
                while True:
                    try:
                        return await self._aio(fn, *args, **kwargs)
                    except (
                        aiormq.exceptions.ChannelPreconditionFailed,
                        aiormq.exceptions.ChannelAccessRefused,
                    ) as exc:
                        # The broker's reply names the clashing argument and its type.
                        raise ConfigError(f"{what} on {self._where}: {_reply(exc)}") from None
                    except aiormq.exceptions.ChannelNotFoundEntity as exc:
                        raise TransientError(f"{what} on {self._where}: {_reply(exc)}") from None
                    except _LOST as exc:
                        last = _reason(exc)
                    await trio.sleep(_RETRY_PAUSE)
        except trio.TooSlowError:
            raise TransientError(f"{what} on {self._where}: {last}") from None

    async def declare_topology(self) -> None:
        """Declare the four durable exchanges of docs/protocol.md §1; safe to repeat.

        Declared on the robust topology channel, so they are declared again on reconnect.
        """
        for name, kind in EXCHANGES:
            await self._declare(
                f"exchange {name!r}", self._topology.declare_exchange, name, kind, durable=True
            )

    async def declare_queue(
        self,
        name: str,
        *,
        arguments: Mapping[str, str | int] | None = None,
        durable: bool = True,
        exclusive: bool = False,
        auto_delete: bool = False,
    ) -> None:
        """Declare a queue, again after every reconnect.

        Raises ConfigError (with the broker's reason) when the queue exists with other
        properties, TransientError when the broker is unavailable.
        """
        await self._declare(
            f"queue {name!r}",
            self._topology.declare_queue,
            name,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            arguments=dict(arguments) if arguments else None,
        )

    async def bind_queue(self, queue: str, exchange: str, routing_key: str) -> None:
        """Bind a queue declared by `declare_queue`, again after every reconnect."""
        declared = await self._declare(
            f"queue {queue!r}", self._topology.declare_queue, queue, passive=True
        )
        await self._declare(
            f"binding of {queue!r} to {exchange!r}", declared.bind, exchange, routing_key
        )

    async def declare_worker_queues(self, worker_id: int) -> None:
        """Declare and bind `worker.{id}.executions` and `worker.{id}.cancel` (§1).

        The arguments must equal every other declarer's or the broker answers
        PRECONDITION_FAILED (raised here as ConfigError).
        """
        plan = (
            (
                executions_queue(worker_id),
                EXECUTIONS_QUEUE_ARGUMENTS,
                dispatch_routing_key(worker_id),
            ),
            (cancel_queue(worker_id), CANCEL_QUEUE_ARGUMENTS, cancel_routing_key(worker_id)),
        )
        for name, arguments, routing_key in plan:
            await self.declare_queue(name, arguments=arguments)
            await self.bind_queue(name, EXCHANGE_EXECUTIONS, routing_key)

    @asynccontextmanager
    async def consume(
        self, queue: str, *, prefetch: int
    ) -> AsyncIterator[trio.MemoryReceiveChannel[Delivery]]:
        """Stream deliveries of an existing queue on a dedicated channel with QoS `prefetch`.

        Settle every delivery you receive before leaving the block: on exit the consumer is
        cancelled, deliveries still buffered unread are nacked back to the queue, and the
        channel is closed, which makes the broker requeue anything else left unsettled.
        The buffer is far larger than the prefetch because after a reconnect the broker
        redelivers while stale deliveries may still sit unread (`Delivery.stale`); the
        asyncio callback must never block, and if the buffer were ever full it hands the
        message back instead.
        """
        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        send, receive = trio.open_memory_channel[Delivery](max(1024, 16 * prefetch))
        loop = self._loop

        async def on_message(message: AbstractIncomingMessage) -> None:
            # Runs as an asyncio task on the trio-asyncio loop, i.e. in trio's thread.
            try:
                send.send_nowait(Delivery(message, loop))
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                try:
                    await message.nack(requeue=True)
                except _LOST as exc:
                    log.warning(
                        "could not hand back delivery %s: %s", message.delivery_tag, _reason(exc)
                    )

        channel: AbstractRobustChannel = await self._declare(
            f"a consumer channel for {queue!r}", _open_robust_channel, self._connection, False
        )
        try:
            await self._declare(f"QoS for {queue!r}", channel.set_qos, prefetch_count=prefetch)
            try:
                amqp_queue = await self._declare(
                    f"queue {queue!r}", channel.declare_queue, queue, passive=True
                )
            except TransientError as exc:
                raise TransientError(f"{exc} (does the queue exist?)") from None
            tag = await self._declare(f"a consumer of {queue!r}", amqp_queue.consume, on_message)
            try:
                yield receive
            finally:
                with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                    try:
                        await self._aio(amqp_queue.cancel, tag)
                    except _LOST as exc:
                        log.warning("cancelling consumer of %r: %s", queue, _reason(exc))
                    send.close()
                    await _hand_back(receive)
        finally:
            with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                try:
                    await self._aio(channel.close)
                except _LOST as exc:
                    log.warning("closing consumer channel of %r: %s", queue, _reason(exc))

    async def _publish_batch(
        self, exchange: str, messages: Sequence[tuple[str, OutgoingMessage]]
    ) -> tuple[int, BaseException] | None:
        """asyncio-side: send every message, then wait for all their confirms.

        The publishes start in order as asyncio tasks, with nothing to wait for before
        the channel's (FIFO) publish lock, so they go out on the one channel in order;
        each waits for its confirm only after its frames are written. Returns the index
        and error of the first message that was not confirmed, None when all were.
        """
        await self._publishing.ready()
        target = self._exchanges.get(exchange)
        if target is None:
            target = await self._publishing.get_exchange(exchange, ensure=False)
            self._exchanges[exchange] = target
        if len(messages) == 1:  # no order to keep: no task to start
            routing_key, message = messages[0]
            await target.publish(_amqp_message(message), routing_key, mandatory=False)
            return None
        sends = [
            asyncio.ensure_future(
                target.publish(_amqp_message(message), routing_key, mandatory=False)
            )
            for routing_key, message in messages
        ]
        outcomes = await asyncio.gather(*sends, return_exceptions=True)
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, BaseException):
                return index, outcome
        return None

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        message: OutgoingMessage,
        *,
        timeout: float = 10.0,
    ) -> None:
        """Publish persistently and wait for the broker's confirm, retrying across reconnects.

        A lost confirm is retried too, so a consumer may see a message twice: at least
        once is the contract (docs/protocol.md §4: the DB row is the truth). TransientError
        when the broker has not confirmed within `timeout`, or at once when the exchange
        does not exist (retrying cannot create it).
        """
        await self.publish_all(exchange, [(routing_key, message)], timeout=timeout)

    async def publish_all(
        self,
        exchange: str,
        messages: Sequence[tuple[str, OutgoingMessage]],
        *,
        timeout: float = 10.0,
    ) -> None:
        """`publish` for messages that must arrive in order, without a wait between them.

        They are sent back to back on the publishing channel (AMQP keeps one channel's
        order) and their confirms are awaited together: one confirm's wait instead of
        one per message. If one is not confirmed, it and every message after it are
        sent again, in order, so whatever a consumer sees last is still in order (a
        message may arrive twice: at least once, as for `publish`).
        """
        pending = list(messages)
        last = "no attempt finished"
        try:
            with trio.fail_after(timeout):
                while pending:
                    try:
                        failed = await self._aio(self._publish_batch, exchange, pending)
                    except _LOST as lost:  # the channel was not there to publish on
                        failed = 0, lost
                    if failed is None:
                        return
                    index, error = failed
                    if isinstance(error, aiormq.exceptions.ChannelNotFoundEntity):
                        raise TransientError(
                            f"exchange {exchange!r} does not exist on {self._where}"
                        ) from None
                    if not isinstance(error, _LOST):
                        raise error
                    pending = pending[index:]
                    last = _reason(error)
                    log.info(
                        "publish to %s/%s failed (%s); retrying",
                        exchange,
                        pending[0][0],
                        last,
                    )
                    await trio.sleep(_RETRY_PAUSE)
        except trio.TooSlowError:
            keys = ", ".join(dict.fromkeys(key for key, _ in pending))
            raise TransientError(
                f"publish to {exchange!r} ({keys}) on {self._where} not confirmed "
                f"within {timeout:g}s: {last}"
            ) from None


def _amqp_message(message: OutgoingMessage) -> aio_pika.Message:
    """A persistent AMQP message of ours, stamped now."""
    return aio_pika.Message(
        body=message.body,
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        timestamp=datetime.now(UTC),
    )


async def _hand_back(receive: trio.MemoryReceiveChannel[Delivery]) -> None:
    """Nack (requeue) what the consumer never read, so the broker can deliver it again."""
    while True:
        try:
            delivery = receive.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            return
        await delivery.nack(requeue=True)


async def _connect(
    url: str, reconnect_interval: float, connect_timeout: float
) -> AbstractRobustConnection:
    # asyncio-side helper.
    return await aio_pika.connect_robust(
        url,
        reconnect_interval=reconnect_interval,
        timeout=connect_timeout,
        client_properties={"connection_name": "attune-worker"},
    )


@asynccontextmanager
async def open_broker(
    url: str,
    *,
    reconnect_interval: float = 1.5,
    connect_timeout: float = 10.0,
) -> AsyncIterator[Broker]:
    """Connect (opening the process's trio-asyncio loop) and close cleanly on exit.

    Raises TransientError when the broker cannot be reached within `connect_timeout`,
    ConfigError when it refuses the credentials or the vhost. Messages name host:port and
    vhost, never the URL (it holds the password). On exit, unsettled deliveries return
    to their queues.

    `trio_asyncio.open_loop()` runs the block inside two nurseries, so under trio's strict
    exception groups anything raised in it (ours or the caller's) would come out wrapped
    twice. A group holding a single exception is unwrapped here, so callers can write
    `except TransientError` around this and around their own code inside it.
    """
    sole: BaseException | None = None
    try:
        async with (
            trio_asyncio.open_loop() as loop,
            _connected(loop, url, reconnect_interval, connect_timeout) as broker,
        ):
            yield broker
    except BaseExceptionGroup as group:
        sole = _sole(group)
        if sole is None:
            raise
    if sole is not None:
        # Raised outside the except block so the group does not become its __context__.
        raise sole


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return None if isinstance(exc, BaseExceptionGroup) else exc


@asynccontextmanager
async def _connected(
    loop: trio_asyncio.TrioEventLoop,
    url: str,
    reconnect_interval: float,
    connect_timeout: float,
) -> AsyncIterator[Broker]:
    where = describe_amqp_url(url)
    try:
        with trio.fail_after(connect_timeout + 1.0):
            connection = await trio_asyncio.aio_as_trio(_connect, loop=loop)(
                url, reconnect_interval, connect_timeout
            )
    except (
        aiormq.exceptions.AuthenticationError,
        aiormq.exceptions.ProbableAuthenticationError,
        aiormq.exceptions.ConnectionNotAllowed,
    ) as exc:
        raise ConfigError(f"RabbitMQ at {where} refused the login: {_reason(exc)}") from None
    except trio.TooSlowError:
        raise TransientError(f"RabbitMQ at {where}: connect timed out") from None
    except (*_LOST, ValueError) as exc:
        raise TransientError(f"RabbitMQ at {where} unreachable: {_reason(exc)}") from None
    try:
        try:
            topology = await trio_asyncio.aio_as_trio(_open_robust_channel, loop=loop)(
                connection, False
            )
            publishing = await trio_asyncio.aio_as_trio(_open_robust_channel, loop=loop)(
                connection, True
            )
        except _LOST as exc:
            raise TransientError(f"RabbitMQ at {where}: no channel: {_reason(exc)}") from None
        yield Broker(connection, loop, topology, publishing, where)
    finally:
        with trio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            try:
                await trio_asyncio.aio_as_trio(connection.close, loop=loop)()
            except _LOST as exc:
                log.warning("closing the RabbitMQ connection: %s", _reason(exc))


async def _open_robust_channel(
    connection: AbstractRobustConnection, publisher_confirms: bool
) -> AbstractRobustChannel:
    # asyncio-side helper: a robust channel is opened by awaiting it.
    channel = connection.channel(publisher_confirms=publisher_confirms)
    await channel
    return channel


__all__ = ["Broker", "Delivery", "open_broker"]
