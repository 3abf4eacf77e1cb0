"""The wire contract with the rest of Attune (docs/protocol.md §1-§4), as frozen msgspec Structs.

Everything here is pure: no broker, no I/O. Names and string values are exact because the
reference executor and API parse them. Decoding is lenient where the reference is lenient
(unknown fields, missing ids/version/headers/timestamp) and strict everywhere else, so a
bad body becomes one `MessageError` with a short reason that the consumer logs and nacks
without requeue; the body itself never goes into the reason (it may hold secrets).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec

from attune.errors import MessageError

# --- §1 topology ---------------------------------------------------------------------------

EXCHANGE_EVENTS: Final = "attune.events"
EXCHANGE_EXECUTIONS: Final = "attune.executions"
EXCHANGE_NOTIFICATIONS: Final = "attune.notifications"
EXCHANGE_DLX: Final = "attune.dlx"

# Every service declares these at start-up; type and durability must match the others'
# declarations or the broker refuses the redeclare.
EXCHANGES: Final[tuple[tuple[str, Literal["topic", "fanout", "direct"]], ...]] = (
    (EXCHANGE_EVENTS, "topic"),
    (EXCHANGE_EXECUTIONS, "topic"),
    (EXCHANGE_NOTIFICATIONS, "fanout"),
    (EXCHANGE_DLX, "direct"),
)

ROUTING_STATUS_CHANGED: Final = "execution.status.changed"
ROUTING_COMPLETED: Final = "execution.completed"

# 300000 fits a signed 32-bit int, which is the table type pamqp picks for it ('I'), the
# same type the reference declares; RabbitMQ compares the value, so it must stay 300000.
EXECUTIONS_MESSAGE_TTL_MS: Final = 300_000

EXECUTIONS_QUEUE_ARGUMENTS: Final[Mapping[str, str | int]] = MappingProxyType(
    {"x-dead-letter-exchange": EXCHANGE_DLX, "x-message-ttl": EXECUTIONS_MESSAGE_TTL_MS}
)
CANCEL_QUEUE_ARGUMENTS: Final[Mapping[str, str | int]] = MappingProxyType(
    {"x-dead-letter-exchange": EXCHANGE_DLX}
)


def dispatch_routing_key(worker_id: int) -> str:
    """Routing key the executor uses to send a dispatch to one worker."""
    return f"execution.dispatch.worker.{worker_id}"


def cancel_routing_key(worker_id: int) -> str:
    """Routing key the API/executor uses to send a cancel to one worker."""
    return f"execution.cancel.worker.{worker_id}"


def executions_queue(worker_id: int) -> str:
    """Queue name derived from the DB id, so a restarted worker finds its backlog."""
    return f"worker.{worker_id}.executions"


def packs_queue(worker_id: int) -> str:
    """Per-worker queue of pack lifecycle events (`pack.registered`, `pack.deleted`)."""
    return f"worker.{worker_id}.packs"


ROUTING_PACK_REGISTERED: Final = "pack.registered"
ROUTING_PACK_DELETED: Final = "pack.deleted"
PACKS_QUEUE_ARGUMENTS: Final = CANCEL_QUEUE_ARGUMENTS  # durable, dead-lettered, no TTL


def cancel_queue(worker_id: int) -> str:
    """Queue name derived from the DB id, so a restarted worker finds pending cancels."""
    return f"worker.{worker_id}.cancel"


# --- message types -------------------------------------------------------------------------

EXECUTION_REQUESTED: Final = "ExecutionRequested"
EXECUTION_SCHEDULED: Final = "ExecutionScheduled"  # older name of the same dispatch
EXECUTION_CANCEL_REQUESTED: Final = "ExecutionCancelRequested"
EXECUTION_STATUS_CHANGED: Final = "ExecutionStatusChanged"
EXECUTION_COMPLETED: Final = "ExecutionCompleted"
PACK_REGISTERED: Final = "PackRegistered"
PACK_DELETED: Final = "PackDeleted"

# Bodies beyond this are not dispatches (those are pointers into the DB); refusing them
# early bounds the memory a hostile or broken publisher can make us spend.
MAX_BODY_BYTES: Final = 1024 * 1024
_MAX_REASON = 200

# --- structs -------------------------------------------------------------------------------

Timestamp = Annotated[datetime, msgspec.Meta(tz=True)]
# DB ids are bigserial: positive and int64. Anything else cannot name a row.
Id = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]

# The values of `execution_status_enum` (attune.lifecycle.ExecutionStatus spells the same
# list). Status fields are typed with them, so a status the executor rejects ("unknown")
# fails type checking, and encode_message refuses it at run time.
StatusValue = Literal[
    "requested",
    "scheduling",
    "scheduled",
    "running",
    "completed",
    "failed",
    "canceling",
    "cancelled",
    "timeout",
    "abandoned",
]
# ExecutionCompleted.status is capitalised in the reference, unlike the DB enum.
CompletedStatusName = Literal["Completed", "Failed", "Cancelled", "Timeout", "Abandoned"]


def _new_id() -> str:
    return str(uuid.uuid4())


def _now() -> datetime:
    return datetime.now(UTC)


def _default_headers() -> dict[str, Any]:
    return {"retry_count": 0}


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """A decoded envelope; `payload` stays raw until the message type is known."""

    message_id: str
    correlation_id: str
    message_type: str
    payload: msgspec.Raw
    version: str = "1.0"
    timestamp: Timestamp = msgspec.field(default_factory=_now)
    headers: dict[str, Any] = msgspec.field(default_factory=_default_headers)


class _WireEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    # The reference fills a null or missing id with a fresh one, so None must decode too.
    message_type: str
    payload: msgspec.Raw
    message_id: str | None = None
    correlation_id: str | None = None
    version: str = "1.0"
    timestamp: Timestamp | None = None
    headers: dict[str, Any] = msgspec.field(default_factory=_default_headers)


class ExecutionRequested(msgspec.Struct, frozen=True, kw_only=True):
    """A pointer to an execution row; the worker reloads everything else from the DB."""

    execution_id: Id
    action_ref: str
    worker_id: Id
    release_id: int | None = None
    release_digest: str | None = None


class ExecutionCancelRequested(msgspec.Struct, frozen=True, kw_only=True):
    """Kill the named execution; `worker_id` only served routing."""

    execution_id: Id
    worker_id: int | None = None


class PackRegistered(msgspec.Struct, frozen=True, kw_only=True):
    """A pack was registered or re-installed: workers prepare its environments."""

    pack_id: Id
    pack_ref: str
    version: str
    runtime_names: list[str] = msgspec.field(default_factory=list)


class PackDeleted(msgspec.Struct, frozen=True, kw_only=True):
    """A pack was deleted: workers remove its environments."""

    pack_id: Id
    pack_ref: str


class ExecutionStatusChanged(msgspec.Struct, frozen=True, kw_only=True):
    """Published on every transition the worker owns (docs/protocol.md §4)."""

    execution_id: int
    action_ref: str
    previous_status: StatusValue
    new_status: StatusValue
    changed_at: Timestamp


class ExecutionCompleted(msgspec.Struct, frozen=True, kw_only=True):
    """Published last for a run; `result` is what was written to `execution.result`."""

    execution_id: int
    action_id: int  # required, as in the reference: no message when the action row is gone
    action_ref: str
    status: CompletedStatusName
    result: Any
    completed_at: Timestamp


class OutgoingMessage(msgspec.Struct, frozen=True):
    """An encoded body plus the ids the broker copies into the AMQP properties."""

    body: bytes
    message_id: str
    correlation_id: str


class _OutEnvelope(msgspec.Struct, frozen=True):
    # Field order is the reference's serialisation order, which keeps bodies diffable.
    message_id: str
    correlation_id: str
    message_type: str
    version: str
    timestamp: str
    headers: dict[str, Any]
    payload: dict[str, Any]


# --- decoding ------------------------------------------------------------------------------

_ENVELOPE_DECODER: Final = msgspec.json.Decoder(_WireEnvelope)
_DISPATCH_DECODER: Final = msgspec.json.Decoder(ExecutionRequested)
_CANCEL_DECODER: Final = msgspec.json.Decoder(ExecutionCancelRequested)
_STATUS_CHANGED_DECODER: Final = msgspec.json.Decoder(ExecutionStatusChanged)
_COMPLETED_DECODER: Final = msgspec.json.Decoder(ExecutionCompleted)
_ENCODER: Final = msgspec.json.Encoder()

_P = TypeVar("_P", bound=msgspec.Struct)


def _short(reason: str) -> str:
    return reason if len(reason) <= _MAX_REASON else reason[: _MAX_REASON - 3] + "..."


def decode_envelope(body: bytes) -> Envelope:
    """Decode only the envelope, so an unknown message type can still be logged by id."""
    if len(body) > MAX_BODY_BYTES:
        raise MessageError(f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    try:
        wire = _ENVELOPE_DECODER.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # incl. ValidationError
        raise MessageError(_short(f"not an envelope: {exc}")) from None
    return Envelope(
        message_id=wire.message_id or _new_id(),
        correlation_id=wire.correlation_id or _new_id(),
        message_type=wire.message_type,
        payload=wire.payload,
        version=wire.version,
        timestamp=wire.timestamp or _now(),
        headers=wire.headers,
    )


def _decode(
    body: bytes, accepted: frozenset[str], decode_payload: Callable[[msgspec.Raw], _P]
) -> tuple[Envelope, _P]:
    envelope = decode_envelope(body)
    if envelope.message_type not in accepted:
        raise MessageError(_short(f"unexpected message_type {envelope.message_type!r}"))
    try:
        payload = decode_payload(envelope.payload)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # msgspec paths start at `$`, which is the payload here.
        raise MessageError(_short(f"bad payload: {exc}")) from None
    return envelope, payload


_DISPATCH_TYPES: Final = frozenset({EXECUTION_REQUESTED, EXECUTION_SCHEDULED})


def decode_dispatch(body: bytes) -> tuple[Envelope, ExecutionRequested]:
    """Decode a dispatch from `worker.{id}.executions`; MessageError if it is not one."""
    return _decode(body, _DISPATCH_TYPES, _DISPATCH_DECODER.decode)


def decode_cancel(body: bytes) -> tuple[Envelope, ExecutionCancelRequested]:
    """Decode a cancel from `worker.{id}.cancel`; MessageError if it is not one."""
    return _decode(body, frozenset({EXECUTION_CANCEL_REQUESTED}), _CANCEL_DECODER.decode)


_REGISTERED_DECODER: Final = msgspec.json.Decoder(PackRegistered)
_DELETED_DECODER: Final = msgspec.json.Decoder(PackDeleted)


def decode_pack_event(body: bytes) -> tuple[Envelope, PackRegistered | PackDeleted]:
    """Decode a message from `worker.{id}.packs`; MessageError if it is neither kind."""
    if decode_envelope(body).message_type == PACK_DELETED:
        return _decode(body, frozenset({PACK_DELETED}), _DELETED_DECODER.decode)
    return _decode(body, frozenset({PACK_REGISTERED}), _REGISTERED_DECODER.decode)


def decode_status_changed(body: bytes) -> tuple[Envelope, ExecutionStatusChanged]:
    """Decode what this worker publishes; tests use it to check the wire format."""
    return _decode(body, frozenset({EXECUTION_STATUS_CHANGED}), _STATUS_CHANGED_DECODER.decode)


def decode_completed(body: bytes) -> tuple[Envelope, ExecutionCompleted]:
    """Decode what this worker publishes; tests use it to check the wire format."""
    return _decode(body, frozenset({EXECUTION_COMPLETED}), _COMPLETED_DECODER.decode)


# --- encoding ------------------------------------------------------------------------------


def format_timestamp(moment: datetime) -> str:
    """Render `2026-09-03T12:34:56.789012Z`: always UTC, always six digits, like the reference.

    A naive datetime has no defined instant, so it is a bug in the caller, not data.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("naive datetime cannot go on the wire")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def encode_message(
    message_type: str,
    payload: msgspec.Struct,
    *,
    correlation_id: str | None = None,
    source_service: str = "worker",
) -> OutgoingMessage:
    """Wrap a payload in a fresh envelope.

    Without a `correlation_id` the message starts a conversation (correlation = its own id);
    a status message passes the dispatch's correlation id so the chain can be traced. The
    payload is validated against its own type first (msgspec does not validate on
    construction), so a status the executor would reject, like "unknown", never leaves.
    """
    fields = msgspec.structs.asdict(payload)
    try:
        msgspec.convert(fields, type(payload))
    except msgspec.ValidationError as exc:
        raise ValueError(f"invalid {type(payload).__name__}: {exc}") from None
    wire_fields = {
        name: format_timestamp(value) if isinstance(value, datetime) else value
        for name, value in fields.items()
    }
    message_id = _new_id()
    envelope = _OutEnvelope(
        message_id=message_id,
        correlation_id=correlation_id or message_id,
        message_type=message_type,
        version="1.0",
        timestamp=format_timestamp(_now()),
        headers={"retry_count": 0, "source_service": source_service},
        payload=wire_fields,
    )
    return OutgoingMessage(
        body=_ENCODER.encode(envelope),
        message_id=envelope.message_id,
        correlation_id=envelope.correlation_id,
    )
