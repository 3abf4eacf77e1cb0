"""The DB adapter against a real PostgreSQL: schema, CAS writes, registration, picking."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from attune.db import Database
from attune.db.migrations import known_migrations
from attune.errors import ConfigError, InputError, TransientError, UnreadableExecution
from attune.lifecycle import Event, IllegalTransition, Transition, transition
from attune.models import Action
from attune.packs import load_pack
from attune.secrets.records import StoredSecret

pytestmark = pytest.mark.services

DEMO = Path(__file__).resolve().parents[2] / "examples" / "packs" / "demo"
PgConn = psycopg.Connection[tuple[Any, ...]]
CAPS = {"runtimes": ["python", "shell"], "max_concurrent_executions": 4}
CLAIM = transition("scheduled", Event.CLAIM)
OUTCOMES = {"completed": Event.SUCCEED, "failed": Event.FAIL, "cancelled": Event.CANCEL}


def ended(status: str) -> Transition:
    """The lifecycle edge from `running` that records `status`."""
    return transition("running", OUTCOMES[status])


def _enum(pg: PgConn, name: str) -> list[str]:
    rows = pg.execute(
        "SELECT e.enumlabel FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid "
        "JOIN pg_namespace n ON n.oid = t.typnamespace "
        "WHERE n.nspname = 'attune' AND t.typname = %s ORDER BY e.enumsortorder",
        (name,),
    ).fetchall()
    return [r[0] for r in rows]


async def _demo_action(db: Database, ref: str = "demo.add") -> Action:
    await db.upsert_pack(load_pack(DEMO))
    action = await db.get_action(ref)
    assert action is not None
    return action


async def _scheduled(db: Database, worker_id: int, **kw: Any) -> int:
    action = await _demo_action(db)
    return await db.create_execution(action, config={"x": 1, "y": 2}, worker_id=worker_id, **kw)


async def _worker(db: Database, name: str = "w1", caps: dict[str, Any] | None = None) -> int:
    return await db.register_worker(
        name, host="h", port=1, runtime_id=None, capabilities=caps or CAPS
    )


# --- connecting and migrating -----------------------------------------------------------


async def test_open_unreachable_server_is_transient_and_names_host_not_password() -> None:
    with pytest.raises(TransientError) as info:
        await Database.open("postgresql://postgres:s3cretpw@127.0.0.1:1/nope", connect_timeout=2)
    assert "127.0.0.1:1" in str(info.value)
    assert "s3cretpw" not in str(info.value)


async def test_open_rejects_an_unparsable_url_as_config_error() -> None:
    with pytest.raises(ConfigError):
        await Database.open("host=127.0.0.1 port=5432 = =")


async def test_migrate_applies_all_then_second_run_is_a_noop(db_url: str, pg: PgConn) -> None:
    versions = [v for v, _ in known_migrations()]
    async with Database.open_ctx(db_url) as db:
        assert not await db.is_migrated()
        assert await db.migrate() == versions
        assert await db.migrate() == []
        assert await db.is_migrated()
    recorded = [r[0] for r in pg.execute("SELECT version FROM _migrations ORDER BY 1")]
    assert recorded == versions


async def test_concurrent_migrations_apply_each_file_once(db_url: str, pg: PgConn) -> None:
    results: list[list[str]] = []

    async def one() -> None:
        async with Database.open_ctx(db_url) as db:
            results.append(await db.migrate())

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(one)
    applied = sorted(v for r in results for v in r)
    assert applied == sorted(v for v, _ in known_migrations())


async def test_unmigrated_database_reports_missing_schema_as_config_error(db_url: str) -> None:
    async with Database.open_ctx(db_url) as db:
        with pytest.raises(ConfigError, match="migrate"):
            await db.get_execution(1)


async def test_schema_has_the_exact_enum_values(db: Database, pg: PgConn) -> None:
    assert _enum(pg, "execution_status_enum") == [
        "requested",
        "scheduling",
        "scheduled",
        "running",
        "completed",
        "failed",
        "canceling",
        "cancelled",
        "timeout",
        "abandoned",
    ]
    assert _enum(pg, "worker_type_enum") == ["local", "remote", "container"]
    assert _enum(pg, "worker_role_enum") == ["action", "sensor", "hybrid"]
    assert _enum(pg, "worker_status_enum") == ["active", "inactive", "busy", "error"]
    assert _enum(pg, "owner_type_enum") == ["system", "identity", "pack", "action", "sensor"]


async def test_schema_has_every_table_the_worker_uses(db: Database, pg: PgConn) -> None:
    tables = {
        r[0]
        for r in pg.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'attune'"
        )
    }
    assert {
        "pack",
        "runtime",
        "action",
        "execution",
        "worker",
        "key",
        "execution_secret_value",
        "_migrations",
    } <= tables


async def test_connections_use_the_attune_search_path(db: Database) -> None:
    # get_execution queries `execution` unqualified: it resolves only via search_path.
    assert await db.get_execution(424242) is None


async def test_action_check_constraints_reject_bad_formats(db: Database, pg: PgConn) -> None:
    await _demo_action(db)
    with pytest.raises(psycopg.errors.CheckViolation):
        pg.execute("UPDATE action SET output_format = 'xml' WHERE ref = 'demo.add'")
    with pytest.raises(psycopg.errors.CheckViolation):
        pg.execute("UPDATE action SET parameter_delivery = 'argv' WHERE ref = 'demo.add'")


async def test_deleting_an_action_keeps_its_executions(db: Database, pg: PgConn) -> None:
    wid = await _worker(db)
    eid = await _scheduled(db, wid)
    pg.execute("DELETE FROM action WHERE ref = 'demo.add'")
    execution = await db.get_execution(eid)
    assert execution is not None
    assert execution.action is None
    assert execution.action_ref == "demo.add"


# --- workers ------------------------------------------------------------------------------


async def test_register_upserts_by_name_and_keeps_the_id(db: Database, pg: PgConn) -> None:
    first = await _worker(db, "alpha")
    pg.execute("UPDATE worker SET status = 'inactive' WHERE id = %s", (first,))
    again = await db.register_worker(
        "alpha", host="h2", port=2, runtime_id=None, capabilities={"runtimes": ["shell"]}
    )
    other = await _worker(db, "beta")
    assert again == first
    assert other != first
    row = pg.execute(
        "SELECT status::text, worker_role::text, host, port, capabilities, last_heartbeat "
        "IS NOT NULL FROM worker WHERE id = %s",
        (first,),
    ).fetchone()
    assert row == ("active", "action", "h2", 2, {"runtimes": ["shell"]}, True)


async def test_register_rejects_unknown_worker_type(db: Database) -> None:
    with pytest.raises(InputError):
        await db.register_worker(
            "x", worker_type="cloud", host=None, port=None, runtime_id=None, capabilities={}
        )


async def test_heartbeat_reactivates_and_set_status_writes(db: Database, pg: PgConn) -> None:
    wid = await _worker(db)
    await db.set_worker_status(wid, "inactive")
    pg.execute("UPDATE worker SET last_heartbeat = now() - interval '1 hour' WHERE id = %s", (wid,))
    assert pg.execute("SELECT status::text FROM worker WHERE id=%s", (wid,)).fetchone() == (
        "inactive",
    )
    await db.heartbeat(wid)
    row = pg.execute(
        "SELECT status::text, now() - last_heartbeat < interval '1 minute' FROM worker "
        "WHERE id = %s",
        (wid,),
    ).fetchone()
    assert row == ("active", True)
    with pytest.raises(InputError):
        await db.set_worker_status(wid, "sleeping")


async def test_heartbeat_of_a_deleted_worker_reports_false(db: Database, pg: PgConn) -> None:
    wid = await _worker(db)
    assert await db.heartbeat(wid)
    pg.execute("DELETE FROM worker WHERE id = %s", (wid,))
    assert not await db.heartbeat(wid)
    assert not await db.set_worker_status(wid, "inactive")


async def test_pick_worker_skips_stale_and_inactive_workers(db: Database, pg: PgConn) -> None:
    stale = await _worker(db, "stale")
    inactive = await _worker(db, "inactive")
    fresh = await _worker(db, "fresh")
    pg.execute(
        "UPDATE worker SET last_heartbeat = now() - interval '5 minutes' WHERE id = %s", (stale,)
    )
    await db.set_worker_status(inactive, "inactive")
    picked = await db.pick_worker("python")
    assert picked is not None and picked.id == fresh
    assert (await db.pick_worker("python", stale_after=600)) is not None
    pg.execute(
        "UPDATE worker SET last_heartbeat = now() - interval '5 minutes' WHERE id = %s", (fresh,)
    )
    assert await db.pick_worker("python") is None
    picked = await db.pick_worker("python", stale_after=600)
    assert picked is not None and picked.id == stale


async def test_pick_worker_matches_runtime_case_insensitively_and_by_alias(db: Database) -> None:
    await db.upsert_pack(load_pack(DEMO))  # creates core runtimes with aliases
    shell_only = await _worker(db, "shell-only", {"runtimes": ["SHELL"]})
    py3 = await _worker(db, "py3", {"runtimes": ["python3"]})
    await _worker(db, "no-runtimes", {"max_concurrent_executions": 1})
    picked = await db.pick_worker("Shell")
    assert picked is not None and picked.id == shell_only
    picked = await db.pick_worker("python")
    assert picked is not None and picked.id == py3
    assert await db.pick_worker("ruby") is None


async def test_pick_worker_prefers_the_least_running(db: Database) -> None:
    a = await _worker(db, "a")
    b = await _worker(db, "b")
    for _ in range(2):
        eid = await _scheduled(db, a)
        assert (await db.claim_execution(eid, a, CLAIM)).claimed
    picked = await db.pick_worker("python")
    assert picked is not None and (picked.id, picked.running) == (b, 0)
    workers = {w.id: w.running for w in await db.list_workers()}
    assert workers == {a: 2, b: 0}


# --- executions: claim and finish --------------------------------------------------------


async def test_claim_moves_scheduled_to_running_and_loads_the_action(
    db: Database, pg: PgConn
) -> None:
    wid = await _worker(db)
    eid = await _scheduled(db, wid, timeout_seconds=7, env_vars={"A": "1"})
    claim = await db.claim_execution(eid, wid, CLAIM)
    assert claim.claimed and claim.status == "running"
    assert claim.execution is not None and claim.action is not None
    assert claim.execution.config == {"x": 1, "y": 2}
    assert claim.execution.env_vars == {"A": "1"}
    assert claim.execution.timeout_seconds == 7
    assert claim.execution.started_at is not None
    assert claim.execution.worker == wid
    assert (claim.action.ref, claim.action.pack_ref, claim.action.runtime_name) == (
        "demo.add",
        "demo",
        "python",
    )
    assert claim.action.entrypoint == "add.py"
    assert pg.execute("SELECT status::text FROM execution WHERE id=%s", (eid,)).fetchone() == (
        "running",
    )


async def test_the_claim_reads_the_same_secret_rows_as_the_separate_read(
    db: Database, pg: PgConn
) -> None:
    """The claim's one statement returns what `run_secret_rows` returns, row for row."""
    wid = await _worker(db)
    action = await _demo_action(db)
    other = await _demo_action(db, "demo.hello")
    eid = await db.create_execution(action, config={"x": 1, "y": 2}, worker_id=wid)
    await db.put_execution_secrets(
        eid,
        [
            StoredSecret(json_path="/y", encrypted_value="tok-y", encryption_key_hash="h"),
            StoredSecret(json_path="/x", encrypted_value={"t": [1, 2.5]}, encryption_key_hash="h"),
        ],
    )
    keys = [
        ("sys.k", "system", None, {"nested": {"b": 1, "a": [True, None]}}),
        ("pack.k", "pack", "demo", "pack-value"),
        ("own.k", "action", action.ref, 7),
        ("theirs.k", "action", other.ref, "not visible"),
    ]
    for ref, owner_type, owner_ref, value in keys:
        await db.set_key(
            ref,
            name=ref.split(".")[0],
            owner_type=owner_type,
            owner_ref=owner_ref,
            value=value,
            encrypted=False,
            encryption_key_hash=None,
        )
    # a key written by hand with only its owner's ref (no owner id) matches by ref
    pg.execute(
        "INSERT INTO key (ref, owner_type, owner_pack_ref, name, encrypted, value) "
        "VALUES ('byref.k', 'pack', 'demo', 'byref', false, '\"by ref\"')"
    )
    separate = await db.run_secret_rows(eid, action.id)
    claim = await db.claim_execution(eid, wid, CLAIM)
    assert claim.claimed and claim.secrets is not None
    assert (claim.secrets.stored, claim.secrets.keys) == separate
    assert [s.json_path for s in claim.secrets.stored] == ["/x", "/y"]
    assert {k.ref for k in claim.secrets.keys} == {"sys.k", "pack.k", "own.k", "byref.k"}


async def test_a_claim_without_secrets_reads_empty_rows_and_a_lost_claim_none(
    db: Database,
) -> None:
    wid = await _worker(db)
    eid = await _scheduled(db, wid)
    claim = await db.claim_execution(eid, wid, CLAIM)
    assert claim.secrets is not None
    assert (claim.secrets.stored, claim.secrets.keys) == ([], [])
    assert (await db.claim_execution(eid, wid, CLAIM)).secrets is None


async def test_second_claim_of_the_same_execution_is_refused(db: Database) -> None:
    wid = await _worker(db)
    eid = await _scheduled(db, wid)
    assert (await db.claim_execution(eid, wid, CLAIM)).claimed
    again = await db.claim_execution(eid, wid, CLAIM)
    assert not again.claimed
    assert again.status == "running"
    assert again.action is None


async def test_concurrent_claims_let_exactly_one_win(db: Database) -> None:
    wid = await _worker(db)
    eid = await _scheduled(db, wid)
    wins: list[bool] = []

    async def claim() -> None:
        wins.append((await db.claim_execution(eid, wid, CLAIM)).claimed)

    async with trio.open_nursery() as nursery:
        for _ in range(6):
            nursery.start_soon(claim)
    assert sorted(wins) == [False] * 5 + [True]


async def test_claim_of_a_terminal_execution_changes_nothing(db: Database, pg: PgConn) -> None:
    wid = await _worker(db)
    eid = await _scheduled(db, wid)
    pg.execute("UPDATE execution SET status = 'cancelled' WHERE id = %s", (eid,))
    claim = await db.claim_execution(eid, wid, CLAIM)
    assert not claim.claimed and claim.status == "cancelled"
    row = pg.execute("SELECT status::text, started_at FROM execution WHERE id=%s", (eid,))
    assert row.fetchone() == ("cancelled", None)


async def test_claim_of_a_missing_execution_reports_no_status(db: Database) -> None:
    wid = await _worker(db)
    claim = await db.claim_execution(999_999, wid, CLAIM)
    assert (claim.claimed, claim.status, claim.execution, claim.action) == (
        False,
        None,
        None,
        None,
    )


async def test_claim_with_a_deleted_action_returns_no_action(db: Database, pg: PgConn) -> None:
    wid = await _worker(db)
    eid = await _scheduled(db, wid)
    pg.execute("DELETE FROM action WHERE ref = 'demo.add'")
    claim = await db.claim_execution(eid, wid, CLAIM)
    assert claim.claimed and claim.action is None
    assert claim.execution is not None and claim.execution.action_ref == "demo.add"


async def test_finish_writes_status_and_result_from_running(db: Database, pg: PgConn) -> None:
    wid = await _worker(db)
    eid = await _scheduled(db, wid)
    await db.claim_execution(eid, wid, CLAIM)
    result = {"succeeded": True, "exit_code": 0, "duration_ms": 5, "data": 3}
    assert await db.finish_execution(eid, ended("completed"), result)
    row = pg.execute("SELECT status::text, result FROM execution WHERE id=%s", (eid,)).fetchone()
    assert row == ("completed", result)


async def test_finish_never_overwrites_a_terminal_state(db: Database, pg: PgConn) -> None:
    wid = await _worker(db)
    eid = await _scheduled(db, wid)
    await db.claim_execution(eid, wid, CLAIM)
    assert await db.finish_execution(eid, ended("cancelled"), {"cancelled": True})
    assert not await db.finish_execution(eid, ended("completed"), {"succeeded": True})
    assert not await db.finish_execution(eid, ended("failed"), {})
    assert not await db.finish_execution(eid, transition("scheduled", Event.REJECT), {})
    row = pg.execute("SELECT status::text, result FROM execution WHERE id=%s", (eid,)).fetchone()
    assert row == ("cancelled", {"cancelled": True})


async def test_the_reject_edge_fails_a_row_that_is_still_scheduled(db: Database) -> None:
    wid = await _worker(db)
    eid = await _scheduled(db, wid)
    assert not await db.finish_execution(eid, ended("failed"), {"error": "x"})  # not running
    result = {"succeeded": False, "error": "invalid execution: bad"}
    assert await db.finish_execution(eid, transition("scheduled", Event.REJECT), result)
    execution = await db.get_execution(eid)
    assert execution is not None
    assert (execution.status, execution.result) == ("failed", result)


async def test_status_writes_refuse_the_wrong_kind_of_edge(db: Database) -> None:
    with pytest.raises(IllegalTransition):
        await db.finish_execution(1, CLAIM, {})
    with pytest.raises(IllegalTransition):
        await db.claim_execution(1, 1, ended("failed"))


async def test_an_unreadable_row_raises_with_its_ids_and_stays_scheduled(
    db: Database, pg: PgConn
) -> None:
    wid = await _worker(db)
    eid = await _scheduled(db, wid)
    pg.execute("UPDATE execution SET config = '[1, 2]' WHERE id = %s", (eid,))
    with pytest.raises(UnreadableExecution) as caught:
        await db.claim_execution(eid, wid, CLAIM)
    assert (caught.value.execution_id, caught.value.action_ref) == (eid, "demo.add")
    assert caught.value.action_id is not None
    row = pg.execute("SELECT status::text, started_at FROM execution WHERE id=%s", (eid,))
    assert row.fetchone() == ("scheduled", None)


async def test_orphaned_executions_are_this_workers_running_ones(db: Database) -> None:
    me = await _worker(db, "me")
    other = await _worker(db, "other")
    mine = await _scheduled(db, me)
    theirs = await _scheduled(db, other)
    done = await _scheduled(db, me)
    waiting = await _scheduled(db, me)
    for eid, wid in ((mine, me), (theirs, other), (done, me)):
        assert (await db.claim_execution(eid, wid, CLAIM)).claimed
    await db.finish_execution(done, ended("completed"), {})
    orphans = await db.orphaned_executions(me)
    assert [e.id for e in orphans] == [mine]
    assert waiting not in [e.id for e in orphans]


async def test_list_executions_filters_and_orders_newest_first(db: Database) -> None:
    a = await _worker(db, "a")
    b = await _worker(db, "b")
    e1 = await _scheduled(db, a)
    e2 = await _scheduled(db, b)
    e3 = await _scheduled(db, a)
    await db.claim_execution(e3, a, CLAIM)
    assert [e.id for e in await db.list_executions()] == [e3, e2, e1]
    assert [e.id for e in await db.list_executions(worker_id=a)] == [e3, e1]
    assert [e.id for e in await db.list_executions(status="scheduled")] == [e2, e1]
    assert [e.id for e in await db.list_executions(limit=1)] == [e3]
    with pytest.raises(InputError):
        await db.list_executions(status="bogus")


async def test_statement_timeout_surfaces_as_transient_error(db_url: str) -> None:
    async with Database.open_ctx(db_url, statement_timeout=0.2) as db:
        await db.migrate()
        with pytest.raises(TransientError):
            await db._run(lambda c: c.execute("SELECT pg_sleep(2)"))


async def test_closed_database_raises_transient_error(db_url: str) -> None:
    db = await Database.open(db_url)
    await db.close()
    await db.close()
    with pytest.raises(TransientError, match="closed"):
        await db.get_execution(1)
