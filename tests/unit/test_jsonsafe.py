"""The stored-result normaliser and the bounded JSON decoder (attune.jsonsafe)."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

import pytest

from attune.jsonsafe import (
    DATA_LIMITS,
    DataInvalid,
    DataRefused,
    clean_text,
    decode_json,
    fit_text,
    json_size,
    normalise,
)


def strict_json(value: Any) -> str:
    """What PostgreSQL jsonb and strict readers need: no NaN, UTF-8, no NUL."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    text.encode("utf-8")
    assert "\\u0000" not in text
    return text


def test_nul_and_lone_surrogates_become_the_replacement_character() -> None:
    assert clean_text("a\0b") == "a\ufffdb"
    assert clean_text("x\ud800y\udfff") == "x\ufffdy\ufffd"
    value = normalise({"k\0": ["\0", "\udc80"]})
    assert value == {"k\ufffd": ["\ufffd", "\ufffd"]}
    strict_json(value)


def test_non_finite_numbers_become_their_names() -> None:
    assert normalise([math.nan, math.inf, -math.inf, 1.5]) == ["NaN", "Infinity", "-Infinity", 1.5]


def test_yaml_only_types_become_json() -> None:
    value = normalise(
        {
            "date": dt.date(2024, 1, 2),
            "when": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
            "time": dt.time(3, 4),
            "bin": b"hello",
            "set": {"b", "a"},
            "tuple": (1, 2),
            "big": 2**70,
            "other": object,
        }
    )
    assert value["date"] == "2024-01-02"
    assert value["when"] == "2024-01-02T03:04:05+00:00"
    assert value["time"] == "03:04:00"
    assert value["bin"] == "aGVsbG8="
    assert value["set"] == ["a", "b"]
    assert value["tuple"] == [1, 2]
    assert value["big"] == str(2**70)
    assert isinstance(value["other"], str)
    strict_json(value)


def test_keys_become_text() -> None:
    assert normalise({1: "a", None: "b", 2.5: "c", False: "d"}) == {
        "1": "a",
        "null": "b",
        "2.5": "c",
        "false": "d",
    }


def nested(depth: int) -> list[Any]:
    root: list[Any] = []
    cur = root
    for _ in range(depth - 1):
        cur.append([])
        cur = cur[0]
    return root


def test_depth_bound_is_exact_and_never_a_recursion_error() -> None:
    assert normalise(nested(DATA_LIMITS.max_depth)) is not None
    with pytest.raises(DataRefused, match="nested deeper than 100 levels"):
        normalise(nested(DATA_LIMITS.max_depth + 1))
    with pytest.raises(DataRefused, match="nested deeper"):
        normalise(nested(900))
    with pytest.raises(DataRefused, match="nested deeper"):
        normalise(nested(100_000))


def test_value_bound() -> None:
    with pytest.raises(DataRefused, match="more than 250000 values"):
        normalise([0] * DATA_LIMITS.max_values)
    assert len(normalise([0] * (DATA_LIMITS.max_values - 1))) == DATA_LIMITS.max_values - 1


def test_decode_json_reads_nan_and_normalises_it() -> None:
    assert decode_json('{"x": NaN, "y": -Infinity, "z": 1e400}', what="t") == {
        "x": "NaN",
        "y": "-Infinity",
        "z": "Infinity",
    }


def test_decode_json_strict_refuses_constants() -> None:
    with pytest.raises(DataInvalid):
        decode_json("[NaN]", what="t", strict=True)


def test_decode_json_refuses_deep_and_wide_without_building_it() -> None:
    with pytest.raises(DataRefused, match="nested deeper"):
        decode_json("[" * 50_000 + "]" * 50_000, what="stdout")
    with pytest.raises(DataRefused, match="more than 250000 values"):
        decode_json("[" + "[]," * 1_000_000 + "[]]", what="stdout")
    with pytest.raises(DataRefused, match="larger than"):
        decode_json(" " * (DATA_LIMITS.max_bytes + 1), what="stdout")


def test_commas_inside_strings_are_not_values() -> None:
    text = json.dumps({"csv": "," * 400_000})
    assert decode_json(text, what="t") == {"csv": "," * 400_000}


def test_invalid_json_is_invalid_not_refused_by_a_bound() -> None:
    for text in ("{", "[1,]", '"\\ud800', "1" * 5000):
        try:
            decode_json(text, what="t")
        except DataInvalid:
            pass
        else:
            assert text == '"\\ud800'  # a lone escaped surrogate is JSON; it is cleaned


def test_json_size_counts_escapes() -> None:
    for text in ("plain", 'q"\\', "\x01\x1f\n\t", "é€😀", "\x7f"):
        assert json_size(text) == len(json.dumps(text, ensure_ascii=False).encode()) - 2


def test_fit_text_cuts_to_the_stored_budget() -> None:
    text = "\x01" * 100_000
    fitted = fit_text(text, 60_000)
    assert json_size(fitted) <= 60_000 < json_size(fitted + "\x01")
    assert fit_text("abc", 3) == "abc"
    mixed = ("é\n\x02x" * 50_000)[:150_001]
    cut = fit_text(mixed, 100_000)
    assert mixed.startswith(cut)
    assert json_size(cut) <= 100_000 < json_size(mixed[: len(cut) + 1])


def test_heavier_than_stops_early_and_counts_text() -> None:
    from attune.jsonsafe import heavier_than

    assert not heavier_than({"a": [1, 2], "b": "x" * 10}, values=10, chars=100)
    assert heavier_than({"a": list(range(10**6))}, values=2000, chars=10**9)
    assert heavier_than({"stdout": "x" * 300_000}, values=2000, chars=256 * 1024)
