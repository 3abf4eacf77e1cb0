"""Logging on the stdlib `logging` module: one line per event, as text or JSON.

Structured fields travel in `extra`, so any library logger still works and our own
events carry `execution_id`, `action_ref`, `status`... that can be grepped (text) or
queried (JSON). Every formatted line passes through the registered redactors last, so
a secret that reaches a log call by mistake is masked before it is written.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from collections.abc import Callable
from typing import IO, Any, Literal

from attune.errors import ConfigError

LogFormat = Literal["text", "pretty", "json"]
# The shared configuration's spellings (`log.level: warn`, `log.format: pretty`).
_LEVEL_ALIASES = {"TRACE": "DEBUG", "WARN": "WARNING"}
Redactor = Callable[[str], str]

# The logging module is process-global; the redactors that filter it are too. They are
# kept in one list that formatters read at format time, so a redactor registered after
# configure_logging() (once secrets are known) still applies.
_REDACTORS: list[Redactor] = []

# Attributes every LogRecord has; anything else on a record came in through `extra`.
_RECORD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)
_FIELDS = "attune_fields"
_EVENT = "event"
_RESERVED = frozenset({"ts", "level", "logger", "event", "message", "exc_info"})
_HANDLER_MARK = "_attune_handler"
_DROPPED = "[log line dropped: a redactor failed]"


def add_redactor(fn: Redactor) -> None:
    """Register a function applied to every formatted line (e.g. secret masking)."""
    if fn not in _REDACTORS:
        _REDACTORS.append(fn)


def remove_redactor(fn: Redactor) -> None:
    """Unregister a redactor, e.g. when the secrets it masks are gone."""
    if fn in _REDACTORS:
        _REDACTORS.remove(fn)


def _redact(text: str) -> str:
    """Fails closed: if a redactor raises, the line is dropped rather than leaked."""
    try:
        for fn in _REDACTORS:
            text = fn(text)
    except Exception:
        return _DROPPED
    return text


def _timestamp(created: float) -> str:
    """UTC, ISO 8601 with milliseconds and a `Z`: sortable and unambiguous across hosts."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """Structured fields from log_event() and from plain `extra=` alike."""
    fields = {
        k: v
        for k, v in record.__dict__.items()
        if k not in _RECORD_ATTRS and k not in (_FIELDS, _EVENT) and not k.startswith("_")
    }
    fields.update(getattr(record, _FIELDS, None) or {})
    return fields


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text == "" or any(c in text for c in ' "=\n\r\t'):
        return json.dumps(text, ensure_ascii=False)
    return text


class TextFormatter(logging.Formatter):
    """`<ts> <LEVEL> <logger> event=<event> key=value ...`, then any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, _EVENT, None)
        message = record.getMessage()
        parts = [_timestamp(record.created), record.levelname, record.name]
        if event is not None:
            parts.append(f"event={_text_value(event)}")
            if message != event:
                parts.append(f"message={_text_value(message)}")
        else:
            parts.append(message)
        parts += [f"{k}={_text_value(v)}" for k, v in _fields(record).items()]
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return _redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event, message, then the fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "event": getattr(record, _EVENT, None),
            "message": record.getMessage(),
        }
        for key, value in _fields(record).items():
            data[f"{key}_" if key in _RESERVED else key] = value
        if record.exc_info:
            data["exc_info"] = "".join(traceback.format_exception(*record.exc_info))
        if record.stack_info:
            data["stack_info"] = record.stack_info
        # Redact the values before encoding (JSON escaping could hide a secret from a
        # plain substring match) and the encoded line after.
        data = {k: _redact(v) if isinstance(v, str) else v for k, v in data.items()}
        return _redact(json.dumps(data, ensure_ascii=False, default=str))


def configure_logging(
    fmt: LogFormat = "text",
    level: str = "INFO",
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Install one handler on the root logger, replacing one installed earlier.

    `stream` defaults to the current `sys.stderr` at call time (not import time), so a
    test's captured stderr is honoured. Returns the handler so a caller can remove it.
    """
    levels = logging.getLevelNamesMapping()
    name = _LEVEL_ALIASES.get(level.upper(), level.upper())
    if name not in levels:
        raise ConfigError(f"log level {level!r}: expected one of DEBUG, INFO, WARNING, ERROR")
    if fmt not in ("text", "pretty", "json"):
        raise ConfigError(f"log format {fmt!r}: expected text or json")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(levels[name])
    return handler


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log a named event with structured fields.

    The fields go in `extra` under one key, so a field may be called `name` or `message`
    without colliding with LogRecord attributes (which makes `logging` raise).
    """
    if logger.isEnabledFor(level):
        logger.log(level, event, extra={_EVENT: event, _FIELDS: fields}, stacklevel=2)
