"""Ordered SQL migrations, applied once each, safe against concurrent `migrate` calls.

Several workers (or a worker and `attune db migrate`) may start at once against a
fresh database; a transaction-scoped advisory lock serialises them so each file runs
exactly once, and each file runs in its own transaction so a failure leaves the
database at the last good version rather than half-way through a file.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any, Final

import psycopg

from attune.errors import ConfigError

# Any fixed bigint works; all Attune processes must agree on it. ('Attune' in ASCII.)
MIGRATION_LOCK_KEY: Final = 0x417474756E65
_NAME_RE = re.compile(r"^(\d{4}_[a-z0-9_]+)\.sql$")

_BOOTSTRAP: Final = b"""
CREATE SCHEMA IF NOT EXISTS attune;
CREATE TABLE IF NOT EXISTS attune._migrations (
    version    text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


def known_migrations() -> list[tuple[str, bytes]]:
    """(version, sql) for every packaged migration file, in apply order."""
    folder = resources.files("attune").joinpath("migrations")
    found: list[tuple[str, bytes]] = []
    for entry in folder.iterdir():
        match = _NAME_RE.match(entry.name)
        if match is None:
            if entry.name.endswith(".sql"):
                raise ConfigError(f"migration file {entry.name!r} is not named NNNN_name.sql")
            continue
        found.append((match.group(1), entry.read_bytes()))
    found.sort()
    return found


def _lock(conn: psycopg.Connection[Any]) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
    # Index builds on a big execution table may outlast the pool's statement timeout.
    conn.execute("SET LOCAL statement_timeout = 0")


def apply_migrations(conn: psycopg.Connection[Any]) -> list[str]:
    """Apply the packaged migrations not yet recorded; return the versions applied now."""
    with conn.transaction():
        _lock(conn)
        conn.execute(_BOOTSTRAP)
    applied: list[str] = []
    for version, sql in known_migrations():
        with conn.transaction():
            _lock(conn)
            done = conn.execute(
                "SELECT 1 FROM attune._migrations WHERE version = %s", (version,)
            ).fetchone()
            if done is not None:
                continue
            conn.execute(sql)
            conn.execute("INSERT INTO attune._migrations (version) VALUES (%s)", (version,))
        applied.append(version)
    return applied


def pending_migrations(conn: psycopg.Connection[Any]) -> list[str]:
    """Versions packaged here but not recorded in the database (all of them if none are)."""
    known = [version for version, _ in known_migrations()]
    row = conn.execute("SELECT to_regclass('attune._migrations') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return known
    done = {r[0] for r in conn.execute("SELECT version FROM attune._migrations").fetchall()}
    return [version for version in known if version not in done]
