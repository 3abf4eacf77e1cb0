"""Pack lifecycle messages: `pack.registered` builds environments, `pack.deleted` removes them.

Every worker has its own durable queue `worker.{id}.packs`, bound on `attune.events` to
both routing keys as in the reference, so each worker prepares the environments of the
packs on its own disk. A build runs in the build sandbox (attune/runner/env_build.py);
while it runs, that pack's Python executions fail with "environment not ready" (the
READY marker is written last), never run against half an environment. `attune pack
load` publishes `pack.registered` after writing the rows, as the reference's API does.
"""

from __future__ import annotations

import logging
from pathlib import Path

import trio

from attune import pack_env
from attune.broker import Broker, Delivery
from attune.config import Config
from attune.errors import MessageError, TransientError
from attune.log import log_event
from attune.messages import (
    EXCHANGE_EVENTS,
    PACK_REGISTERED,
    PACKS_QUEUE_ARGUMENTS,
    ROUTING_PACK_DELETED,
    ROUTING_PACK_REGISTERED,
    PackDeleted,
    PackRegistered,
    decode_pack_event,
    encode_message,
    packs_queue,
)
from attune.packs import PACK_REF_RE

log = logging.getLogger("attune.worker")


async def declare_packs_queue(broker: Broker, worker_id: int) -> None:
    name = packs_queue(worker_id)
    await broker.declare_queue(name, arguments=PACKS_QUEUE_ARGUMENTS)
    for routing_key in (ROUTING_PACK_REGISTERED, ROUTING_PACK_DELETED):
        await broker.bind_queue(name, EXCHANGE_EVENTS, routing_key)


async def publish_registered(
    broker: Broker, pack_id: int, pack_ref: str, version: str, runtime_names: list[str]
) -> None:
    payload = PackRegistered(
        pack_id=pack_id, pack_ref=pack_ref, version=version, runtime_names=runtime_names
    )
    message = encode_message(PACK_REGISTERED, payload, source_service="attune-cli")
    await broker.publish(EXCHANGE_EVENTS, ROUTING_PACK_REGISTERED, message)


async def handle_pack_event(config: Config, body: bytes) -> str:
    """Act on one message; returns what was done (for the log). MessageError if invalid."""
    _, event = decode_pack_event(body)
    if not PACK_REF_RE.match(event.pack_ref):
        raise MessageError(f"invalid pack_ref {event.pack_ref!r}")
    if isinstance(event, PackDeleted):
        gone = pack_env.remove(config, event.pack_ref)
        return f"removed {len(gone)} environment(s) of pack {event.pack_ref}"
    pack_dir = Path(config.packs_base_dir) / event.pack_ref
    if not pack_dir.is_dir():
        return f"pack {event.pack_ref} is not installed under {config.packs_base_dir}"
    outcome = await pack_env.build(config, event.pack_ref, pack_dir)
    st = outcome.status
    if st.state == "failed":
        return f"environment of pack {event.pack_ref} failed to build: {st.reason}"
    return f"environment of pack {event.pack_ref}: {st.state} ({outcome.seconds:.1f} s)"


async def consume_pack_events(
    config: Config,
    broker: Broker,
    worker_id: int,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """One message at a time: builds are heavy, and a pack's messages must stay in order."""
    async with broker.consume(packs_queue(worker_id), prefetch=1) as deliveries:
        task_status.started()
        async for delivery in deliveries:
            await _one(config, delivery)


async def _one(config: Config, delivery: Delivery) -> None:
    try:
        done = await handle_pack_event(config, delivery.body)
    except MessageError as exc:
        log_event(log, "pack_event_rejected", logging.WARNING, reason=str(exc))
        await delivery.reject(requeue=False)
        return
    except (OSError, TransientError) as exc:
        log_event(log, "pack_event_failed", logging.ERROR, reason=str(exc))
        await delivery.reject(requeue=False)
        return
    log_event(log, "pack_event_handled", detail=done)
    await delivery.ack()
