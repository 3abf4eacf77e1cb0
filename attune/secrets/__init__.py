"""Secrets (docs/protocol.md §8): the shared encryption format, restoring secret parameters,
keystore values for a run, and masking them in everything that leaves the run.

    crypto     AES-256-GCM token format shared with the API (pure)
    pointer    JSON pointers, secret markers, `secret: true` schema paths (pure)
    records    KeyRecord / StoredSecret rows as the DB adapter returns them
    resolve    restore + keystore + masker for one execution (pure) and its DB step
    masking    Masker, StreamMasker, result redaction, the log redactor, OutputGuard
"""

from attune.secrets.crypto import (
    MIN_KEY_CHARS,
    SecretDecryptError,
    check_key,
    decrypt_value,
    encrypt_value,
    key_hash,
)
from attune.secrets.masking import (
    MASK,
    MIN_MASK_CHARS,
    Masker,
    OutputGuard,
    StreamMasker,
    encodings,
    masking_logs,
    redact_result,
)
from attune.secrets.pointer import is_marker, marker_paths, redaction_marker, schema_secret_paths
from attune.secrets.records import ENTITY_EXECUTION_CONFIG, KeyRecord, SecretRows, StoredSecret
from attune.secrets.resolve import (
    RunSecrets,
    load_run_secrets,
    resolve_run_secrets,
    restore_params,
    seal_secret_params,
    sealable_paths,
)

__all__ = [
    "ENTITY_EXECUTION_CONFIG",
    "MASK",
    "MIN_KEY_CHARS",
    "MIN_MASK_CHARS",
    "KeyRecord",
    "Masker",
    "OutputGuard",
    "RunSecrets",
    "SecretDecryptError",
    "SecretRows",
    "StoredSecret",
    "StreamMasker",
    "check_key",
    "decrypt_value",
    "encodings",
    "encrypt_value",
    "is_marker",
    "key_hash",
    "load_run_secrets",
    "marker_paths",
    "masking_logs",
    "redact_result",
    "redaction_marker",
    "resolve_run_secrets",
    "restore_params",
    "schema_secret_paths",
    "seal_secret_params",
    "sealable_paths",
]
