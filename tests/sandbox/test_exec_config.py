"""`attune exec` reads the worker's configuration (catalog row 68), on a real bwrap.

The run dir, the slot uid base and the profiles come from `--config` and `ATTUNE__*` as
for the worker, and a local run uses the uid one past the worker's slots: a worker
starting on this host (which kills leftovers of its own slot uids) never touches it.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from attune.runner import process
from attune.runner.sandbox import Sandbox
from tests.sandbox.helpers import catches_sigusr1, of_uids

pytestmark = pytest.mark.sandbox

REPO = Path(__file__).resolve().parents[2]
ATTUNE = str(REPO / ".venv/bin/attune")
# Catches SIGUSR1 and waits for it: the test releases it once it has seen its host uid.
WAITER = (
    "import signal\n"
    "def run():\n"
    "    got = []\n"
    "    signal.signal(signal.SIGUSR1, lambda *_: got.append(1))\n"
    "    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})\n"
    "    if not got:\n"
    "        signal.sigwait({signal.SIGUSR1})\n"
    "    return 'released'\n"
)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTUNE__")}
    return env | extra


@pytest.fixture
def action(tmp_path: Path) -> Path:
    path = tmp_path / "waiter.py"
    path.write_text(WAITER)
    return path


async def attune_exec(*args: str, env: dict[str, str]) -> trio.Process:
    return await trio.run_process(
        [ATTUNE, "exec", *args], capture_stdout=True, capture_stderr=True, check=False, env=env
    )


async def run_and_find_uid(
    args: list[str], env: dict[str, str], uid: int, *, while_seen: Callable[[], None] = lambda: None
) -> trio.Process:
    """Run `attune exec ARGS` (a WAITER action) and release it once a process of the
    waiter is seen running as host uid `uid`; returns the finished exec."""
    done: list[trio.Process] = []
    async with trio.open_nursery() as nursery:

        async def run_it() -> None:
            done.append(await attune_exec(*args, env=env))

        nursery.start_soon(run_it)
        with trio.fail_after(60):
            while True:
                waiting = [
                    p for p in of_uids({uid}) if "waiter.py" in p.cmdline and catches_sigusr1(p.pid)
                ]
                if waiting or done:
                    break
                await trio.sleep(0.02)
        assert waiting, f"no waiter ran as uid {uid}: {done[0].stderr!r}"
        while_seen()
        os.kill(waiting[0].pid, signal.SIGUSR1)
    (proc,) = done
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["data"] == "released"
    return proc


@pytest.mark.skipif(os.geteuid() != 0, reason="slot uids need a root worker")
async def test_68_exec_takes_run_dir_and_slot_uids_from_the_config_file(
    sandbox: Sandbox, run_base: Path, action: Path, tmp_path: Path
) -> None:
    run_dir = run_base / "exec-from-file"
    config = tmp_path / "worker.yaml"
    config.write_text(
        f"sandbox: {{run_dir: {run_dir}, slot_uid_base: {sandbox.slot_uid_base}}}\n"
        "worker: {max_concurrent_tasks: 3}\n"
    )
    await run_and_find_uid(
        ["--config", str(config), str(action)], clean_env(), sandbox.slot_uid_base + 3
    )
    assert run_dir.is_dir() and list(run_dir.iterdir()) == []  # the run cleaned up after


@pytest.mark.skipif(os.geteuid() != 0, reason="slot uids need a root worker")
async def test_68_exec_takes_run_dir_and_slot_uids_from_attune_env(
    sandbox: Sandbox, run_base: Path, action: Path
) -> None:
    run_dir = run_base / "exec-from-env"
    env = clean_env(
        ATTUNE__SANDBOX__RUN_DIR=str(run_dir),
        ATTUNE__SANDBOX__SLOT_UID_BASE=str(sandbox.slot_uid_base),
        ATTUNE__WORKER__MAX_CONCURRENT_TASKS="2",
    )
    await run_and_find_uid([str(action)], env, sandbox.slot_uid_base + 2)
    assert run_dir.is_dir()


async def test_68_exec_refuses_an_invalid_config_like_the_worker(action: Path) -> None:
    proc = await attune_exec(str(action), env=clean_env(ATTUNE__SANDBOX__SLOT_UID_BAS="5"))
    assert proc.returncode == 2
    assert b"slot_uid_base" in proc.stderr  # the did-you-mean


@pytest.mark.skipif(os.geteuid() != 0, reason="slot uids need a root worker")
async def test_68_a_worker_starting_on_the_host_does_not_kill_a_local_run(
    sandbox: Sandbox, run_base: Path, action: Path
) -> None:
    base, slots = sandbox.slot_uid_base, 3
    env = clean_env(
        ATTUNE__SANDBOX__RUN_DIR=str(run_base / "exec-vs-worker"),
        ATTUNE__SANDBOX__SLOT_UID_BASE=str(base),
        ATTUNE__WORKER__MAX_CONCURRENT_TASKS=str(slots),
    )

    def worker_starts() -> None:  # what a worker with these settings does at start-up
        assert process.kill_uid_range(base, slots) == []

    await run_and_find_uid([str(action)], env, base + slots, while_seen=worker_starts)
