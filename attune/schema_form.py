"""The two ways pack metadata writes a parameter schema, told apart in one place.

    JSON-Schema form   {"type": "object", "properties": {name: {...}}, "required": [...]}
    flat form          {name: {"type": ..., "required": true, "secret": true}, ...}

The flat form is the StackStorm style the reference's packs use; the JSON-Schema form is
what the API stores. Parameter checks (attune.params), the secret paths of a schema
(attune.secrets.pointer) and pack validation (attune.packs) all read a schema through
`schema_form` and `declared_properties`, so the three agree on what a schema declares.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

# Keys only a JSON Schema has at its root: a mapping holding one is never the flat form.
JSON_SCHEMA_KEYWORDS = frozenset({"$schema", "additionalProperties", "patternProperties", "$defs"})

SchemaForm = Literal["json-schema", "flat", "none"]


def schema_form(schema: Any) -> SchemaForm:
    """Which form `schema` is written in; "none" when it declares no parameters at all."""
    if not isinstance(schema, Mapping) or not schema:
        return "none"
    if (
        "properties" in schema
        or isinstance(schema.get("type"), str)
        or schema.get("secret") is True
        or JSON_SCHEMA_KEYWORDS & schema.keys()
    ):
        return "json-schema"
    if all(isinstance(value, Mapping) for value in schema.values()):
        return "flat"
    return "none"


def declared_properties(schema: Any) -> Mapping[str, Any]:
    """name -> property, in either form; {} when the schema declares none.

    Not validated: in the JSON-Schema form a `properties` that is not a mapping reads
    as {} here, and the callers that must reject it (params, packs) check it themselves.
    """
    form = schema_form(schema)
    if form == "flat":
        return schema  # type: ignore[no-any-return]
    if form == "json-schema":
        properties = schema.get("properties")
        return properties if isinstance(properties, Mapping) else {}
    return {}
