"""Fixtures for the real-bubblewrap tests: one Sandbox per session and `run_code`.

Run directories live where the per-slot uids can traverse them: under
/var/lib/attune/test-runs when the tests run as root (pytest's tmp_path under /tmp sits
in a 0700 root-only directory), else under pytest's own temporary directory.

With ATTUNE_TEST_WARM_POOL=N (scripts/test runs this suite both ways) every `run_code`
runs through a warm pool of depth N: a run takes a parked sandbox whenever one fits, so
every guarantee and attack test also pins the pooled path.

Every test is followed by two checks (`_nothing_survives`): no process of a slot uid is
left on the host within a second, and the run directory holds no per-run leftovers.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from attune.runner import host
from attune.runner.pool import WarmPool, pool_uids
from attune.runner.profiles import Profile, load_profiles
from attune.runner.sandbox import RunOutcome, RunSpec, Sandbox
from tests.sandbox.helpers import of_uids
from tests.unavailable import unavailable

ROOT_RUN_BASE = Path("/var/lib/attune/test-runs")
SLOTS = range(4)
UID_STRIDE = 32  # slots, exec's uid and the pool's uids of one test process
WARM_POOL = int(os.environ.get("ATTUNE_TEST_WARM_POOL") or 0)

RunCode = Callable[..., Awaitable[RunOutcome]]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "long_run: a sandboxed run longer than trio's ~10 s helper-thread idle "
        "timeout (the --die-with-parent pitfall of docs/sandbox.md)",
    )


@pytest.fixture(scope="session")
def facts() -> host.HostFacts:
    facts = host.detect()
    if not facts.usable:
        unavailable("sandbox unavailable: " + "; ".join(facts.problems()))
    return facts


@pytest.fixture(scope="session")
def run_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if os.geteuid() == 0:
        ROOT_RUN_BASE.mkdir(parents=True, exist_ok=True)
        os.chmod(ROOT_RUN_BASE, 0o711)
        base = Path(tempfile.mkdtemp(prefix="session-", dir=ROOT_RUN_BASE))
    else:
        base = tmp_path_factory.mktemp("runs")
    os.chmod(base, 0o711)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def sandbox(facts: host.HostFacts, run_base: Path) -> Sandbox:
    # Slot uids of our own: RLIMIT_NPROC and the leftover checks are per host uid, and a
    # worker or another test session on this host may be using the default 100000+.
    base = 300000 + (os.getpid() % 10000) * UID_STRIDE
    return Sandbox(facts, run_base / "runs", slot_uid_base=base)


@pytest.fixture(scope="session")
def profiles() -> dict[str, Profile]:
    return load_profiles()


def suite_pool_uids(sandbox: Sandbox, profiles: dict[str, Profile]) -> list[int | None]:
    uids = pool_uids(sandbox.slot_uid_base, len(SLOTS), max(WARM_POOL, 1), len(profiles))
    assert uids.stop <= sandbox.slot_uid_base + UID_STRIDE
    return list(uids) if sandbox.slot_uid(0) is not None else [None] * len(uids)


@pytest.fixture
def slot_uids(sandbox: Sandbox, profiles: dict[str, Profile]) -> set[int]:
    """Host uids of the slots and the pool (empty when not root: they share ours)."""
    slots = {uid for slot in SLOTS if (uid := sandbox.slot_uid(slot)) is not None}
    return slots | {uid for uid in suite_pool_uids(sandbox, profiles) if uid is not None}


@pytest.fixture
async def warm_pool(
    sandbox: Sandbox, profiles: dict[str, Profile], nursery: Any
) -> AsyncIterator[WarmPool | None]:
    """The suite's warm pool (ATTUNE_TEST_WARM_POOL), running for one test; else None."""
    if not WARM_POOL:
        yield None
        return
    async with running_pool(sandbox, profiles, nursery, WARM_POOL) as pool:
        try:
            yield pool
        finally:
            POOL_RUNS["taken"] += pool.taken
            POOL_RUNS["cold"] += pool.missed


@asynccontextmanager
async def running_pool(
    sandbox: Sandbox, profiles: dict[str, Profile], nursery: Any, depth: int
) -> AsyncIterator[WarmPool]:
    """A warm pool of `depth` for `sandbox`, refilled in `nursery`, for a block."""
    pool = WarmPool(sandbox, list(profiles.values()), depth, suite_pool_uids(sandbox, profiles))
    await nursery.start(pool.run)
    sandbox.pool = pool
    try:
        yield pool
    finally:
        sandbox.pool = None


POOL_RUNS = {"taken": 0, "cold": 0}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if WARM_POOL:
        terminalreporter.write_line(
            f"warm pool (depth {WARM_POOL}): {POOL_RUNS['taken']} runs in parked sandboxes, "
            f"{POOL_RUNS['cold']} that fitted ran cold (shelf empty)"
        )


@pytest.fixture(autouse=True)
def _nothing_survives(sandbox: Sandbox, slot_uids: set[int]) -> Iterator[None]:
    # Sync on purpose: pytest-trio 0.8 never runs an *autouse* async fixture.
    yield
    deadline = time.monotonic() + 1.0
    while of_uids(slot_uids) and time.monotonic() < deadline:
        time.sleep(0.02)
    left = of_uids(slot_uids)
    assert not left, f"processes of slot uids outlived their run: {left}"
    runs = [p.name for p in sandbox.run_dir.iterdir()]
    assert not runs, f"run directories left behind: {runs}"


@pytest.fixture
def run_code(sandbox: Sandbox, profiles: dict[str, Profile], warm_pool: WarmPool | None) -> RunCode:
    """Run code through Sandbox.run exactly as `attune exec` does.

    Keyword arguments go to RunSpec when it has such a field (env, parameter_delivery,
    parameter_format, output_format, profile, code_name, label), else to Sandbox.run
    (slot, control, on_output). `env` is added to the usual execution context.
    """
    spec_fields = set(RunSpec.__dataclass_fields__)

    async def run_code(
        code: str | bytes,
        runtime: str = "python",
        params: dict[str, Any] | None = None,
        timeout: float = 10,
        **kw: Any,
    ) -> RunOutcome:
        spec_kw = {k: v for k, v in kw.items() if k in spec_fields}
        run_kw = {k: v for k, v in kw.items() if k not in spec_fields}
        profile = spec_kw.pop("profile", profiles[runtime])
        name = spec_kw.pop("code_name", "action.py" if runtime == "python" else "action.sh")
        env = {
            "ATTUNE_EXEC_ID": "test",
            "ATTUNE_ACTION": "tests.action",
            "ATTUNE_PACK_REF": "tests",
            **spec_kw.pop("env", {}),
        }
        spec = RunSpec(
            profile=profile,
            code=code.encode() if isinstance(code, str) else code,
            code_name=name,
            params=params or {},
            env=env,
            **spec_kw,
        )
        return await sandbox.run(spec, timeout=timeout, **run_kw)

    return run_code
