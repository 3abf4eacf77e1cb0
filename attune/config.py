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
import socket
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

import msgspec

from attune import config_shared as shared
from attune.config_shared import WorkerTaint
from attune.errors import ConfigError
from attune.runner.egress import EgressPolicy, parse_policy

ENV_PREFIX = "ATTUNE__"
_SEP = "__"


def unused(description: str) -> msgspec.Meta:
    """Marks a key the shared configuration defines but this worker has no feature for."""
    return msgspec.Meta(description=description, extra={"unused": True})


Seconds = Annotated[int, msgspec.Meta(ge=0)]


class DatabaseConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """PostgreSQL connection and pool sizing."""

    url: Annotated[str, msgspec.Meta(description="PostgreSQL connection URL")] = (
        "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    max_connections: Annotated[int, msgspec.Meta(ge=1, description="most connections open")] = 4
    min_connections: Annotated[
        int, msgspec.Meta(ge=0, description="connections kept open (0 counts as 1)")
    ] = 1
    connect_timeout: Annotated[
        float, msgspec.Meta(gt=0, description="seconds to wait for a connection")
    ] = 5.0
    idle_timeout: Annotated[
        float, msgspec.Meta(gt=0, description="seconds an idle pooled connection is kept")
    ] = 600.0
    log_statements: Annotated[bool, unused("SQL statement logging")] = False
    schema: Annotated[
        str | None, unused("schema name; this worker's tables live in schema attune")
    ] = None


class MessageQueueConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """RabbitMQ connection."""

    url: Annotated[str, msgspec.Meta(description="AMQP URL")] = (
        "amqp://guest:guest@127.0.0.1:5672/%2F"
    )
    reconnect_interval: Annotated[
        float, msgspec.Meta(gt=0, description="seconds between reconnect attempts")
    ] = 1.5
    exchange: Annotated[str, unused("exchange name; the worker uses the fixed attune.*")] = "attune"
    enable_dlq: Annotated[bool, unused("dead-letter queues (always declared)")] = True
    message_ttl: Annotated[Seconds, unused("message TTL, seconds")] = 3600


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
    capabilities: Annotated[
        dict[str, Any] | None,
        msgspec.Meta(description="extra registered capabilities (measured ones win)"),
    ] = None
    labels: Annotated[
        dict[str, str], msgspec.Meta(description="placement labels, registered as capabilities")
    ] = msgspec.field(default_factory=dict)
    taints: Annotated[
        list[WorkerTaint], msgspec.Meta(description="scheduling taints, registered as capabilities")
    ] = msgspec.field(default_factory=list)
    max_concurrent_tasks: Annotated[
        int, msgspec.Meta(ge=1, description="executions run at once (and AMQP prefetch)")
    ] = 10
    heartbeat_interval: Annotated[
        float, msgspec.Meta(gt=0, description="seconds between heartbeats")
    ] = 30.0
    task_timeout: Annotated[
        int, msgspec.Meta(ge=1, description="default execution timeout, seconds")
    ] = 300
    max_stdout_bytes: Annotated[
        int, msgspec.Meta(ge=1, description="stdout kept per run (caps the profile's limit)")
    ] = 10 * 1024 * 1024
    max_stderr_bytes: Annotated[
        int, msgspec.Meta(ge=1, description="stderr kept per run (caps the profile's limit)")
    ] = 10 * 1024 * 1024
    execution_log_retention_policy: Annotated[
        Literal["versions", "days", "hours", "minutes"],
        unused("log artifact retention unit; see artifacts.retention_days"),
    ] = "days"
    execution_log_retention_limit: Annotated[int, unused("log artifact retention amount")] = 7
    shutdown_timeout: Annotated[
        float, msgspec.Meta(ge=0, description="seconds running executions get on shutdown")
    ] = 30.0
    stream_logs: Annotated[bool, unused("log streaming switch; logs are always streamed")] = True
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
    warm_pool: Annotated[
        int,
        msgspec.Meta(
            ge=0,
            le=64,
            description="parked single-use sandboxes kept ready per shape (0: off)",
        ),
    ] = 1

    def effective_profiles_dir(self) -> Path:
        """Resolved lazily so an installed worker finds the profiles shipped beside it."""
        if self.profiles_dir:
            return Path(self.profiles_dir)
        import attune

        return Path(attune.__file__).resolve().parent.parent / "profiles"


class LogConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Log level and format; `--log-level` / `--log-format` override them."""

    level: Annotated[
        Literal["trace", "debug", "info", "warn", "error"],
        msgspec.Meta(description="least severe level written (trace is debug)"),
    ] = "info"
    format: Annotated[
        Literal["text", "pretty", "json"],
        msgspec.Meta(description="one line per event as text (pretty is text) or JSON"),
    ] = "text"
    console: Annotated[bool, unused("console sink switch; logs always go to stderr")] = True
    file: Annotated[str | None, unused("file sink")] = None


class SecurityConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Secret handling (docs/protocol.md §8); the other keys belong to the API."""

    encryption_key: Annotated[
        str | None, msgspec.Meta(description="key shared with the API, >= 32 characters")
    ] = None
    jwt_secret: Annotated[str | None, unused("API token signing key")] = None
    jwt_access_expiration: Annotated[Seconds, unused("API access token lifetime")] = 3600
    jwt_refresh_expiration: Annotated[Seconds, unused("API refresh token lifetime")] = 604800
    enable_auth: Annotated[bool, unused("API authentication")] = True
    allow_self_registration: Annotated[bool, unused("API self-service sign-up")] = False
    login_page: shared.LoginPageConfig = msgspec.field(default_factory=shared.LoginPageConfig)
    oidc: shared.OidcConfig = msgspec.field(default_factory=shared.OidcConfig)
    ldap: shared.LdapConfig = msgspec.field(default_factory=shared.LdapConfig)


class ArtifactsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Retention of per-execution artifact directories."""

    retention_days: Annotated[
        float, msgspec.Meta(ge=0, description="days an artifact directory is kept")
    ] = 7.0
    max_count: Annotated[int, msgspec.Meta(ge=0, description="most artifact directories kept")] = (
        1000
    )
    transport: Annotated[
        shared.Transport, unused("artifact transport; this worker writes artifacts_dir")
    ] = "auto"
    max_upload_size: Annotated[int, unused("API upload limit, bytes")] = 100 * 1024 * 1024
    flush_interval_ms: Annotated[int, unused("streaming flush interval")] = 500
    log_segment_max_bytes: Annotated[int, unused("log segment size")] = 64 * 1024
    sensor_log_max_bytes: Annotated[int, unused("sensor log rotation size")] = 10 * 1024 * 1024
    sensor_log_max_files: Annotated[int, unused("sensor log rotation count")] = 4


class NetworkConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Egress for actions that declare `network: egress` (docs/network.md)."""

    egress: Annotated[
        bool, msgspec.Meta(description="offer egress to actions that ask for it; off: none gets it")
    ] = False
    allow: Annotated[
        list[str],
        msgspec.Meta(
            description="`CIDR|HOST [tcp|udp[/PORT[-PORT]]]`; set: nothing else is reachable"
        ),
    ] = msgspec.field(default_factory=list)
    deny: Annotated[
        list[str],
        msgspec.Meta(description="`CIDR [tcp|udp[/PORT]]` refused on top of the built-in tiers"),
    ] = msgspec.field(default_factory=list)
    dns: Annotated[
        Literal["resolver", "hosts", "off"],
        msgspec.Meta(
            description="resolver: the user-mode resolver; "
            "hosts: allowlisted names in /etc/hosts; off: no DNS"
        ),
    ] = "resolver"

    def policy(self) -> EgressPolicy:
        """The validated policy (ConfigError names a bad entry)."""
        return parse_policy(self.allow, self.deny, self.dns)


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The whole configuration: the worker's sections and the shared ones it accepts."""

    service_name: Annotated[str, unused("service name")] = "attune"
    environment: Annotated[str, unused("deployment environment name")] = "development"
    database: DatabaseConfig = msgspec.field(default_factory=DatabaseConfig)
    message_queue: MessageQueueConfig = msgspec.field(default_factory=MessageQueueConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    worker: WorkerConfig = msgspec.field(default_factory=WorkerConfig)
    sandbox: SandboxConfig = msgspec.field(default_factory=SandboxConfig)
    security: SecurityConfig = msgspec.field(default_factory=SecurityConfig)
    artifacts: ArtifactsConfig = msgspec.field(default_factory=ArtifactsConfig)
    network: NetworkConfig = msgspec.field(default_factory=NetworkConfig)
    packs_base_dir: Annotated[str, msgspec.Meta(description="root of installed packs")] = (
        "/var/lib/attune/packs"
    )
    runtime_envs_dir: Annotated[
        str, msgspec.Meta(description="root of per-pack Python environments (docs/packs.md)")
    ] = "/var/lib/attune/runtime_envs"
    artifacts_dir: Annotated[str, msgspec.Meta(description="root of per-execution artifacts")] = (
        "/var/lib/attune/artifacts"
    )
    default_execution_timeout_seconds: Annotated[
        Annotated[int, msgspec.Meta(ge=1)], unused("set by the API on new executions")
    ] = 600
    storage: Annotated[shared.Storage, unused("blob storage provider")] = msgspec.field(
        default_factory=shared.FilesystemStorage
    )
    server: shared.ServerConfig = msgspec.field(default_factory=shared.ServerConfig)
    sensor: shared.SensorConfig = msgspec.field(default_factory=shared.SensorConfig)
    notifier: shared.NotifierConfig = msgspec.field(default_factory=shared.NotifierConfig)
    packs: shared.PacksConfig = msgspec.field(default_factory=shared.PacksConfig)
    pack_registry: shared.PackRegistryConfig = msgspec.field(
        default_factory=shared.PackRegistryConfig
    )
    executor: shared.ExecutorConfig = msgspec.field(default_factory=shared.ExecutorConfig)
    agent: shared.AgentConfig = msgspec.field(default_factory=shared.AgentConfig)
    pack_upload: shared.PackUploadConfig = msgspec.field(default_factory=shared.PackUploadConfig)
    retention: shared.RetentionConfig = msgspec.field(default_factory=shared.RetentionConfig)
    maintenance: shared.MaintenanceConfig = msgspec.field(default_factory=shared.MaintenanceConfig)
    cache_retention: shared.CacheRetentionConfig = msgspec.field(
        default_factory=shared.CacheRetentionConfig
    )
    cache_admission: shared.CacheAdmissionConfig = msgspec.field(
        default_factory=shared.CacheAdmissionConfig
    )


# Keys whose values must never appear in an error message or a printed config.
SECRET_KEYS = frozenset(
    {
        "security.encryption_key",
        "security.jwt_secret",
        "security.oidc.client_secret",
        "security.ldap.search_bind_password",
        "agent.bootstrap_token",
    }
)
# Keys this worker once had under other names: named in the did-you-mean.
_RENAMED = {
    "database.pool_max": "database.max_connections",
    "database.pool_min": "database.min_connections",
}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _marked_unused(tp: Any) -> bool:
    if not _annotated(tp):
        return False
    return any(
        isinstance(m, msgspec.Meta) and (m.extra or {}).get("unused")
        for m in typing.get_args(tp)[1:]
    )


class _Schema(typing.NamedTuple):
    keys: dict[str, Any]  # every settable dotted key and its annotated type
    sections: frozenset[str]  # dotted names of (nested) sections
    unused: frozenset[str]  # keys and sections accepted but not used


@functools.cache
def _schema() -> _Schema:
    """Walks the Structs once: the single source of truth for keys, sections, use."""
    keys: dict[str, Any] = {}
    sections: set[str] = set()
    unused_keys: set[str] = set()

    def walk(cls: type, prefix: str, inherited_unused: bool) -> None:
        for name, tp in _hints(cls).items():
            dotted = prefix + name
            if _is_section(tp):
                sections.add(dotted)
                section_unused = inherited_unused or issubclass(tp, shared.UnusedSection)
                if section_unused:
                    unused_keys.add(dotted)
                walk(tp, dotted + ".", section_unused)
            else:
                keys[dotted] = tp
                if inherited_unused or _marked_unused(tp):
                    unused_keys.add(dotted)

    walk(Config, "", False)
    return _Schema(keys, frozenset(sections), frozenset(unused_keys))


def key_types() -> dict[str, Any]:
    """Every settable dotted key and its annotated type."""
    return _schema().keys


def sections() -> frozenset[str]:
    """Dotted names of every section, nested ones included."""
    return _schema().sections


def unused_keys() -> frozenset[str]:
    """Keys (and whole sections) accepted from the shared configuration but not used."""
    return _schema().unused


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
        shown = "***" if key in SECRET_KEYS else repr(value)
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


def _flatten_file(data: Mapping[Any, Any], path: Path, prefix: str = "") -> dict[str, Any]:
    """Nested YAML mapping -> {dotted key: value}, rejecting unknown keys and sections."""
    known_sections = sections()
    types = key_types()
    flat: dict[str, Any] = {}
    for name, value in data.items():
        key = prefix + str(name)
        if key in known_sections:
            if value is None:  # a section whose keys are all commented out, or `worker: ~`
                continue
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key}: expected a mapping (in {path})")
            flat.update(_flatten_file(value, path, key + "."))
        elif key in types:
            flat[key] = value
        else:
            raise _unknown(key, f"in {path}")
    return flat


def _unknown(key: str, source: str) -> ConfigError:
    if key in _RENAMED:
        close = [_RENAMED[key]]
    else:
        close = difflib.get_close_matches(key, [*key_types(), *sections()], n=1)
    hint = f"; did you mean {close[0]}?" if close else ""
    return ConfigError(f"{key}: unknown key ({source}){hint}")


def _is_mapping_key(tp: Any) -> bool:
    if _annotated(tp):
        tp = typing.get_args(tp)[0]
    return any(typing.get_origin(t) is dict for t in (tp, *typing.get_args(tp)))


def _key_from_env(var: str) -> tuple[str, str | None]:
    """(dotted key, entry) for one variable; `entry` names a map entry, e.g. a label.

    As in the reference, `ATTUNE__WORKER__LABELS__ZONE=eu` sets one entry of the
    `worker.labels` map.
    """
    parts = var[len(ENV_PREFIX) :].lower().split(_SEP)
    key = ".".join(parts)
    if key in sections():
        raise ConfigError(f"{var}: {key} is a section; set {env_var_name(key + '.<key>')}")
    types = key_types()
    if key in types:
        return key, None
    for cut in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:cut])
        if head in types and _is_mapping_key(types[head]):
            return head, _SEP.join(parts[cut:])
    raise _unknown(key or var, f"from {var}")


def _is_scalar(tp: Any) -> bool:
    if _annotated(tp):
        return _is_scalar(typing.get_args(tp)[0])
    if tp in (str, int, float, bool, type(None)) or typing.get_origin(tp) is Literal:
        return True
    args = typing.get_args(tp)
    return typing.get_origin(tp) not in (list, dict) and bool(args) and all(map(_is_scalar, args))


def _env_value(raw: str, tp: Any) -> Any:
    """Env text for a structured key (list, map, table) is YAML/JSON; a list of strings
    may also be comma-separated, as the reference accepts for `server.cors_origins`."""
    if _is_scalar(tp):
        return raw
    import yaml

    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):
        try:
            msgspec.convert(value, tp, strict=False)
        except msgspec.ValidationError:
            return [part.strip() for part in value.split(",") if part.strip()]
    return value


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
    types = key_types()
    values: dict[str, Any] = {}
    if path is not None:
        for key, value in _flatten_file(_read_file(path), path).items():
            values[key] = _convert(key, value, types[key], strict=True, source=f"in {path}")
    for var in sorted(env):
        if not var.startswith(ENV_PREFIX):
            continue
        key, entry = _key_from_env(var)
        raw: Any = env[var]
        source = f"from {var}"
        if entry is not None:
            merged = dict(values.get(key) or {})
            merged[entry] = raw
            values[key] = _convert(key, merged, types[key], strict=False, source=source)
            continue
        if raw == "" and _accepts_none(types[key]):
            raw = None
        elif isinstance(raw, str):
            raw = _env_value(raw, types[key])
        values[key] = _convert(key, raw, types[key], strict=False, source=source)
    for key, value in (overrides or {}).items():
        if key not in types:
            raise _unknown(key, "from command line")
        values[key] = _convert(key, value, types[key], strict=False, source="from command line")
    return _build(values)


def _build(values: Mapping[str, Any]) -> Config:
    nested: dict[str, Any] = {}
    for key, value in values.items():
        *sections, leaf = key.split(".")
        node = nested
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    try:
        config = msgspec.convert(nested, Config)
    except msgspec.ValidationError as exc:  # values were checked one by one already
        raise ConfigError(f"invalid configuration: {exc}") from None
    db = config.database
    if db.min_connections > db.max_connections:
        raise ConfigError(
            f"database.min_connections: {db.min_connections} exceeds "
            f"database.max_connections ({db.max_connections})"
        )
    config.network.policy()  # every allow/deny entry must parse
    return config


def describe_amqp_url(url: str) -> str:
    """`host:port (vhost '/')` for messages about the broker; never the URL itself,
    which may carry a password."""
    parts = urlsplit(url)
    default_port = 5671 if parts.scheme == "amqps" else 5672
    try:
        port = parts.port or default_port
    except ValueError:
        port = default_port
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return f"{parts.hostname or 'localhost'}:{port} (vhost {vhost!r})"
