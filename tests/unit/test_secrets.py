"""Secrets, pure parts: the §8 byte format, pointers, restoring, keystore, masking."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from attune.errors import ConfigError, ExecutionError
from attune.log import configure_logging, log_event
from attune.secrets import (
    MASK,
    KeyRecord,
    Masker,
    OutputGuard,
    SecretDecryptError,
    StoredSecret,
    StreamMasker,
    check_key,
    decrypt_value,
    encrypt_value,
    key_hash,
    marker_paths,
    masking_logs,
    redact_result,
    redaction_marker,
    resolve_run_secrets,
    restore_params,
    schema_secret_paths,
    seal_secret_params,
)
from attune.secrets.pointer import escape_token, set_at, split, unescape_token

KEY = "0123456789abcdef0123456789abcdef"  # exactly 32 characters
OTHER_KEY = "fedcba9876543210fedcba9876543210-other"
REPO = Path(__file__).resolve().parent.parent.parent


def sealed(value: Any, path: str, key: str = KEY) -> StoredSecret:
    return StoredSecret(
        json_path=path, encrypted_value=encrypt_value(key, value), encryption_key_hash=key_hash(key)
    )


def key_row(
    id: int, ref: str, owner_type: str, value: Any, *, encrypted: bool = True, key: str = KEY
) -> KeyRecord:
    stored = encrypt_value(key, value) if encrypted else value
    return KeyRecord(
        id=id,
        ref=ref,
        owner_type=owner_type,
        name=ref.rsplit(".", 1)[-1],
        encrypted=encrypted,
        encryption_key_hash=key_hash(key) if encrypted else None,
        value=stored,
    )


# --- crypto: the exact format shared with the API -----------------------------------


FIXED_NONCE = bytes(range(12))
FIXED_VALUE = {"user": "ann", "pw": "s3cr3t ü"}
# Built by hand from the primitives (see the next test), then frozen here so that any
# drift in the plaintext form (spacing, escaping, key order) or the layout shows up.
FIXED_TOKEN = "AAECAwQFBgcICQoLOswuMtlXhc50kHAOzbLKdUV0yTaPWcvYo0/Dd7K5LyowdOJkj3Y7nR4pH2Hpxvs="


def test_token_is_base64_of_nonce_ciphertext_tag_under_sha256_of_the_key() -> None:
    aes_key = hashlib.sha256(KEY.encode("utf-8")).digest()
    plaintext = '{"user":"ann","pw":"s3cr3t ü"}'.encode()  # compact JSON, UTF-8 kept
    by_hand = base64.b64encode(FIXED_NONCE + AESGCM(aes_key).encrypt(FIXED_NONCE, plaintext, None))
    assert by_hand.decode() == FIXED_TOKEN
    assert encrypt_value(KEY, FIXED_VALUE, nonce=FIXED_NONCE) == FIXED_TOKEN
    raw = base64.b64decode(FIXED_TOKEN, validate=True)
    assert raw[:12] == FIXED_NONCE and len(raw) == 12 + len(plaintext) + 16


def test_fixed_vector_decrypts_to_the_value() -> None:
    assert decrypt_value(KEY, FIXED_TOKEN, key_hash=key_hash(KEY)) == FIXED_VALUE


def test_key_hash_is_lowercase_hex_sha256_of_the_key_string() -> None:
    assert key_hash(KEY) == "3eb1bd439947eb762998e566ccc2e099c791118b2f40579cc4f7da2b5061b7f9"


@pytest.mark.parametrize(
    "value", ["hunter2", "", 42, 1.5, True, None, [1, "x"], {"nested": {"a": ["ü", "🔐"]}}]
)
def test_any_json_value_round_trips(value: Any) -> None:
    assert decrypt_value(KEY, encrypt_value(KEY, value)) == value


def test_each_encryption_uses_a_fresh_nonce() -> None:
    first, second = encrypt_value(KEY, "same"), encrypt_value(KEY, "same")
    assert first != second
    assert base64.b64decode(first)[:12] != base64.b64decode(second)[:12]


@pytest.mark.parametrize("where", [0, 11, 12, -17, -1])  # nonce, ciphertext, tag
def test_a_flipped_bit_anywhere_is_detected(where: int) -> None:
    raw = bytearray(base64.b64decode(encrypt_value(KEY, "the-plaintext")))
    raw[where] ^= 0x01
    with pytest.raises(SecretDecryptError, match="wrong key or the stored token was altered"):
        decrypt_value(KEY, base64.b64encode(bytes(raw)).decode())


def test_wrong_key_fails_and_never_shows_the_plaintext() -> None:
    token = encrypt_value(KEY, "the-plaintext")
    with pytest.raises(SecretDecryptError) as caught:
        decrypt_value(OTHER_KEY, token, what="the secret parameter at /pw")
    assert "/pw" in str(caught.value) and "the-plaintext" not in str(caught.value)


def test_key_hash_mismatch_says_a_different_key_was_used() -> None:
    token = encrypt_value(KEY, "x")
    with pytest.raises(SecretDecryptError, match="encrypted with a different key"):
        decrypt_value(OTHER_KEY, token, key_hash=key_hash(KEY))


@pytest.mark.parametrize(
    "token", ["not base64!!", base64.b64encode(b"short").decode(), 12, {"a": 1}]
)
def test_malformed_tokens_are_clear_errors(token: Any) -> None:
    with pytest.raises(SecretDecryptError):
        decrypt_value(KEY, token)


def test_missing_or_short_key_is_a_config_error_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"ATTUNE__SECURITY__ENCRYPTION_KEY.*not set"):
        check_key(None, purpose="decrypt x")
    with pytest.raises(ConfigError, match=r"too short \(31 characters, at least 32"):
        check_key(KEY[:31], purpose="decrypt x")
    with pytest.raises(ConfigError):
        encrypt_value("short", "v")
    assert check_key(KEY, purpose="x") == KEY


# --- pointers and markers -----------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "token"),
    [("a/b", "a~1b"), ("t~x", "t~0x"), ("~1", "~01"), ("plain", "plain"), ("", "")],
)
def test_pointer_tokens_escape_and_unescape(key: str, token: str) -> None:
    assert escape_token(key) == token
    assert unescape_token(token) == key


def test_pointer_split_and_invalid_pointer() -> None:
    assert split("") == []
    assert split("/db/a~1b/0") == ["db", "a/b", "0"]
    with pytest.raises(ExecutionError, match="invalid JSON pointer"):
        split("db")


def test_marker_paths_find_nested_escaped_and_array_markers() -> None:
    config = {
        "db": {"password": redaction_marker()},
        "a/b": redaction_marker(),
        "list": [1, redaction_marker()],
        "plain": {"$attune_secret": False},
    }
    assert marker_paths(config) == ["/db/password", "/a~1b", "/list/1"]


def test_set_at_refuses_a_path_through_a_scalar() -> None:
    with pytest.raises(ExecutionError, match="is not an object or array"):
        set_at({"a": 5}, "/a/b", "v")
    with pytest.raises(ExecutionError, match="past the end"):
        set_at({"a": []}, "/a/3", "v")


# --- restoring secret parameters ----------------------------------------------------


def test_secret_parameters_are_restored_into_nested_config() -> None:
    config: dict[str, Any] = {
        "user": "ann",
        "db": {"password": redaction_marker(), "port": 5432},
        "a/b": redaction_marker(),
        "t~x": redaction_marker(),
        "tokens": ["public", redaction_marker()],
    }
    stored = [
        sealed("db-pw-1", "/db/password"),
        sealed({"k": "v"}, "/a~1b"),
        sealed(7, "/t~0x"),
        sealed("tok-2", "/tokens/1"),
    ]
    params, restored = restore_params(config, stored, KEY)
    assert params == {
        "user": "ann",
        "db": {"password": "db-pw-1", "port": 5432},
        "a/b": {"k": "v"},
        "t~x": 7,
        "tokens": ["public", "tok-2"],
    }
    assert {p for p, _ in restored} == {"/a~1b", "/db/password", "/t~0x", "/tokens/1"}
    assert config["db"]["password"] == redaction_marker()  # the input is not modified


def test_parent_secret_is_restored_before_its_nested_one() -> None:
    stored = [sealed("inner", "/db/password"), sealed({"password": "x", "user": "u"}, "/db")]
    params, _ = restore_params({"db": redaction_marker()}, stored, KEY)
    assert params == {"db": {"password": "inner", "user": "u"}}


def test_a_marker_without_a_stored_value_fails_naming_the_path() -> None:
    config = {"ok": redaction_marker(), "db": {"password": redaction_marker()}}
    with pytest.raises(ExecutionError, match=r"/db/password cannot be restored: no stored"):
        restore_params(config, [sealed("fine", "/ok")], KEY)


def test_an_undecryptable_secret_fails_naming_the_path_not_the_value() -> None:
    stored = [sealed("the-real-password", "/db/password", key=OTHER_KEY)]
    with pytest.raises(SecretDecryptError) as caught:
        restore_params({"db": {"password": redaction_marker()}}, stored, KEY)
    message = str(caught.value)
    assert "/db/password" in message and "different key" in message
    assert "the-real-password" not in message


def test_secret_parameters_without_a_key_fail_naming_the_path() -> None:
    with pytest.raises(
        ConfigError,
        match=r"not set; it is needed to decrypt the secret "
        r"parameter at /password",
    ):
        restore_params({"password": redaction_marker()}, [sealed("pw", "/password")], None)
    with pytest.raises(ConfigError, match=r"too short.*/password"):
        restore_params({"password": redaction_marker()}, [sealed("pw", "/password")], "short")


def test_no_secrets_need_no_key() -> None:
    assert restore_params({"x": 1}, [], None) == ({"x": 1}, [])


def test_seal_then_restore_is_the_identity_and_leaves_only_markers() -> None:
    schema = {
        "type": "object",
        "properties": {
            "user": {"type": "string"},
            "password": {"type": "string", "secret": True},
            "db": {"type": "object", "properties": {"token": {"type": "string", "secret": True}}},
        },
    }
    params = {"user": "ann", "password": "pw-123456", "db": {"token": "tok-654321", "x": 1}}
    config, rows = seal_secret_params(params, schema, KEY)
    assert config == {
        "user": "ann",
        "password": redaction_marker(),
        "db": {"token": redaction_marker(), "x": 1},
    }
    assert "pw-123456" not in json.dumps([config, [r.encrypted_value for r in rows]])
    assert restore_params(config, rows, KEY)[0] == params


# --- keystore -----------------------------------------------------------------------


def test_keystore_action_overrides_pack_overrides_system_by_name() -> None:
    keys = [
        key_row(3, "demo.sleep.token", "action", "action-token"),
        key_row(1, "token", "system", "system-token"),
        key_row(2, "demo.token", "pack", "pack-token"),
        key_row(4, "region", "system", "eu-west-1", encrypted=False),
        key_row(5, "demo.config", "pack", {"a": 1}),
        key_row(6, "someone.token", "identity", "ignored"),
    ]
    run = resolve_run_secrets({}, [], keys, encryption_key=KEY)
    assert run.keystore == {"token": "action-token", "region": "eu-west-1", "config": '{"a":1}'}


def test_an_undecryptable_key_fails_naming_its_ref() -> None:
    keys = [key_row(1, "demo.api_token", "pack", "value-of-key", key=OTHER_KEY)]
    with pytest.raises(SecretDecryptError, match=r"demo\.api_token") as caught:
        resolve_run_secrets({}, [], keys, encryption_key=KEY)
    assert "value-of-key" not in str(caught.value)
    with pytest.raises(ConfigError, match=r"demo\.api_token"):
        resolve_run_secrets({}, [], keys, encryption_key=None)


def test_run_masker_covers_params_every_key_schema_secrets_and_the_key() -> None:
    schema = {"type": "object", "properties": {"plain_pw": {"type": "string", "secret": True}}}
    config = {"pw": redaction_marker(), "plain_pw": "sent-in-clear", "pin": redaction_marker()}
    keys = [
        key_row(1, "api", "system", "api-key-value"),
        key_row(2, "region", "system", "eu-west-1", encrypted=False),
    ]
    run = resolve_run_secrets(
        config,
        [sealed("param-secret", "/pw"), sealed("12", "/pin")],
        keys,
        encryption_key=KEY,
        param_schema=schema,
    )
    text = "param-secret sent-in-clear api-key-value eu-west-1 12 " + KEY
    # a key stored with encrypted = false is delivered as a secret: masked as one too
    assert run.masker.text(text) == "*** *** *** *** 12 ***"
    assert run.too_short == ("/pin",)
    assert run.params["pw"] == "param-secret"
    assert set(run.secret_paths) == {"/pw", "/pin", "/plain_pw"}


# --- schema paths and result redaction ----------------------------------------------


def test_schema_secret_paths_in_json_schema_flat_and_items_forms() -> None:
    nested = {
        "type": "object",
        "properties": {
            "db": {"type": "object", "properties": {"password": {"secret": True}}},
            "a/b": {"secret": True},
            "keys": {"type": "array", "items": {"type": "string", "secret": True}},
            "open": {"type": "string"},
        },
    }
    assert schema_secret_paths(nested) == ["/a~1b", "/db/password", "/keys/*"]
    assert schema_secret_paths(
        {"token": {"type": "string", "secret": True}, "type": {"type": "string"}}
    ) == ["/token"]
    assert schema_secret_paths({"type": "string", "secret": True}) == [""]
    assert schema_secret_paths({"type": "number"}) == []
    assert schema_secret_paths(None) == []


def test_output_schema_secret_paths_are_redacted_and_their_values_masked_elsewhere() -> None:
    schema = {
        "type": "object",
        "properties": {
            "token": {"type": "string", "secret": True},
            "creds": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"pw": {"type": "string", "secret": True}},
                },
            },
        },
    }
    result: dict[str, Any] = {
        "succeeded": False,
        "data": {
            "token": "generated-token",
            "status": "ok",
            "creds": [{"pw": "pw-aaaa", "u": "a"}, {"pw": "pw-bbbb", "u": "b"}],
        },
        "stdout": "made generated-token and pw-bbbb",
        "error": "x generated-token",
    }
    masked, masker = redact_result(result, Masker(), schema)
    assert masked["data"] == {
        "token": MASK,
        "status": "ok",
        "creds": [{"pw": MASK, "u": "a"}, {"pw": MASK, "u": "b"}],
    }
    assert masked["stdout"] == f"made {MASK} and {MASK}"
    assert masked["error"] == f"x {MASK}"
    assert masker.text("generated-token") == MASK
    assert result["data"]["token"] == "generated-token"  # the input is not modified


def test_whole_data_is_redacted_when_the_output_schema_root_is_secret() -> None:
    masked, _ = redact_result(
        {"data": "a-secret-text"}, Masker(), {"type": "string", "secret": True}
    )
    assert masked == {"data": MASK}


# --- masking ------------------------------------------------------------------------

SECRET = 'p@ss/w+rd "q" ü&='


def test_the_plaintext_and_every_common_encoding_are_masked() -> None:
    masker = Masker([SECRET])
    raw = SECRET.encode()
    forms = [
        SECRET,
        json.dumps(SECRET)[1:-1],
        json.dumps(SECRET, ensure_ascii=False)[1:-1],
        json.dumps(json.dumps(SECRET)[1:-1])[1:-1],
        quote(SECRET),
        quote(SECRET, safe=""),
        quote_plus(SECRET),
        base64.b64encode(raw).decode(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    ]
    for form in forms:
        assert masker.text(f"<{form}>") == f"<{MASK}>", form
        assert masker.bytes(f"<{form}>".encode()) == f"<{MASK}>".encode(), form


@pytest.mark.parametrize("prefix", [0, 1, 2, 3, 4, 5])
@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
def test_base64_of_a_secret_inside_longer_data_is_masked_at_every_alignment(
    prefix: int, encode: Any
) -> None:
    secret = "correct horse battery staple"
    data = b"x" * prefix + secret.encode() + b"-tail"
    encoded = encode(data).decode()
    masked = Masker([secret]).text(encoded)
    assert MASK in masked
    # No run of 8 characters that depends only on the secret's bytes survives.
    skip = (3 - prefix % 3) % 3
    aligned = encode(secret.encode()[skip : skip + 18]).decode()
    assert aligned not in masked


def test_values_shorter_than_four_characters_are_not_masked() -> None:
    masker = Masker(["abc", "", "abcd"])
    assert masker.text("abc abcd") == f"abc {MASK}"
    assert not Masker(["ab"])


def test_a_secret_containing_another_is_masked_whole() -> None:
    assert Masker(["pass", "password123"]).text("password123 pass") == f"{MASK} {MASK}"


def test_json_is_masked_in_keys_values_and_numbers() -> None:
    masker = Masker(["s3cr3t-value", "987654"])
    value = {"s3cr3t-value": ["x s3cr3t-value y", 987654, 12, True, None], "n": 1.5}
    assert masker.json(value) == {MASK: [f"x {MASK} y", MASK, 12, True, None], "n": 1.5}


@pytest.mark.parametrize("seed", range(20))
def test_stream_masking_catches_secrets_split_across_chunks(seed: int) -> None:
    secret = "split-me-secret-ü"
    masker = Masker([secret])
    rng = random.Random(seed)
    data = b"".join(
        rng.choice(
            [b"noise ", secret.encode(), base64.b64encode(secret.encode()), b"\n", "ü".encode()]
        )
        for _ in range(40)
    )
    stream = StreamMasker(masker)
    out, pos = b"", 0
    while pos < len(data):
        step = rng.randint(1, 9)
        out += stream.feed(data[pos : pos + step])
        pos += step
    out += stream.flush()
    assert out == masker.bytes(data)
    assert secret.encode() not in out


def test_stream_masking_passes_through_when_there_is_nothing_to_mask() -> None:
    stream = StreamMasker(Masker())
    assert stream.feed(b"abc") == b"abc" and stream.flush() == b""


def test_log_lines_are_masked_while_a_run_is_active_and_only_then() -> None:
    out = io.StringIO()
    handler = configure_logging("text", "INFO", out)
    logger = logging.getLogger("attune.test.secrets")
    try:
        with masking_logs(Masker(["run-one-secret"])), masking_logs(Masker(["run-two-secret"])):
            log_event(logger, "e", a="run-one-secret", b='{"x": "run-two-secret"}')
            logger.info("plain %s", "run-two-secret")
        log_event(logger, "after", a="run-one-secret")
    finally:
        logging.getLogger().removeHandler(handler)
    first, second, third = out.getvalue().splitlines()
    assert "run-one-secret" not in first and "run-two-secret" not in first
    assert second.endswith(f"plain {MASK}")
    assert third.endswith("a=run-one-secret")


async def test_output_guard_masks_the_stream_the_result_and_rewrites_logs(
    tmp_path: Path,
) -> None:
    written: dict[str, bytes] = {"stdout": b"", "stderr": b""}

    async def sink(stream: str, chunk: bytes) -> None:
        written[stream] += chunk
        with open(tmp_path / f"{stream}.log", "ab") as handle:
            handle.write(chunk)

    schema = {"type": "object", "properties": {"token": {"type": "string", "secret": True}}}
    async with OutputGuard(Masker(["param-secret"]), sink, schema, tmp_path) as guard:
        for piece in (b"a param-", b"secret b ", b"new-", b"token-1"):
            await guard.write("stdout", piece)
        await guard.write("stderr", b"param-secret")
        result = await guard.redact(
            {"data": {"token": "new-token-1"}, "stdout": "a param-secret b new-token-1"}
        )
    assert written["stdout"] == f"a {MASK} b new-token-1".encode()  # live: not known yet
    assert (tmp_path / "stdout.log").read_bytes() == f"a {MASK} b {MASK}".encode()
    assert (tmp_path / "stderr.log").read_bytes() == MASK.encode()
    assert result == {"data": {"token": MASK}, "stdout": f"a {MASK} b {MASK}"}


# --- masking gaps: failed runs, cuts at the output cap -----------------------------

OUT_SCHEMA = {"type": "object", "properties": {"token": {"type": "string", "secret": True}}}


@pytest.mark.parametrize(
    "stdout",
    [
        '{"token": "tok-generated-1"}\n',
        'progress\n{"token": "tok-generated-1"}\n',
        '{"a": 1}\n{"token": "tok-generated-1"}\n{"b": 2}\n',
        "token: tok-generated-1\n",
    ],
    ids=["json", "json-last-line", "jsonl", "yaml"],
)
def test_a_failed_run_printing_an_output_schema_secret_is_masked(stdout: str) -> None:
    result = {
        "succeeded": False,
        "exit_code": 1,
        "stdout": stdout + "then it broke: tok-generated-1",
        "stderr": "boom tok-generated-1",
        "error": "boom tok-generated-1",
    }
    masked, masker = redact_result(result, Masker(), OUT_SCHEMA)
    assert "tok-generated-1" not in json.dumps(masked)
    assert masker.text("tok-generated-1") == MASK


def test_a_secret_cut_in_two_by_the_output_cap_leaves_no_prefix() -> None:
    secret = "s3cret-value-0123456789"
    notice = "\n\n[OUTPUT TRUNCATED: stdout exceeded size limit]\n"
    for keep in range(1, len(secret)):
        result = {"stdout": "log: " + secret[:keep] + notice, "stdout_truncated": True}
        masked, _ = redact_result(result, Masker([secret]), None)
        assert masked["stdout"] == "log: " + MASK + notice, keep
    untruncated, _ = redact_result({"stdout": "log: s3c"}, Masker([secret]), None)
    assert untruncated["stdout"] == "log: s3c"  # a normal end is not a cut


def test_encoded_forms_cut_by_the_cap_leave_no_prefix() -> None:
    secret = 'p@ss/w+rd "q" ü&='
    masker = Masker([secret])
    for form in (quote(secret, safe=""), base64.b64encode(secret.encode()).decode()):
        assert masker.cut_text("x " + form[: len(form) // 2]) == "x " + MASK
        assert masker.cut_bytes(("x " + form[:5]).encode()) == ("x " + MASK).encode()


def test_stream_masker_flush_at_a_cut_masks_the_trailing_prefix() -> None:
    masker = Masker(["s3cret-value-0123456789"])
    stream = StreamMasker(masker)
    out = stream.feed(b"a" * 100 + b"s3cret-va")
    assert out + stream.flush(cut=True) == b"a" * 100 + MASK.encode()
    stream = StreamMasker(masker)
    out = stream.feed(b"a" * 100 + b"s3cret-va")
    assert out + stream.flush() == b"a" * 100 + b"s3cret-va"


async def test_output_guard_masks_a_prefix_where_the_stream_was_cut(tmp_path: Path) -> None:
    written = b""

    async def sink(stream: str, chunk: bytes) -> None:
        nonlocal written
        written += chunk

    async with OutputGuard(Masker(["s3cret-value-0123456789"]), sink, None) as guard:
        await guard.write("stdout", b"x" * 50 + b"s3cret-val")
        await guard.redact({"stdout": "...", "stdout_truncated": True})
    assert written == b"x" * 50 + MASK.encode()


# --- the helper Python actions import in the sandbox --------------------------------


@pytest.fixture
def helper(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Any]:
    spec = importlib.util.spec_from_file_location(
        "attune_secrets_helper", REPO / "sandbox" / "attune_secrets.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps({"api_token": "tok", "cfg": {"a": 1}}))
    monkeypatch.setenv("ATTUNE_SECRETS_FILE", str(path))
    yield module


def test_sandbox_helper_reads_the_secrets_file(
    helper: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert helper.attune_secret("api_token") == "tok"
    assert json.loads(helper.attune_secret("cfg")) == {"a": 1}
    with pytest.raises(KeyError, match="no secret named 'missing'"):
        helper.attune_secret("missing")
    monkeypatch.delenv("ATTUNE_SECRETS_FILE")
    assert helper.attune_secrets() == {}
