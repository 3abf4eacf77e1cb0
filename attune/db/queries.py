"""The SQL, as synchronous functions that each take one connection.

Each function is one unit of work that `Database` runs in a worker thread: the whole
transaction happens in one thread hop, so a trio task never holds a connection across
an await. Every status write is a compare-and-set whose statuses come from
attune.lifecycle (docs/protocol.md §5, "Execution lifecycle"), so redelivered
messages and racing workers cannot run an execution twice or rewrite a terminal state.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final, TypeVar

import msgspec
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from attune.errors import ExecutionError, InputError, UnreadableExecution
from attune.models import Action, Claim, Execution, Worker
from attune.packs import ActionSpec, PackSpec
from attune.runtimes import CORE_RUNTIMES

_T = TypeVar("_T")
Conn = psycopg.Connection[Any]

_EXECUTION_COLS: Final = """
    id, action, action_ref, config, env_vars, worker, status::text AS status, result,
    started_at, timeout_seconds, created
"""

_ACTION_SELECT: Final = """
SELECT a.id, a.ref, coalesce(p.ref, a.pack_ref) AS pack_ref, a.entrypoint,
       lower(r.name) AS runtime_name, a.timeout_seconds,
       coalesce(a.parameter_delivery, 'stdin') AS parameter_delivery,
       coalesce(a.parameter_format, 'json') AS parameter_format,
       coalesce(a.output_format, 'text') AS output_format,
       a.param_schema, a.out_schema, coalesce(a.network, 'none') AS network
FROM action a
LEFT JOIN runtime r ON r.id = a.runtime
LEFT JOIN pack p ON p.id = a.pack
"""

_WORKER_SELECT: Final = """
SELECT w.id, w.name, w.worker_type::text AS worker_type, w.status::text AS status,
       coalesce(w.capabilities, '{}'::jsonb) AS capabilities, w.last_heartbeat,
       (SELECT count(*) FROM execution e
         WHERE e.worker = w.id AND e.status = 'running')::int AS running
FROM worker w
"""


def _to(typ: type[_T], row: dict[str, Any], what: str) -> _T:
    try:
        return msgspec.convert(row, typ)
    except msgspec.ValidationError as exc:
        raise ExecutionError(f"{what} row {row.get('id')} has an unexpected shape: {exc}") from None


def _rows(conn: Conn, query: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query.encode(), params)
        return cur.fetchall()


def _row(conn: Conn, query: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
    rows = _rows(conn, query, params)
    return rows[0] if rows else None


def _json(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)


# --- workers -------------------------------------------------------------------------


def register_worker(
    conn: Conn,
    name: str,
    worker_type: str,
    host: str | None,
    port: int | None,
    runtime_id: int | None,
    capabilities: dict[str, Any],
) -> int:
    row = _row(
        conn,
        """
        INSERT INTO worker (name, worker_type, worker_role, runtime, host, port, status,
                            capabilities, last_heartbeat)
        VALUES (%s, %s::worker_type_enum, 'action', %s, %s, %s, 'active', %s, now())
        ON CONFLICT (name) DO UPDATE SET
            worker_type = EXCLUDED.worker_type, worker_role = 'action',
            runtime = EXCLUDED.runtime, host = EXCLUDED.host, port = EXCLUDED.port,
            status = 'active', capabilities = EXCLUDED.capabilities,
            last_heartbeat = now(), updated = now()
        RETURNING id
        """,
        (name, worker_type, runtime_id, host, port, Jsonb(capabilities)),
    )
    assert row is not None
    return int(row["id"])


def heartbeat(conn: Conn, worker_id: int) -> bool:
    cur = conn.execute(
        "UPDATE worker SET last_heartbeat = now(), status = 'active', updated = now() "
        "WHERE id = %s",
        (worker_id,),
    )
    return cur.rowcount == 1


def set_worker_status(conn: Conn, worker_id: int, status: str) -> bool:
    cur = conn.execute(
        "UPDATE worker SET status = %s::worker_status_enum, updated = now() WHERE id = %s",
        (status, worker_id),
    )
    return cur.rowcount == 1


def list_workers(conn: Conn) -> list[Worker]:
    return [_to(Worker, r, "worker") for r in _rows(conn, _WORKER_SELECT + " ORDER BY w.id")]


def pick_worker(
    conn: Conn, runtime_name: str, stale_after: float, *, egress: bool = False
) -> Worker | None:
    # A worker advertising a runtime's alias ("python3") also serves that runtime.
    # Least loaded first: work already assigned (scheduled or running) per unit of
    # capacity, so a burst of submissions spreads before any of it starts.
    row = _row(
        conn,
        _WORKER_SELECT
        + """
        WHERE w.status = 'active'
          AND w.last_heartbeat > now() - make_interval(secs => %s)
          AND jsonb_typeof(w.capabilities -> 'runtimes') = 'array'
          AND EXISTS (
            SELECT 1 FROM jsonb_array_elements_text(w.capabilities -> 'runtimes') AS c(rt)
            WHERE lower(c.rt) = lower(%s)
               OR lower(c.rt) IN (
                    SELECT lower(x) FROM runtime r, unnest(r.aliases || r.name) AS x
                    WHERE lower(r.name) = lower(%s)))
          AND (NOT %s OR coalesce((w.capabilities ->> 'egress')::boolean, false))
        ORDER BY (SELECT count(*) FROM execution e
                   WHERE e.worker = w.id AND e.status IN ('scheduled', 'running'))::float
                 / greatest(coalesce((w.capabilities ->> 'max_concurrent_executions')::int, 1), 1),
                 w.id
        LIMIT 1
        """,
        (stale_after, runtime_name, runtime_name, egress),
    )
    return None if row is None else _to(Worker, row, "worker")


# --- executions ----------------------------------------------------------------------


def _identity(row: dict[str, Any]) -> tuple[int | None, str]:
    """The action id and ref of a row, as far as they can be read at all."""
    action = row.get("action")
    ref = row.get("action_ref")
    return (action if isinstance(action, int) else None, ref if isinstance(ref, str) else "")


def claim_execution(
    conn: Conn, execution_id: int, worker_id: int, new_status: str, from_statuses: Sequence[str]
) -> Claim:
    """The claim's compare-and-set; `new_status`/`from_statuses` come from attune.lifecycle.

    A row that cannot be read raises UnreadableExecution, which rolls the claim back.
    """
    row = _row(
        conn,
        f"""
        UPDATE execution
           SET status = %s::execution_status_enum, started_at = now(), updated = now(),
               worker = %s
         WHERE id = %s AND status = ANY(%s::execution_status_enum[])
        RETURNING {_EXECUTION_COLS}
        """,
        (new_status, worker_id, execution_id, list(from_statuses)),
    )
    if row is None:
        current = _row(
            conn, f"SELECT {_EXECUTION_COLS} FROM execution WHERE id = %s", (execution_id,)
        )
        if current is None:
            return Claim(claimed=False, status=None, execution=None, action=None)
        execution = _to(Execution, current, "execution")
        return Claim(claimed=False, status=execution.status, execution=execution, action=None)
    try:
        execution = _to(Execution, row, "execution")
        action = None
        if execution.action is not None:
            arow = _row(conn, _ACTION_SELECT + " WHERE a.id = %s", (execution.action,))
            action = None if arow is None else _to(Action, arow, "action")
    except ExecutionError as exc:
        action_id, action_ref = _identity(row)
        raise UnreadableExecution(
            str(exc), execution_id=execution_id, action_id=action_id, action_ref=action_ref
        ) from None
    return Claim(claimed=True, status=execution.status, execution=execution, action=action)


def finish_execution(
    conn: Conn,
    execution_id: int,
    new_status: str,
    result: Any,
    from_statuses: Sequence[str],
) -> bool:
    """The end's compare-and-set; `new_status`/`from_statuses` come from attune.lifecycle."""
    cur = conn.execute(
        """
        UPDATE execution
           SET status = %s::execution_status_enum, result = %s, updated = now()
         WHERE id = %s AND status = ANY(%s::execution_status_enum[])
        """,
        (new_status, Jsonb(result), execution_id, list(from_statuses)),
    )
    return cur.rowcount == 1


def orphaned_executions(conn: Conn, worker_id: int) -> list[Execution]:
    rows = _rows(
        conn,
        f"SELECT {_EXECUTION_COLS} FROM execution "
        "WHERE worker = %s AND status = 'running' ORDER BY id",
        (worker_id,),
    )
    return [_to(Execution, r, "execution") for r in rows]


def get_execution(conn: Conn, execution_id: int) -> Execution | None:
    row = _row(conn, f"SELECT {_EXECUTION_COLS} FROM execution WHERE id = %s", (execution_id,))
    return None if row is None else _to(Execution, row, "execution")


def list_executions(
    conn: Conn, status: str | None, worker_id: int | None, limit: int
) -> list[Execution]:
    rows = _rows(
        conn,
        f"""
        SELECT {_EXECUTION_COLS} FROM execution
        WHERE (%s::execution_status_enum IS NULL OR status = %s::execution_status_enum)
          AND (%s::bigint IS NULL OR worker = %s::bigint)
        ORDER BY id DESC
        LIMIT %s
        """,
        (status, status, worker_id, worker_id, limit),
    )
    return [_to(Execution, r, "execution") for r in rows]


def create_execution(
    conn: Conn,
    action: Action,
    config: dict[str, Any],
    worker_id: int,
    timeout_seconds: int | None,
    env_vars: dict[str, Any] | None,
    status: str,
) -> int:
    row = _row(
        conn,
        """
        INSERT INTO execution (action, action_ref, config, env_vars, worker, status,
                               timeout_seconds)
        VALUES (%s, %s, %s, %s, %s, %s::execution_status_enum, %s)
        RETURNING id
        """,
        (action.id, action.ref, Jsonb(config), _json(env_vars), worker_id, status, timeout_seconds),
    )
    assert row is not None
    return int(row["id"])


# --- actions and packs ---------------------------------------------------------------


def get_action(conn: Conn, ref: str) -> Action | None:
    row = _row(conn, _ACTION_SELECT + " WHERE a.ref = %s", (ref,))
    return None if row is None else _to(Action, row, "action")


def _ensure_core_runtimes(conn: Conn, needed: Iterable[str]) -> dict[str, int]:
    # DO NOTHING, then SELECT: an operator's edits to a core runtime row survive re-upserts.
    ids: dict[str, int] = {}
    for runner in sorted(set(needed)):
        runtime = CORE_RUNTIMES[runner]
        conn.execute(
            """
            INSERT INTO runtime (ref, pack, pack_ref, name, aliases, description)
            VALUES (%s, NULL, 'core', %s, %s, %s)
            ON CONFLICT (ref) DO NOTHING
            """,
            (runtime.ref, runtime.name, list(runtime.aliases), runtime.description),
        )
        row = _row(conn, "SELECT id FROM runtime WHERE ref = %s", (runtime.ref,))
        assert row is not None
        ids[runner] = int(row["id"])
    return ids


def _upsert_action(conn: Conn, pack_id: int, pack_ref: str, runtime_id: int, a: ActionSpec) -> int:
    row = _row(
        conn,
        """
        INSERT INTO action (ref, pack, pack_ref, label, description, entrypoint, runtime,
                            timeout_seconds, parameter_delivery, parameter_format,
                            output_format, param_schema, out_schema, tags)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (ref) DO UPDATE SET
            pack = EXCLUDED.pack, pack_ref = EXCLUDED.pack_ref, label = EXCLUDED.label,
            description = EXCLUDED.description, entrypoint = EXCLUDED.entrypoint,
            runtime = EXCLUDED.runtime, timeout_seconds = EXCLUDED.timeout_seconds,
            parameter_delivery = EXCLUDED.parameter_delivery,
            parameter_format = EXCLUDED.parameter_format,
            output_format = EXCLUDED.output_format, param_schema = EXCLUDED.param_schema,
            out_schema = EXCLUDED.out_schema, tags = EXCLUDED.tags, updated = now()
        RETURNING id
        """,
        (
            a.ref,
            pack_id,
            pack_ref,
            a.label,
            a.description,
            a.entry_point,
            runtime_id,
            a.timeout,
            a.parameter_delivery,
            a.parameter_format,
            a.output_format,
            _json(a.parameters),
            _json(a.output_schema),
            list(a.tags),
        ),
    )
    assert row is not None
    return int(row["id"])


def upsert_pack(conn: Conn, pack: PackSpec) -> dict[str, int]:
    unknown = {a.runner_type for a in pack.actions} - CORE_RUNTIMES.keys()
    if unknown:
        raise InputError(f"pack {pack.ref}: unknown runner_type {sorted(unknown)}")
    meta = {"author": pack.author} if pack.author else {}
    row = _row(
        conn,
        """
        INSERT INTO pack (ref, label, description, version, tags, meta)
        VALUES (%s, %s, %s, %s, %s, %s)
        ON CONFLICT (ref) DO UPDATE SET
            label = EXCLUDED.label, description = EXCLUDED.description,
            version = EXCLUDED.version, tags = EXCLUDED.tags, meta = EXCLUDED.meta,
            updated = now()
        RETURNING id
        """,
        (pack.ref, pack.label, pack.description, pack.version, list(pack.tags), Jsonb(meta)),
    )
    assert row is not None
    pack_id = int(row["id"])
    runtimes = _ensure_core_runtimes(conn, CORE_RUNTIMES)
    ids = {
        a.ref: _upsert_action(conn, pack_id, pack.ref, runtimes[a.runner_type], a)
        for a in pack.actions
    }
    for a in pack.actions:
        _set_action_network(conn, ids[a.ref], pack.network_of(a))
    return ids


def _set_action_network(conn: Conn, action_id: int, network: str) -> None:
    """`network: egress` (action or pack); a column of this worker's own (migration 0004)."""
    conn.execute("UPDATE action SET network = %s WHERE id = %s", (network, action_id))
