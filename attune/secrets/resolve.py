"""What one execution's secrets are: restored parameters, keystore values, a masker.

`resolve_run_secrets` is pure: it takes the rows (`execution_secret_value` for the
execution, the keystore entries visible to its action) and the configured key, and
either returns everything the run needs or raises an error that names the parameter
path or key ref at fault, never a value. `load_run_secrets` is the thin I/O step the
pipeline calls: the rows the claim read along with the execution (or one DB read
when there are none), then the pure part.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from attune.errors import ExecutionError
from attune.secrets.crypto import check_key, compact_json, decrypt_value, encrypt_value, key_hash
from attune.secrets.masking import MIN_MASK_CHARS, Masker, secret_texts
from attune.secrets.pointer import (
    marker_paths,
    redaction_marker,
    replace_paths,
    schema_secret_paths,
    set_at,
    split,
    values_at,
)
from attune.secrets.records import OWNER_TYPES, KeyRecord, SecretRows, StoredSecret

if TYPE_CHECKING:
    from attune.db import Database
    from attune.models import Action, Execution


@dataclass(frozen=True)
class RunSecrets:
    """The secrets of one run.

    - `params`: `execution.config` with every secret marker replaced by its value.
    - `keystore`: key name -> value text (JSON text for non-strings), for the sandbox's
      secrets file; system keys, then the action's pack's, then the action's own, a
      later owner overriding an earlier one by name.
    - `masker`: every secret value of the run (parameters, encrypted keys, the worker's
      own encryption key) for output, result and log masking.
    - `too_short`: where a secret too short to be masked came from (path or key ref).
    """

    params: dict[str, Any]
    keystore: dict[str, str] = field(default_factory=dict)
    masker: Masker = field(default_factory=Masker)
    secret_paths: tuple[str, ...] = ()
    too_short: tuple[str, ...] = ()


def restore_params(
    config: Mapping[str, Any] | None, stored: Sequence[StoredSecret], encryption_key: str | None
) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """Config with the stored secrets put back; also (path, value) for each of them.

    Parents before children (`/db` then `/db/password`), so a nested secret is not
    overwritten by its enclosing one. A marker left without a stored value is an
    error: delivering `{"$attune_secret": true}` as a password helps nobody.
    """
    params: Any = dict(config or {})
    restored: list[tuple[str, Any]] = []
    for secret in sorted(stored, key=lambda s: (len(split(s.json_path)), s.json_path)):
        path = secret.json_path or "/"
        what = f"the secret parameter at {path}"
        key = check_key(encryption_key, purpose=f"decrypt {what}")
        value = decrypt_value(
            key, secret.encrypted_value, key_hash=secret.encryption_key_hash, what=what
        )
        params = set_at(params, secret.json_path, value)
        restored.append((path, value))
    if not isinstance(params, dict):
        raise ExecutionError(
            "the secret parameters replace the whole config with a "
            "non-object; parameters must be a JSON object"
        )
    missing = marker_paths(params)
    if missing:
        raise ExecutionError(
            f"the secret parameter at {missing[0] or '/'} cannot be restored: no stored "
            f"value for it in execution_secret_value"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    return params, restored


def keystore_values(
    keys: Sequence[KeyRecord], encryption_key: str | None
) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """name -> value by owner precedence; also (ref, value) of each key used (to mask)."""
    order = {owner: rank for rank, owner in enumerate(OWNER_TYPES)}
    chosen: dict[str, KeyRecord] = {}
    for key in sorted(
        (k for k in keys if k.owner_type in order),
        key=lambda k: (order[k.owner_type], k.name, k.id),
    ):
        chosen[key.name] = key
    values: dict[str, Any] = {}
    secret: list[tuple[str, Any]] = []
    for name, key in sorted(chosen.items()):
        if key.encrypted:
            what = f"the keystore secret {key.ref!r}"
            enc = check_key(encryption_key, purpose=f"decrypt {what}")
            values[name] = decrypt_value(
                enc, key.value, key_hash=key.encryption_key_hash, what=what
            )
        else:
            values[name] = key.value
        # Stored in clear or not, a key is delivered as a secret, so it is masked as one.
        secret.append((key.ref, values[name]))
    return values, secret


def resolve_run_secrets(
    config: Mapping[str, Any] | None,
    stored: Sequence[StoredSecret],
    keys: Sequence[KeyRecord],
    *,
    encryption_key: str | None,
    param_schema: Any = None,
) -> RunSecrets:
    """Everything secret about one run, or an ExecutionError/ConfigError naming the culprit.

    Parameters the schema marks `secret: true` that arrived in plain text (an older
    executor, `attune submit`) are masked in the output as well.
    """
    params, restored = restore_params(config, stored, encryption_key)
    values, delivered_keys = keystore_values(keys, encryption_key)
    sources: list[tuple[str, Any]] = list(restored)
    schema_paths = schema_secret_paths(param_schema)
    restored_paths = {path for path, _ in restored}
    for path in schema_paths:
        if path not in restored_paths:
            sources += [(path, v) for v in values_at(params, [path])]
    sources += delivered_keys
    texts: list[str] = []
    too_short: list[str] = []
    for where, value in sources:
        found = secret_texts(value)
        if any(len(t) < MIN_MASK_CHARS for t in found):
            too_short.append(where)
        texts += found
    if encryption_key:
        texts.append(encryption_key)
    keystore = {name: v if isinstance(v, str) else compact_json(v) for name, v in values.items()}
    return RunSecrets(
        params=params,
        keystore=keystore,
        masker=Masker(texts),
        secret_paths=tuple(sorted({p for p, _ in restored} | set(schema_paths))),
        too_short=tuple(dict.fromkeys(too_short)),
    )


async def load_run_secrets(
    db: Database,
    execution: Execution,
    action: Action,
    encryption_key: str | None,
    rows: SecretRows | None = None,
) -> RunSecrets:
    """The I/O step: the rows (read with the claim, else one DB read), then the pure part."""
    if rows is None:
        stored, keys = await db.run_secret_rows(execution.id, action.id)
    else:
        stored, keys = rows.stored, rows.keys
    return resolve_run_secrets(
        execution.config,
        stored,
        keys,
        encryption_key=encryption_key,
        param_schema=action.param_schema,
    )


# --- the API's side, for `attune submit` and tests ------------------------------------


def sealable_paths(params: Mapping[str, Any], param_schema: Any) -> list[str]:
    """Secret paths of the schema that hold a value in `params`: what must be sealed.

    Items of a list (`/keys/*`) are sealed with the list, if the list itself is secret.
    """
    return [
        path
        for path in schema_secret_paths(param_schema)
        if "*" not in split(path) and values_at(params, [path])
    ]


def seal_secret_params(
    params: Mapping[str, Any], param_schema: Any, encryption_key: str
) -> tuple[dict[str, Any], list[StoredSecret]]:
    """Do what the API does before it stores an execution: markers in, values sealed.

    Returns the config to store (secret values replaced by markers) and the rows for
    `execution_secret_value`. Only paths present in `params` are sealed.
    """
    key = check_key(encryption_key, purpose="encrypt secret parameters")
    digest = key_hash(key)
    config: Any = dict(params)
    rows: list[StoredSecret] = []
    for path in sealable_paths(params, param_schema):
        for value in values_at(config, [path]):
            rows.append(
                StoredSecret(
                    json_path=path,
                    encrypted_value=encrypt_value(key, value),
                    encryption_key_hash=digest,
                )
            )
            config = replace_paths(config, [path], redaction_marker())
    return config, rows
