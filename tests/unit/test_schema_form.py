"""One reading of "JSON-Schema or flat parameter form", shared by params, secrets, packs."""

from __future__ import annotations

from typing import Any

import pytest

from attune.params import apply_schema
from attune.schema_form import declared_properties, schema_form
from attune.secrets import schema_secret_paths

JSON_SCHEMA = {
    "type": "object",
    "properties": {"user": {"type": "string"}, "pw": {"type": "string", "secret": True}},
    "required": ["user"],
}
FLAT = {"user": {"type": "string", "required": True}, "pw": {"type": "string", "secret": True}}


@pytest.mark.parametrize(
    ("schema", "form"),
    [
        (JSON_SCHEMA, "json-schema"),
        ({"properties": {}}, "json-schema"),
        ({"type": "object"}, "json-schema"),
        ({"$defs": {"x": {}}}, "json-schema"),
        ({"secret": True}, "json-schema"),
        (FLAT, "flat"),
        ({"type": {"type": "string"}}, "flat"),  # a parameter called `type`
        ({}, "none"),
        (None, "none"),
        ({"a": 1}, "none"),
        (["a"], "none"),
    ],
)
def test_each_schema_is_read_in_exactly_one_form(schema: Any, form: str) -> None:
    assert schema_form(schema) == form


@pytest.mark.parametrize("schema", [JSON_SCHEMA, FLAT], ids=["json-schema", "flat"])
def test_params_and_secret_paths_agree_on_what_a_schema_declares(schema: Any) -> None:
    assert set(declared_properties(schema)) == {"user", "pw"}
    assert schema_secret_paths(schema) == ["/pw"]
    assert apply_schema(schema, {"user": "u"}) == {"user": "u"}


def test_a_json_schema_without_properties_declares_none() -> None:
    assert declared_properties({"type": "object"}) == {}
    assert declared_properties({"properties": "oops"}) == {}
