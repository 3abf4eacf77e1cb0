"""Secrets through the real worker: delivered where they should be, found nowhere else.

Secret parameters are stored the way the API stores them (markers in
`execution.config`, sealed values in `execution_secret_value`); keystore secrets are
rows of `key`. Then a real `attune run-worker` runs actions that try hard to leak them,
and every place the worker writes is searched for the plaintext and its encodings.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import textwrap
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

import psycopg
import pytest
import trio

from attune.messages import (
    EXCHANGE_EXECUTIONS,
    ExecutionRequested,
    dispatch_routing_key,
    encode_message,
)
from attune.packs import install_pack, load_pack
from attune.params import apply_schema
from attune.secrets import encrypt_value, key_hash, seal_secret_params
from tests.integration.amqp_fixtures import Collector
from tests.integration.worker_kit import ATTUNE, Stack, WorkerProcess

pytestmark = [pytest.mark.services, pytest.mark.sandbox]

KEY = "test-encryption-key-0123456789-abcdefghij"
KEY_ENV = {"ATTUNE__SECURITY__ENCRYPTION_KEY": KEY}
RUN_DIR = Path("/var/lib/attune/runs")


# --- helpers: play the API and the executor ------------------------------------------


async def submit_sealed(
    stack: Stack, worker: WorkerProcess, ref: str, params: dict[str, Any]
) -> int:
    """Create the execution as the API would (secrets sealed), then dispatch it."""
    action = await stack.db.get_action(ref)
    assert action is not None, ref
    config, rows = seal_secret_params(
        apply_schema(action.param_schema, params), action.param_schema, KEY
    )
    worker_id = await stack.worker_id(worker.name)
    execution_id = await stack.db.create_execution(action, config=config, worker_id=worker_id)
    await stack.db.put_execution_secrets(execution_id, rows)
    await stack.dispatch(execution_id, ref, worker_id)
    return execution_id


async def set_encrypted_key(
    stack: Stack, ref: str, value: Any, *, owner_type: str, owner_ref: str | None
) -> None:
    await stack.db.set_key(
        ref,
        name=ref.rsplit(".", 1)[-1],
        owner_type=owner_type,
        owner_ref=owner_ref,
        value=encrypt_value(KEY, value),
        encrypted=True,
        encryption_key_hash=key_hash(KEY),
    )


async def load_probe_pack(stack: Stack, root: Path, actions: dict[str, tuple[str, str]]) -> None:
    """Install and register a pack `probe` made of {name: (yaml, code)}."""
    pack = root / "probe-pack"
    (pack / "actions").mkdir(parents=True)
    (pack / "pack.yaml").write_text(
        "ref: probe\nlabel: Probe\ndescription: leak probes\nversion: 1.0.0\n"
    )
    for name, (meta, code) in actions.items():
        (pack / "actions" / f"{name}.yaml").write_text(textwrap.dedent(meta))
        entry = next(
            line.split(":", 1)[1].strip()
            for line in meta.splitlines()
            if line.strip().startswith("entry_point:")
        )
        (pack / "actions" / entry).write_text(textwrap.dedent(code))
    spec = load_pack(pack)
    install_pack(spec, stack.packs_dir)
    await stack.db.upsert_pack(spec)


def encoded_forms(secret: str) -> dict[str, str]:
    """The forms the leak hunt looks for (computed here, not with the code under test)."""
    raw = secret.encode()
    return {
        "plain": secret,
        "json": json.dumps(secret)[1:-1],
        "json-utf8": json.dumps(secret, ensure_ascii=False)[1:-1],
        "url": quote(secret, safe=""),
        "url-path": quote(secret),
        "url-plus": quote_plus(secret),
        "b64": base64.b64encode(raw).decode(),
        "b64-nopad": base64.b64encode(raw).decode().rstrip("="),
        "b64url": base64.urlsafe_b64encode(raw).decode(),
        "b64url-nopad": base64.urlsafe_b64encode(raw).decode().rstrip("="),
    }


def hunt(haystacks: dict[str, bytes], secrets: dict[str, str]) -> list[str]:
    """Every (place, secret, form) where a secret or one of its encodings was found."""
    found = []
    for place, data in haystacks.items():
        for label, secret in secrets.items():
            for form_name, form in encoded_forms(secret).items():
                if form.encode() in data:
                    found.append(f"{label} as {form_name} in {place}")
    return found


def db_dump(db_url: str) -> dict[str, bytes]:
    """Every row of every table in the attune schema, as text."""
    out: dict[str, bytes] = {}
    with psycopg.connect(db_url, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'attune'"
            )
        ]
        for table in tables:
            rows = conn.execute(f'SELECT t::text FROM attune."{table}" t').fetchall()
            out[f"table {table}"] = "\n".join(r[0] for r in rows).encode()
    return out


def files_under(root: Path, label: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    if root.exists():
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                out[f"{label} {path.relative_to(root)}"] = path.read_bytes()
    return out


async def drain(events: Collector, count: int) -> dict[str, bytes]:
    """The next `count` messages on attune.executions, each as one haystack."""
    bodies: dict[str, bytes] = {}
    for i, delivery in enumerate(await events.take(count, timeout=30)):
        bodies[f"message {i}"] = delivery.body
    await events.assert_quiet(1.0)
    return bodies


# --- the probe actions ---------------------------------------------------------------

LEAK_CODE = r"""
    import base64, hashlib, json, os, sys
    from urllib.parse import quote, quote_plus


    def keystore():
        path = os.environ.get("ATTUNE_SECRETS_FILE")
        return json.load(open(path)) if path else {}


    def forms(s):
        raw = s.encode()
        return [s, json.dumps(s), json.dumps(s, ensure_ascii=False), quote(s, safe=""),
                quote(s), quote_plus(s), base64.b64encode(raw).decode(),
                base64.urlsafe_b64encode(raw).decode().rstrip("="), repr(s)]


    def run(password, mode="return"):
        everything = [password, *keystore().values()]
        for s in everything:
            for f in forms(s):
                print("out:", f)
                print("err:", f, file=sys.stderr)
        if mode == "raise":
            raise RuntimeError(f"cannot log in with {password} ({everything[-1]})")
        # A secret the action makes: the worker learns it from the output schema, so
        # only once it is returned (a failed run that printed it could not be caught).
        generated = hashlib.sha256(password.encode()).hexdigest()[:24]
        print("generated:", generated)
        return {"password": password, "forms": [f for s in everything for f in forms(s)],
                password: "as a key", "keystore": keystore(), "generated": generated}
"""

LEAK_YAML = """
    ref: probe.leak
    label: Leak
    description: prints and returns its secrets in every encoding
    runner_type: python
    entry_point: leak.py
    parameters:
      type: object
      properties:
        password: {type: string, secret: true}
        mode: {type: string, default: return}
      required: [password]
    output_schema:
      type: object
      properties:
        generated: {type: string, secret: true}
"""

LEAK_SCRIPT_CODE = r"""
    import base64, json, os, sys
    from urllib.parse import quote
    params = json.loads(sys.stdin.readline())
    path = os.environ.get("ATTUNE_SECRETS_FILE")
    values = [params["password"], *(json.load(open(path)).values() if path else [])]
    for s in values:
        for f in (s, json.dumps(s), quote(s, safe=""), base64.b64encode(s.encode()).decode()):
            print(f)
            print(f, file=sys.stderr)
"""

LEAK_SCRIPT_YAML = """
    ref: probe.leak_script
    label: Leak script
    description: a plain script (no run()), so its stdout is kept in the result
    runner_type: python
    entry_point: leak_script.py
    output_format: text
    parameters:
      type: object
      properties:
        password: {type: string, secret: true}
"""

LEAK_SH_CODE = r"""
    #!/bin/bash
    printf '%s\n' "$PARAM_PASSWORD"
    printf '%s' "$PARAM_PASSWORD" | base64 -w0; echo
    cat "${ATTUNE_SECRETS_FILE:-/dev/null}" 2>/dev/null; echo
    printf 'failed with %s\n' "$PARAM_PASSWORD" >&2
    exit 3
"""

LEAK_SH_YAML = """
    ref: probe.leak_sh
    label: Leak shell
    description: a shell action that echoes its secret and fails with it on stderr
    runner_type: shell
    entry_point: leak_sh.sh
    parameters:
      type: object
      properties:
        password: {type: string, secret: true}
"""

PEEK_CODE = r"""
    import json, os, sys, time

    def read(path, limit=1 << 20):
        try:
            with open(path, "rb") as handle:
                return handle.read(limit)
        except OSError as exc:
            return f"<{type(exc).__name__}>".encode()

    def everything():
        seen = {"stdin": sys.stdin.read().encode(), "environ": repr(dict(os.environ)).encode()}
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                for part in ("environ", "cmdline"):
                    seen[f"/proc/{pid}/{part}"] = read(f"/proc/{pid}/{part}")
        for top in ("/tmp", "/work", "/attune", "/dev/shm", "/run", "/var/tmp"):
            for base, dirs, files in os.walk(top):
                for name in files:
                    seen[os.path.join(base, name)] = read(os.path.join(base, name))
        return seen

    time.sleep(float(os.environ.get("PEEK_DELAY", "0")))
    # Hex, so the worker's masking cannot hide what the action saw from this test.
    print(json.dumps({k: v.hex() for k, v in everything().items()}))
    sys.stdout.flush()
    time.sleep(float(os.environ.get("PEEK_AFTER", "0")))
"""

PEEK_YAML = """
    ref: probe.peek
    label: Peek
    description: dumps, hex-encoded, every secret-looking thing the sandbox can see
    runner_type: python
    entry_point: peek.py
    output_format: text
    parameters:
      type: object
      properties:
        password: {type: string, secret: true}
"""

PROBES = {
    "leak": (LEAK_YAML, LEAK_CODE),
    "leak_script": (LEAK_SCRIPT_YAML, LEAK_SCRIPT_CODE),
    "leak_sh": (LEAK_SH_YAML, LEAK_SH_CODE),
    "peek": (PEEK_YAML, PEEK_CODE),
}


def peeked(stack: Stack, worker: WorkerProcess, execution_id: int) -> bytes:
    """Everything a peek run saw, decoded from the hex it printed (from the artifact)."""
    log = stack.artifacts_dir / worker.name / f"execution_{execution_id}" / "stdout.log"
    dump = json.loads(log.read_text().strip().splitlines()[0])
    return b"\n".join(k.encode() + b"=" + bytes.fromhex(v) for k, v in dump.items())


def unique(prefix: str) -> str:
    """A secret with characters that JSON, URL and base64 encode differently."""
    return f'{prefix} "q"/ü+&=?{uuid.uuid4().hex[:10]}'


# --- tests ---------------------------------------------------------------------------


async def test_secret_parameter_and_keystore_secret_reach_secret_hash(stack: Stack) -> None:
    password, token = unique("pw"), unique("token")
    await set_encrypted_key(
        stack, "api_token", "system-wide, overridden", owner_type="system", owner_ref=None
    )
    await set_encrypted_key(stack, "demo.api_token", token, owner_type="pack", owner_ref="demo")
    worker = await stack.start_worker(ATTUNE__SECURITY__ENCRYPTION_KEY=KEY)
    execution_id = await submit_sealed(stack, worker, "demo.secret_hash", {"password": password})
    row = await stack.wait(execution_id)
    assert row.status == "completed", row.result
    expected = hashlib.sha256(f"{password}:{token}".encode()).hexdigest()
    assert row.result["data"] == {"sha256": expected}


async def test_leak_hunt_finds_no_secret_in_db_artifacts_logs_or_messages(
    stack: Stack, execution_events: Collector, tmp_path: Path
) -> None:
    await load_probe_pack(stack, tmp_path, PROBES)
    password, token = unique("param-secret"), unique("key-secret")
    generated = hashlib.sha256(password.encode()).hexdigest()[:24]
    await set_encrypted_key(stack, "probe.api_token", token, owner_type="pack", owner_ref="probe")
    worker = await stack.start_worker(ATTUNE__SECURITY__ENCRYPTION_KEY=KEY)
    ids = {
        "leak": await submit_sealed(stack, worker, "probe.leak", {"password": password}),
        "raise": await submit_sealed(
            stack, worker, "probe.leak", {"password": password, "mode": "raise"}
        ),
        "script": await submit_sealed(stack, worker, "probe.leak_script", {"password": password}),
        "shell": await submit_sealed(stack, worker, "probe.leak_sh", {"password": password}),
    }
    rows = {name: await stack.wait(i) for name, i in ids.items()}
    # The secrets did reach the actions: they ran, and what they printed was masked.
    assert rows["leak"].status == "completed", rows["leak"].result
    assert rows["leak"].result["data"]["password"] == "***"
    assert rows["leak"].result["data"]["generated"] == "***"  # output_schema secret path
    assert rows["leak"].result["data"]["***"] == "as a key"
    # {} until the runner delivers keystore secrets; then the action saw the key, masked.
    assert rows["leak"].result["data"]["keystore"] in ({}, {"api_token": "***"})
    assert rows["raise"].status == "failed"
    assert rows["raise"].result["error"].startswith("RuntimeError: cannot log in with ***")
    assert rows["script"].status == "completed"
    assert rows["script"].result["stdout"].splitlines()[:4] == ["***", '"***"', "***", "***"]
    assert rows["shell"].status == "failed"
    assert rows["shell"].result["error"] == "failed with ***"
    log = stack.artifacts_dir / worker.name / f"execution_{ids['leak']}" / "stdout.log"
    assert log.read_text().startswith("out: ***\n")
    assert "cannot log in with ***" in worker.log()  # logged by the worker, masked

    for execution_id in ids.values():  # result.json comes after the answer: hunt it too
        await stack.result_file(worker, execution_id)
    haystacks: dict[str, bytes] = {}
    haystacks |= db_dump(stack.db_url)
    haystacks |= files_under(stack.artifacts_dir, "artifact")
    haystacks |= {f"worker log {w.log_path.name}": w.log_path.read_bytes() for w in stack.workers}
    haystacks |= await drain(execution_events, 3 * len(ids))
    haystacks |= {
        name: data
        for run_dir in RUN_DIR.glob("execution-*")
        if any(run_dir.name.startswith(f"execution-{i}-") for i in ids.values())
        for name, data in files_under(run_dir, "run dir").items()
    }
    assert any(name.startswith("table execution") for name in haystacks)
    assert sum(name.startswith("message") for name in haystacks) == 12
    # The keystore secret is searched for whether or not the runner delivers it yet.
    leaks = hunt(haystacks, {"param": password, "generated": generated, "keystore": token})
    assert leaks == [], "\n".join(leaks)
    # The encrypted values are where they belong, and only as ciphertext.
    assert "table execution_secret_value" in haystacks and "table key" in haystacks


async def test_worker_credentials_are_invisible_to_actions(stack: Stack, tmp_path: Path) -> None:
    await load_probe_pack(stack, tmp_path, PROBES)
    worker = await stack.start_worker(ATTUNE__SECURITY__ENCRYPTION_KEY=KEY)
    execution_id = await submit_sealed(stack, worker, "probe.peek", {"password": "peek-pw-1"})
    row = await stack.wait(execution_id)
    assert row.status == "completed", row.result
    seen = peeked(stack, worker, execution_id)
    assert b"/proc/1/environ=" in seen and b"/proc/1/cmdline=" in seen
    assert b"ATTUNE_EXEC_ID" in seen and b"peek-pw-1" in seen  # the probe works
    db, amqp = urlsplit(stack.db_url), urlsplit(stack.amqp_url)
    needles = [
        stack.db_url,
        stack.amqp_url,
        KEY,
        db.path.strip("/"),
        amqp.path.strip("/"),
        "ATTUNE__",
        "guest:guest",
        # The action's own pack is bound at its host path by design (docs/packs.md);
        # no other pack is.
        str(stack.packs_dir / "demo"),
        str(stack.artifacts_dir),
    ]
    assert [n for n in needles if n.encode() in seen] == []


async def test_concurrent_runs_cannot_read_each_others_secrets(
    stack: Stack, tmp_path: Path
) -> None:
    await load_probe_pack(stack, tmp_path, PROBES)
    await set_encrypted_key(
        stack,
        "probe.peek.own_token",
        unique("action-key"),
        owner_type="action",
        owner_ref="probe.peek",
    )
    worker = await stack.start_worker(capacity=2, ATTUNE__SECURITY__ENCRYPTION_KEY=KEY)
    action = await stack.db.get_action("probe.peek")
    assert action is not None
    first, second = unique("first-secret"), unique("second-secret")
    worker_id = await stack.worker_id(worker.name)
    ids = []
    for secret in (first, second):
        config, rows = seal_secret_params({"password": secret}, action.param_schema, KEY)
        execution_id = await stack.db.create_execution(
            action,
            config=config,
            worker_id=worker_id,
            env_vars={"PEEK_DELAY": "1", "PEEK_AFTER": "1"},
        )
        await stack.db.put_execution_secrets(execution_id, rows)
        ids.append(execution_id)
    for execution_id in ids:
        message = encode_message(
            "ExecutionRequested",
            ExecutionRequested(
                execution_id=execution_id, action_ref="probe.peek", worker_id=worker_id
            ),
        )
        await stack.broker.publish(EXCHANGE_EXECUTIONS, dispatch_routing_key(worker_id), message)
    runs = [await stack.wait(i) for i in ids]
    assert [r.status for r in runs] == ["completed", "completed"], [r.result for r in runs]
    assert runs[0].started_at and runs[1].started_at
    assert abs((runs[0].started_at - runs[1].started_at).total_seconds()) < 1.0  # overlapped
    seen_first, seen_second = peeked(stack, worker, ids[0]), peeked(stack, worker, ids[1])
    assert hunt({"first run": seen_first}, {"own": first}) != []  # the probe sees its own
    assert hunt({"second run": seen_second}, {"own": second}) != []
    leaks = hunt({"first run": seen_first}, {"other": second}) + hunt(
        {"second run": seen_second}, {"other": first}
    )
    assert leaks == [], leaks


async def test_without_an_encryption_key_a_secret_parameter_fails_the_run_clearly(
    stack: Stack,
) -> None:
    worker = await stack.start_worker()  # no ATTUNE__SECURITY__ENCRYPTION_KEY
    password = unique("no-key")
    execution_id = await submit_sealed(stack, worker, "demo.secret_hash", {"password": password})
    row = await stack.wait(execution_id)
    assert row.status == "failed"
    error = row.result["error"]
    assert "ATTUNE__SECURITY__ENCRYPTION_KEY" in error and "/password" in error, error
    assert password not in json.dumps(row.result)


async def test_a_wrong_key_or_a_missing_value_fails_naming_the_parameter_path(
    stack: Stack,
) -> None:
    worker = await stack.start_worker(ATTUNE__SECURITY__ENCRYPTION_KEY="x" * 40)
    wrong_key = await submit_sealed(stack, worker, "demo.secret_hash", {"password": "pw-12345"})
    action = await stack.db.get_action("demo.secret_hash")
    assert action is not None
    orphan = await stack.db.create_execution(
        action,
        config={"password": {"$attune_secret": True, "redacted": True}},
        worker_id=await stack.worker_id(worker.name),
    )
    await stack.broker.publish(
        EXCHANGE_EXECUTIONS,
        dispatch_routing_key(await stack.worker_id(worker.name)),
        encode_message(
            "ExecutionRequested",
            ExecutionRequested(
                execution_id=orphan,
                action_ref=action.ref,
                worker_id=await stack.worker_id(worker.name),
            ),
        ),
    )
    first, second = await stack.wait(wrong_key), await stack.wait(orphan)
    assert first.status == second.status == "failed"
    assert "/password" in first.result["error"] and "different key" in first.result["error"]
    assert "/password cannot be restored: no stored value" in second.result["error"]
    assert "pw-12345" not in json.dumps(first.result)


# --- attune key ----------------------------------------------------------------------


def attune_key(
    stack: Stack, *args: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("ATTUNE")}
    environment["ATTUNE__DATABASE__URL"] = stack.db_url
    environment.update(env)
    return subprocess.run(
        [ATTUNE, "key", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
    )


async def test_key_cli_sets_lists_and_deletes_without_ever_printing_values(
    stack: Stack,
) -> None:
    secret = unique("cli-secret")
    done = await trio.to_thread.run_sync(
        lambda: attune_key(
            stack,
            "set",
            "demo.api_token",
            "-",
            "--owner-pack",
            "demo",
            "--encrypt",
            stdin=secret + "\n",
            **KEY_ENV,
        )
    )
    assert done.returncode == 0, done.stderr
    assert "created" in done.stdout and secret not in done.stdout + done.stderr
    short = await trio.to_thread.run_sync(
        lambda: attune_key(stack, "set", "pin", "123", "--system")
    )
    assert short.returncode == 0, short.stderr
    assert "too short to be masked" in short.stderr
    await trio.to_thread.run_sync(
        lambda: attune_key(
            stack,
            "set",
            "demo.secret_hash.note",
            "a plain note",
            "--owner-action",
            "demo.secret_hash",
        )
    )
    listed = await trio.to_thread.run_sync(lambda: attune_key(stack, "list", "--json", **KEY_ENV))
    assert listed.returncode == 0, listed.stderr
    assert secret not in listed.stdout and "123" not in listed.stdout
    rows = {r["ref"]: r for r in json.loads(listed.stdout)}
    assert rows["demo.api_token"] == {
        "ref": "demo.api_token",
        "name": "api_token",
        "owner": "pack:demo",
        "encrypted": True,
        "weak": "no",
    }
    assert rows["pin"]["weak"] == "yes" and rows["pin"]["owner"] == "system"
    assert rows["demo.secret_hash.note"]["owner"] == "action:demo.secret_hash"
    table = await trio.to_thread.run_sync(lambda: attune_key(stack, "list"))
    assert "demo.api_token" in table.stdout and secret not in table.stdout
    assert "?" in table.stdout  # encrypted, and this config holds no key to check it

    stored = next(k for k in await stack.db.list_keys() if k.ref == "demo.api_token")
    assert stored.encryption_key_hash == key_hash(KEY) and isinstance(stored.value, str)
    assert secret not in stored.value

    deleted = await trio.to_thread.run_sync(lambda: attune_key(stack, "delete", "pin"))
    assert deleted.returncode == 0 and "deleted" in deleted.stdout
    again = await trio.to_thread.run_sync(lambda: attune_key(stack, "delete", "pin"))
    assert again.returncode == 1 and "no key 'pin'" in again.stderr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "ATTUNE__SECURITY__ENCRYPTION_KEY) is not set"),
        ({"ATTUNE__SECURITY__ENCRYPTION_KEY": "too-short"}, "too short (9 characters"),
    ],
)
async def test_key_set_encrypt_without_a_usable_key_exits_2(
    stack: Stack, env: dict[str, str], message: str
) -> None:
    done = await trio.to_thread.run_sync(
        lambda: attune_key(stack, "set", "k", "some-value", "--encrypt", **env)
    )
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "some-value" not in done.stderr
    assert await stack.db.list_keys() == []


async def test_key_set_refuses_two_owners_and_unknown_packs(stack: Stack) -> None:
    both = await trio.to_thread.run_sync(
        lambda: attune_key(stack, "set", "k", "v1234", "--system", "--owner-pack", "demo")
    )
    assert both.returncode == 2 and "choose one owner" in both.stderr
    missing = await trio.to_thread.run_sync(
        lambda: attune_key(stack, "set", "k", "v1234", "--owner-pack", "nope")
    )
    assert missing.returncode == 2 and "no pack 'nope'" in missing.stderr


async def test_schedule_seals_secret_parameters_like_the_api(stack: Stack, pg: Any) -> None:
    from attune.errors import InputError
    from attune.submit import schedule

    password, token = unique("pw"), unique("token")
    await set_encrypted_key(stack, "demo.api_token", token, owner_type="pack", owner_ref="demo")
    await stack.start_worker(ATTUNE__SECURITY__ENCRYPTION_KEY=KEY)
    with pytest.raises(InputError, match="encryption_key"):
        await schedule(stack.db, stack.broker, "demo.secret_hash", {"password": password})
    execution_id, _ = await schedule(
        stack.db, stack.broker, "demo.secret_hash", {"password": password}, encryption_key=KEY
    )
    row = await stack.wait(execution_id)
    assert row.status == "completed", row.result
    expected = hashlib.sha256(f"{password}:{token}".encode()).hexdigest()
    assert row.result["data"] == {"sha256": expected}
    stored = pg.execute(
        "SELECT config::text FROM execution WHERE id = %s", (execution_id,)
    ).fetchone()[0]
    assert password not in stored and "$attune_secret" in stored
    sealed = pg.execute(
        "SELECT json_path FROM execution_secret_value WHERE entity_id = %s", (execution_id,)
    ).fetchall()
    assert sealed == [("/password",)]


# --- the gaps of the last round: failed runs, cuts at the cap, keys in clear -----------

FAIL_OUT_CODE = r"""
    import hashlib, json, sys
    params = json.loads(sys.stdin.readline())
    token = hashlib.sha256(params["seed"].encode()).hexdigest()[:24]
    print(json.dumps({"token": token, "note": "made it"}))
    print(f"could not finish with {token}", file=sys.stderr)
    sys.exit(2)
"""

FAIL_OUT_YAML = """
    ref: probe.fail_out
    label: Fail out
    description: prints an output-schema secret, then fails
    runner_type: python
    entry_point: fail_out.py
    output_format: json
    output_schema:
      type: object
      properties:
        token: {type: string, secret: true}
"""

CUT_CODE = r"""
    import json, os, sys
    keys = json.load(open(os.environ["ATTUNE_SECRETS_FILE"]))
    print("plain:", keys["plain_token"], file=sys.stderr)
    # The stdout cap (10 MiB) falls 8 characters into the secret.
    sys.stdout.write("x" * (10 * 2**20 - 8) + keys["cut_token"] + "\n")
"""

CUT_YAML = """
    ref: probe.cut
    label: Cut
    description: a keystore secret straddles the stdout cap; a clear-text key is printed
    runner_type: python
    entry_point: cut.py
    output_format: text
"""


async def test_leak_hunt_failed_runs_cuts_at_the_cap_and_keys_stored_in_clear(
    stack: Stack, execution_events: Collector, tmp_path: Path
) -> None:
    await load_probe_pack(
        stack, tmp_path, {"fail_out": (FAIL_OUT_YAML, FAIL_OUT_CODE), "cut": (CUT_YAML, CUT_CODE)}
    )
    seed = unique("seed")
    generated = hashlib.sha256(seed.encode()).hexdigest()[:24]
    cut_token = "Qcut" + uuid.uuid4().hex
    plain_token = unique("plain-key")
    await set_encrypted_key(
        stack, "probe.cut_token", cut_token, owner_type="pack", owner_ref="probe"
    )
    await stack.db.set_key(
        "probe.plain_token",
        name="plain_token",
        owner_type="pack",
        owner_ref="probe",
        value=plain_token,
        encrypted=False,
        encryption_key_hash=None,
    )
    worker = await stack.start_worker(ATTUNE__SECURITY__ENCRYPTION_KEY=KEY)
    ids = {
        "fail_out": await submit_sealed(stack, worker, "probe.fail_out", {"seed": seed}),
        "cut": await submit_sealed(stack, worker, "probe.cut", {}),
    }
    rows = {name: await stack.wait(i, timeout=60) for name, i in ids.items()}
    # The probes work: the failed run printed its token, the cut run its two keys.
    assert rows["fail_out"].status == "failed", rows["fail_out"].result
    assert '"token": "***"' in rows["fail_out"].result["stdout"]
    assert rows["fail_out"].result["stderr"] == "could not finish with ***\n"
    assert rows["cut"].status == "completed", rows["cut"].result
    assert rows["cut"].result["stdout_truncated"] is True
    assert rows["cut"].result["stdout"].split("\n")[0].endswith("x***")
    assert rows["cut"].result["stderr"] == "plain: ***\n"

    for execution_id in ids.values():  # result.json comes after the answer: hunt it too
        await stack.result_file(worker, execution_id)
    haystacks: dict[str, bytes] = {}
    haystacks |= db_dump(stack.db_url)
    haystacks |= files_under(stack.artifacts_dir, "artifact")
    haystacks |= {f"worker log {w.log_path.name}": w.log_path.read_bytes() for w in stack.workers}
    haystacks |= await drain(execution_events, 3 * len(ids))
    leaks = hunt(haystacks, {"generated": generated, "plain key": plain_token, "cut": cut_token})
    # The part of the cut secret that fitted under the cap is not visible either.
    leaks += [
        f"cut prefix in {place}"
        for place, data in haystacks.items()
        if cut_token[:8].encode() in data
    ]
    assert leaks == [], "\n".join(leaks)
