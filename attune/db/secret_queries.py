"""SQL for the keystore (`key`) and secret parameters (`execution_secret_value`).

Same shape as `queries.py`: synchronous functions taking one connection, each one
transaction that `Database` runs in a worker thread. Values go in and out as they are
stored (encrypted tokens or plain JSON); decrypting is `attune.secrets`' job.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg.types.json import Jsonb

from attune.db.queries import (
    _KEY_COLS,
    Conn,
    _row,
    _rows,
    _to,
    stored_secrets_sql,
    visible_keys_sql,
)
from attune.errors import InputError
from attune.secrets.records import ENTITY_EXECUTION_CONFIG, KeyRecord, StoredSecret


def run_secret_rows(
    conn: Conn, execution_id: int, action_id: int
) -> tuple[list[StoredSecret], list[KeyRecord]]:
    """The execution's stored secret parameters and the keys its action may see.

    The same rows a claim reads with its row (`queries.claim_execution`); this read is
    for callers that hold no claim.
    """
    stored = _rows(conn, stored_secrets_sql("%s") + " ORDER BY json_path", (execution_id,))
    keys = _rows(conn, visible_keys_sql("%s") + " ORDER BY k.id", (action_id,))
    return (
        [_to(StoredSecret, r, "execution_secret_value") for r in stored],
        [_to(KeyRecord, r, "key") for r in keys],
    )


def put_execution_secrets(conn: Conn, execution_id: int, rows: Sequence[StoredSecret]) -> None:
    """Store sealed secret parameters of an execution (what the API does on create)."""
    for row in rows:
        if row.encryption_key_hash is None:
            raise InputError(f"secret at {row.json_path or '/'}: encryption_key_hash is required")
        conn.execute(
            """
            INSERT INTO execution_secret_value
                (entity_type, entity_id, json_path, encrypted_value, encryption_key_hash)
            VALUES (%s, %s, %s, %s, %s)
            ON CONFLICT (entity_type, entity_id, json_path) DO UPDATE SET
                encrypted_value = EXCLUDED.encrypted_value,
                encryption_key_hash = EXCLUDED.encryption_key_hash
            """,
            (
                ENTITY_EXECUTION_CONFIG,
                execution_id,
                row.json_path,
                Jsonb(row.encrypted_value),
                row.encryption_key_hash,
            ),
        )


def _owner_ids(conn: Conn, owner_type: str, owner_ref: str | None) -> tuple[int | None, int | None]:
    """(pack id, action id) of the named owner; InputError if it does not exist."""
    if owner_type == "pack":
        row = _row(conn, "SELECT id FROM pack WHERE ref = %s", (owner_ref,))
        if row is None:
            raise InputError(f"no pack {owner_ref!r} (load it with `attune pack load`)")
        return int(row["id"]), None
    if owner_type == "action":
        row = _row(conn, "SELECT id FROM action WHERE ref = %s", (owner_ref,))
        if row is None:
            raise InputError(f"no action {owner_ref!r} (load its pack with `attune pack load`)")
        return None, int(row["id"])
    return None, None


def set_key(
    conn: Conn,
    ref: str,
    name: str,
    owner_type: str,
    owner_ref: str | None,
    value: Any,
    encrypted: bool,
    encryption_key_hash: str | None,
) -> tuple[int, bool]:
    """Insert or replace the key `ref`; returns (id, created)."""
    pack_id, action_id = _owner_ids(conn, owner_type, owner_ref)
    row = _row(
        conn,
        """
        INSERT INTO key (ref, owner_type, owner, owner_pack, owner_pack_ref, owner_action,
                         owner_action_ref, name, encrypted, encryption_key_hash, value)
        VALUES (%s, %s::owner_type_enum, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (ref) DO UPDATE SET
            owner_type = EXCLUDED.owner_type, owner = EXCLUDED.owner,
            owner_identity = NULL, owner_sensor = NULL, owner_sensor_ref = NULL,
            owner_pack = EXCLUDED.owner_pack, owner_pack_ref = EXCLUDED.owner_pack_ref,
            owner_action = EXCLUDED.owner_action, owner_action_ref = EXCLUDED.owner_action_ref,
            name = EXCLUDED.name, encrypted = EXCLUDED.encrypted,
            encryption_key_hash = EXCLUDED.encryption_key_hash, value = EXCLUDED.value,
            updated = now()
        RETURNING id, (xmax = 0) AS created
        """,
        (
            ref,
            owner_type,
            owner_ref,
            pack_id,
            owner_ref if owner_type == "pack" else None,
            action_id,
            owner_ref if owner_type == "action" else None,
            name,
            encrypted,
            encryption_key_hash,
            Jsonb(value),
        ),
    )
    assert row is not None
    return int(row["id"]), bool(row["created"])


def list_keys(conn: Conn) -> list[KeyRecord]:
    rows = _rows(conn, f"SELECT {_KEY_COLS} FROM key k ORDER BY k.ref")
    return [_to(KeyRecord, r, "key") for r in rows]


def delete_key(conn: Conn, ref: str) -> bool:
    return conn.execute("DELETE FROM key WHERE ref = %s", (ref,)).rowcount == 1
