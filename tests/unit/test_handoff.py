"""The handoff to a parked sandbox and the pool's bookkeeping: pure, no processes."""

from __future__ import annotations

import json

import msgspec
import pytest

from attune.runner import argv
from attune.runner.egress import EgressPolicy
from attune.runner.handoff import encode_handoff, run_inputs
from attune.runner.pool import PACK_SHAPES, WarmPool, fits, parkable, pool_uids
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
    assert len(uids) == 2 * (2 + PACK_SHAPES) + 4
    assert len(pool_uids(100000, 4, 0, 2)) == 0


def spec(runtime: str = "python", **kw: object) -> RunSpec:
    return RunSpec(profile=PROFILES[runtime], code=b"def run(): return 1\n", code_name="a.py", **kw)  # type: ignore[arg-type]


def test_every_run_but_an_egress_one_fits_a_parked_sandbox() -> None:
    assert fits(spec())
    assert not fits(spec(network=EgressPolicy()))
    assert fits(spec(pack=PackSource(pack_dir="/p", action_path="/p/actions/a.py")))
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
    pool._shelves[("python", None, None)].parked += [(dead, None), (live, None)]
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

    for n in range(PACK_SHAPES):
        assert pool.take(in_pack(n)) is None  # cold, but its pack now has a shelf
    stale = FakeBox(True)
    pool._shelves[("python", "/packs/p0", None)].parked.append((stale, (1, 2)))
    assert pool.take(in_pack(0)) is None  # /packs/p0 is not the directory it bound
    assert stale in pool._dead
    pool.take(in_pack(PACK_SHAPES))  # one pack too many: p1 is the least recently used
    packs = {key[1] for key in pool._shelves if key[1] is not None}
    assert "/packs/p1" not in packs and f"/packs/p{PACK_SHAPES}" in packs
    assert len(packs) == PACK_SHAPES


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
