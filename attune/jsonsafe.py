"""Stored JSON: bounded decoding, and the one normaliser every result passes through.

An execution's result goes to PostgreSQL `jsonb`, to RabbitMQ and to the artifacts, and
is read back by the reference API and executor (Rust, serde_json). Whatever an action
printed or returned, the stored value must be accepted by all of them, so `normalise`
rewrites what they refuse (the rules are in docs/actions.md, "What the result can hold"):

- text: U+0000 (jsonb refuses `\\u0000`) and lone surrogates (not UTF-8) become U+FFFD;
- NaN and +/-Infinity (not JSON) become the strings "NaN", "Infinity", "-Infinity";
- integers outside 64 bits become their decimal text;
- YAML-only types: dates and times become ISO 8601 text, binary becomes base64 text,
  a set becomes a sorted list; any other type becomes its text;
- object keys become text (`1` -> "1", `true` -> "true", `null` -> "null");
- nesting deeper than `max_depth` or more than `max_values` values is refused
  (`DataRefused`): serde_json stops at 128 levels, and a million tiny values cost the
  worker hundreds of MB while being a few MB of text.

The walk is iterative, so no depth reaches Python's recursion limit in here.
`decode_json` is the bounded parser for text that someone else wrote.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from attune.errors import InputError

MiB = 1024 * 1024


class DataRefused(InputError):
    """A JSON value passes a bound or cannot be parsed; the message says which."""


class DataInvalid(DataRefused):
    """The text is not JSON at all (as opposed to JSON past a bound)."""


@dataclass(frozen=True)
class DataLimits:
    max_depth: int = 100  # nested arrays/objects; below serde_json's 128 with the envelope
    max_values: int = 250_000  # scalars, arrays and objects
    max_bytes: int = 10 * MiB  # of the JSON text (decoded input, or the value encoded)


DATA_LIMITS = DataLimits()

_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1
_SURROGATE = re.compile("[\ud800-\udfff]")
_REPLACEMENT = "\ufffd"
_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


def clean_text(text: str) -> str:
    """`text` without U+0000 or lone surrogates (each becomes U+FFFD)."""
    if "\0" in text:
        text = text.replace("\0", _REPLACEMENT)
    if not text.isascii() and _SURROGATE.search(text):
        text = _SURROGATE.sub(_REPLACEMENT, text)
    return text


def _scalar(value: Any) -> Any:
    """The JSON form of a non-container value (see the module docstring)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, int):
        if _INT_MIN <= value <= _INT_MAX:
            return value
        try:
            return str(value)
        except ValueError:  # more digits than int->str allows
            return "<integer too large>"
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else _NON_FINITE[value]
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dt.date | dt.time):  # datetime is a date
        return value.isoformat()
    return clean_text(str(value))


def _key(key: Any) -> str:
    if isinstance(key, str):
        return clean_text(key)
    if key is None or isinstance(key, bool | int | float):
        return json.dumps(_scalar(key))
    return str(_scalar(key))


def _sort_key(item: Any) -> tuple[str, str]:
    return (type(item).__name__, repr(item))


def normalise(value: Any, limits: DataLimits = DATA_LIMITS, *, what: str = "the result") -> Any:
    """A copy of `value` that PostgreSQL jsonb and every JSON reader accept.

    Raises DataRefused past `limits.max_depth` or `limits.max_values`; never raises
    anything else, whatever the value holds.
    """
    holder: list[Any] = [None]
    stack: list[tuple[Any, Any, Any, int]] = [(value, holder, 0, 1)]
    count = 0
    while stack:
        item, parent, slot, depth = stack.pop()
        count += 1
        if count > limits.max_values:
            raise DataRefused(f"{what} holds more than {limits.max_values} values")
        out: Any
        if isinstance(item, dict | list | tuple | set | frozenset):
            if depth > limits.max_depth:
                raise DataRefused(f"{what} is nested deeper than {limits.max_depth} levels")
            if isinstance(item, dict):
                out = {}
                for key, child in item.items():
                    name = _key(key)
                    if name not in out:  # `1` and "1" collide: the first one stays
                        out[name] = None
                        stack.append((child, out, name, depth + 1))
            else:
                children = (
                    sorted(item, key=_sort_key) if isinstance(item, set | frozenset) else item
                )
                out = [None] * len(children)
                stack.extend((child, out, i, depth + 1) for i, child in enumerate(children))
        else:
            out = _scalar(item)
        parent[slot] = out
    return holder[0]


def heavier_than(value: Any, *, values: int, chars: int) -> bool:
    """True if `value` holds more than `values` values or `chars` characters of text.

    Stops as soon as it knows, so it costs at most `values` steps: the cheap test of
    whether encoding a value is worth a thread hop.
    """
    stack = [value]
    seen = text = 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > values:
            return True
        if isinstance(item, str):
            text += len(item)
            if text > chars:
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
            stack.extend(item.keys())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _value_bound(text: str | bytes) -> int:
    """An upper bound on the number of values in a JSON text (cheap, C-speed counts)."""
    if isinstance(text, bytes):
        return text.count(b",") + text.count(b"[") + text.count(b"{") + 1
    return text.count(",") + text.count("[") + text.count("{") + 1


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


def check_value_count(text: str | bytes, limits: DataLimits, what: str) -> None:
    """Refuse JSON text over the size bound, or holding more values than allowed.

    Checked before parsing, so that a flood of tiny values (`[[],[],...]`) never
    becomes millions of Python objects.
    """
    if len(text) > limits.max_bytes:
        raise DataRefused(f"{what} is larger than {limits.max_bytes} bytes")
    if _value_bound(text) > limits.max_values:
        # The quick count also saw commas and brackets inside strings: count exactly.
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if _value_bound(_JSON_STRING.sub('""', text)) > limits.max_values:
            raise DataRefused(f"{what} holds more than {limits.max_values} values")


def decode_json(
    text: str | bytes,
    *,
    what: str,
    limits: DataLimits = DATA_LIMITS,
    strict: bool = False,
    normalised: bool = True,
) -> Any:
    """Parse JSON someone else wrote, bounded in size, depth and values, normalised.

    `strict` refuses NaN/Infinity (parameters must be JSON); otherwise they are read and
    normalised like any other source. Invalid JSON is DataInvalid. With
    `normalised=False` the caller normalises later (depth is then bounded only by the
    parser's own recursion limit).
    """
    check_value_count(text, limits, what)
    try:
        constant = _reject_constant if strict else None
        value = json.loads(text, parse_constant=constant)
    except RecursionError:
        raise DataRefused(f"{what} is nested deeper than {limits.max_depth} levels") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many digits
        raise DataInvalid(f"{what} is not valid JSON: {exc}") from None
    return normalise(value, limits, what=what) if normalised else value


# --- the size of text once stored -----------------------------------------------------

# Bytes that JSON writes as a 6-byte \u00XX escape, and those written as 2 bytes.
_LONG_ESCAPES = bytes(b for b in range(0x20) if b not in b"\b\t\n\f\r")
_SHORT_ESCAPES = b'\b\t\n\f\r"\\'


def json_size(text: str) -> int:
    """Bytes `text` takes inside a JSON document (UTF-8, escapes, without the quotes)."""
    raw = text.encode("utf-8", "surrogatepass")
    size = len(raw)
    size += 5 * (size - len(raw.translate(None, _LONG_ESCAPES)))
    size += len(raw) - len(raw.translate(None, _SHORT_ESCAPES))
    return size


_FIT_SLICE = 64 * 1024


def utf8_len(text: str) -> int:
    """len(text.encode()) without holding the whole encoding at once."""
    return sum(
        len(text[i : i + _FIT_SLICE].encode("utf-8", "surrogatepass"))
        for i in range(0, len(text), _FIT_SLICE)
    )


def fit_text(text: str, budget: int) -> str:
    """The longest prefix of `text` that takes at most `budget` bytes as JSON.

    Measured a slice at a time, so a 10 MiB text never has a 60 MiB escaped twin.
    """
    if len(text) * 6 <= budget:  # even all-escapes fits: the common case, O(1)
        return text
    used = 0
    for start in range(0, len(text), _FIT_SLICE):
        piece = text[start : start + _FIT_SLICE]
        cost = json_size(piece)
        if used + cost > budget:
            low, high = 0, len(piece)  # the longest piece[:k] that still fits
            while low < high:
                mid = (low + high + 1) // 2
                if used + json_size(piece[:mid]) <= budget:
                    low = mid
                else:
                    high = mid - 1
            return text[: start + low]
        used += cost
    return text
