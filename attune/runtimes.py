"""The runtimes this worker knows: their names, aliases and `runtime` rows, defined once.

An action names its runtime by the `runtime` row's name or one of its aliases, in any
case (`Python3`, `sh`); the sandbox profile is picked by the canonical name. The pack
loader writes these rows (pack NULL, pack_ref `core`), and the executor matches a
worker's advertised runtimes against the same names and aliases (docs/protocol.md §6).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True)
class CoreRuntime:
    """One `runtime` row the pack loader ensures exists."""

    ref: str
    name: str
    aliases: tuple[str, ...]
    description: str


CORE_RUNTIMES: Mapping[str, CoreRuntime] = MappingProxyType(
    {
        "python": CoreRuntime(
            "core.python", "python", ("python3", "py"), "Python 3 in the sandbox"
        ),
        "shell": CoreRuntime("core.shell", "shell", ("bash", "sh"), "POSIX shell in the sandbox"),
    }
)

ALIASES: Mapping[str, str] = MappingProxyType(
    {alias: name for name, runtime in CORE_RUNTIMES.items() for alias in runtime.aliases}
)


def canonical_runtime(name: str | None) -> str:
    """The profile name for a runtime name or alias, any case; "" for none."""
    lowered = (name or "").lower()
    return ALIASES.get(lowered, lowered)
