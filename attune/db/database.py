"""`Database`: the trio face of a sync psycopg pool.

psycopg's async API needs asyncio, so the pool is synchronous and every unit of work
(one whole transaction) runs in one `trio.to_thread.run_sync` hop. The hop is not
abandoned on cancel: a write that has started finishes and commits, so the caller's
view never disagrees with the database. A trio CapacityLimiter the size of the pool
makes excess callers queue (cancellably) in trio instead of parking threads.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import psycopg
import psycopg.errors as pg_errors
import trio
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from attune.db import migrations, queries, secret_queries
from attune.errors import ConfigError, InputError, TransientError
from attune.lifecycle import SUBMITTED, Event, ExecutionStatus, IllegalTransition, Transition
from attune.models import Action, Claim, Execution, Worker
from attune.packs import PackSpec
from attune.secrets.records import KeyRecord, StoredSecret

_T = TypeVar("_T")

WORKER_TYPES = ("local", "remote", "container")
WORKER_STATUSES = ("active", "inactive", "busy", "error")
_SCHEMA_MISSING = (
    pg_errors.UndefinedTable,
    pg_errors.UndefinedColumn,
    pg_errors.UndefinedObject,
    pg_errors.UndefinedFunction,
    pg_errors.InvalidSchemaName,
)


def describe_url(url: str) -> str:
    """`host:port/dbname` for messages: enough to find the server, never the password."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"invalid database URL: {exc}") from None
    host = str(info.get("host") or info.get("hostaddr") or "local socket")
    port = str(info.get("port") or "5432")
    return f"{host}:{port}/{info.get('dbname') or info.get('user') or ''}"


@contextlib.contextmanager
def _translated(where: str) -> Iterator[None]:
    """Turn psycopg errors into the project's tree at the one place psycopg is used."""
    try:
        yield
    except (PoolTimeout, PoolClosed) as exc:
        raise TransientError(f"no database connection to {where}: {exc}") from None
    except _SCHEMA_MISSING as exc:
        raise ConfigError(
            f"database {where} lacks the Attune schema ({exc.sqlstate}: {exc}); "
            "run `attune db migrate`"
        ) from None
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise TransientError(f"database {where} unavailable: {exc}") from None
    except (psycopg.IntegrityError, psycopg.DataError) as exc:
        raise InputError(f"database {where} rejected the data: {exc}") from None
    except psycopg.Error as exc:
        # Anything else (internal errors, unexpected server states): retrying may help,
        # and the caller must not see a psycopg type.
        raise TransientError(f"database {where} error ({type(exc).__name__}): {exc}") from None


_LARGE_RESULT = 1024 * 1024  # characters of output text in a result


class Database:
    """A pooled connection to the Attune schema; open with `Database.open(url)`."""

    def __init__(self, pool: ConnectionPool, where: str, max_size: int) -> None:
        self._pool = pool
        self._where = where
        self._limiter = trio.CapacityLimiter(max_size)
        self._closed = False

    # --- lifecycle ---------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        min_size: int = 1,
        max_size: int = 4,
        connect_timeout: float = 5.0,
        max_idle: float = 600.0,
        statement_timeout: float = 30.0,
        acquire_timeout: float = 10.0,
    ) -> Database:
        """Connect and fill the pool; an unreachable server is a TransientError at once."""
        if not 0 < min_size <= max_size:
            raise ConfigError(
                f"database pool sizes must satisfy 0 < min_size <= max_size "
                f"(got {min_size}, {max_size})"
            )
        where = describe_url(url)
        timeout_ms = str(max(0, int(statement_timeout * 1000)))

        def configure(conn: psycopg.Connection[Any]) -> None:
            conn.execute("SELECT set_config('search_path', 'attune, public', false)")
            conn.execute("SELECT set_config('statement_timeout', %s, false)", (timeout_ms,))
            conn.commit()

        kwargs: dict[str, Any] = {
            "connect_timeout": max(1, math.ceil(connect_timeout)),
            "application_name": "attune-worker",
        }

        def open_pool() -> ConnectionPool:
            # A direct probe first: the pool would only say "timed out", the probe says why.
            with _translated(where):
                try:
                    psycopg.connect(url, **kwargs).close()
                except psycopg.OperationalError as exc:
                    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "failed"
                    raise TransientError(
                        f"cannot connect to PostgreSQL at {where}: {reason}"
                    ) from None
                pool = ConnectionPool(
                    url,
                    min_size=min_size,
                    max_size=max_size,
                    max_idle=max_idle,
                    kwargs=kwargs,
                    configure=configure,
                    check=ConnectionPool.check_connection,
                    timeout=acquire_timeout,
                    name="attune",
                    open=False,
                )
                try:
                    pool.open(wait=True, timeout=connect_timeout)
                except BaseException:
                    pool.close()
                    raise
                return pool

        pool = await trio.to_thread.run_sync(open_pool)
        return cls(pool, where, max_size)

    @classmethod
    @contextlib.asynccontextmanager
    async def open_ctx(cls, url: str, **kwargs: Any) -> AsyncIterator[Database]:
        """`async with Database.open_ctx(url) as db:` closes the pool however the block ends."""
        db = await cls.open(url, **kwargs)
        try:
            yield db
        finally:
            with trio.CancelScope(shield=True):
                await db.close()

    async def close(self) -> None:
        """Close the pool; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await trio.to_thread.run_sync(self._pool.close)

    async def _run(
        self,
        fn: Callable[[psycopg.Connection[Any]], _T],
        *,
        retire: bool = False,
        single: bool = False,
    ) -> _T:
        """Run `fn` in one transaction on one pooled connection, in one thread hop.

        `retire` closes the connection afterwards so the pool replaces it: libpq keeps
        its send buffer at the size of the largest statement, so a connection that sent
        a 10 MiB result would hold 10 MiB for the rest of its life.

        `single` is for an `fn` that sends exactly one statement: it runs in autocommit,
        the statement being its own transaction, which saves the BEGIN and COMMIT round
        trips around it.
        """
        if self._closed:
            raise TransientError(f"database {self._where} is closed")
        pool, where = self._pool, self._where

        def work() -> _T:
            with _translated(where), pool.connection() as conn:
                if single:
                    conn.autocommit = True
                try:
                    value = fn(conn)
                finally:
                    # A broken connection (status UNKNOWN) refuses the change; the pool
                    # discards it when it comes back.
                    if single and conn.info.transaction_status is TransactionStatus.IDLE:
                        conn.autocommit = False
                if retire:
                    conn.commit()
                    conn.close()
                return value

        return await trio.to_thread.run_sync(work, limiter=self._limiter)

    async def ping(self) -> None:
        """Round-trip to the server; raises TransientError if it cannot."""
        await self._run(lambda conn: conn.execute("SELECT 1").fetchone())

    # --- schema ------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Apply pending migrations; returns the versions applied by this call."""
        return await self._run(migrations.apply_migrations)

    async def is_migrated(self) -> bool:
        """True when every packaged migration is recorded in the database."""
        return not await self._run(migrations.pending_migrations)

    # --- workers -----------------------------------------------------------------------

    async def register_worker(
        self,
        name: str,
        *,
        worker_type: str = "local",
        host: str | None = None,
        port: int | None = None,
        runtime_id: int | None = None,
        capabilities: dict[str, Any],
    ) -> int:
        """Upsert by name (same name, same id, same queues); marks it active now."""
        if not name:
            raise InputError("worker name must not be empty")
        if worker_type not in WORKER_TYPES:
            raise InputError(f"worker_type must be one of {WORKER_TYPES}, got {worker_type!r}")
        return await self._run(
            lambda c: queries.register_worker(
                c, name, worker_type, host, port, runtime_id, capabilities
            )
        )

    async def heartbeat(self, worker_id: int) -> bool:
        """Mark the worker alive; False if its row is gone (deleted by an operator).

        Not an exception: the heartbeat loop must keep running; the caller decides
        whether a vanished registration is worth a warning or a restart.
        """
        return await self._run(lambda c: queries.heartbeat(c, worker_id))

    async def set_worker_status(self, worker_id: int, status: str) -> bool:
        """Write the status; False if the worker row is gone."""
        if status not in WORKER_STATUSES:
            raise InputError(f"worker status must be one of {WORKER_STATUSES}, got {status!r}")
        return await self._run(lambda c: queries.set_worker_status(c, worker_id, status))

    async def list_workers(self) -> list[Worker]:
        return await self._run(queries.list_workers)

    async def pick_worker(
        self, runtime_name: str, *, stale_after: float = 90.0, egress: bool = False
    ) -> Worker | None:
        """The least-loaded fresh active worker serving the runtime (and offering egress
        when asked), as the executor picks."""
        return await self._run(
            lambda c: queries.pick_worker(c, runtime_name, stale_after, egress=egress)
        )

    # --- executions --------------------------------------------------------------------

    async def claim_execution(self, execution_id: int, worker_id: int, step: Transition) -> Claim:
        """Take the claim edge (`scheduled -> running`) if and only if the row allows it.

        A row that cannot be read raises UnreadableExecution and stays as it was.
        """
        if step.event is not Event.CLAIM:
            raise IllegalTransition(f"claim_execution needs the claim edge, not {step.event}")
        sources = [s.value for s in step.cas_from]
        return await self._run(
            lambda c: queries.claim_execution(c, execution_id, worker_id, step.new.value, sources)
        )

    async def finish_execution(
        self, execution_id: int, step: Transition, result: dict[str, Any]
    ) -> bool:
        """Write an end and its result where the row is still in `step.cas_from`.

        False if it was not (someone else ended it): an end is never rewritten.
        """
        if not step.terminal:
            raise IllegalTransition(f"finish_execution needs an end, not {step.new}")
        sources = [s.value for s in step.cas_from]
        large = sum(len(v) for v in result.values() if isinstance(v, str)) > _LARGE_RESULT
        return await self._run(
            lambda c: queries.finish_execution(c, execution_id, step.new.value, result, sources),
            retire=large,
            single=True,  # on the critical path: the end is one UPDATE
        )

    async def orphaned_executions(self, worker_id: int) -> list[Execution]:
        """Executions this worker left `running` (it died mid-run); oldest first."""
        return await self._run(lambda c: queries.orphaned_executions(c, worker_id))

    async def get_execution(self, execution_id: int) -> Execution | None:
        return await self._run(lambda c: queries.get_execution(c, execution_id))

    async def list_executions(
        self, *, status: str | None = None, worker_id: int | None = None, limit: int = 50
    ) -> list[Execution]:
        if status is not None and status not in {s.value for s in ExecutionStatus}:
            raise InputError(f"unknown execution status {status!r}")
        if not 1 <= limit <= 10_000:
            raise InputError(f"limit must be between 1 and 10000, got {limit}")
        return await self._run(lambda c: queries.list_executions(c, status, worker_id, limit))

    async def create_execution(
        self,
        action: Action,
        *,
        config: dict[str, Any],
        worker_id: int,
        timeout_seconds: int | None = None,
        env_vars: dict[str, Any] | None = None,
    ) -> int:
        """Insert a `scheduled` execution, as the executor would after picking a worker."""
        return await self._run(
            lambda c: queries.create_execution(
                c, action, config, worker_id, timeout_seconds, env_vars, SUBMITTED.value
            )
        )

    # --- actions and packs -------------------------------------------------------------

    async def get_action(self, ref: str) -> Action | None:
        return await self._run(lambda c: queries.get_action(c, ref))

    async def upsert_pack(self, pack: PackSpec) -> dict[str, int]:
        """Write the pack, core runtimes and actions in one transaction; ref -> action id."""
        return await self._run(lambda c: queries.upsert_pack(c, pack))

    async def pack_id(self, ref: str) -> int:
        """The id of an existing pack row."""
        return await self._run(lambda c: queries.pack_id(c, ref))

    # --- secrets (values stay as stored: tokens or plain JSON) -------------------------

    async def run_secret_rows(
        self, execution_id: int, action_id: int
    ) -> tuple[list[StoredSecret], list[KeyRecord]]:
        """Secret parameters of the execution and the keys its action sees, in one read."""
        return await self._run(lambda c: secret_queries.run_secret_rows(c, execution_id, action_id))

    async def put_execution_secrets(self, execution_id: int, rows: list[StoredSecret]) -> None:
        """Store sealed secret parameters (the API's job; for `submit` and tests)."""
        await self._run(lambda c: secret_queries.put_execution_secrets(c, execution_id, rows))

    async def set_key(
        self,
        ref: str,
        *,
        name: str,
        owner_type: str,
        owner_ref: str | None,
        value: Any,
        encrypted: bool,
        encryption_key_hash: str | None,
    ) -> tuple[int, bool]:
        """Insert or replace a key by ref; (id, created). The owner must exist."""
        if owner_type not in ("system", "pack", "action"):
            raise InputError(f"key owner must be system, pack or action, not {owner_type!r}")
        if encrypted and not encryption_key_hash:
            raise InputError("an encrypted key needs its encryption_key_hash")
        return await self._run(
            lambda c: secret_queries.set_key(
                c, ref, name, owner_type, owner_ref, value, encrypted, encryption_key_hash
            )
        )

    async def list_keys(self) -> list[KeyRecord]:
        return await self._run(secret_queries.list_keys)

    async def delete_key(self, ref: str) -> bool:
        """False when there was no such key."""
        return await self._run(lambda c: secret_queries.delete_key(c, ref))
