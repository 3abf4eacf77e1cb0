"""Fixtures for tests against the real PostgreSQL.

Each test gets a database of its own, created empty and dropped afterwards, so tests
run in any order and in parallel. psycopg is used directly here (not through
`attune.db`) so that setup and checks do not depend on the code under test.
The RabbitMQ fixtures (a fresh vhost per test) live in `amqp_fixtures` and the worker
stack in `worker_kit`; tests/conftest.py loads both as plugins.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from psycopg import sql

from attune.db import Database
from tests.unavailable import unavailable

PG_HOST = os.environ.get("ATTUNE_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("ATTUNE_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("ATTUNE_TEST_PG_USER", "postgres")
ADMIN_URL = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/postgres"


def _admin() -> psycopg.Connection[tuple[object, ...]]:
    try:
        return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        unavailable(f"PostgreSQL at {PG_HOST}:{PG_PORT} ({exc})")


@pytest.fixture
def db_url() -> Iterator[str]:
    """URL of a freshly created, empty database, dropped (WITH (FORCE)) afterwards."""
    name = f"attune_test_{uuid.uuid4().hex[:8]}"
    with _admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with _admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    """An opened Database on a fresh, migrated database."""
    async with Database.open_ctx(db_url) as database:
        await database.migrate()
        yield database


@pytest.fixture
def pg(db_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A plain autocommit connection to the test database, for setup and checks."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SET search_path = attune, public")
        yield conn
