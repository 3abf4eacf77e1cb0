"""What a run hands its sandbox: one pure description, two deliveries.

`run_inputs` decides, from a run's spec, the action's environment, the files it finds
(the action code, the parameter and secrets files) and what it reads on stdin. A cold
sandbox gets the files copied in by bwrap (`--file`) and the environment as bwrap
options; a parked one (pool.py) gets the same inputs as one `encode_handoff` message on
its stdin, which sandbox/parked.py unpacks before it becomes the action. Both paths go
through `run_inputs`, so what the action sees is the same either way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from attune.models import ParameterDelivery, ParameterFormat
from attune.params import encode_params, shell_env
from attune.runner import argv as argv_mod
from attune.runner.profiles import Profile

HEADER_LIMIT = 1 << 31  # the 4-byte length prefix


@dataclass(frozen=True)
class RunInputs:
    """The run's own variables (on top of the profile's), files by key, and stdin."""

    env: dict[str, str]
    contents: dict[str, bytes]  # "action", "parameters", "secrets" -> bytes
    stdin: bytes

    def out_dir_size(self, max_result_bytes: int) -> int:
        """/attune/out's size for these files (argv.out_dir_size): all but the action."""
        sizes = [len(data) for key, data in self.contents.items() if key != "action"]
        return argv_mod.out_dir_size(max_result_bytes, sizes)


def run_inputs(
    profile: Profile,
    *,
    code: bytes,
    params: dict[str, Any],
    env: dict[str, str],
    delivery: ParameterDelivery,
    fmt: ParameterFormat,
    secrets: dict[str, str],
) -> RunInputs:
    run_env = dict(env)
    if profile.params_as_env:
        run_env.update(shell_env(params))
    run_env["ATTUNE_PARAMETER_DELIVERY"] = delivery
    run_env["ATTUNE_PARAMETER_FORMAT"] = fmt
    payload = encode_params(params, fmt)
    stdin = payload
    contents = {"action": code}
    if delivery == "file":
        contents["parameters"] = payload
        run_env["ATTUNE_PARAMETER_FILE"] = argv_mod.PARAMS_FILE
        stdin = b""
    if secrets:
        contents["secrets"] = json.dumps(secrets, ensure_ascii=False).encode()
        run_env["ATTUNE_SECRETS_FILE"] = argv_mod.SECRETS_FILE
    return RunInputs(run_env, contents, stdin)


def encode_handoff(
    profile: Profile,
    inputs: RunInputs,
    action_file: str,
    *,
    target: str,
    command: list[str] | None,
) -> bytes:
    """The message a parked sandbox waits for (format: sandbox/parked.py).

    `target` is the action's path inside the sandbox (its copy under /attune/action,
    or its place in its pack). With `command` None the run() wrapper calls it inside the
    parked interpreter; otherwise `command + [target]` is exec'd, exactly what a cold
    sandbox's init would run.
    """
    files = []
    blobs = []
    for key, data in inputs.contents.items():
        where = argv_mod.run_file_path(key, action_file)
        files.append([where, argv_mod.file_mode(where), len(data)])
        blobs.append(data)
    env = argv_mod.sandbox_env(profile, inputs.env)
    for key, value in env.items():
        if "\0" in key or "\0" in value:  # as argv.encode_args refuses it for bwrap
            raise ValueError("a sandbox argument cannot contain NUL")
    header: dict[str, Any] = {"env": env, "files": files}
    if command is None:
        header["call"] = target
    else:
        header["argv"] = [*command, target]
    encoded = json.dumps(header, ensure_ascii=False).encode()
    if len(encoded) >= HEADER_LIMIT:
        raise ValueError("the run's environment is too large to hand over")
    return b"".join([len(encoded).to_bytes(4, "big"), encoded, *blobs, inputs.stdin])
