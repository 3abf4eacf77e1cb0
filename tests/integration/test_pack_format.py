"""The full pack format against the real database: the rows the reference writes."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import psycopg
import pytest

from attune.db import Database
from attune.packs import load_pack

pytestmark = pytest.mark.services

FULL = Path(__file__).resolve().parents[1] / "packs" / "fullformat"
PgConn = psycopg.Connection[tuple[Any, ...]]


def _action_row(pg: PgConn, ref: str) -> dict[str, Any]:
    cur = pg.execute(
        "SELECT a.*, r.ref AS runtime_ref FROM action a LEFT JOIN runtime r ON r.id = a.runtime "
        "WHERE a.ref = %s",
        (ref,),
    )
    names = [c.name for c in cur.description or ()]
    row = cur.fetchone()
    assert row is not None, ref
    return dict(zip(names, row, strict=True))


async def test_every_key_of_the_format_lands_in_the_reference_columns(
    db: Database, pg: PgConn
) -> None:
    await db.upsert_pack(load_pack(FULL))
    pack = pg.execute(
        "SELECT label, version, conf_schema, config, meta, tags, runtime_deps, dependencies, "
        "worker_selector, is_standard FROM pack WHERE ref = 'fullformat'"
    ).fetchone()
    assert pack is not None
    assert pack[0:2] == ("Full Format", "2.1.0")
    assert pack[2]["max_action_timeout"]["maximum"] == 3600  # flat conf_schema as written
    assert pack[3] == {"max_action_timeout": 120}
    assert pack[4]["category"] == "testing"
    assert pack[5:8] == (["format", "test"], ["shell", "python"], [])
    assert pack[8:] == ({"zone": "test"}, False)

    http = _action_row(pg, "fullformat.http_request")
    # parameters and output are stored as written: the flat form, like the reference.
    assert http["param_schema"]["url"] == {
        "type": "string",
        "description": "URL to request",
        "required": True,
    }
    assert http["param_schema"]["auth_token"]["secret"] is True
    assert http["out_schema"]["token_echo"] == {"type": "string", "secret": True}
    assert (http["parameter_delivery"], http["parameter_format"], http["output_format"]) == (
        "stdin",
        "dotenv",
        "json",
    )
    assert (http["runtime_ref"], http["entrypoint"], http["enabled"]) == (
        "core.shell",
        "http_request.sh",
        True,
    )
    assert http["tags"] == ["http", "utility"]

    every = _action_row(pg, "fullformat.everything")
    assert every["runtime_ref"] == "core.python"
    assert every["runtime_version_constraint"] == ">=3.11,<4.0"
    assert every["default_execution_permission_set_refs"] == ["fullformat.runner"]
    assert every["required_worker_runtimes"] == {"python": ">=3.11"}
    assert every["worker_tolerations"][0]["key"] == "dedicated"
    assert (every["reference_visibility"], every["reference_allowed_pack_refs"]) == (
        "public",
        ["core"],
    )
    assert (every["log_retention_policy"], every["log_retention_limit"]) == ("days", 7)
    assert (every["artifact_retention_policy"], every["artifact_retention_limit"]) == (
        "versions",
        3,
    )
    assert every["timeout_seconds"] == 45
    assert every["out_schema"] == {"type": "object"}  # output_schema, the older name

    assert _action_row(pg, "fullformat.disabled")["enabled"] is False
    flow = _action_row(pg, "fullformat.flow")
    assert (flow["runtime"], flow["entrypoint"]) == (None, "workflows/flow.workflow.yaml")


async def test_a_new_version_removes_the_actions_it_no_longer_has(
    db: Database, pg: PgConn, tmp_path: Path
) -> None:
    pack = tmp_path / "fullformat"
    shutil.copytree(FULL, pack)
    first = await db.upsert_pack(load_pack(pack))
    (pack / "actions" / "disabled.yaml").unlink()
    meta = pack / "pack.yaml"
    meta.write_text(meta.read_text().replace('version: "2.1.0"', 'version: "2.2.0"'))
    pg.execute("UPDATE pack SET config = '{\"max_action_timeout\": 5}' WHERE ref = 'fullformat'")
    second = await db.upsert_pack(load_pack(pack))
    refs = [r for (r,) in pg.execute("SELECT ref FROM action ORDER BY ref").fetchall()]
    assert "fullformat.disabled" not in refs
    assert set(refs) == set(second) == set(first) - {"fullformat.disabled"}
    assert all(second[r] == first[r] for r in second)  # kept actions keep their ids
    row = pg.execute("SELECT version, config FROM pack WHERE ref = 'fullformat'").fetchone()
    assert row == ("2.2.0", {"max_action_timeout": 5})  # operator's config survives


async def test_disabled_action_is_read_as_disabled(db: Database) -> None:
    await db.upsert_pack(load_pack(FULL))
    disabled = await db.get_action("fullformat.disabled")
    enabled = await db.get_action("fullformat.http_request")
    assert disabled is not None and disabled.enabled is False
    assert enabled is not None and enabled.enabled is True
