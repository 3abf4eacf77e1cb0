"""A pack's environment is built through egress, reaching its package index and nothing else.

The world of tests/sandbox/networld.py: `attune pack env build` runs in the fake host;
a PEP 503 simple index (http.server over a directory) serves a wheel made offline from
the fake internet at http://api.test:8081/simple (api.test is the fake host's name for
the test server's documentation address). The pack's in-tree build backend, untrusted
code pip runs, tries the fake host's "PostgreSQL", the index host on another port, a
LAN box and the metadata address, and records what it could reach in the package it
builds; the installed environment tells the test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from attune.packs import install_pack, load_pack
from tests.sandbox.helpers import make_wheel
from tests.sandbox.networld import ATTUNE, WEB4, World
from tests.sandbox.test_egress import world  # noqa: F401  (the world fixture)

REPO = Path(__file__).resolve().parents[2]
PACK = REPO / "tests" / "packs" / "egress_env"
INDEX_PORT = 8081
INDEX_URL = f"http://api.test:{INDEX_PORT}/simple"
REFUSED = ("ECONNREFUSED", "EHOSTUNREACH", "ENETUNREACH", "EACCES", "EPERM")
SERVE = """
import functools, http.server, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
server = http.server.ThreadingHTTPServer((sys.argv[2], int(sys.argv[3])), handler)
print("ready", flush=True)
server.serve_forever()
"""


@pytest.fixture
def index(world: World) -> Iterator[Path]:  # noqa: F811
    """The simple index in the fake internet; yields its request log."""
    root = world.root / f"index-{os.getpid()}"
    source = {"attune_index_dep/__init__.py": '__version__ = "1.0.0"\n'}
    make_wheel(root / "simple" / "attune-index-dep", "attune-index-dep", "1.0.0", source)
    log = root / "requests.log"
    serve = [sys.executable, "-c", SERVE, str(root), WEB4, str(INDEX_PORT)]
    with log.open("w") as err:
        server = subprocess.Popen(
            ["ip", "netns", "exec", world.inet, *serve],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield log
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def dirs(world: World) -> Iterator[Path]:  # noqa: F811
    base = world.root / f"envs-{os.getpid()}"
    base.mkdir(mode=0o755)
    os.chmod(base, 0o755)
    install_pack(load_pack(PACK), base / "packs")
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _build(world: World, base: Path, *, egress: bool) -> subprocess.CompletedProcess[str]:  # noqa: F811
    env = {
        "PATH": "/usr/bin:/bin",
        "ATTUNE__PACKS_BASE_DIR": str(base / "packs"),
        "ATTUNE__RUNTIME_ENVS_DIR": str(base / "envs"),
        "ATTUNE__SANDBOX__SLOT_UID_BASE": str(1_000_000 + (os.getpid() % 4000) * 256),
        "ATTUNE__NETWORK__EGRESS": "true" if egress else "false",
        "PIP_INDEX_URL": INDEX_URL,
        "PIP_TRUSTED_HOST": "api.test",  # plain HTTP: the test world has no TLS
        "PIP_RETRIES": "0",
        "PIP_DEFAULT_TIMEOUT": "20",
    }
    argv = ["ip", "netns", "exec", world.host, ATTUNE, "pack", "env", "build", "egress_env"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)


def _env_dirs(base: Path) -> list[Path]:
    return sorted((base / "envs" / "egress_env").glob("python-*"))


def test_env_build_reaches_its_package_index_through_egress_and_nothing_else(
    world: World,  # noqa: F811
    index: Path,
    dirs: Path,
) -> None:
    stray, pg_hits, web_hits = world.stray(), _hits(world, "postgres"), _hits(world, "web")
    done = _build(world, dirs, egress=True)
    print(done.stdout, done.stderr)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert "environment built" in done.stdout
    assert "GET /simple/attune-index-dep/" in index.read_text()
    [env] = _env_dirs(dirs)
    site = next(env.glob("lib/python3*/site-packages"))
    assert (site / "attune_index_dep" / "__init__.py").read_text() == '__version__ = "1.0.0"\n'
    namespace: dict[str, object] = {}
    exec((site / "attune_build_probe" / "__init__.py").read_text(), namespace)
    results = namespace["RESULTS"]
    assert isinstance(results, dict)
    print("build sandbox probe:", results)
    assert results.pop(f"api.test:{INDEX_PORT}") == "OK"  # the index, by its name
    for target, outcome in results.items():
        assert outcome in REFUSED, f"{target}: {outcome}"
    assert _hits(world, "postgres") == pg_hits and _hits(world, "web") == web_hits
    assert world.stray() == stray


def test_env_build_without_egress_says_the_index_was_unreachable_because_egress_is_off(
    world: World,  # noqa: F811
    index: Path,
    dirs: Path,
) -> None:
    stray = world.stray()
    done = _build(world, dirs, egress=False)
    print(done.stdout, done.stderr)
    assert done.returncode == 1
    assert "the package index (api.test) was unreachable because egress is off" in done.stderr
    assert index.read_text() == ""
    assert world.stray() == stray


def _hits(w: World, role: str) -> int:
    return sum(1 for line in w.log_lines() if line.startswith(f"HIT {role}"))
