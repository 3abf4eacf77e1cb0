"""Commands that talk to the services: db, pack, run-worker, submit (ops_cmd has the rest)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from attune.cli import EXIT_BY_STATUS
from attune.cli.common import ConfigOpt, fail, load, run
from attune.cli.pack_env_cmd import build_with_progress, register_env
from attune.errors import AttuneError

if TYPE_CHECKING:
    from attune.config import Config

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
pack_app = typer.Typer(help="Packs of actions.", no_args_is_help=True)
register_env(pack_app)


@db_app.command("migrate")
def db_migrate(config: ConfigOpt = None) -> None:
    """Create or update the `attune` schema (safe to re-run)."""
    cfg = load(config)

    async def main() -> list[str]:
        from attune.db import Database

        async with Database.open_ctx(cfg.database.url) as db:
            return await db.migrate()

    applied = run(main)
    typer.echo(
        f"applied {len(applied)} migration(s)"
        + (f": {', '.join(applied)}" if applied else "; schema up to date")
    )


@pack_app.command("load")
def pack_load(
    directory: Annotated[Path, typer.Argument(help="The pack directory (holds pack.yaml).")],
    config: ConfigOpt = None,
) -> None:
    """Validate a pack, install it, upsert its rows, build its Python environment."""
    cfg = load(config)

    async def main() -> None:
        from attune.db import Database
        from attune.packs import install_pack, load_pack

        spec = load_pack(directory)
        for warning in spec.warnings:
            typer.echo(f"warning: {warning}", err=True)
        async with Database.open_ctx(cfg.database.url) as db:
            installed = install_pack(spec, Path(cfg.packs_base_dir))
            ids = await db.upsert_pack(spec)
            pack_id = await db.pack_id(spec.ref)
        typer.echo(
            f"pack {spec.ref} installed at {installed}; actions: "
            + ", ".join(f"{r} (id {i})" for r, i in sorted(ids.items()))
        )
        # A failed build leaves the pack loaded: its Python runs then fail with
        # "environment not ready" and pip's output until `attune pack env build`.
        if not await build_with_progress(cfg, spec.ref, installed, force=False):
            typer.echo(
                f"warning: pack {spec.ref} is loaded, but its Python actions cannot run "
                f"until its environment builds (attune pack env build {spec.ref})",
                err=True,
            )
        runtimes = sorted({a.runtime for a in spec.actions if a.runtime})
        await _announce(cfg, pack_id, spec.ref, spec.version, runtimes)

    run(main)


async def _announce(
    cfg: Config, pack_id: int, pack_ref: str, version: str, runtimes: list[str]
) -> None:
    """Publish pack.registered so every worker prepares the pack (best effort)."""
    from attune.broker import open_broker
    from attune.pack_events import publish_registered

    try:
        async with open_broker(cfg.message_queue.url, connect_timeout=5) as broker:
            await broker.declare_topology()
            await publish_registered(broker, pack_id, pack_ref, version, runtimes)
    except AttuneError as exc:
        typer.echo(f"warning: workers were not notified (pack.registered): {exc}", err=True)


def run_worker_cmd(
    config: ConfigOpt = None,
    name: Annotated[
        Optional[str], typer.Option("--name", help="Worker name (default worker-<hostname>).")
    ] = None,
    capacity: Annotated[
        Optional[int], typer.Option("--max-concurrent-tasks", help="Concurrent executions.")
    ] = None,
    log_format: Annotated[
        Optional[str], typer.Option("--log-format", help="text or json (default: log.format).")
    ] = None,
    log_level: Annotated[
        Optional[str], typer.Option("--log-level", help="Default: log.level.")
    ] = None,
    metrics_port: Annotated[
        Optional[int],
        typer.Option("--metrics-port", help="Serve Prometheus metrics on this port."),
    ] = None,
) -> None:
    """Register, heartbeat, consume worker.{id}.executions and run them in sandboxes."""
    from attune.log import configure_logging

    overrides: dict[str, Any] = {}
    if name:
        overrides["worker.name"] = name
    if capacity:
        overrides["worker.max_concurrent_tasks"] = capacity
    if metrics_port is not None:
        overrides["worker.metrics_port"] = metrics_port
    try:
        cfg = load(config, overrides)
        configure_logging(log_format or cfg.log.format, log_level or cfg.log.level)  # type: ignore[arg-type]
    except AttuneError as exc:
        raise fail(str(exc)) from None
    from attune.worker import run_worker

    run(lambda: run_worker(cfg))


def submit(
    action_ref: Annotated[str, typer.Argument(help="pack.action")],
    params: Annotated[list[str], typer.Option("--params", "-p", help="k=v, repeatable.")] = [],
    params_json: Annotated[Optional[str], typer.Option("--params-json")] = None,
    timeout: Annotated[
        Optional[int], typer.Option("--timeout", help="Execution timeout (s).")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait and print the result.")] = False,
    wait_timeout: Annotated[float, typer.Option("--wait-timeout")] = 600.0,
    config: ConfigOpt = None,
) -> None:
    """Play the executor: schedule an execution on a healthy worker and dispatch it."""
    cfg = load(config)

    async def main() -> tuple[int, dict[str, Any] | None]:
        from attune.broker import open_broker
        from attune.db import Database
        from attune.params import parse_kv_params, parse_params_json
        from attune.submit import schedule, wait_terminal

        async with Database.open_ctx(cfg.database.url) as db:
            action = await db.get_action(action_ref)
            schema = action.param_schema if action else None
            collected = parse_params_json(params_json) if params_json else {}
            collected.update(parse_kv_params(params, schema))
            async with open_broker(cfg.message_queue.url) as broker:
                execution_id, worker = await schedule(
                    db,
                    broker,
                    action_ref,
                    collected,
                    timeout_seconds=timeout,
                    encryption_key=cfg.security.encryption_key,
                )
            typer.echo(
                f"execution {execution_id} scheduled on {worker.name} (id {worker.id})",
                err=True,
            )
            if not wait:
                return execution_id, None
            if sys.stderr.isatty():  # live output and elapsed time for a person
                from attune.cli.ops_cmd import follow_live

                row = await follow_live(db, cfg, execution_id, timeout=wait_timeout)
            else:
                row = await wait_terminal(db, execution_id, timeout=wait_timeout)
            return execution_id, {"status": row.status, "result": row.result}

    execution_id, outcome = run(main)
    if outcome is None:
        typer.echo(json.dumps({"execution_id": execution_id}))
        return
    sys.stdout.write(json.dumps(outcome["result"], ensure_ascii=False) + "\n")
    raise typer.Exit(EXIT_BY_STATUS.get(outcome["status"], 1))
