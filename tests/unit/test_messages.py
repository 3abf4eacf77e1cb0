"""Wire messages: decoding what the reference sends, encoding what it expects."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest

from attune.errors import MessageError
from attune.messages import (
    CANCEL_QUEUE_ARGUMENTS,
    EXCHANGES,
    EXECUTIONS_QUEUE_ARGUMENTS,
    MAX_BODY_BYTES,
    ROUTING_COMPLETED,
    ROUTING_STATUS_CHANGED,
    ExecutionCompleted,
    ExecutionStatusChanged,
    cancel_queue,
    cancel_routing_key,
    decode_cancel,
    decode_completed,
    decode_dispatch,
    decode_envelope,
    decode_status_changed,
    dispatch_routing_key,
    encode_message,
    executions_queue,
)

# As the reference executor writes it (serde_json of MessageEnvelope, chrono nanoseconds),
# with payload fields this worker does not use.
REFERENCE_DISPATCH = b"""{
  "message_id": "0b6f5a4e-2c1d-4f7a-9a53-6d1c2e8b9f01",
  "correlation_id": "7d9e1c2b-3a4f-4b5c-8d6e-0f1a2b3c4d5e",
  "message_type": "ExecutionRequested",
  "version": "1.0",
  "timestamp": "2026-09-03T12:34:56.789012345Z",
  "headers": {"retry_count": 0, "source_service": "executor", "trace_id": null},
  "payload": {
    "execution_id": 1042,
    "action_id": 17,
    "action_ref": "core.echo",
    "worker_id": 3,
    "parent_id": null,
    "enforcement_id": null,
    "config": {"message": "hi"},
    "release_id": 5,
    "release_digest": "sha256:abc"
  }
}"""

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
WIRE_TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


_DROP = object()  # marks a field to remove


def _body(envelope: dict[str, Any]) -> bytes:
    return json.dumps(envelope).encode()


def _dispatch(**changes: Any) -> dict[str, Any]:
    envelope: dict[str, Any] = json.loads(REFERENCE_DISPATCH)
    for key, value in changes.items():
        if value is _DROP:
            envelope.pop(key)
        else:
            envelope[key] = value
    return envelope


def _with_payload(**changes: Any) -> dict[str, Any]:
    envelope = _dispatch()
    for key, value in changes.items():
        if value is _DROP:
            envelope["payload"].pop(key)
        else:
            envelope["payload"][key] = value
    return envelope


def test_reference_dispatch_decodes_with_unknown_fields_ignored() -> None:
    envelope, payload = decode_dispatch(REFERENCE_DISPATCH)

    assert envelope.message_id == "0b6f5a4e-2c1d-4f7a-9a53-6d1c2e8b9f01"
    assert envelope.correlation_id == "7d9e1c2b-3a4f-4b5c-8d6e-0f1a2b3c4d5e"
    assert envelope.message_type == "ExecutionRequested"
    assert envelope.version == "1.0"
    assert envelope.timestamp == datetime(2026, 9, 3, 12, 34, 56, 789012, tzinfo=UTC)
    assert envelope.headers["source_service"] == "executor"
    assert (payload.execution_id, payload.action_ref, payload.worker_id) == (1042, "core.echo", 3)
    assert (payload.release_id, payload.release_digest) == (5, "sha256:abc")


def test_older_execution_scheduled_name_is_accepted_as_a_dispatch() -> None:
    _, payload = decode_dispatch(_body(_dispatch(message_type="ExecutionScheduled")))
    assert payload.execution_id == 1042


def test_optional_release_fields_may_be_absent() -> None:
    _, payload = decode_dispatch(_body(_with_payload(release_id=_DROP, release_digest=_DROP)))
    assert payload.release_id is None
    assert payload.release_digest is None


@pytest.mark.parametrize("value", [_DROP, None])
def test_missing_or_null_ids_get_fresh_distinct_uuids(value: object) -> None:
    envelope = decode_envelope(_body(_dispatch(message_id=value, correlation_id=value)))
    assert UUID_RE.match(envelope.message_id)
    assert UUID_RE.match(envelope.correlation_id)
    assert envelope.message_id != envelope.correlation_id


def test_missing_version_headers_and_timestamp_get_defaults() -> None:
    before = datetime.now(UTC)
    envelope = decode_envelope(
        _body(_dispatch(version=_DROP, headers=_DROP, timestamp=_DROP, extra={"x": 1}))
    )
    assert envelope.version == "1.0"
    assert envelope.headers == {"retry_count": 0}
    assert before <= envelope.timestamp <= datetime.now(UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-09-03T12:34:56.123456789Z", datetime(2026, 9, 3, 12, 34, 56, 123457, tzinfo=UTC)),
        ("2026-09-03T12:34:56.1234567Z", datetime(2026, 9, 3, 12, 34, 56, 123457, tzinfo=UTC)),
        ("2026-09-03T12:34:56Z", datetime(2026, 9, 3, 12, 34, 56, tzinfo=UTC)),
        ("2026-09-03T14:34:56.5+02:00", datetime(2026, 9, 3, 12, 34, 56, 500000, tzinfo=UTC)),
    ],
)
def test_timestamps_with_up_to_nine_fraction_digits_are_accepted(
    text: str, expected: datetime
) -> None:
    assert decode_envelope(_body(_dispatch(timestamp=text))).timestamp == expected


MALFORMED: dict[str, bytes] = {
    "empty": b"",
    "not json": b"execution 1042 please",
    "truncated json": REFERENCE_DISPATCH[:60],
    "invalid utf-8": b'{"message_type": "\xff\xfe"}',
    "invalid utf-8 in payload": REFERENCE_DISPATCH.replace(b'"core.echo"', b'"core.\xff"'),
    "json array": b"[1, 2]",
    "json string": b'"ExecutionRequested"',
    "json null": b"null",
    "missing message_type": _body(_dispatch(message_type=_DROP)),
    "lowercase message_type": _body(_dispatch(message_type="executionrequested")),
    "other message_type": _body(_dispatch(message_type="ExecutionCancelRequested")),
    "message_type not a string": _body(_dispatch(message_type=7)),
    "missing payload": _body(_dispatch(payload=_DROP)),
    "payload not an object": _body(_dispatch(payload=[1042])),
    "headers not an object": _body(_dispatch(headers="none")),
    "naive timestamp": _body(_dispatch(timestamp="2026-09-03T12:34:56.789")),
    "garbage timestamp": _body(_dispatch(timestamp="yesterday")),
    "missing execution_id": _body(_with_payload(execution_id=_DROP)),
    "execution_id as string": _body(_with_payload(execution_id="1042")),
    "execution_id as float": _body(_with_payload(execution_id=1042.0)),
    "execution_id as bool": _body(_with_payload(execution_id=True)),
    "execution_id zero": _body(_with_payload(execution_id=0)),
    "execution_id beyond int64": _body(_with_payload(execution_id=2**63)),
    "missing action_ref": _body(_with_payload(action_ref=_DROP)),
    "action_ref null": _body(_with_payload(action_ref=None)),
    "missing worker_id": _body(_with_payload(worker_id=_DROP)),
    "release_id as string": _body(_with_payload(release_id="5")),
    "over the size cap": _body(_with_payload(config={"pad": "x" * MAX_BODY_BYTES})),
}


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_dispatch_is_a_message_error(body: bytes) -> None:
    with pytest.raises(MessageError):
        decode_dispatch(body)


def test_error_reason_is_short_and_never_quotes_the_body() -> None:
    secret = "hunter2-" + "s" * 500
    body = _body(_with_payload(execution_id="oops", config={"password": secret}))
    with pytest.raises(MessageError) as caught:
        decode_dispatch(body)
    reason = str(caught.value)
    assert "execution_id" in reason
    assert len(reason) <= 200
    assert "hunter2" not in reason

    long_type = _body(_dispatch(message_type="X" * 5000))
    with pytest.raises(MessageError) as caught:
        decode_dispatch(long_type)
    assert len(str(caught.value)) <= 200


def test_cancel_decodes_with_and_without_worker_id() -> None:
    body = _body(
        _dispatch(
            message_type="ExecutionCancelRequested", payload={"execution_id": 1042, "worker_id": 3}
        )
    )
    _, cancel = decode_cancel(body)
    assert (cancel.execution_id, cancel.worker_id) == (1042, 3)

    body = _body(_dispatch(message_type="ExecutionCancelRequested", payload={"execution_id": 1042}))
    assert decode_cancel(body)[1].worker_id is None


@pytest.mark.parametrize(
    "envelope",
    [
        _dispatch(),  # a dispatch is not a cancel
        _dispatch(message_type="ExecutionCancelRequested", payload={"worker_id": 3}),
        _dispatch(message_type="ExecutionCancelRequested", payload={"execution_id": "1"}),
    ],
    ids=["dispatch", "no execution_id", "execution_id string"],
)
def test_malformed_cancel_is_a_message_error(envelope: dict[str, Any]) -> None:
    with pytest.raises(MessageError):
        decode_cancel(_body(envelope))


def test_status_change_encodes_in_reference_shape_and_round_trips() -> None:
    changed_at = datetime(2026, 9, 3, 14, 34, 56, 789012, tzinfo=timezone(timedelta(hours=2)))
    message = encode_message(
        "ExecutionStatusChanged",
        ExecutionStatusChanged(
            execution_id=1042,
            action_ref="core.echo",
            previous_status="scheduled",
            new_status="running",
            changed_at=changed_at,
        ),
        correlation_id="7d9e1c2b-3a4f-4b5c-8d6e-0f1a2b3c4d5e",
    )

    raw = json.loads(message.body)
    assert list(raw) == [
        "message_id",
        "correlation_id",
        "message_type",
        "version",
        "timestamp",
        "headers",
        "payload",
    ]
    assert UUID_RE.match(raw["message_id"])
    assert raw["message_id"] == message.message_id
    assert (
        raw["correlation_id"] == message.correlation_id == ("7d9e1c2b-3a4f-4b5c-8d6e-0f1a2b3c4d5e")
    )
    assert raw["message_type"] == "ExecutionStatusChanged"
    assert raw["version"] == "1.0"
    assert WIRE_TIME_RE.match(raw["timestamp"])
    assert raw["headers"] == {"retry_count": 0, "source_service": "worker"}
    assert raw["payload"] == {
        "execution_id": 1042,
        "action_ref": "core.echo",
        "previous_status": "scheduled",
        "new_status": "running",
        "changed_at": "2026-09-03T12:34:56.789012Z",
    }

    envelope, payload = decode_status_changed(message.body)
    assert envelope.message_id == message.message_id
    assert payload.changed_at == changed_at


def test_new_envelope_correlates_to_itself() -> None:
    message = encode_message(
        "ExecutionCompleted",
        ExecutionCompleted(
            execution_id=1,
            action_id=5,
            action_ref="a.b",
            status="Completed",
            result=None,
            completed_at=datetime(2026, 1, 1, tzinfo=UTC),
        ),
    )
    assert message.correlation_id == message.message_id
    raw = json.loads(message.body)
    assert raw["correlation_id"] == raw["message_id"]
    assert uuid.UUID(message.message_id).version == 4
    assert raw["payload"]["completed_at"] == "2026-01-01T00:00:00.000000Z"
    assert raw["payload"]["action_id"] == 5


def test_completed_action_id_is_required_as_in_the_reference() -> None:
    with pytest.raises(TypeError):
        ExecutionCompleted(  # type: ignore[call-arg]
            execution_id=1,
            action_ref="a.b",
            status="Completed",
            result=None,
            completed_at=datetime(2026, 1, 1, tzinfo=UTC),
        )
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(
            {
                "execution_id": 1,
                "action_id": None,
                "action_ref": "a.b",
                "status": "Completed",
                "result": None,
                "completed_at": "2026-01-01T00:00:00Z",
            },
            ExecutionCompleted,
        )


def test_completed_round_trips_with_a_nested_result() -> None:
    result = {
        "succeeded": False,
        "exit_code": 3,
        "duration_ms": 12,
        "error": "Command exited with code 3",
        "data": [1, {"k": None}],
    }
    message = encode_message(
        "ExecutionCompleted",
        ExecutionCompleted(
            execution_id=1042,
            action_id=17,
            action_ref="core.echo",
            status="Failed",
            result=result,
            completed_at=datetime(2026, 9, 3, 12, 0, tzinfo=UTC),
        ),
        source_service="worker-test",
    )
    envelope, payload = decode_completed(message.body)
    assert envelope.headers["source_service"] == "worker-test"
    assert payload.result == result
    assert (payload.status, payload.action_id) == ("Failed", 17)


@pytest.mark.parametrize(
    "payload",
    [
        ExecutionStatusChanged(
            execution_id=1,
            action_ref="a.b",
            previous_status="running",
            new_status="unknown",  # type: ignore[arg-type]
            changed_at=datetime(2026, 1, 1, tzinfo=UTC),
        ),
        ExecutionCompleted(
            execution_id=1,
            action_id=1,
            action_ref="a.b",
            status="completed",  # type: ignore[arg-type]
            result=None,
            completed_at=datetime(2026, 1, 1, tzinfo=UTC),
        ),
        ExecutionStatusChanged(
            execution_id=1,
            action_ref="a.b",
            previous_status="scheduled",
            new_status="running",
            changed_at=datetime(2026, 1, 1),
        ),
    ],
    ids=["status unknown", "lowercase completed status", "naive datetime"],
)
def test_payloads_the_executor_would_reject_are_not_encoded(payload: Any) -> None:
    with pytest.raises(ValueError):
        encode_message(type(payload).__name__, payload)


def test_topology_names_match_the_protocol() -> None:
    assert dict(EXCHANGES) == {
        "attune.events": "topic",
        "attune.executions": "topic",
        "attune.notifications": "fanout",
        "attune.dlx": "direct",
    }
    assert executions_queue(12) == "worker.12.executions"
    assert cancel_queue(12) == "worker.12.cancel"
    assert dispatch_routing_key(12) == "execution.dispatch.worker.12"
    assert cancel_routing_key(12) == "execution.cancel.worker.12"
    assert ROUTING_STATUS_CHANGED == "execution.status.changed"
    assert ROUTING_COMPLETED == "execution.completed"
    assert dict(EXECUTIONS_QUEUE_ARGUMENTS) == {
        "x-dead-letter-exchange": "attune.dlx",
        "x-message-ttl": 300000,
    }
    assert dict(CANCEL_QUEUE_ARGUMENTS) == {"x-dead-letter-exchange": "attune.dlx"}
