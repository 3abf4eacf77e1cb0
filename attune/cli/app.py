"""The typer application: every command but the `exec` fast path is parsed here."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="attune",
    help="Attune worker: runs untrusted automation actions in a bubblewrap + seccomp sandbox.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Attune worker: runs untrusted automation actions in a bubblewrap + seccomp sandbox."""


def _register() -> None:
    from attune.cli import exec_cmd, key_cmd, ops_cmd, service_cmd

    exec_cmd.register(app)
    key_cmd.register(app)
    service_cmd.register(app)
    ops_cmd.register(app)


_register()
