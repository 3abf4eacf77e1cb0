"""The typer application: every command but the `exec` fast path is parsed here."""

from __future__ import annotations

import typer

from attune.cli import exec_cmd, key_cmd, ops_cmd, service_cmd

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


@app.command(
    "exec",
    add_help_option=False,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def exec_command(ctx: typer.Context) -> None:
    """Run one action locally in the sandbox and print its result JSON."""
    # Listed here for `attune --help`; `attune.cli.main` sends `attune exec` straight to
    # exec_cmd.main without typer, whose import is not paid on every local run.
    raise typer.Exit(exec_cmd.main(list(ctx.args)))


app.add_typer(key_cmd.key_app, name="key")
app.add_typer(service_cmd.db_app, name="db")
app.add_typer(service_cmd.pack_app, name="pack")
app.command("run-worker")(service_cmd.run_worker_cmd)
app.command("submit")(service_cmd.submit)
app.add_typer(ops_cmd.executions_app, name="executions")
app.add_typer(ops_cmd.config_app, name="config")
app.command("doctor")(ops_cmd.doctor_cmd)
app.command("workers")(ops_cmd.workers_cmd)
