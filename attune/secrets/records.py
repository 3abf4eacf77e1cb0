"""Rows of the `key` and `execution_secret_value` tables, as the DB adapter returns them."""

from __future__ import annotations

from typing import Any

import msgspec

OWNER_TYPES = ("system", "pack", "action")  # the owners whose keys reach an action
ENTITY_EXECUTION_CONFIG = "execution_config"


class KeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One keystore entry. `value` is the JSON value, or the token when `encrypted`."""

    id: int
    ref: str
    owner_type: str
    owner: str | None = None
    owner_pack_ref: str | None = None
    owner_action_ref: str | None = None
    name: str
    encrypted: bool
    encryption_key_hash: str | None = None
    value: Any = None


class StoredSecret(msgspec.Struct, frozen=True, kw_only=True):
    """One encrypted secret parameter of an execution, at a JSON pointer of its config."""

    json_path: str
    encrypted_value: Any
    encryption_key_hash: str | None = None


class SecretRows(msgspec.Struct, frozen=True, kw_only=True):
    """What one run's secrets are made of, as stored: its sealed parameters, its keys."""

    stored: list[StoredSecret]
    keys: list[KeyRecord]
