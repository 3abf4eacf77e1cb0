"""Bounded YAML: the one way the worker and the CLI read YAML that someone else wrote.

YAML that an action or a pack author controls (action output, action and pack metadata,
parameter files) can be small and still expensive: a few hundred bytes of anchors and
aliases expand to gigabytes once the value is walked or serialised ("billion laughs"),
and deep nesting exhausts the recursion of every later consumer. So loading is two
passes over libyaml's events, both in C:

1. a measuring pass that builds nothing: it counts the document's size *as if every
   alias were expanded* (values and scalar bytes), its nesting depth (aliases count at
   their full depth) and its aliases, and stops at the first bound it passes;
2. only then the real load, with a safe constructor.

What the loader produces is plain data (dict, list, str, int, float, bool, None): YAML
timestamps are not resolved (`2024-01-01` stays that text, as an action expects), an
explicit `!!timestamp`, `!!binary` or `!!set` still builds its Python type (the result
normaliser, `attune.jsonsafe`, turns those into JSON), and an unknown or language tag
(`!foo`, `!!python/object`) is ignored: the node is read as the plain scalar, list or
mapping it is written as. Nothing is ever instantiated from a tag.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from attune.errors import InputError

MiB = 1024 * 1024


class YamlRefused(InputError):
    """The YAML is invalid or passes one of the bounds; the message says which."""


class YamlInvalid(YamlRefused):
    """The text is not (one document of) YAML, as opposed to YAML past a bound."""


@dataclass(frozen=True)
class YamlLimits:
    """Bounds for one document; every count is taken with aliases expanded."""

    max_bytes: int = 1 * MiB  # of the input text
    max_depth: int = 64  # nesting levels of collections
    max_values: int = 100_000  # scalars and collections
    max_aliases: int = 100  # `*name` references
    max_expanded_bytes: int = 4 * MiB  # scalar text, aliases expanded


# Action and pack metadata, parameter files, the CLI's inputs.
METADATA_LIMITS = YamlLimits()
# An action's stdout (output_format: yaml). Tighter than JSON: the loader builds about
# 1 KiB of nodes per value (240,000 values took 230 MB and 11 s), so YAML output is
# kept to sizes that cost a run tens of MB at most.
OUTPUT_LIMITS = YamlLimits(
    max_bytes=1 * MiB,
    max_depth=100,
    max_values=25_000,
    max_aliases=100,
    max_expanded_bytes=4 * MiB,
)


@dataclass
class _Frame:
    start_values: int
    start_bytes: int
    anchor: str | None
    mapping: bool
    height: int = 0  # the deepest child's height, collections only
    children: int = 0  # events directly inside: in a mapping, even ones are keys


def measure(text: str | bytes, limits: YamlLimits, source: str) -> None:
    """Raise YamlRefused when the document passes a bound, before anything is built."""
    import yaml

    if len(text) > limits.max_bytes:
        raise YamlRefused(f"{source}: larger than {limits.max_bytes} bytes")
    values = 0
    text_bytes = 0
    aliases = 0
    # anchor -> (values, text bytes, height) of the node it names, expanded.
    anchors: dict[str, tuple[int, int, int]] = {}
    stack: list[_Frame] = []

    def refuse(what: str) -> YamlRefused:
        return YamlRefused(f"{source}: YAML refused: {what}")

    def add(count: int, size: int, height: int) -> None:
        nonlocal values, text_bytes
        values += count
        text_bytes += size
        if values > limits.max_values:
            raise refuse(f"more than {limits.max_values} values (aliases expanded)")
        if text_bytes > limits.max_expanded_bytes:
            raise refuse(f"more than {limits.max_expanded_bytes} bytes of text (aliases expanded)")
        if len(stack) + height > limits.max_depth:
            raise refuse(f"nested deeper than {limits.max_depth} levels")
        if stack and stack[-1].height < height:
            stack[-1].height = height

    try:
        for event in yaml.parse(text, Loader=_event_loader()):
            if isinstance(event, yaml.AliasEvent):
                aliases += 1
                if aliases > limits.max_aliases:
                    raise refuse(f"more than {limits.max_aliases} aliases")
                if event.anchor not in anchors:
                    raise YamlInvalid(f"{source}: invalid YAML: undefined alias {event.anchor!r}")
                add(*anchors[event.anchor])
            elif isinstance(event, yaml.ScalarEvent):
                # A mapping's keys are names, not values (as in JSON): bytes only.
                is_key = bool(stack) and stack[-1].mapping and stack[-1].children % 2 == 0
                size = len(event.value)
                add(0 if is_key else 1, size, 0)
                if event.anchor is not None:
                    anchors[event.anchor] = (1, size, 0)
            elif isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
                add(1, 0, 1)
                mapping = isinstance(event, yaml.MappingStartEvent)
                stack.append(_Frame(values - 1, text_bytes, event.anchor, mapping))
                continue  # counted as a child of its parent when it ends
            elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
                frame = stack.pop()
                height = frame.height + 1
                if stack and stack[-1].height < height:
                    stack[-1].height = height
                if frame.anchor is not None:
                    anchors[frame.anchor] = (
                        values - frame.start_values,
                        text_bytes - frame.start_bytes,
                        height,
                    )
            else:
                continue  # stream and document events
            if stack:
                stack[-1].children += 1
    except yaml.YAMLError as exc:
        if "maximum nesting depth" in str(exc):  # libyaml's own bound (1000 levels)
            raise refuse(f"nested deeper than {limits.max_depth} levels") from None
        raise YamlInvalid(f"{source}: invalid YAML: {_one_line(exc)}") from None
    except RecursionError:  # libyaml nests far below this; kept as a guarantee
        raise refuse(f"nested deeper than {limits.max_depth} levels") from None


def load_yaml(text: str | bytes, *, source: str, limits: YamlLimits = METADATA_LIMITS) -> Any:
    """One YAML document as plain data, or YamlRefused naming `source` and the bound.

    An empty document is None, as with `yaml.safe_load`. More than one document is an
    error.
    """
    import yaml

    measure(text, limits, source)
    try:
        return yaml.load(text, Loader=_data_loader())  # a SafeLoader subclass, see below
    except yaml.YAMLError as exc:
        raise YamlInvalid(f"{source}: invalid YAML: {_one_line(exc)}") from None
    except (ValueError, TypeError, RecursionError) as exc:
        # e.g. a !!binary that is not base64, an unhashable key: still bad input
        raise YamlInvalid(f"{source}: invalid YAML: {exc}") from None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


@functools.cache
def _event_loader() -> type:
    import yaml

    return yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader


@functools.cache
def _data_loader() -> type:
    """Safe loading without timestamp resolution; unknown tags read as plain data."""
    import yaml

    base: Any = _event_loader()

    class DataLoader(base):  # type: ignore[misc]
        pass

    DataLoader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in base.yaml_implicit_resolvers.items()
    }

    def plain(loader: Any, _suffix: str, node: Any) -> Any:
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_scalar(node)

    DataLoader.add_multi_constructor("", plain)
    DataLoader.add_constructor(None, lambda loader, node: plain(loader, "", node))
    return DataLoader
