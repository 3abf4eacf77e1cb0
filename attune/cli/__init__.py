"""The `attune` command line: thin typer commands that parse, call the library, print.

Command modules import their heavy dependencies (database, broker, YAML) inside the
command function, so `attune exec` starts without paying for the worker's libraries.
"""

from __future__ import annotations

import sys

# Exit codes shared by every command: 2 is a usage or input error; an execution's
# outcome maps to 0 succeeded, 1 failed (or abandoned), 3 timed out, 4 cancelled.
EXIT_USAGE = 2
EXIT_BY_STATUS = {"completed": 0, "failed": 1, "abandoned": 1, "timeout": 3, "cancelled": 4}


def main() -> None:
    """Entry point. `attune exec` skips typer entirely: its start-up is on every run."""
    argv = sys.argv[1:]
    if argv[:1] == ["exec"]:
        from attune.cli import exec_cmd

        raise SystemExit(exec_cmd.main(argv[1:]))
    from attune.cli.app import app

    app()
