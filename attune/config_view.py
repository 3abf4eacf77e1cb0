"""The configuration as people read it: masked for printing, annotated, documented.

Presentation only; config.py owns the keys. `attune config show` prints `annotated_yaml`,
docs/configuration.md is `reference_markdown`, and every printed form passes through
`redacted` so no password or key reaches a terminal or a log.
"""

from __future__ import annotations

import json
import re
import typing
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec

from attune.config import (
    SECRET_KEYS,
    Config,
    env_var_name,
    key_types,
    sections,
    unused_keys,
)

_REDACTED = "***"
_PASSWORD_PARAM = re.compile(r"(password=)('[^']*'|[^\s&]*)", re.IGNORECASE)
UNUSED_MARK = "# accepted, not used by this worker"


def _redact_url(url: str) -> str:
    """Masks `user:pw@`, `?password=pw` and the libpq `password=pw` keyword form."""
    url = _PASSWORD_PARAM.sub(rf"\g<1>{_REDACTED}", url)
    try:
        parts = urlsplit(url)
        has_password = parts.password is not None
    except ValueError:
        return _REDACTED
    if not has_password:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{name}:{_REDACTED}@{host}"))


def _lookup(data: dict[str, Any], key: str) -> tuple[dict[str, Any], str]:
    *path, leaf = key.split(".")
    for part in path:
        data = data[part]
    return data, leaf


def redacted(config: Config) -> dict[str, Any]:
    """The config as plain data, safe to print: URL passwords and secrets are masked."""
    data: dict[str, Any] = msgspec.to_builtins(config)
    data["database"]["url"] = _redact_url(config.database.url)
    data["message_queue"]["url"] = _redact_url(config.message_queue.url)
    for key in SECRET_KEYS:
        node, leaf = _lookup(data, key)
        if node.get(leaf) is not None:
            node[leaf] = _REDACTED
    return data


def annotated_yaml(config: Config) -> str:
    """YAML of the effective config; keys accepted but not used carry a comment."""
    data = redacted(config)
    unused = unused_keys()
    known_sections = sections()
    lines: list[str] = []

    def emit(node: dict[str, Any], prefix: str, depth: int) -> None:
        for name, value in node.items():
            key = prefix + name
            mark = f"  {UNUSED_MARK}" if key in unused else ""
            pad = "  " * depth
            if key in known_sections:
                lines.append(f"{pad}{name}:{mark}")
                if key not in unused:
                    emit(value, key + ".", depth + 1)
                else:  # a whole shared section: its keys, unmarked one by one
                    emit_plain(value, depth + 1)
            else:
                lines.append(f"{pad}{name}: {json.dumps(value, ensure_ascii=False)}{mark}")

    def emit_plain(node: dict[str, Any], depth: int) -> None:
        for name, value in node.items():
            pad = "  " * depth
            if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
                lines.append(f"{pad}{name}:")
                emit_plain(value, depth + 1)
            else:
                lines.append(f"{pad}{name}: {json.dumps(value, ensure_ascii=False)}")

    emit(data, "", 0)
    return "\n".join(lines) + "\n"


def _annotated(tp: Any) -> bool:
    return typing.get_origin(tp) is Annotated


def _type_text(tp: Any) -> str:
    """A short human form of an annotation, e.g. `int (>= 1)` or `"local" | "remote"`."""
    meta: list[msgspec.Meta] = []
    if _annotated(tp):
        tp, *extras = typing.get_args(tp)
        meta = [m for m in extras if isinstance(m, msgspec.Meta)]
    if typing.get_origin(tp) is Literal:
        text = " | ".join(f'"{v}"' for v in typing.get_args(tp))
    elif typing.get_origin(tp) in (list, dict):
        text = str(tp).replace("typing.", "").replace("attune.config_shared.", "")
    elif typing.get_args(tp):
        text = " | ".join("null" if a is type(None) else _type_text(a) for a in typing.get_args(tp))
    elif isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        text = f"{tp.__name__} table"
    else:
        text = tp.__name__
    bounds = [
        f"{op} {getattr(m, attr)}"
        for m in meta
        for attr, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
        if getattr(m, attr) is not None
    ]
    return f"{text} ({', '.join(bounds)})" if bounds else text


def _description(tp: Any) -> str:
    if _annotated(tp):
        for m in typing.get_args(tp)[1:]:
            if isinstance(m, msgspec.Meta) and m.description:
                return m.description
    return ""


def _default_text(defaults: dict[str, Any], key: str) -> str:
    node, leaf = _lookup(defaults, key)
    default = node[leaf]
    if default is None:
        return "(unset)"
    return f"`{default if isinstance(default, str) else json.dumps(default)}`"


def _table(keys: list[str], defaults: dict[str, Any], with_description: bool) -> list[str]:
    types = key_types()
    head = ["key", "type", "default", "env var"] + (["description"] if with_description else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        tp = types[key]
        cells = [f"`{key}`", _type_text(tp), _default_text(defaults, key), f"`{env_var_name(key)}`"]
        if with_description:
            cells.append(_description(tp))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


def _covered(key: str, unused: frozenset[str]) -> bool:
    """Unused on its own or inside an unused section."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in unused for i in range(1, len(parts) + 1))


def config_reference_markdown() -> str:
    """Generated from the Structs themselves, so the documentation cannot drift."""
    defaults = msgspec.to_builtins(Config())
    unused = unused_keys()
    used = [k for k in key_types() if not _covered(k, unused)]
    shared = [k for k in key_types() if _covered(k, unused)]
    lines = _table(used, defaults, with_description=True)
    lines += [
        "",
        "### Accepted from the shared configuration, not used by this worker",
        "",
        "These keys belong to the other Attune services or to features this worker does",
        "not have. They are type-checked like every other key, so a shared configuration",
        "file works unchanged, and `attune config show` marks them.",
        "",
    ]
    lines += _table(shared, defaults, with_description=False)
    return "\n".join(lines) + "\n"
