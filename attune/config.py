"""The worker's configuration: strict Structs, one YAML file, `ATTUNE__` env overrides.

Precedence, lowest first: field defaults (which reach the local services with no config
at all), the YAML file, `ATTUNE__SECTION__KEY` environment variables, then explicit
overrides (CLI flags). Every source is checked the same way, and a typo anywhere is an
error rather than a silently ignored setting: a worker that quietly runs with the wrong
concurrency or the wrong database is worse than one that refuses to start.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
import socket
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec

from attune.errors import ConfigError

ENV_PREFIX = "ATTUNE__"
_SEP = "__"
_REDACTED = "***"


class DatabaseConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """PostgreSQL connection and pool sizing."""

    url: Annotated[str, msgspec.Meta(description="PostgreSQL connection URL")] = (
        "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    pool_min: Annotated[int, msgspec.Meta(ge=0, description="connections kept open")] = 1
    pool_max: Annotated[int, msgspec.Meta(ge=1, description="most connections open")] = 4
    connect_timeout: Annotated[
        float, msgspec.Meta(gt=0, description="seconds to wait for a connection")
    ] = 5.0


class MessageQueueConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """RabbitMQ connection."""

    url: Annotated[str, msgspec.Meta(description="AMQP URL")] = (
        "amqp://guest:guest@127.0.0.1:5672/%2F"
    )
    reconnect_interval: Annotated[
        float, msgspec.Meta(gt=0, description="seconds between reconnect attempts")
    ] = 1.5


class WorkerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Identity and capacity of this worker as registered in the `worker` table."""

    name: Annotated[
        str | None, msgspec.Meta(description="unique worker name; unset: worker-<hostname>")
    ] = None
    worker_type: Annotated[
        Literal["local", "remote", "container"], msgspec.Meta(description="registered type")
    ] = "local"
    runtime_id: Annotated[int | None, msgspec.Meta(description="registered runtime id")] = None
    host: Annotated[str | None, msgspec.Meta(description="registered host")] = None
    port: Annotated[
        Annotated[int, msgspec.Meta(ge=1, le=65535)] | None,
        msgspec.Meta(description="registered port"),
    ] = None
    max_concurrent_tasks: Annotated[
        int, msgspec.Meta(ge=1, description="executions run at once (and AMQP prefetch)")
    ] = 10
    heartbeat_interval: Annotated[
        float, msgspec.Meta(gt=0, description="seconds between heartbeats")
    ] = 30.0
    task_timeout: Annotated[
        int, msgspec.Meta(ge=1, description="default execution timeout, seconds")
    ] = 300
    shutdown_timeout: Annotated[
        float, msgspec.Meta(ge=0, description="seconds running executions get on shutdown")
    ] = 30.0
    metrics_port: Annotated[
        Annotated[int, msgspec.Meta(ge=0, le=65535)] | None,
        msgspec.Meta(description="serve Prometheus metrics at :PORT/metrics; unset: off"),
    ] = None

    def effective_name(self, hostname: str | None = None) -> str:
        """The registration key: same name, same worker row, same queues (docs/protocol.md §6)."""
        if self.name:
            return self.name
        return f"worker-{hostname if hostname is not None else socket.gethostname()}"


class SandboxConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where runtime profiles and per-run scratch directories live."""

    profiles_dir: Annotated[
        str | None, msgspec.Meta(description="runtime profiles; unset: the bundled profiles/")
    ] = None
    run_dir: Annotated[str, msgspec.Meta(description="per-execution scratch directories")] = (
        "/var/lib/attune/runs"
    )
    slot_uid_base: Annotated[
        int, msgspec.Meta(ge=1, description="first uid of the per-slot sandbox users")
    ] = 100000
    allow_unsafe: Annotated[
        bool, msgspec.Meta(description="run even when the host lacks sandbox features")
    ] = False

    def effective_profiles_dir(self) -> Path:
        """Resolved lazily so an installed worker finds the profiles shipped beside it."""
        if self.profiles_dir:
            return Path(self.profiles_dir)
        import attune

        return Path(attune.__file__).resolve().parent.parent / "profiles"


class SecurityConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Secret handling (docs/protocol.md §8)."""

    encryption_key: Annotated[
        str | None, msgspec.Meta(description="key shared with the API, >= 32 characters")
    ] = None


class ArtifactsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Retention of per-execution artifact directories."""

    retention_days: Annotated[
        float, msgspec.Meta(ge=0, description="days an artifact directory is kept")
    ] = 7.0
    max_count: Annotated[int, msgspec.Meta(ge=0, description="most artifact directories kept")] = (
        1000
    )


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The whole configuration; sections are Structs, a few paths sit at the top level."""

    database: DatabaseConfig = msgspec.field(default_factory=DatabaseConfig)
    message_queue: MessageQueueConfig = msgspec.field(default_factory=MessageQueueConfig)
    worker: WorkerConfig = msgspec.field(default_factory=WorkerConfig)
    sandbox: SandboxConfig = msgspec.field(default_factory=SandboxConfig)
    security: SecurityConfig = msgspec.field(default_factory=SecurityConfig)
    artifacts: ArtifactsConfig = msgspec.field(default_factory=ArtifactsConfig)
    packs_base_dir: Annotated[str, msgspec.Meta(description="root of installed packs")] = (
        "/var/lib/attune/packs"
    )
    artifacts_dir: Annotated[str, msgspec.Meta(description="root of per-execution artifacts")] = (
        "/var/lib/attune/artifacts"
    )


# Keys whose values must never appear in an error message or a printed config.
_SECRET_KEYS = frozenset({"security.encryption_key"})


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


@functools.cache
def _key_types() -> dict[str, Any]:
    """Every settable dotted key and its annotated type: the single source of truth."""
    keys: dict[str, Any] = {}
    for name, tp in _hints(Config).items():
        if _is_section(tp):
            for sub, sub_tp in _hints(tp).items():
                keys[f"{name}.{sub}"] = sub_tp
        else:
            keys[name] = tp
    return keys


@functools.cache
def _sections() -> frozenset[str]:
    return frozenset(name for name, tp in _hints(Config).items() if _is_section(tp))


def env_var_name(key: str) -> str:
    """`worker.max_concurrent_tasks` -> `ATTUNE__WORKER__MAX_CONCURRENT_TASKS`."""
    return ENV_PREFIX + key.replace(".", _SEP).upper()


def _accepts_none(tp: Any) -> bool:
    if typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp is None or type(None) in typing.get_args(tp)


def _convert(key: str, value: Any, tp: Any, *, strict: bool, source: str) -> Any:
    """Convert one value to its field type, or raise a ConfigError a person can act on."""
    try:
        return msgspec.convert(value, tp, strict=strict)
    except msgspec.ValidationError as exc:
        expected = str(exc).split(" - at ")[0].replace("`", "")
        expected = expected.split(", got ")[0]
        if expected.startswith("Expected "):
            expected = "expected " + expected[len("Expected ") :]
        elif expected.startswith("Invalid enum value"):
            choices = typing.get_args(typing.get_args(tp)[0] if _annotated(tp) else tp)
            expected = "expected one of " + ", ".join(repr(c) for c in choices)
        shown = _REDACTED if key in _SECRET_KEYS else repr(value)
        raise ConfigError(f"{key}: {expected}, got {shown} ({source})") from None


def _annotated(tp: Any) -> bool:
    return typing.get_origin(tp) is Annotated


def _read_file(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"config file {path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: invalid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    return data


def _flatten_file(data: Mapping[Any, Any], path: Path) -> dict[str, Any]:
    """Nested YAML mapping -> {dotted key: value}, rejecting unknown keys and sections."""
    sections = _sections()
    types = _key_types()
    flat: dict[str, Any] = {}
    for name, value in data.items():
        key = str(name)
        if key in sections:
            if value is None:  # a section whose keys are all commented out
                continue
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key}: expected a mapping (in {path})")
            for sub, sub_value in value.items():
                dotted = f"{key}.{sub}"
                if dotted not in types:
                    raise _unknown(dotted, f"in {path}")
                flat[dotted] = sub_value
        elif key in types:
            flat[key] = value
        else:
            raise _unknown(key, f"in {path}")
    return flat


def _unknown(key: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(_key_types()), n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return ConfigError(f"{key}: unknown key ({source}){hint}")


def _key_from_env(var: str) -> str:
    parts = var[len(ENV_PREFIX) :].lower().split(_SEP)
    key = ".".join(parts)
    if key in _sections():
        raise ConfigError(f"{var}: {key} is a section; set {env_var_name(key + '.<key>')}")
    if key not in _key_types():
        raise _unknown(key or var, f"from {var}")
    return key


def load_config(
    path: Path | None,
    env: Mapping[str, str],
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the Config from file, environment and overrides, checking every value.

    Environment values are text, so they are converted leniently (`"10"` -> 10,
    `"true"`/`"1"` -> True); an empty value for an optional key means "unset". File
    values are typed by YAML and converted strictly. Override values (CLI flags) may be
    either, so they are converted leniently.
    """
    types = _key_types()
    values: dict[str, Any] = {}
    if path is not None:
        for key, value in _flatten_file(_read_file(path), path).items():
            values[key] = _convert(key, value, types[key], strict=True, source=f"in {path}")
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX):
            continue
        key = _key_from_env(var)
        raw: Any = env[var]
        if raw == "" and _accepts_none(types[key]):
            raw = None
        values[key] = _convert(key, raw, types[key], strict=False, source=f"from {var}")
    for key, value in (overrides or {}).items():
        if key not in types:
            raise _unknown(key, "from command line")
        values[key] = _convert(key, value, types[key], strict=False, source="from command line")
    return _build(values)


def _build(values: Mapping[str, Any]) -> Config:
    nested: dict[str, Any] = {}
    for key, value in values.items():
        section, _, sub = key.partition(".")
        if sub:
            nested.setdefault(section, {})[sub] = value
        else:
            nested[key] = value
    try:
        config = msgspec.convert(nested, Config)
    except msgspec.ValidationError as exc:  # values were checked one by one already
        raise ConfigError(f"invalid configuration: {exc}") from None
    if config.database.pool_min > config.database.pool_max:
        raise ConfigError(
            f"database.pool_min: {config.database.pool_min} exceeds "
            f"database.pool_max ({config.database.pool_max})"
        )
    return config


_PASSWORD_PARAM = re.compile(r"(password=)('[^']*'|[^\s&]*)", re.IGNORECASE)


def _redact_url(url: str) -> str:
    """Masks `user:pw@`, `?password=pw` and the libpq `password=pw` keyword form."""
    url = _PASSWORD_PARAM.sub(rf"\g<1>{_REDACTED}", url)
    try:
        parts = urlsplit(url)
        has_password = parts.password is not None
    except ValueError:
        return _REDACTED
    if not has_password:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{name}:{_REDACTED}@{host}"))


def redacted(config: Config) -> dict[str, Any]:
    """The config as plain data, safe to print: URL passwords and the key are masked."""
    data: dict[str, Any] = msgspec.to_builtins(config)
    data["database"]["url"] = _redact_url(config.database.url)
    data["message_queue"]["url"] = _redact_url(config.message_queue.url)
    if config.security.encryption_key is not None:
        data["security"]["encryption_key"] = _REDACTED
    return data


def _type_text(tp: Any) -> str:
    """A short human form of an annotation, e.g. `int (>= 1)` or `"local" | "remote"`."""
    meta: list[msgspec.Meta] = []
    if _annotated(tp):
        tp, *extras = typing.get_args(tp)
        meta = [m for m in extras if isinstance(m, msgspec.Meta)]
    if typing.get_origin(tp) is Literal:
        text = " | ".join(f'"{v}"' for v in typing.get_args(tp))
    elif typing.get_args(tp):
        text = " | ".join("null" if a is type(None) else _type_text(a) for a in typing.get_args(tp))
    else:
        text = tp.__name__
    bounds = [
        f"{op} {getattr(m, attr)}"
        for m in meta
        for attr, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
        if getattr(m, attr) is not None
    ]
    return f"{text} ({', '.join(bounds)})" if bounds else text


def _description(tp: Any) -> str:
    if _annotated(tp):
        for m in typing.get_args(tp)[1:]:
            if isinstance(m, msgspec.Meta) and m.description:
                return m.description
    return ""


def config_reference_markdown() -> str:
    """Generated from the Structs themselves, so the documentation cannot drift."""
    defaults = msgspec.to_builtins(Config())
    lines = [
        "| key | type | default | env var | description |",
        "|---|---|---|---|---|",
    ]
    for key, tp in _key_types().items():
        section, _, sub = key.partition(".")
        default = defaults[section][sub] if sub else defaults[key]
        if default is None:
            shown = "(unset)"
        else:
            shown = f"`{default if isinstance(default, str) else json.dumps(default)}`"
        cells = [f"`{key}`", _type_text(tp), shown, f"`{env_var_name(key)}`", _description(tp)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"
