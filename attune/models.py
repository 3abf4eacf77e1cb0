"""Rows the worker reads from PostgreSQL, as frozen Structs.

These are what `attune.db` hands to the rest of the code, so nothing outside the DB
adapter ever touches a psycopg row. They carry only the columns the worker uses
(docs/protocol.md §5); the schema holds more.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import msgspec

if TYPE_CHECKING:  # attune.secrets imports this module; Claim is built, never decoded
    from attune.secrets.records import SecretRows

# The enumerated columns of `action` (CHECK constraints in the schema, docs/protocol.md §5),
# shared by pack metadata, the run spec and output parsing.
ParameterDelivery = Literal["stdin", "file"]
ParameterFormat = Literal["dotenv", "json", "yaml"]
OutputFormat = Literal["text", "json", "yaml", "jsonl"]


class Action(msgspec.Struct, frozen=True, kw_only=True):
    """An action joined with its pack ref and its runtime's lowercased name.

    `runtime_name` is None when the action has no runtime row; the pipeline then
    cannot pick a sandbox profile and fails the run with a clear reason.
    """

    id: int
    ref: str
    pack_ref: str
    entrypoint: str
    runtime_name: str | None
    timeout_seconds: int | None
    parameter_delivery: ParameterDelivery
    parameter_format: ParameterFormat
    output_format: OutputFormat
    param_schema: dict[str, Any] | None
    out_schema: dict[str, Any] | None
    enabled: bool = True
    network: str = "none"  # "egress": needs a worker that offers egress


class Execution(msgspec.Struct, frozen=True, kw_only=True):
    """One execution row; `action` is None once its action was deleted (ON DELETE SET NULL)."""

    id: int
    action: int | None
    action_ref: str
    config: dict[str, Any] | None
    env_vars: dict[str, Any] | None
    worker: int | None
    status: str
    result: Any
    started_at: datetime | None
    timeout_seconds: int | None
    created: datetime


class Worker(msgspec.Struct, frozen=True, kw_only=True):
    """A worker row plus `running`, its count of executions in status `running`."""

    id: int
    name: str
    worker_type: str
    status: str
    capabilities: dict[str, Any]
    last_heartbeat: datetime | None
    running: int


class Claim(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of the scheduled -> running compare-and-set.

    - `claimed`: this call moved the row to `running`; the caller must run it.
    - `status`: the row's status after the call (`running` when claimed), None if no
      such execution exists.
    - `execution`: the row as it is now (None if it does not exist), so a caller that
      lost the race can still see who has it and in which state.
    - `action`: loaded only when claimed; None if the action row is gone.
    - `secrets`: the secret rows of the run, read with the claim (only with an action).
    """

    claimed: bool
    status: str | None
    execution: Execution | None
    action: Action | None
    secrets: SecretRows | None = None
