"""JSON pointers (RFC 6901), secret markers and schema secret paths: pure helpers.

The API replaces each secret parameter in `execution.config` with a marker and keeps
the encrypted value in `execution_secret_value` under a JSON pointer (`/db/password`,
`/a~1b` for the key `a/b`, `/t~0x` for `t~x`). The worker puts the values back at
those pointers before the parameters are delivered (docs/protocol.md §8).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from attune.errors import ExecutionError
from attune.schema_form import declared_properties, schema_form

MARKER_KEY = "$attune_secret"


def redaction_marker() -> dict[str, Any]:
    """What the API leaves in `execution.config` where a secret parameter was."""
    return {MARKER_KEY: True, "redacted": True}


def is_marker(value: Any) -> bool:
    return isinstance(value, Mapping) and value.get(MARKER_KEY) is True


def escape_token(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def unescape_token(token: str) -> str:
    # Order matters: `~01` is the key `~1`, not `/`.
    return token.replace("~1", "/").replace("~0", "~")


def join(base: str, key: str | int) -> str:
    return f"{base}/{escape_token(str(key))}"


def split(pointer: str) -> list[str]:
    """`/a/b~1c` -> ["a", "b/c"]; "" is the whole document."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise ExecutionError(f"invalid JSON pointer {pointer!r}: must be empty or start with /")
    return [unescape_token(t) for t in pointer[1:].split("/")]


def marker_paths(value: Any, path: str = "") -> list[str]:
    """Pointers of every secret marker left in a document, in document order."""
    if is_marker(value):
        return [path]
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in marker_paths(v, join(path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in marker_paths(v, join(path, i))]
    return []


def _index(token: str, size: int, pointer: str, *, append: bool) -> int:
    if token == "-" and append:
        return size
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise ExecutionError(f"secret path {pointer}: {token!r} is not an array index")
    index = int(token)
    if index > size or (index == size and not append):
        raise ExecutionError(f"secret path {pointer}: index {index} is past the end")
    return index


def set_at(document: Any, pointer: str, value: Any) -> Any:
    """A copy of `document` with `value` at `pointer`; missing object levels are created.

    Arrays are not grown in the middle (that would shift other secrets' pointers);
    a path through a scalar is an ExecutionError naming the path (never the value).
    """
    tokens = split(pointer)
    if not tokens:
        return copy.deepcopy(value)
    root = copy.deepcopy(document) if document is not None else {}
    node = root
    for depth, token in enumerate(tokens):
        last = depth == len(tokens) - 1
        if isinstance(node, dict):
            if last:
                node[token] = value
            else:
                child = node.get(token)
                if child is None or is_marker(child):  # a missing or redacted parent
                    child = node[token] = {}
                elif not isinstance(child, dict | list):
                    raise ExecutionError(
                        f"secret path {pointer}: /"
                        + "/".join(escape_token(t) for t in tokens[: depth + 1])
                        + " is not an object or array"
                    )
                node = child
        elif isinstance(node, list):
            index = _index(token, len(node), pointer, append=last)
            if last:
                if index == len(node):
                    node.append(value)
                else:
                    node[index] = value
            else:
                node = node[index]
        else:
            where = "/".join(escape_token(t) for t in tokens[:depth]) or "(root)"
            raise ExecutionError(f"secret path {pointer}: /{where} is not an object or array")
    return root


def schema_secret_paths(schema: Any) -> list[str]:
    """Pointers of every property marked `secret: true`, nested ones included, sorted.

    Accepts both forms pack metadata uses: JSON Schema (`properties`, recursively) and
    the flat StackStorm form (`{name: {type, secret}}`). `secret: true` on the root of
    a JSON Schema means the whole document ("").
    """
    if not isinstance(schema, Mapping):
        return []
    found: list[str] = []

    def walk(node: Any, path: str) -> None:
        if not isinstance(node, Mapping):
            return
        if node.get("secret") is True:
            found.append(path)
            return
        props = node.get("properties")
        if isinstance(props, Mapping):
            for name, child in props.items():
                walk(child, join(path, name))
        items = node.get("items")
        if isinstance(items, Mapping):
            walk(items, join(path, "*"))

    if schema_form(schema) == "json-schema":
        walk(schema, "")
    else:  # flat form: every value is a property
        for name, prop in declared_properties(schema).items():
            walk(prop, join("", name))
    return sorted(set(found))


def replace_paths(document: Any, pointers: list[str], replacement: Any) -> Any:
    """A copy with each existing path replaced; `*` as a token matches every array item.

    (`*` comes from `items` schemas: a list of secrets is masked item by item. An object
    key literally named `*` is escaped nowhere in RFC 6901, so it is matched too.)
    """
    result = copy.deepcopy(document)
    for pointer in pointers:
        result = _replace(result, split(pointer), replacement)
    return result


def _replace(node: Any, tokens: list[str], replacement: Any) -> Any:
    if not tokens:
        return copy.deepcopy(replacement)
    head, rest = tokens[0], tokens[1:]
    if isinstance(node, dict):
        if head in node:
            node[head] = _replace(node[head], rest, replacement)
    elif isinstance(node, list):
        if head == "*":
            return [_replace(item, rest, replacement) for item in node]
        if head.isdigit() and int(head) < len(node):
            node[int(head)] = _replace(node[int(head)], rest, replacement)
    return node


def values_at(document: Any, pointers: list[str]) -> list[Any]:
    """Every value found at the pointers (`*` expands over array items)."""
    out: list[Any] = []

    def walk(node: Any, tokens: list[str]) -> None:
        if not tokens:
            out.append(node)
            return
        head, rest = tokens[0], tokens[1:]
        if isinstance(node, dict) and head in node:
            walk(node[head], rest)
        elif isinstance(node, list):
            if head == "*":
                for item in node:
                    walk(item, rest)
            elif head.isdigit() and int(head) < len(node):
                walk(node[int(head)], rest)

    for pointer in pointers:
        walk(document, split(pointer))
    return out
