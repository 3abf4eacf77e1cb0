"""The warm pool's own guarantees (catalog rows 76-77), real bwrap, pool always on here.

A parked sandbox holds nothing of any execution until its handoff, serves exactly one
run, and what a run leaves behind is gone for the next; a run that would not get the
same sandbox cold never takes a parked one; and the pool's uids are its own.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import msgspec
import pytest
import trio

from attune.errors import ExecutionError
from attune.runner import egress, host
from attune.runner.pool import WarmPool, shape_key
from attune.runner.process import _parent_pid
from attune.runner.profiles import Profile
from attune.runner.sandbox import RunSpec, Sandbox
from tests.sandbox.conftest import running_pool
from tests.unavailable import unavailable

pytestmark = pytest.mark.sandbox

LEAVE_TRACES = b"""
import os, subprocess
def run():
    open('/tmp/left-by-first', 'w').write('x')
    open('/work/left-by-first', 'w').write('x')
    subprocess.Popen(['sleep', '300'], start_new_session=True)
    os.environ['LEFT_BY_FIRST'] = '1'
    return os.getpid()
"""

LOOK_FOR_TRACES = b"""
import os
def run():
    procs = [p for p in os.listdir('/proc') if p.isdigit()]
    cmds = [open(f'/proc/{p}/cmdline', 'rb').read() for p in procs]
    return {
        'tmp': sorted(os.listdir('/tmp')),
        'work': sorted(os.listdir('/work')),
        'action': sorted(os.listdir('/attune/action')),
        'sleepers': sum(c.startswith(b'sleep') for c in cmds),
        'env': 'LEFT_BY_FIRST' in os.environ,
        'exec_id': os.environ.get('ATTUNE_EXEC_ID'),
    }
"""


@pytest.fixture
async def pooled(
    sandbox: Sandbox, profiles: dict[str, Profile], nursery: trio.Nursery
) -> AsyncIterator[WarmPool]:
    """The suite's pool when it runs with one, else a depth-1 pool for this test."""
    if sandbox.pool is not None:
        assert isinstance(sandbox.pool, WarmPool)
        yield sandbox.pool
        return
    async with running_pool(sandbox, profiles, nursery, 1) as pool:
        yield pool


def spec(profile: Profile, code: bytes, exec_id: str) -> RunSpec:
    return RunSpec(
        profile=profile, code=code, code_name=f"{exec_id}.py", env={"ATTUNE_EXEC_ID": exec_id}
    )


async def parked_now(pool: WarmPool, profile: str) -> None:
    with trio.fail_after(30):
        while not pool._shelves[(profile, None, None, None)].parked:
            await trio.sleep(0.01)


def environ_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as handle:
        items = handle.read().split(b"\0")
    return dict(item.decode().split("=", 1) for item in items if b"=" in item)


async def test_76_a_parked_sandbox_holds_nothing_of_any_run_and_serves_exactly_one(
    sandbox: Sandbox, profiles: dict[str, Profile], pooled: WarmPool
) -> None:
    python = profiles["python"]
    await parked_now(pooled, "python")
    box = pooled._shelves[("python", None, None, None)].parked[0].box
    assert box.proc is not None
    launcher = [
        int(p)
        for p in os.listdir("/proc")
        if p.isdigit() and _parent_pid(int(p)) == box.proc.learn_init()
    ]
    # While parked: the profile's environment only, no execution's variables.
    assert launcher, "the parked launcher is not running"
    env = environ_of(launcher[0])
    assert set(env) <= {*python.env, "PWD"} and "ATTUNE_EXEC_ID" not in env

    taken_before = pooled.taken
    first = await sandbox.run(spec(python, LEAVE_TRACES, "first"), timeout=30)
    assert first.status == "completed", first.result
    await parked_now(pooled, "python")
    second = await sandbox.run(spec(python, LOOK_FOR_TRACES, "second"), timeout=30)
    assert second.status == "completed", second.result
    assert pooled.taken == taken_before + 2  # both ran in parked sandboxes
    assert second.result["data"] == {
        "tmp": [],
        "work": [],
        "action": ["second.py"],
        "sleepers": 0,
        "env": False,
        "exec_id": "second",
    }
    assert box.proc.returncode is not None  # the first run's sandbox is gone


async def test_77_runs_that_would_get_another_sandbox_cold_never_take_a_parked_one(
    sandbox: Sandbox, profiles: dict[str, Profile], pooled: WarmPool
) -> None:
    python = profiles["python"]
    await parked_now(pooled, "python")
    taken = pooled.taken
    tighter = msgspec.structs.replace(
        python, limits=msgspec.structs.replace(python.limits, memory_mb=64)
    )
    out = await sandbox.run(spec(tighter, b"def run():\n    return 1\n", "tight"), timeout=30)
    assert out.status == "completed" and pooled.taken == taken  # its own limits: cold
    big = RunSpec(
        profile=python,
        code=b"def run(**p):\n    return len(p['blob'])\n",
        code_name="big.py",
        params={"blob": "x" * (2 * 2**20)},  # more than a parked /attune/out has room for
        parameter_delivery="file",
    )
    out = await sandbox.run(big, timeout=30)
    assert out.status == "completed" and out.result["data"] == 2 * 2**20
    assert pooled.taken == taken


async def test_77_an_egress_shape_that_cannot_park_is_retried_and_its_runs_go_cold(
    sandbox: Sandbox,
    profiles: dict[str, Profile],
    pooled: WarmPool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """slirp4netns missing: the park fails before any network exists (no packet can
    leave), the shelf backs off, and the run goes cold and reports the error."""
    ok, detail = host.egress_detail()
    if os.geteuid() != 0 or not ok:
        unavailable(f"needs root and the egress tools: {detail}")
    monkeypatch.setattr(egress, "SLIRP4NETNS", "/nonexistent/slirp4netns")
    run = RunSpec(
        profile=profiles["python"],
        code=b"def run():\n    return 1\n",
        code_name="net.py",
        network=egress.EgressPolicy(dns="off"),
    )
    assert pooled.take(run) is None  # the first of its shape: its shelf is made
    shelf = pooled._shelves[shape_key(run)]
    with trio.fail_after(30):
        while not shelf.failures:
            await trio.sleep(0.01)
    assert not shelf.parked and shelf.retry_at > trio.current_time()  # backing off
    taken = pooled.taken
    with pytest.raises(ExecutionError, match="slirp4netns"):
        await sandbox.run(run, timeout=30)
    assert pooled.taken == taken
