"""The secret format shared with the Attune API (docs/protocol.md §8), byte for byte.

    AES key      = SHA-256(key string, UTF-8)
    token        = base64 (standard, padded) of nonce(12 random bytes) || ciphertext || tag(16)
    plaintext    = the value as compact JSON (UTF-8)
    key hash     = lowercase hex SHA-256 of the key string, stored beside each token

The key hash lets a worker configured with the wrong key say so plainly ("encrypted
with a different key") instead of reporting a GCM tag failure nobody can act on.
Everything here is pure; no error message ever includes a plaintext or the key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from attune.errors import ConfigError, ExecutionError

MIN_KEY_CHARS = 32
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_SETTING = "security.encryption_key (ATTUNE__SECURITY__ENCRYPTION_KEY)"


class SecretDecryptError(ExecutionError):
    """A stored secret cannot be decrypted: wrong key, tampered or malformed token."""


def check_key(key: str | None, *, purpose: str) -> str:
    """The configured key, or a ConfigError that says what is wrong and what needed it.

    `purpose` completes "the key is needed to ...", so the operator learns which secret
    could not be handled without the message ever showing the key.
    """
    if not key:
        raise ConfigError(f"{KEY_SETTING} is not set; it is needed to {purpose}")
    if len(key) < MIN_KEY_CHARS:
        raise ConfigError(
            f"{KEY_SETTING} is too short ({len(key)} characters, at least {MIN_KEY_CHARS} "
            f"required); it is needed to {purpose}"
        )
    return key


def _sha256_hex(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_hash(key: str) -> str:
    """The `encryption_key_hash` column value for a key."""
    return _sha256_hex(key)


def _aes(key: str) -> AESGCM:
    return AESGCM(hashlib.sha256(key.encode("utf-8")).digest())


def compact_json(value: Any) -> str:
    """The plaintext form: compact, UTF-8 (not \\u-escaped), as serde_json writes it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encrypt_value(key: str, value: Any, *, nonce: bytes | None = None) -> str:
    """Encrypt a JSON value; returns the base64 token stored (as a JSON string) in jsonb.

    `nonce` exists for format tests only; real callers let it default to random bytes
    (reusing a GCM nonce under one key breaks both confidentiality and integrity).
    """
    check_key(key, purpose="encrypt a secret")
    if nonce is None:
        nonce = os.urandom(NONCE_BYTES)
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"nonce must be {NONCE_BYTES} bytes")
    try:
        plaintext = compact_json(value).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ExecutionError(f"secret value is not JSON: {type(exc).__name__}") from None
    sealed = _aes(key).encrypt(nonce, plaintext, None)  # ciphertext || tag
    return base64.b64encode(nonce + sealed).decode("ascii")


def decrypt_value(
    key: str, token: Any, *, key_hash: str | None = None, what: str = "secret"
) -> Any:
    """Decrypt a token back to its JSON value; SecretDecryptError names `what` only.

    `key_hash` is the stored `encryption_key_hash`: when given and it differs from the
    configured key's hash, the failure says the secret was encrypted with another key.
    """
    check_key(key, purpose=f"decrypt {what}")
    if key_hash is not None and key_hash.strip().lower() != _sha256_hex(key):
        raise SecretDecryptError(
            f"{what} was encrypted with a different key (encryption_key_hash mismatch: "
            f"the configured {KEY_SETTING} is not the one the API used)"
        )
    if not isinstance(token, str):
        raise SecretDecryptError(
            f"{what}: stored value is not an encrypted token (expected a base64 JSON string)"
        )
    try:
        raw = base64.b64decode(token.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise SecretDecryptError(f"{what}: stored token is not valid base64") from None
    if len(raw) < NONCE_BYTES + TAG_BYTES:
        raise SecretDecryptError(f"{what}: stored token is too short to be AES-GCM")
    try:
        plaintext = _aes(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], None)
    except InvalidTag:
        raise SecretDecryptError(
            f"{what} cannot be decrypted: wrong key or the stored token was altered"
        ) from None
    try:
        return json.loads(plaintext.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise SecretDecryptError(f"{what}: decrypted data is not JSON") from None
