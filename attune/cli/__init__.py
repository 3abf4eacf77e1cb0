"""The `attune` command line: thin typer commands that parse, call the library, print.

Command modules import their heavy dependencies (database, broker, YAML) inside the
command function, so `attune exec` starts without paying for the worker's libraries.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="attune",
    help="Attune worker: runs untrusted automation actions in a bubblewrap + seccomp sandbox.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Exit codes shared by every command.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_CANCELLED = 4


@app.callback()
def _root() -> None:
    """Attune worker: runs untrusted automation actions in a bubblewrap + seccomp sandbox."""


def _register() -> None:
    from attune.cli import exec_cmd, key_cmd

    exec_cmd.register(app)
    key_cmd.register(app)
    try:
        from attune.cli import service_cmd
    except ImportError:  # pragma: no cover - partial checkouts during development
        return
    service_cmd.register(app)
    from attune.cli import ops_cmd

    ops_cmd.register(app)


_register()


def main() -> None:
    app()
