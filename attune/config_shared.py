"""Sections of the shared Attune configuration that this worker accepts but does not use.

The reference's services (API, executor, sensor, notifier, supervisor, worker) read one
configuration file and one `ATTUNE__*` environment. A drop-in worker must accept that
file as it is, so every section the other services own is declared here with the
reference's key names, types and defaults: a value of the wrong type is still an
error, a key that no Attune service defines is still an error with a did-you-mean, and
`attune config show` marks all of these as accepted but not used.

Every Struct here derives from `UnusedSection`; config.py treats a section of that type
as unused as a whole. Keys the other services share with the worker but this worker has
no feature for (inside sections it does use) are marked with `unused()` in config.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

Seconds = Annotated[int, msgspec.Meta(ge=0)]
Count = Annotated[int, msgspec.Meta(ge=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Transport = Literal["auto", "volume", "api"]


class UnusedSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Marker base: every key below a section of this type is accepted, not used."""


def _days(n: int) -> int:
    return n * 24 * 60 * 60


class ServerConfig(UnusedSection, frozen=True):
    """The API server (the reference's `server:`)."""

    host: str = "0.0.0.0"
    port: Port = 8080
    request_timeout: Seconds = 30
    enable_cors: bool = True
    # the reference accepts a comma-separated string or a list
    cors_origins: str | list[str] = msgspec.field(default_factory=list)
    max_body_size: Count = 10 * 1024 * 1024
    max_bulk_enqueue_items: Count = 1000


class LoginPageConfig(UnusedSection, frozen=True):
    show_local_login: bool = True
    show_oidc_login: bool = True
    show_ldap_login: bool = True


class OidcConfig(UnusedSection, frozen=True):
    enabled: bool = False
    discovery_url: str | None = None
    client_id: str | None = None
    provider_name: str = "oidc"
    provider_label: str | None = None
    provider_icon_url: str | None = None
    client_secret: str | None = None
    redirect_uri: str | None = None
    post_logout_redirect_uri: str | None = None
    scopes: list[str] = msgspec.field(default_factory=list)


class LdapConfig(UnusedSection, frozen=True):
    enabled: bool = False
    url: str | None = None
    bind_dn_template: str | None = None
    user_search_base: str | None = None
    user_filter: str = "(uid={login})"
    search_bind_dn: str | None = None
    search_bind_password: str | None = None
    login_attr: str = "uid"
    email_attr: str = "mail"
    display_name_attr: str = "cn"
    group_attr: str = "memberOf"
    starttls: bool = False
    danger_skip_tls_verify: bool = False
    provider_name: str = "ldap"
    provider_label: str | None = None
    provider_icon_url: str | None = None


class WorkerTaint(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A scheduling taint (the reference's `WorkerTaint`)."""

    key: str
    value: str | None = None
    effect: Literal["no_schedule", "prefer_no_schedule"] = "no_schedule"


class SensorConfig(UnusedSection, frozen=True):
    notifier_ws_url: str | None = None
    allow_insecure_notifier_ws: bool = False
    worker_name: str | None = None
    host: str | None = None
    capabilities: dict[str, Any] | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    taints: list[WorkerTaint] = msgspec.field(default_factory=list)
    max_concurrent_sensors: Count | None = None
    heartbeat_interval: Seconds = 30
    poll_interval: Seconds = 30
    sensor_timeout: Seconds = 30
    shutdown_timeout: Seconds = 30


class NotifierConfig(UnusedSection, frozen=True):
    host: str = "0.0.0.0"
    port: Port = 8081
    max_connections: Count = 10000


class RegistryIndex(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    url: str
    priority: Count = 100
    enabled: bool = True
    name: str | None = None
    headers: dict[str, str] = msgspec.field(default_factory=dict)


class PackRegistryConfig(UnusedSection, frozen=True):
    enabled: bool = True
    indices: list[RegistryIndex] = msgspec.field(default_factory=list)
    cache_ttl: Seconds = 3600
    cache_enabled: bool = True
    timeout: Seconds = 120
    verify_checksums: bool = True
    allow_unverified_direct_remote_installs: bool = False
    approved_public_hosts: list[str] = msgspec.field(
        default_factory=lambda: ["raw.githubusercontent.com", "github.com", "codeload.github.com"]
    )
    approved_private_hosts: list[str] = msgspec.field(default_factory=list)
    approved_private_cidrs: list[str] = msgspec.field(default_factory=list)
    # an earlier release's name for the approved hosts
    allowed_source_hosts: list[str] = msgspec.field(default_factory=list)
    allow_http: bool = False
    connect_timeout: Seconds = 10
    index_max_bytes: Count = 10 * 1024 * 1024
    archive_max_bytes: Count = 100 * 1024 * 1024


class PacksConfig(UnusedSection, frozen=True):
    """Pack file transport; this worker reads packs from `packs_base_dir` (a volume)."""

    transport: Transport = "auto"


class ExecutorConfig(UnusedSection, frozen=True):
    scheduled_timeout: Seconds | None = 300
    timeout_check_interval: Seconds | None = 60
    enable_timeout_monitor: bool | None = True


class AgentConfig(UnusedSection, frozen=True):
    binary_dir: str | None = None
    bootstrap_token: str | None = None


class PackUploadConfig(UnusedSection, frozen=True):
    max_extracted_size_bytes: Count | None = None
    max_file_count: Count | None = None
    max_per_entry_size_bytes: Count | None = None
    allow_symlinks: bool | None = None  # an earlier release's key


class RetentionTarget(UnusedSection, frozen=True):
    max_age_seconds: Seconds | None = _days(30)


def _target(days: int) -> Any:
    return msgspec.field(default_factory=lambda: RetentionTarget(max_age_seconds=_days(days)))


class RetentionTargets(UnusedSection, frozen=True):
    events: RetentionTarget = _target(30)
    enforcements: RetentionTarget = _target(30)
    executions: RetentionTarget = _target(30)
    execution_history: RetentionTarget = _target(30)
    worker_history: RetentionTarget = _target(30)
    sensor_process_history: RetentionTarget = _target(30)
    audit_events: RetentionTarget = _target(90)
    continuous_aggregates: RetentionTarget = _target(30)
    notifications: RetentionTarget = _target(30)
    webhook_event_logs: RetentionTarget = _target(30)
    inquiries: RetentionTarget = _target(30)
    work_queue_items: RetentionTarget = _target(30)
    work_queue_dispatches: RetentionTarget = _target(30)
    pack_test_executions: RetentionTarget = _target(30)
    execution_admission: RetentionTarget = _target(30)
    workers: RetentionTarget = _target(30)
    sensor_processes: RetentionTarget = _target(30)


class CacheRetentionConfig(UnusedSection, frozen=True):
    enabled: bool = True
    batch_size: int = 1000
    max_batches_per_generation: int = 20
    max_generations_per_cycle: int = 50
    max_namespaces_per_cycle: int = 50
    min_traversal_window_seconds: Seconds = 3600
    staging_expiry_seconds: Seconds = _days(1)
    dry_run: bool = False
    freshness_alerts_enabled: bool = True
    freshness_alert_grace_seconds: Seconds = 15 * 60
    staging_failure_alert_threshold: Count = 3
    alert_cooldown_seconds: Seconds = 3600
    alert_limit_per_cycle: int = 25


class RetentionConfig(UnusedSection, frozen=True):
    enabled: bool = True
    check_interval_seconds: Seconds = 3600
    batch_size: int = 1000
    dry_run: bool = False
    advisory_lock_key: int = 7_821_001
    targets: RetentionTargets = msgspec.field(default_factory=RetentionTargets)
    cache_retention: CacheRetentionConfig = msgspec.field(default_factory=CacheRetentionConfig)


class MaintenanceConfig(UnusedSection, frozen=True):
    enabled: bool = True
    artifact_cleanup_enabled: bool = True
    artifact_cleanup_batch_size: int = 100
    pack_release_retention_enabled: bool = True
    pack_release_newest_inactive: int = 2
    pack_release_rollback_seconds: Seconds = _days(7)
    pack_release_cleanup_batch_size: int = 100
    object_upload_abandon_seconds: Seconds = _days(1)
    object_delete_grace_seconds: Seconds = _days(1)
    storage_rollback_snapshot_seconds: Seconds = _days(7)
    monitoring_enabled: bool = True
    corrective_actions_enabled: bool = True
    stuck_execution_seconds: Seconds = 3600
    execution_remediation_seconds: Seconds = 2 * 3600
    execution_remediation_batch_size: int = 100
    execution_reschedule_grace_seconds: Seconds = 5 * 60
    execution_reschedule_max_attempts: Count = 5
    stuck_queue_seconds: Seconds = 15 * 60
    queue_remediation_seconds: Seconds = 30 * 60
    admission_remediation_seconds: Seconds = 30 * 60
    retention_lag_alert_seconds: Seconds = _days(1)
    alert_limit_per_cycle: int = 25
    alert_cooldown_seconds: Seconds = 3600


class CacheAdmissionConfig(UnusedSection, frozen=True):
    max_live_namespaces: int = 10_000
    max_live_namespaces_per_owner: int = 1_000
    max_physical_bytes: int = 100 * 1024**3
    max_physical_bytes_per_owner: int = 10 * 1024**3
    max_unpublished_generations_per_owner: int = 100


class FilesystemStorage(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="filesystem", tag_field="provider"
):
    root: str = "/opt/attune/blobs"


class S3Storage(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="s3", tag_field="provider"
):
    bucket: str
    region: str
    prefix: str = ""
    endpoint: str | None = None
    kms_key: str | None = None


class GcsStorage(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="gcs", tag_field="provider"
):
    bucket: str
    prefix: str = ""
    endpoint: str | None = None


Storage = FilesystemStorage | S3Storage | GcsStorage
