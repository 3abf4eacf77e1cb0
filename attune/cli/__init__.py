"""The `attune` command line: thin typer commands that parse, call the library, print.

Command modules import their heavy dependencies (database, broker, YAML) inside the
command function, so `attune exec` starts without paying for the worker's libraries.
"""

from __future__ import annotations

import sys

# Exit codes shared by every command.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_CANCELLED = 4


def main() -> None:
    """Entry point. `attune exec` skips typer entirely: its start-up is on every run."""
    argv = sys.argv[1:]
    if argv[:1] == ["exec"]:
        from attune.cli import exec_cmd

        raise SystemExit(exec_cmd.main(argv[1:]))
    from attune.cli.app import app

    app()
