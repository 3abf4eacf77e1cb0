"""Bounded YAML (attune.yamlsafe): bombs and deep nesting refused before anything is built."""

from __future__ import annotations

import pytest

from attune.yamlsafe import (
    METADATA_LIMITS,
    OUTPUT_LIMITS,
    YamlInvalid,
    YamlLimits,
    YamlRefused,
    load_yaml,
)

LAUGHS = "\n".join(
    [
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(
            f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]"
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        ),
    ]
)


def test_plain_data_loads() -> None:
    assert load_yaml("a: [1, 2]\nb: {c: x}\n", source="t") == {"a": [1, 2], "b": {"c": "x"}}
    assert load_yaml("", source="t") is None


def test_dates_stay_the_text_as_written() -> None:
    assert load_yaml("d: 2024-01-01\nt: 2024-01-01 10:00:00\n", source="t") == {
        "d": "2024-01-01",
        "t": "2024-01-01 10:00:00",
    }


def test_unknown_and_language_tags_are_read_as_plain_data() -> None:
    text = "a: !foo bar\nb: !!python/object:os.system {x: 1}\nc: !!python/name:os.system ''\n"
    assert load_yaml(text, source="t") == {"a": "bar", "b": {"x": 1}, "c": ""}


@pytest.mark.parametrize("limits", [METADATA_LIMITS, OUTPUT_LIMITS])
def test_billion_laughs_is_refused_before_expansion(limits: YamlLimits) -> None:
    assert len(LAUGHS) < 700
    with pytest.raises(YamlRefused, match="aliases"):
        load_yaml(LAUGHS, source="stdout", limits=limits)


def test_a_few_aliases_are_fine() -> None:
    text = "base: &b {x: 1}\none: *b\ntwo: {<<: *b, y: 2}\n"
    assert load_yaml(text, source="t") == {
        "base": {"x": 1},
        "one": {"x": 1},
        "two": {"x": 1, "y": 2},
    }


def test_too_many_aliases_is_refused() -> None:
    text = "a: &a 1\nb: [" + ", ".join(["*a"] * 101) + "]\n"
    with pytest.raises(YamlRefused, match="more than 100 aliases"):
        load_yaml(text, source="t")


def test_alias_of_a_long_string_counts_its_bytes() -> None:
    text = f"a: &a {'x' * 100_000}\nb: [" + ", ".join(["*a"] * 50) + "]\n"
    with pytest.raises(YamlRefused, match="bytes of text"):
        load_yaml(text, source="t")


def test_deep_nesting_is_refused_with_the_bound() -> None:
    with pytest.raises(YamlRefused, match="nested deeper than 64 levels"):
        load_yaml("[" * 65 + "]" * 65, source="t")
    assert load_yaml("[" * 64 + "]" * 64, source="t") is not None


def test_alias_depth_counts_at_full_depth() -> None:
    inner = "[" * 40 + "]" * 40
    with pytest.raises(YamlRefused, match="nested deeper"):
        load_yaml(
            f"a: &a {inner}\nb: [[[[[[[[[[[[[[[[[[[[[[[[[[*a]]]]]]]]]]]]]]]]]]]]]]]]]]\n",
            source="t",
        )


def test_extremely_deep_nesting_fails_fast_without_recursion_error() -> None:
    with pytest.raises(YamlRefused):
        load_yaml("[" * 200_000, source="t")


def test_too_many_values_is_refused() -> None:
    with pytest.raises(YamlRefused, match="more than 100000 values"):
        load_yaml("[" + "[]," * 100_001 + "]", source="t")


def test_size_bound() -> None:
    with pytest.raises(YamlRefused, match="larger than"):
        load_yaml("x" * (METADATA_LIMITS.max_bytes + 1), source="t")


def test_invalid_yaml_is_invalid_not_refused_by_a_bound() -> None:
    for text in ("a: [1\n", "a: *missing\n", "---\na: 1\n---\nb: 2\n", "? [1, 2]\n: x\n"):
        with pytest.raises(YamlInvalid):
            load_yaml(text, source="file.yaml")


def test_errors_name_the_source() -> None:
    with pytest.raises(YamlRefused, match=r"^pack\.yaml: "):
        load_yaml("a: [1\n", source="pack.yaml")
