"""The runtimes this worker knows: their names, aliases and `runtime` rows, defined once.

An action names its runtime by the `runtime` row's name or one of its aliases, in any
case (`Python3`, `sh`); the sandbox profile is picked by the canonical name. The pack
loader writes these rows (pack NULL, pack_ref `core`), and the executor matches a
worker's advertised runtimes against the same names and aliases (docs/protocol.md §6).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class CoreRuntime:
    """One `runtime` row the pack loader ensures exists, as the reference's catalog has it.

    `extra_aliases` are names this worker also accepts but does not write into the row.
    """

    ref: str
    name: str
    aliases: tuple[str, ...]
    description: str
    distributions: Mapping[str, Any] = field(default_factory=dict)
    installation: Mapping[str, Any] = field(default_factory=dict)
    execution_config: Mapping[str, Any] = field(default_factory=dict)
    extra_aliases: tuple[str, ...] = ()


def _verify(binary: str, **extra: Any) -> dict[str, Any]:
    return {"binary": binary, "args": ["--version"], "exit_code": 0, **extra}


# The rows of the reference's platform catalog (runtimes/python.yaml, shell.yaml there),
# so this worker and the reference read each other's runtime rows.
CORE_RUNTIMES: Mapping[str, CoreRuntime] = MappingProxyType(
    {
        "python": CoreRuntime(
            ref="core.python",
            name="Python",
            aliases=("python", "python3"),
            description="Python 3 runtime for actions and sensors with automatic environment "
            "management",
            distributions={
                "verification": {
                    "commands": [_verify("python3", pattern="Python 3\\.", priority=1)]
                },
                "min_version": "3.8",
            },
            installation={"package_managers": ["pip"], "virtual_env_support": True},
            execution_config={
                "interpreter": {"binary": "python3", "args": ["-u"], "file_extension": ".py"},
                "environment": {
                    "env_type": "virtualenv",
                    "dir_name": ".venv",
                    "create_command": ["python3", "-m", "venv", "--copies", "{env_dir}"],
                    "interpreter_path": "{env_dir}/bin/python3",
                },
                "dependencies": {
                    "manifest_file": "requirements.txt",
                    "install_command": [
                        "{interpreter}",
                        "-m",
                        "pip",
                        "install",
                        "-r",
                        "{manifest_path}",
                    ],
                },
                "env_vars": {
                    "PYTHONPATH": {
                        "operation": "prepend",
                        "value": "{pack_dir}/lib",
                        "separator": ":",
                    }
                },
            },
            extra_aliases=("py",),
        ),
        "shell": CoreRuntime(
            ref="core.shell",
            name="Shell",
            aliases=("shell", "bash", "sh"),
            description="Shell (bash/sh) runtime for script execution - always available",
            distributions={
                "verification": {
                    "commands": [_verify("bash", optional=True, priority=2)],
                    "always_available": True,
                }
            },
            installation={"interpreters": ["sh", "bash", "dash"], "portable": True},
            execution_config={
                "interpreter": {"binary": "/bin/bash", "args": [], "file_extension": ".sh"},
                "inline_execution": {
                    "strategy": "temp_file",
                    "extension": ".sh",
                    "inject_shell_helpers": True,
                },
            },
        ),
    }
)

ALIASES: Mapping[str, str] = MappingProxyType(
    {
        alias.lower(): key
        for key, runtime in CORE_RUNTIMES.items()
        for alias in (runtime.name, *runtime.aliases, *runtime.extra_aliases)
    }
)


def canonical_runtime(name: str | None) -> str:
    """The profile name for a runtime name or alias, any case; "" for none."""
    lowered = (name or "").lower()
    return ALIASES.get(lowered, lowered)
