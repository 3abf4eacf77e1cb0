"""The RabbitMQ adapter against a real broker, each test in its own vhost."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest
import trio
import trio_asyncio

from attune.broker import Broker, Delivery, open_broker
from attune.errors import ConfigError, TransientError
from attune.messages import (
    EXCHANGE_DLX,
    EXCHANGE_EXECUTIONS,
    EXECUTION_CANCEL_REQUESTED,
    EXECUTION_REQUESTED,
    EXECUTION_STATUS_CHANGED,
    ROUTING_STATUS_CHANGED,
    ExecutionCancelRequested,
    ExecutionRequested,
    ExecutionStatusChanged,
    OutgoingMessage,
    cancel_queue,
    cancel_routing_key,
    decode_dispatch,
    decode_status_changed,
    dispatch_routing_key,
    encode_message,
    executions_queue,
)
from tests.integration import amqp_fixtures
from tests.integration.amqp_fixtures import close_connections, collect

pytestmark = pytest.mark.services

# Fixtures by assignment: the integration conftest may import them too; same objects.
_amqp_vhost_pool = amqp_fixtures._amqp_vhost_pool
amqp_vhost = amqp_fixtures.amqp_vhost
amqp_url = amqp_fixtures.amqp_url
amqp_broker = amqp_fixtures.amqp_broker
execution_events = amqp_fixtures.execution_events

WORKER = 7


def _dispatch(execution_id: int = 42) -> OutgoingMessage:
    return encode_message(
        EXECUTION_REQUESTED,
        ExecutionRequested(execution_id=execution_id, action_ref="core.echo", worker_id=WORKER),
        source_service="executor",
    )


async def _publish_dispatch(broker: Broker, execution_id: int = 42) -> OutgoingMessage:
    message = _dispatch(execution_id)
    await broker.publish(EXCHANGE_EXECUTIONS, dispatch_routing_key(WORKER), message)
    return message


async def _receive(receive: trio.MemoryReceiveChannel[Delivery], timeout: float = 5.0) -> Delivery:
    with trio.fail_after(timeout):
        return await receive.receive()


async def _nothing_arrives(
    receive: trio.MemoryReceiveChannel[Delivery], seconds: float = 0.3
) -> None:
    with trio.move_on_after(seconds):
        delivery = await receive.receive()
        pytest.fail(f"unexpected {delivery!r}")


async def _wait_buffered(receive: trio.MemoryReceiveChannel[Delivery], count: int) -> None:
    with trio.fail_after(5):
        while receive.statistics().current_buffer_used < count:
            await trio.sleep(0.01)


def _list(vhost: str, what: str, *columns: str) -> list[dict[str, object]]:
    done = subprocess.run(
        ["rabbitmqctl", "-q", what, "-p", vhost, *columns, "--formatter", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows: list[dict[str, object]] = json.loads(done.stdout)
    return rows


async def test_topology_declares_the_four_durable_exchanges_idempotently(
    amqp_broker: Broker, amqp_url: str, amqp_vhost: str
) -> None:
    await amqp_broker.declare_topology()
    async with open_broker(amqp_url) as other:  # another service declaring the same
        await other.declare_topology()

    exchanges = {
        row["name"]: row for row in _list(amqp_vhost, "list_exchanges", "name", "type", "durable")
    }
    assert {
        name: (exchanges[name]["type"], exchanges[name]["durable"])
        for name in ("attune.events", "attune.executions", "attune.notifications", "attune.dlx")
    } == {
        "attune.events": ("topic", True),
        "attune.executions": ("topic", True),
        "attune.notifications": ("fanout", True),
        "attune.dlx": ("direct", True),
    }


async def test_worker_queues_carry_exactly_the_reference_arguments(
    amqp_broker: Broker, amqp_vhost: str
) -> None:
    await amqp_broker.declare_worker_queues(WORKER)
    await amqp_broker.declare_worker_queues(WORKER)  # idempotent

    # An independent declaration with the reference's arguments is accepted...
    await amqp_broker.declare_queue(
        "worker.7.executions",
        arguments={"x-dead-letter-exchange": "attune.dlx", "x-message-ttl": 300000},
    )
    await amqp_broker.declare_queue(
        "worker.7.cancel", arguments={"x-dead-letter-exchange": "attune.dlx"}
    )
    # ...any difference is refused by the broker, which names the stored type:
    # 'signedint' is AMQP's signed 32-bit table integer ('I'), what the reference sends.
    with pytest.raises(ConfigError, match=r"'300000' of type 'signedint'"):
        await amqp_broker.declare_queue(
            "worker.7.executions", arguments={"x-dead-letter-exchange": "attune.dlx"}
        )
    with pytest.raises(ConfigError, match="PRECONDITION_FAILED"):
        await amqp_broker.declare_queue(
            "worker.7.executions",
            arguments={"x-dead-letter-exchange": "attune.dlx", "x-message-ttl": 60000},
        )
    with pytest.raises(ConfigError, match="x-dead-letter-exchange"):
        await amqp_broker.declare_queue("worker.7.cancel")

    queues = {
        row["name"]: row
        for row in _list(
            amqp_vhost, "list_queues", "name", "durable", "auto_delete", "exclusive", "arguments"
        )
    }
    assert queues["worker.7.executions"]["durable"] is True
    assert queues["worker.7.executions"]["auto_delete"] is False
    assert queues["worker.7.executions"]["exclusive"] is False
    assert queues["worker.7.cancel"]["durable"] is True
    bindings = {
        (row["source_name"], row["destination_name"], row["routing_key"])
        for row in _list(
            amqp_vhost, "list_bindings", "source_name", "destination_name", "routing_key"
        )
    }
    assert ("attune.executions", "worker.7.executions", "execution.dispatch.worker.7") in bindings
    assert ("attune.executions", "worker.7.cancel", "execution.cancel.worker.7") in bindings


async def test_publish_then_consume_keeps_body_and_amqp_properties(
    amqp_broker: Broker,
) -> None:
    await amqp_broker.declare_worker_queues(WORKER)
    sent = await _publish_dispatch(amqp_broker, execution_id=42)

    async with amqp_broker.consume(executions_queue(WORKER), prefetch=1) as receive:
        delivery = await _receive(receive)
        assert await delivery.ack() is True

    assert delivery.body == sent.body
    assert delivery.message_id == sent.message_id
    assert delivery.correlation_id == sent.correlation_id == sent.message_id
    assert delivery.content_type == "application/json"
    assert delivery.delivery_mode == 2
    assert delivery.redelivered is False
    assert delivery.routing_key == "execution.dispatch.worker.7"
    envelope, payload = decode_dispatch(delivery.body)
    assert payload.execution_id == 42
    assert envelope.headers["source_service"] == "executor"


async def test_publish_all_sends_back_to_back_and_keeps_the_order(
    amqp_broker: Broker,
) -> None:
    await amqp_broker.declare_worker_queues(WORKER)
    sent = [_dispatch(execution_id=i) for i in range(1, 51)]
    key = dispatch_routing_key(WORKER)
    await amqp_broker.publish_all(EXCHANGE_EXECUTIONS, [(key, m) for m in sent])
    async with amqp_broker.consume(executions_queue(WORKER), prefetch=50) as receive:
        got = [await _receive(receive) for _ in sent]
        for delivery in got:
            await delivery.ack()
    assert [d.message_id for d in got] == [m.message_id for m in sent]
    assert all(d.delivery_mode == 2 for d in got)  # persistent, like `publish`


async def test_publish_all_across_a_dropped_connection_ends_with_every_message_in_order(
    amqp_broker: Broker, amqp_vhost: str
) -> None:
    """What is not confirmed is sent again with everything after it: a consumer may see
    a message twice, but the last copies arrive in the order given."""
    await amqp_broker.declare_worker_queues(WORKER)
    await close_connections(amqp_vhost)
    sent = [_dispatch(execution_id=i) for i in range(1, 4)]
    key = dispatch_routing_key(WORKER)
    with trio.fail_after(15):
        await amqp_broker.publish_all(EXCHANGE_EXECUTIONS, [(key, m) for m in sent])
    seen: list[str | None] = []
    async with amqp_broker.consume(executions_queue(WORKER), prefetch=10) as receive:
        while set(seen) != {m.message_id for m in sent}:
            delivery = await _receive(receive, timeout=10)
            seen.append(delivery.message_id)
            await delivery.ack()
        with trio.move_on_after(0.5):  # and any copy sent again after them
            while True:
                delivery = await receive.receive()
                seen.append(delivery.message_id)
                await delivery.ack()
    last = {message_id: index for index, message_id in enumerate(seen)}
    assert sorted(last, key=last.__getitem__) == [m.message_id for m in sent]


async def test_cancel_routing_key_reaches_the_cancel_queue(amqp_broker: Broker) -> None:
    await amqp_broker.declare_worker_queues(WORKER)
    message = encode_message(
        EXECUTION_CANCEL_REQUESTED, ExecutionCancelRequested(execution_id=5, worker_id=WORKER)
    )
    await amqp_broker.publish(EXCHANGE_EXECUTIONS, cancel_routing_key(WORKER), message)

    async with amqp_broker.consume(cancel_queue(WORKER), prefetch=1) as receive:
        delivery = await _receive(receive)
        await delivery.ack()
    assert delivery.message_id == message.message_id


async def test_execution_events_sees_status_messages_but_not_dispatches(
    amqp_broker: Broker, execution_events: amqp_fixtures.Collector
) -> None:
    await _publish_dispatch(amqp_broker)  # a test's own dispatch is not a worker event
    message = encode_message(
        EXECUTION_STATUS_CHANGED,
        ExecutionStatusChanged(
            execution_id=9,
            action_ref="core.echo",
            previous_status="scheduled",
            new_status="running",
            changed_at=datetime.now(UTC),
        ),
        correlation_id="c0ffee00-0000-4000-8000-000000000000",
    )
    await amqp_broker.publish(EXCHANGE_EXECUTIONS, ROUTING_STATUS_CHANGED, message)

    delivery = await execution_events.next()
    envelope, payload = decode_status_changed(delivery.body)
    assert (
        envelope.correlation_id == delivery.correlation_id == "c0ffee00-0000-4000-8000-000000000000"
    )
    assert (payload.execution_id, payload.new_status) == (9, "running")
    await execution_events.assert_quiet()


async def test_prefetch_bounds_the_unacknowledged_deliveries(amqp_broker: Broker) -> None:
    await amqp_broker.declare_worker_queues(WORKER)
    for execution_id in range(1, 6):
        await _publish_dispatch(amqp_broker, execution_id)

    async with amqp_broker.consume(executions_queue(WORKER), prefetch=2) as receive:
        first = await _receive(receive)
        second = await _receive(receive)
        await _nothing_arrives(receive)
        await first.ack()
        third = await _receive(receive)
        await _nothing_arrives(receive)
        for delivery in (second, third):
            await delivery.ack()
        rest = [await _receive(receive), await _receive(receive)]
        for delivery in rest:
            await delivery.ack()

    ids = [decode_dispatch(d.body)[1].execution_id for d in (first, second, third, *rest)]
    assert ids == [1, 2, 3, 4, 5]


async def test_leaving_consume_hands_back_unread_and_unsettled_deliveries(
    amqp_broker: Broker,
) -> None:
    await amqp_broker.declare_worker_queues(WORKER)
    for execution_id in (1, 2, 3):
        await _publish_dispatch(amqp_broker, execution_id)

    async with amqp_broker.consume(executions_queue(WORKER), prefetch=5) as receive:
        acked = await _receive(receive)
        await acked.ack()
        held = await _receive(receive)  # received, never settled
        await _wait_buffered(receive, 1)  # the third one sits unread in the buffer

    async with amqp_broker.consume(executions_queue(WORKER), prefetch=5) as receive:
        again = [await _receive(receive), await _receive(receive)]
        for delivery in again:
            assert await delivery.ack() is True
        await _nothing_arrives(receive)

    assert sorted(decode_dispatch(d.body)[1].execution_id for d in again) == [2, 3]
    assert all(d.redelivered for d in again)
    assert await held.ack() is False  # its channel is gone: logged, not raised
    assert held.stale


async def test_nack_without_requeue_dead_letters_under_the_original_routing_key(
    amqp_broker: Broker,
) -> None:
    await amqp_broker.declare_worker_queues(WORKER)
    sent = _dispatch()
    async with (
        collect(amqp_broker, EXCHANGE_DLX, dispatch_routing_key(WORKER)) as dead,
        collect(amqp_broker, EXCHANGE_DLX, executions_queue(WORKER)) as by_queue_name,
    ):
        await amqp_broker.publish(EXCHANGE_EXECUTIONS, dispatch_routing_key(WORKER), sent)
        async with amqp_broker.consume(executions_queue(WORKER), prefetch=1) as receive:
            delivery = await _receive(receive)
            assert await delivery.nack(requeue=False) is True
            await _nothing_arrives(receive)  # not requeued

        lettered = await dead.next()
        assert lettered.message_id == sent.message_id
        assert lettered.body == sent.body
        await by_queue_name.assert_quiet()


async def test_publish_and_consume_resume_after_the_broker_drops_the_connection(
    amqp_broker: Broker, amqp_vhost: str
) -> None:
    await amqp_broker.declare_worker_queues(WORKER)
    async with amqp_broker.consume(executions_queue(WORKER), prefetch=2) as receive:
        before = await _publish_dispatch(amqp_broker, 1)
        in_flight = await _receive(receive)
        assert in_flight.message_id == before.message_id

        await close_connections(amqp_vhost)
        with trio.fail_after(10):
            while amqp_broker.reconnects < 1:
                await trio.sleep(0.05)
        assert amqp_broker.connected

        # Published across the reconnect: waits for the restored channel, then confirms.
        after = await _publish_dispatch(amqp_broker, 2)
        # The restored consumer gets the unacked one back, then the new one.
        seen: dict[str | None, Delivery] = {}
        while len(seen) < 2:
            delivery = await _receive(receive, timeout=10)
            if delivery.stale:
                continue
            seen[delivery.message_id] = delivery
            assert await delivery.ack() is True
        assert seen[before.message_id].redelivered is True
        assert after.message_id in seen
        assert await in_flight.ack() is False  # stale tag: logged and dropped


async def test_publish_to_a_missing_exchange_fails_fast(amqp_url: str) -> None:
    async with open_broker(amqp_url) as broker:
        with trio.fail_after(5), pytest.raises(TransientError, match="does not exist"):
            await broker.publish("attune.nowhere", "x", _dispatch())
        # The channel recovers: a good publish still works afterwards.
        await broker.declare_topology()
        await broker.publish(EXCHANGE_EXECUTIONS, "nobody.listens", _dispatch(), timeout=5)


async def test_consuming_a_missing_queue_is_a_transient_error(amqp_broker: Broker) -> None:
    with pytest.raises(TransientError, match="does the queue exist"):
        async with amqp_broker.consume("worker.999.executions", prefetch=1):
            pass


async def test_unreachable_broker_is_transient_and_names_host_not_password() -> None:
    with pytest.raises(TransientError) as caught:
        async with open_broker("amqp://guest:s3cret-pw@127.0.0.1:1/", connect_timeout=3):
            pass
    assert "127.0.0.1:1" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)


async def test_wrong_password_is_a_config_error(amqp_url: str) -> None:
    parts = urlsplit(amqp_url)
    wrong = parts._replace(netloc=f"guest:wrong-pw@{parts.hostname}:{parts.port}").geturl()
    with pytest.raises(ConfigError) as caught:
        async with open_broker(wrong, connect_timeout=5):
            pass
    assert "wrong-pw" not in str(caught.value)


async def test_broker_works_inside_an_outer_trio_asyncio_loop(amqp_url: str) -> None:
    async with trio_asyncio.open_loop(), open_broker(amqp_url) as broker:
        await broker.declare_topology()
        await broker.declare_worker_queues(WORKER)
        sent = await _publish_dispatch(broker)
        async with broker.consume(executions_queue(WORKER), prefetch=1) as receive:
            delivery = await _receive(receive)
            await delivery.ack()
    assert delivery.message_id == sent.message_id


async def test_broker_is_usable_from_a_task_started_before_it_opened(amqp_url: str) -> None:
    send, receive = trio.open_memory_channel[Broker](0)
    published: list[str] = []

    async def publisher() -> None:
        broker = await receive.receive()
        published.append((await _publish_dispatch(broker)).message_id)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(publisher)
        async with open_broker(amqp_url) as broker:
            await broker.declare_topology()
            await broker.declare_worker_queues(WORKER)
            await send.send(broker)
            async with broker.consume(executions_queue(WORKER), prefetch=1) as deliveries:
                delivery = await _receive(deliveries)
                await delivery.ack()
    assert published == [delivery.message_id]


def _ctl(*args: str) -> None:
    subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=True
    )


async def _wait_reconnects(broker: Broker, count: int, timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while broker.reconnects < count or not broker.connected:
            await trio.sleep(0.05)


async def test_worker_queues_are_declared_again_after_a_reconnect(
    amqp_broker: Broker, amqp_vhost: str
) -> None:
    await amqp_broker.declare_worker_queues(WORKER)
    _ctl("delete_queue", "-p", amqp_vhost, executions_queue(WORKER))

    await close_connections(amqp_vhost)
    await _wait_reconnects(amqp_broker, 1)

    sent = await _publish_dispatch(amqp_broker)  # routed only if the binding is back
    async with amqp_broker.consume(executions_queue(WORKER), prefetch=1) as receive:
        delivery = await _receive(receive)
        await delivery.ack()
    assert delivery.message_id == sent.message_id


async def test_publish_gives_up_with_transient_error_during_an_outage_then_recovers(
    amqp_broker: Broker, amqp_vhost: str
) -> None:
    await amqp_broker.declare_worker_queues(WORKER)
    _ctl("clear_permissions", "-p", amqp_vhost, "guest")  # reconnects are now refused
    await close_connections(amqp_vhost)
    with trio.fail_after(5):
        while amqp_broker.connected:
            await trio.sleep(0.05)

    with pytest.raises(TransientError, match="not confirmed within 1s"):
        await amqp_broker.publish(
            EXCHANGE_EXECUTIONS, dispatch_routing_key(WORKER), _dispatch(), timeout=1
        )

    _ctl("set_permissions", "-p", amqp_vhost, "guest", ".*", ".*", ".*")
    sent = await _publish_dispatch(amqp_broker)  # waits for the reconnect, then confirms
    async with amqp_broker.consume(executions_queue(WORKER), prefetch=1) as receive:
        delivery = await _receive(receive)
        await delivery.ack()
    assert delivery.message_id == sent.message_id


async def test_an_error_raised_inside_the_block_comes_out_unwrapped(amqp_url: str) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom):  # not an ExceptionGroup from trio-asyncio's nurseries
        async with open_broker(amqp_url):
            raise Boom
