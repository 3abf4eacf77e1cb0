"""The handoff to a parked sandbox and the pool's bookkeeping: pure, no processes."""

from __future__ import annotations

import json
import os
import subprocess

import msgspec
import pytest
import trio
import trio.testing

from attune.runner import argv, network
from attune.runner.egress import EgressPolicy
from attune.runner.handoff import encode_handoff, run_inputs
from attune.runner.pool import (
    EGRESS_IDLE,
    EGRESS_MAX_AGE,
    EXTRA_SHAPES,
    WarmPool,
    _Parked,
    parkable,
    pool_uids,
)
from attune.runner.profiles import load_profiles
from attune.runner.sandbox import PackSource, RunSpec, _Box, _RunDir

PROFILES = load_profiles()


def decode(frame: bytes) -> tuple[dict, list[bytes], bytes]:
    size = int.from_bytes(frame[:4], "big")
    header = json.loads(frame[4 : 4 + size])
    rest = frame[4 + size :]
    blobs = []
    for _path, _mode, length in header["files"]:
        blobs.append(rest[:length])
        rest = rest[length:]
    return header, blobs, rest


def test_a_run_action_is_called_in_the_parked_interpreter_with_params_on_stdin() -> None:
    profile = PROFILES["python"]
    inputs = run_inputs(
        profile,
        code=b"def run(x): return x\n",
        params={"x": 1},
        env={"ATTUNE_EXEC_ID": "7"},
        delivery="stdin",
        fmt="json",
        secrets={},
    )
    header, blobs, stdin = decode(
        encode_handoff(profile, inputs, "a.py", target="/attune/action/a.py", command=None)
    )
    assert header["call"] == "/attune/action/a.py" and "argv" not in header
    assert header["files"] == [["/attune/action/a.py", 0o444, len(blobs[0])]]
    assert blobs == [b"def run(x): return x\n"]
    assert json.loads(stdin) == {"x": 1}
    # The whole environment, as bwrap would set it for a cold run.
    assert header["env"] == argv.sandbox_env(profile, inputs.env)
    assert header["env"]["ATTUNE_EXEC_ID"] == "7" and header["env"]["HOME"] == "/work"


def test_a_script_is_execd_with_the_profile_command_and_file_params_are_private() -> None:
    profile = PROFILES["shell"]
    inputs = run_inputs(
        profile,
        code=b"echo hi\n",
        params={"name": "bob"},
        env={},
        delivery="file",
        fmt="json",
        secrets={"token": "s3cret"},
    )
    header, blobs, stdin = decode(
        encode_handoff(
            profile, inputs, "a.sh", target="/attune/action/a.sh", command=profile.command
        )
    )
    assert header["argv"] == [*profile.command, "/attune/action/a.sh"]
    files = {
        path: (mode, blob) for (path, mode, _), blob in zip(header["files"], blobs, strict=True)
    }
    assert files[argv.PARAMS_FILE] == (0o400, b'{"name":"bob"}\n')
    assert files[argv.SECRETS_FILE][0] == 0o400
    assert json.loads(files[argv.SECRETS_FILE][1]) == {"token": "s3cret"}
    assert stdin == b""  # file delivery: nothing on stdin
    assert header["env"]["PARAM_NAME"] == "bob"  # the shell profile's params_as_env
    assert header["env"]["ATTUNE_PARAMETER_FILE"] == argv.PARAMS_FILE


def test_pool_uids_follow_the_slots_and_execs_uid_and_cover_parked_plus_running() -> None:
    uids = pool_uids(100000, capacity=4, depth=2, profiles=2)
    assert uids.start == 100005  # 100000-100003 slots, 100004 attune exec
    assert len(uids) == 2 * (2 + EXTRA_SHAPES) + 4
    assert len(pool_uids(100000, 4, 0, 2)) == 0


def spec(runtime: str = "python", **kw: object) -> RunSpec:
    return RunSpec(profile=PROFILES[runtime], code=b"def run(): return 1\n", code_name="a.py", **kw)  # type: ignore[arg-type]


def test_every_profile_can_park() -> None:
    assert all(parkable(p) for p in PROFILES.values())


class FakeBox(_Box):
    def __init__(self, alive: bool) -> None:
        super().__init__(_RunDir(root=None, uid=None))  # type: ignore[arg-type]
        self._alive = alive

    def alive(self) -> bool:
        return self._alive


async def test_take_skips_dead_parked_sandboxes_and_other_profiles() -> None:
    pool = WarmPool(None, list(PROFILES.values()), 2, [])  # type: ignore[arg-type]
    dead, live = FakeBox(False), FakeBox(True)
    now = trio.current_time()
    pool._shelves[("python", None, None, None)].parked += [
        _Parked(dead, None, now),
        _Parked(live, None, now),
    ]
    assert pool.take(spec("shell")) is None  # the shell shelf is empty: cold
    other = msgspec.structs.replace(PROFILES["python"], command=["/usr/bin/python3"])
    assert pool.take(RunSpec(profile=other, code=b"", code_name="a.py")) is None
    assert pool.take(spec()) is live
    assert pool._dead == [dead]  # discarded by the refill task, never handed a run
    assert (pool.taken, pool.missed) == (1, 1)  # the other profile never fitted


async def test_a_pack_shelf_is_made_on_first_miss_and_the_least_recently_used_gives_way() -> None:
    pool = WarmPool(None, list(PROFILES.values()), 1, [])  # type: ignore[arg-type]

    def in_pack(n: int) -> RunSpec:
        return spec(pack=PackSource(pack_dir=f"/packs/p{n}", action_path=f"/packs/p{n}/a.py"))

    for n in range(EXTRA_SHAPES):
        assert pool.take(in_pack(n)) is None  # cold, but its pack now has a shelf
    stale = FakeBox(True)
    pool._shelves[("python", "/packs/p0", None, None)].parked.append(
        _Parked(stale, (1, 2), trio.current_time())
    )
    assert pool.take(in_pack(0)) is None  # /packs/p0 is not the directory it bound
    assert stale in pool._dead
    pool.take(in_pack(EXTRA_SHAPES))  # one pack too many: p1 is the least recently used
    packs = {key[1] for key in pool._shelves if key[1] is not None}
    assert "/packs/p1" not in packs and f"/packs/p{EXTRA_SHAPES}" in packs
    assert len(packs) == EXTRA_SHAPES


async def test_an_egress_shape_gets_a_shelf_on_first_miss_and_old_rules_are_never_used() -> None:
    pool = WarmPool(None, list(PROFILES.values()), 1, [])  # type: ignore[arg-type]
    policy = EgressPolicy(dns="hosts")
    assert pool.take(spec(network=policy)) is None  # cold, but the shape has a shelf now
    shelf = pool._shelves[("python", None, None, policy)]
    assert shelf.network == policy and shelf.pack is None
    # Another policy (a pack build's narrowed list, say) is another shape.
    assert pool.take(spec(network=EgressPolicy(dns="off"))) is None
    assert ("python", None, None, EgressPolicy(dns="off")) in pool._shelves
    old, fresh = FakeBox(True), FakeBox(True)
    now = trio.current_time()
    shelf.parked += [_Parked(old, None, now - EGRESS_MAX_AGE - 1), _Parked(fresh, None, now)]
    assert pool.take(spec()) is None  # no egress: never an egress sandbox
    assert pool.take(spec(network=policy)) is fresh
    assert pool._dead == [old]  # its rules are older than EGRESS_MAX_AGE: discarded
    assert shelf.expires(_Parked(fresh, None, now)) == now + EGRESS_MAX_AGE


async def test_egress_and_pack_shelves_share_one_lru_bound() -> None:
    pool = WarmPool(None, list(PROFILES.values()), 1, [])  # type: ignore[arg-type]
    policy = EgressPolicy()
    pool.take(spec(network=policy))
    for n in range(EXTRA_SHAPES):
        pool.take(spec(pack=PackSource(pack_dir=f"/packs/p{n}", action_path=f"/packs/p{n}/a.py")))
    extra = [key for key in pool._shelves if key[1] is not None or key[3] is not None]
    assert len(extra) == EXTRA_SHAPES
    assert ("python", None, None, policy) not in pool._shelves  # the least recently used


class RunningProc:
    def running(self) -> bool:
        return True


async def test_a_parked_egress_sandbox_whose_slirp4netns_died_is_never_handed_a_run() -> None:
    exit_r, exit_w = os.pipe()
    os.close(exit_r)
    slirp = subprocess.Popen(["/bin/sleep", "30"])
    attachment = network.Attachment(slirp, exit_w, os.memfd_create("log"), -1)
    box = _Box(_RunDir(root=None, uid=None), proc=RunningProc())  # type: ignore[arg-type]
    box.attachment = attachment
    assert box.alive()
    slirp.kill()
    slirp.wait()
    assert not box.alive()  # the pool discards it: its run would have no network
    attachment.discard()


class FakeSandbox:
    """Parks FakeBoxes at once and records what the pool discards."""

    def __init__(self) -> None:
        self.parked: list[tuple[FakeBox, EgressPolicy | None]] = []
        self.discarded: list[_Box] = []

    async def park(self, profile: object, pack: object, uid: object, policy: object) -> _Box:
        box = FakeBox(True)
        self.parked.append((box, policy))  # type: ignore[arg-type]
        return box

    async def discard(self, box: _Box) -> None:
        self.discarded.append(box)
        if box.on_closed is not None:
            box.on_closed()


async def test_egress_sandboxes_are_re_parked_at_their_age_until_the_shape_is_idle(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    sandbox = FakeSandbox()
    pool = WarmPool(sandbox, [], 1, [1, 2, 3])  # type: ignore[arg-type]
    await nursery.start(pool.run)
    policy = EgressPolicy(dns="off")
    assert pool.take(spec(network=policy)) is None
    shelf = pool._shelves[("python", None, None, policy)]
    while not shelf.parked:
        await trio.sleep(0.01)
    first = shelf.parked[0].box
    assert sandbox.parked == [(first, policy)]  # parked with the run's policy
    await trio.sleep(EGRESS_MAX_AGE + 1)
    assert sandbox.discarded == [first]  # replaced when its rules reached their age
    assert len(shelf.parked) == 1 and shelf.parked[0].box is not first
    await trio.sleep(EGRESS_IDLE + EGRESS_MAX_AGE)
    assert not shelf.parked  # no run for EGRESS_IDLE: no longer refreshed
    assert pool.take(spec(network=policy)) is None  # the next run goes cold, and refills
    while not shelf.parked:
        await trio.sleep(0.01)


def test_an_environment_with_nul_is_refused_as_bwrap_refuses_it() -> None:
    profile = PROFILES["python"]
    inputs = run_inputs(
        profile,
        code=b"",
        params={},
        env={"X": "a\0b"},
        delivery="stdin",
        fmt="json",
        secrets={},
    )
    with pytest.raises(ValueError, match="cannot contain NUL"):
        encode_handoff(profile, inputs, "a.py", target="/attune/action/a.py", command=None)
