"""The SQL, as synchronous functions that each take one connection.

Each function is one unit of work that `Database` runs in a worker thread: the whole
transaction happens in one thread hop, so a trio task never holds a connection across
an await. Every status write is a compare-and-set whose statuses come from
attune.lifecycle (docs/protocol.md §5, "Execution lifecycle"), so redelivered
messages and racing workers cannot run an execution twice or rewrite a terminal state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Final, TypeVar

import msgspec
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from attune.errors import ExecutionError, InputError, UnreadableExecution
from attune.models import Action, Claim, Execution, Worker
from attune.pack_format import ActionSpec
from attune.packs import PackSpec
from attune.runtimes import CORE_RUNTIMES
from attune.secrets.records import ENTITY_EXECUTION_CONFIG, KeyRecord, SecretRows, StoredSecret

_T = TypeVar("_T")
Conn = psycopg.Connection[Any]

_EXECUTION_COLS: Final = """
    id, action, action_ref, config, env_vars, worker, status::text AS status, result,
    started_at, timeout_seconds, created
"""

_KEY_COLS: Final = """
    k.id, k.ref, k.owner_type::text AS owner_type, k.owner, k.owner_pack_ref,
    k.owner_action_ref, k.name, k.encrypted, k.encryption_key_hash, k.value
"""

_ACTION_SELECT: Final = """
SELECT a.id, a.ref, coalesce(p.ref, a.pack_ref) AS pack_ref, a.entrypoint,
       lower(r.name) AS runtime_name, a.timeout_seconds,
       coalesce(a.parameter_delivery, 'stdin') AS parameter_delivery,
       coalesce(a.parameter_format, 'json') AS parameter_format,
       coalesce(a.output_format, 'text') AS output_format,
       a.param_schema, a.out_schema, coalesce(a.enabled, true) AS enabled,
       coalesce(a.network, 'none') AS network
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


def stored_secrets_sql(execution_id: str) -> str:
    """The secret parameters of the execution `execution_id` (an SQL expression)."""
    return f"""
        SELECT json_path, encrypted_value, encryption_key_hash
        FROM execution_secret_value
        WHERE entity_type = '{ENTITY_EXECUTION_CONFIG}' AND entity_id = {execution_id}
    """


def visible_keys_sql(action_id: str) -> str:
    """The keys the action `action_id` (an SQL expression) may see.

    Every system key, the keys of the action's pack, the action's own. A key row whose
    owner id is unset (written by hand with only the ref) matches by ref.
    """
    return f"""
        SELECT {_KEY_COLS}
        FROM key k, (SELECT a.id, a.ref, a.pack, a.pack_ref FROM action a
                     WHERE a.id = {action_id}) a
        WHERE k.owner_type = 'system'
           OR (k.owner_type = 'pack' AND (k.owner_pack = a.pack
               OR (k.owner_pack IS NULL AND k.owner_pack_ref = a.pack_ref)))
           OR (k.owner_type = 'action' AND (k.owner_action = a.id
               OR (k.owner_action IS NULL AND k.owner_action_ref = a.ref)))
    """


# One statement claims the row and reads everything the run needs besides it: the
# action (with its pack ref and runtime) and the secret rows (sealed parameters, the
# keys the action sees), as JSON in the same row. They used to be three more round
# trips (one of them a thread hop and a transaction of its own) between the dispatch
# and the sandbox start; the rows are the same ones, in the same order.
_CLAIM: Final = f"""
WITH claimed AS (
    UPDATE execution
       SET status = %s::execution_status_enum, started_at = now(), updated = now(),
           worker = %s
     WHERE id = %s AND status = ANY(%s::execution_status_enum[])
    RETURNING {_EXECUTION_COLS}
)
SELECT c.*,
       (SELECT to_jsonb(x) FROM ({_ACTION_SELECT} WHERE a.id = c.action) x) AS action_row,
       (SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY s.json_path), '[]'::jsonb)
          FROM ({stored_secrets_sql("c.id")}) s) AS stored_rows,
       (SELECT coalesce(jsonb_agg(to_jsonb(kr) ORDER BY kr.id), '[]'::jsonb)
          FROM ({visible_keys_sql("c.action")}) kr) AS key_rows
FROM claimed c
"""


def claim_execution(
    conn: Conn, execution_id: int, worker_id: int, new_status: str, from_statuses: Sequence[str]
) -> Claim:
    """The claim's compare-and-set; `new_status`/`from_statuses` come from attune.lifecycle.

    A claimed row comes with its action and its secret rows (`Claim.secrets`). A row
    that cannot be read raises UnreadableExecution, which rolls the claim back.
    """
    row = _row(conn, _CLAIM, (new_status, worker_id, execution_id, list(from_statuses)))
    if row is None:
        current = _row(
            conn, f"SELECT {_EXECUTION_COLS} FROM execution WHERE id = %s", (execution_id,)
        )
        if current is None:
            return Claim(claimed=False, status=None, execution=None, action=None)
        execution = _to(Execution, current, "execution")
        return Claim(claimed=False, status=execution.status, execution=execution, action=None)
    action_row = row.pop("action_row")
    stored, keys = row.pop("stored_rows"), row.pop("key_rows")
    try:
        execution = _to(Execution, row, "execution")
        action = None if action_row is None else _to(Action, action_row, "action")
    except ExecutionError as exc:
        action_id, action_ref = _identity(row)
        raise UnreadableExecution(
            str(exc), execution_id=execution_id, action_id=action_id, action_ref=action_ref
        ) from None
    secrets = None
    # A bad secret row leaves `secrets` None: the runner reads the rows again and fails
    # the run naming the row, as it always did.
    with contextlib.suppress(ExecutionError):
        if action is not None:
            secrets = SecretRows(
                stored=[_to(StoredSecret, r, "execution_secret_value") for r in stored],
                keys=[_to(KeyRecord, r, "key") for r in keys],
            )
    return Claim(
        claimed=True, status=execution.status, execution=execution, action=action, secrets=secrets
    )


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


def _ensure_core_runtimes(conn: Conn) -> dict[str, int]:
    """Insert the catalog rows if missing, then their ids by runtime name.

    DO NOTHING, then SELECT: an operator's edits to a runtime row survive re-loads.
    """
    ids: dict[str, int] = {}
    for key, runtime in sorted(CORE_RUNTIMES.items()):
        conn.execute(
            """
            INSERT INTO runtime (ref, pack, pack_ref, name, aliases, description,
                                 distributions, installation, execution_config)
            VALUES (%s, NULL, 'core', %s, %s, %s, %s, %s, %s)
            ON CONFLICT (ref) DO NOTHING
            """,
            (
                runtime.ref,
                runtime.name,
                list(runtime.aliases),
                runtime.description,
                Jsonb(dict(runtime.distributions)),
                Jsonb(dict(runtime.installation)),
                Jsonb(dict(runtime.execution_config)),
            ),
        )
        row = _row(conn, "SELECT id FROM runtime WHERE ref = %s", (runtime.ref,))
        assert row is not None
        ids[key] = int(row["id"])
    return ids


_ACTION_COLUMNS: Final = (
    "ref, pack, pack_ref, label, description, entrypoint, runtime, enabled, "
    "runtime_version_constraint, required_worker_runtimes, worker_selector, "
    "worker_tolerations, worker_affinity, param_schema, out_schema, is_adhoc, "
    "parameter_delivery, parameter_format, output_format, accesses_mcp, "
    "default_execution_permission_set_refs, reference_visibility, "
    "reference_allowed_pack_refs, log_retention_policy, log_retention_limit, "
    "artifact_retention_policy, artifact_retention_limit, timeout_seconds, tags"
)


def action_row(
    pack_id: int, pack_ref: str, runtime_id: int | None, a: ActionSpec
) -> tuple[Any, ...]:
    """The action row the reference's loader writes for this YAML, column for column.

    `parameters` and `output` are stored as written (flat or JSON Schema), like the
    reference does; workflow actions store their workflow file as the entrypoint.
    """
    return (
        a.ref,
        pack_id,
        pack_ref,
        a.display_label,
        a.description,
        a.workflow_file if a.workflow_file is not None else a.entry_point,
        runtime_id,
        a.enabled,
        a.runtime_version,
        Jsonb(a.required_worker_runtimes if a.required_worker_runtimes is not None else {}),
        Jsonb(a.worker_selector or {}),
        Jsonb(a.worker_tolerations or []),
        Jsonb(a.worker_affinity or {}),
        _json(a.parameters),
        _json(a.out_schema),
        False,
        a.parameter_delivery,
        a.parameter_format,
        a.output_format,
        a.accesses_mcp,
        [r.strip() for r in a.default_execution_permission_set_refs if r.strip()],
        a.reference_visibility,
        list(a.reference_allowed_pack_refs),
        a.log_retention_policy,
        a.log_retention_limit,
        a.artifact_retention_policy,
        a.artifact_retention_limit,
        a.effective_timeout,
        list(a.tags),
    )


def _upsert_action(conn: Conn, row: tuple[Any, ...]) -> int:
    columns = [c.strip() for c in _ACTION_COLUMNS.split(",")]
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c != "ref")
    placeholders = ", ".join(["%s"] * len(columns))
    found = _row(
        conn,
        f"INSERT INTO action ({_ACTION_COLUMNS}) VALUES ({placeholders}) "
        f"ON CONFLICT (ref) DO UPDATE SET {updates}, updated = now() RETURNING id",
        row,
    )
    assert found is not None
    return int(found["id"])


def upsert_pack(conn: Conn, pack: PackSpec) -> dict[str, int]:
    """Pack row, runtime rows, action rows; actions the pack no longer has are deleted.

    As in the reference, a re-load keeps the pack's `config` (operators edit it) and
    `is_standard`; everything else comes from the files.
    """
    m = pack.meta
    row = _row(
        conn,
        """
        INSERT INTO pack (ref, label, description, version, conf_schema, config, meta, tags,
                          runtime_deps, dependencies, worker_selector, worker_tolerations,
                          worker_affinity)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (ref) DO UPDATE SET
            label = EXCLUDED.label, description = EXCLUDED.description,
            version = EXCLUDED.version, conf_schema = EXCLUDED.conf_schema,
            meta = EXCLUDED.meta, tags = EXCLUDED.tags, runtime_deps = EXCLUDED.runtime_deps,
            dependencies = EXCLUDED.dependencies, worker_selector = EXCLUDED.worker_selector,
            worker_tolerations = EXCLUDED.worker_tolerations,
            worker_affinity = EXCLUDED.worker_affinity, updated = now()
        RETURNING id
        """,
        (
            m.ref,
            pack.label,
            m.description,
            m.version,
            Jsonb(m.conf_schema),
            Jsonb(m.config),
            Jsonb(m.meta),
            list(m.tags),
            list(m.runtime_deps),
            list(m.dependencies),
            Jsonb(m.worker_selector),
            Jsonb(m.worker_tolerations),
            Jsonb(m.worker_affinity),
        ),
    )
    assert row is not None
    pack_id = int(row["id"])
    runtimes = _ensure_core_runtimes(conn)
    ids: dict[str, int] = {}
    for a in pack.actions:
        owner = _row(conn, "SELECT pack_ref FROM action WHERE ref = %s", (a.ref,))
        if owner is not None and owner["pack_ref"] != m.ref:
            raise InputError(f"action {a.ref} belongs to pack {owner['pack_ref']!r}")
        runtime_id = runtimes.get(a.runtime) if a.runtime else None
        ids[a.ref] = _upsert_action(conn, action_row(pack_id, m.ref, runtime_id, a))
        _set_action_network(conn, ids[a.ref], pack.network_of(a))
    conn.execute(
        "DELETE FROM action WHERE pack = %s AND NOT (ref = ANY(%s))",
        (pack_id, list(ids)),
    )
    return ids


def pack_id(conn: Conn, ref: str) -> int:
    row = _row(conn, "SELECT id FROM pack WHERE ref = %s", (ref,))
    if row is None:
        raise InputError(f"no pack {ref!r}")
    return int(row["id"])


def _set_action_network(conn: Conn, action_id: int, network: str) -> None:
    """`network: egress` (action or pack); a column of this worker's own (migration 0004)."""
    conn.execute("UPDATE action SET network = %s WHERE id = %s", (network, action_id))
