"""The pack metadata format: every key of `pack.yaml` and `actions/*.yaml`, typed.

The reference registers packs from loosely read YAML, so packs written for it use
keys this worker does not act on (worker placement, retention, MCP access...). All of
them are accepted and typed here so such packs load unchanged and the rows written
match the reference's; a key that no version of the format defines is still an error,
with a did-you-mean, because a misspelt `timout` would otherwise vanish silently.
docs/packs.md lists every key and what the worker does with it.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from attune.errors import InputError
from attune.models import OutputFormat, ParameterDelivery, ParameterFormat

_T = TypeVar("_T")

PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
# `network: egress`: the action gets the operator's egress network (docs/network.md).
NetworkMode = Literal["none", "egress"]

# runner_type (any case) -> the runtime this worker runs it with; others load, but
# have no runtime row here (the reference resolves them against its runtime catalog).
RUNNER_RUNTIMES = {
    "python": "python",
    "python3": "python",
    "shell": "shell",
    "bash": "shell",
    "sh": "shell",
}


class ActionSpec(msgspec.Struct, frozen=True, kw_only=True):
    """One validated `actions/<name>.yaml`; field names follow the YAML, not the DB."""

    ref: str
    label: str | None = None
    description: str | None = None
    enabled: bool = True
    runner_type: str = "shell"
    runtime_version: str | None = None
    entry_point: str = ""
    workflow_file: str | None = None
    parameter_delivery: ParameterDelivery = "stdin"
    parameter_format: ParameterFormat = "json"
    output_format: OutputFormat = "text"
    parameters: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None  # the older name of `output`
    tags: list[str] = msgspec.field(default_factory=list)
    default_execution_permission_set_refs: list[str] = msgspec.field(default_factory=list)
    required_worker_runtimes: dict[str, Any] | list[Any] | None = None
    worker_selector: dict[str, Any] | None = None
    worker_tolerations: list[Any] | None = None
    worker_affinity: dict[str, Any] | None = None
    accesses_mcp: bool = False
    reference_visibility: str | None = None
    reference_allowed_pack_refs: list[str] = msgspec.field(default_factory=list)
    log_retention_policy: str | None = None
    log_retention_limit: int | None = None
    artifact_retention_policy: str | None = None
    artifact_retention_limit: int | None = None
    timeout_seconds: PositiveInt | None = None
    timeout: PositiveInt | None = None  # this worker's first format; same as timeout_seconds
    network: NetworkMode | None = None  # this worker's key; unset: the pack's `network`

    @property
    def name(self) -> str:
        """The part of the ref after `<pack_ref>.`."""
        return self.ref.split(".", 1)[1]

    @property
    def display_label(self) -> str:
        """`label`, or one made from the name the way the reference does ("my_act" -> "My Act")."""
        if self.label and self.label.strip():
            return self.label
        return " ".join(w.capitalize() for w in self.name.replace("-", "_").split("_") if w)

    @property
    def runtime(self) -> str | None:
        """The runtime this worker runs it with, None for workflows and foreign runners."""
        if self.workflow_file is not None:
            return None
        return RUNNER_RUNTIMES.get(self.runner_type.lower())

    @property
    def out_schema(self) -> dict[str, Any] | None:
        return self.output if self.output is not None else self.output_schema

    @property
    def effective_timeout(self) -> int | None:
        return self.timeout_seconds if self.timeout_seconds is not None else self.timeout


class PackYaml(msgspec.Struct, frozen=True, kw_only=True):
    """`pack.yaml` as written; legacy names are folded by `pack_fields` first."""

    ref: str
    version: str
    label: str | None = None
    description: str | None = None
    author: str | None = None
    email: str | None = None
    system: bool = False
    enabled: bool = True
    conf_schema: dict[str, Any] = msgspec.field(default_factory=dict)
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    meta: dict[str, Any] = msgspec.field(default_factory=dict)
    tags: list[str] = msgspec.field(default_factory=list)
    runtime_deps: list[str] = msgspec.field(default_factory=list)
    dependencies: list[str] = msgspec.field(default_factory=list)
    testing: dict[str, Any] = msgspec.field(default_factory=dict)
    worker_selector: dict[str, Any] = msgspec.field(default_factory=dict)
    worker_tolerations: list[Any] = msgspec.field(default_factory=list)
    worker_affinity: dict[str, Any] = msgspec.field(default_factory=dict)
    network: NetworkMode = "none"  # this worker's key: the default of the pack's actions


# Legacy pack.yaml names and the canonical key each stands for (reference pack_manifest).
PACK_LEGACY_ALIASES = {
    "name": "label",
    "config_schema": "conf_schema",
    "metadata": "meta",
    "keywords": "tags",
}
ACTION_KEYS = frozenset(ActionSpec.__struct_fields__)
PACK_KEYS = frozenset(PackYaml.__struct_fields__) | PACK_LEGACY_ALIASES.keys()


def unknown_key_error(file: Path, key: str, known: frozenset[str]) -> InputError:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return InputError(f"{file}: unknown key {key!r}{hint}")


def _check_keys(data: Any, file: Path, known: frozenset[str]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InputError(f"{file}: must be a YAML mapping")
    for key in data:
        if not isinstance(key, str):
            raise InputError(f"{file}: key {key!r}: keys must be strings")
        if key not in known:
            raise unknown_key_error(file, key, known)
    return data


def _convert(data: dict[str, Any], typ: type[_T], file: Path) -> _T:
    try:
        return msgspec.convert(data, typ)
    except msgspec.ValidationError as exc:
        # msgspec names the field: "Expected `str`, got `int` - at `$.label`".
        raise InputError(f"{file}: {exc}") from None


def pack_fields(data: Any, file: Path) -> PackYaml:
    """Decode pack.yaml: strict keys, legacy names folded into the canonical ones."""
    raw = dict(_check_keys(data, file, PACK_KEYS))
    for legacy, canonical in PACK_LEGACY_ALIASES.items():
        if legacy not in raw:
            continue
        value = raw.pop(legacy)
        if canonical in raw and raw[canonical] != value:
            raise InputError(
                f"{file}: {canonical!r} and its legacy name {legacy!r} have different "
                "values; remove one or make them equal"
            )
        raw[canonical] = value
    for key in ("conf_schema", "config", "meta", "testing"):
        if raw.get(key) is None and key in raw:
            raw[key] = {}  # `config:` with nothing under it
    spec = _convert(raw, PackYaml, file)
    deps = spec.meta.get("python_dependencies", [])
    if not isinstance(deps, list) or not all(isinstance(d, str) and d.strip() for d in deps):
        raise InputError(f"{file}: meta.python_dependencies: must be a list of requirement strings")
    return spec


def action_fields(data: Any, file: Path) -> ActionSpec:
    """Decode one action YAML: strict keys, typed values."""
    raw = _check_keys(data, file, ACTION_KEYS)
    spec = _convert(raw, ActionSpec, file)
    if (
        spec.output is not None
        and spec.output_schema is not None
        and spec.output != spec.output_schema
    ):
        raise InputError(f"{file}: 'output' and its older name 'output_schema' differ; keep one")
    if None not in (spec.timeout, spec.timeout_seconds) and spec.timeout != spec.timeout_seconds:
        raise InputError(f"{file}: 'timeout' and 'timeout_seconds' differ; keep one")
    if spec.workflow_file is None and not spec.entry_point:
        raise InputError(f"{file}: entry_point: required (or workflow_file for a workflow)")
    return spec
