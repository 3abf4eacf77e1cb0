"""Loading packs into the real database."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

from attune.db import Database
from attune.errors import InputError
from attune.packs import PackSpec, load_pack

pytestmark = pytest.mark.services

DEMO = Path(__file__).resolve().parents[2] / "examples" / "packs" / "demo"
PgConn = psycopg.Connection[tuple[Any, ...]]


def _counts(pg: PgConn) -> tuple[int, int, int]:
    row = pg.execute(
        "SELECT (SELECT count(*) FROM pack), (SELECT count(*) FROM runtime), "
        "(SELECT count(*) FROM action)"
    ).fetchone()
    assert row is not None
    return (int(row[0]), int(row[1]), int(row[2]))


async def test_upsert_demo_pack_writes_pack_runtimes_and_actions(db: Database, pg: PgConn) -> None:
    spec = load_pack(DEMO)
    ids = await db.upsert_pack(spec)
    assert set(ids) == {a.ref for a in spec.actions}
    assert _counts(pg) == (1, 2, len(spec.actions))
    runtimes = pg.execute(
        "SELECT ref, name, aliases, pack, pack_ref FROM runtime ORDER BY ref"
    ).fetchall()
    assert runtimes == [
        ("core.python", "Python", ["python", "python3"], None, "core"),
        ("core.shell", "Shell", ["shell", "bash", "sh"], None, "core"),
    ]
    add = await db.get_action("demo.add")
    assert add is not None
    assert add.id == ids["demo.add"]
    assert (add.pack_ref, add.entrypoint, add.runtime_name, add.output_format) == (
        "demo",
        "add.py",
        "python",
        "text",
    )
    assert add.param_schema is not None and add.param_schema["required"] == ["x", "y"]
    sleep = await db.get_action("demo.sleep")
    assert sleep is not None and sleep.timeout_seconds == 60
    shell_json = await db.get_action("demo.shell_json")
    assert shell_json is not None
    assert (shell_json.runtime_name, shell_json.output_format) == ("shell", "json")


async def test_reupserting_the_same_pack_is_idempotent(db: Database, pg: PgConn) -> None:
    spec = load_pack(DEMO)
    first = await db.upsert_pack(spec)
    before = pg.execute(
        "SELECT ref, id, entrypoint, runtime, param_schema FROM action ORDER BY ref"
    ).fetchall()
    second = await db.upsert_pack(spec)
    after = pg.execute(
        "SELECT ref, id, entrypoint, runtime, param_schema FROM action ORDER BY ref"
    ).fetchall()
    assert first == second
    assert before == after
    assert _counts(pg) == (1, 2, len(spec.actions))


async def test_reupsert_applies_changed_fields(db: Database, tmp_path: Path) -> None:
    pack = tmp_path / "demo"
    shutil.copytree(DEMO, pack)
    ids = await db.upsert_pack(load_pack(pack))
    yaml_file = pack / "actions" / "add.yaml"
    yaml_file.write_text(yaml_file.read_text().replace("timeout: 30", "timeout: 99"))
    again = await db.upsert_pack(load_pack(pack))
    assert again == ids
    add = await db.get_action("demo.add")
    assert add is not None and add.timeout_seconds == 99


async def test_a_pack_that_fails_to_load_writes_nothing(
    db: Database, pg: PgConn, tmp_path: Path
) -> None:
    pack = tmp_path / "demo"
    shutil.copytree(DEMO, pack)
    (pack / "actions" / "broken.yaml").write_text(
        "ref: demo.broken\nlabel: B\ndescription: d\nrunner_type: python\n"
        "entry_point: add.py\ntimout: 3\n"
    )
    with pytest.raises(InputError, match="timout"):
        await db.upsert_pack(load_pack(pack))
    assert _counts(pg) == (0, 0, 0)


async def test_a_pack_the_database_rejects_writes_nothing(db: Database, pg: PgConn) -> None:
    spec = load_pack(DEMO)
    # Bypass load-time validation so the database's own CHECK constraint fires mid-write.
    bad_action = msgspec.structs.replace(spec.actions[-1], output_format="xml")  # type: ignore[arg-type]
    bad = msgspec.structs.replace(spec, actions=(*spec.actions[:-1], bad_action))
    assert isinstance(bad, PackSpec)
    with pytest.raises(InputError):
        await db.upsert_pack(bad)
    assert _counts(pg) == (0, 0, 0)
