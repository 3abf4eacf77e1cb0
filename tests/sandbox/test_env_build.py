"""The environment build sandbox holds a hostile setup.py: the install fails, host unchanged."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from attune import pack_env
from attune.config import Config, load_config
from attune.packs import install_pack, load_pack
from attune.pip_config import settings_from

HOSTILE = Path(__file__).resolve().parents[1] / "packs" / "hostile_env"
ATTACKS = ("write-outside", "write-usr", "write-envs", "read-host", "reach-postgres", "write-pack")


@pytest.fixture
def config() -> Iterator[Config]:
    root = Path(tempfile.mkdtemp(prefix="attune-envbuild-test-"))
    root.chmod(0o755)
    try:
        yield load_config(
            None,
            {
                "ATTUNE__PACKS_BASE_DIR": str(root / "packs"),
                "ATTUNE__RUNTIME_ENVS_DIR": str(root / "envs"),
                "ATTUNE__SANDBOX__SLOT_UID_BASE": str(1_000_000 + (os.getpid() % 4000) * 256),
            },
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p): (p.lstat().st_mode, p.lstat().st_size)
        for p in root.rglob("*")
        if "python-" not in p.name
    }


async def test_hostile_setup_py_fails_to_install_and_the_host_is_unchanged(
    config: Config,
) -> None:
    installed = install_pack(load_pack(HOSTILE), Path(config.packs_base_dir))
    packs_before = _snapshot(Path(config.packs_base_dir))
    marker = Path("/var/lib/attune-evil-marker")
    assert not marker.exists()

    outcome = await pack_env.build(
        config, "hostile_env", installed, pip=settings_from({"PIP_NO_INDEX": "1"}, {})
    )

    assert outcome.status.state == "failed"
    assert "pip install failed" in outcome.status.reason
    for attack in ATTACKS:
        assert f"ATTACK {attack}: blocked" in outcome.output, outcome.output
    assert "SUCCEEDED" not in outcome.output
    assert not marker.exists() and not Path("/usr/lib/evil").exists()
    assert not (Path(config.runtime_envs_dir) / "evil").exists()
    assert _snapshot(Path(config.packs_base_dir)) == packs_before
    assert outcome.status.path is not None and not outcome.status.path.exists()
    st = pack_env.status(Path(config.runtime_envs_dir), "hostile_env", installed)
    assert st.state == "failed" and "refusing to install" in st.reason
