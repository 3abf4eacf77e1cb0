from pathlib import Path

import pytest

import attune
from attune.config import (
    Config,
    DatabaseConfig,
    SandboxConfig,
    SecurityConfig,
    WorkerConfig,
    env_var_name,
    key_types,
    load_config,
    unused_keys,
)
from attune.config_shared import FilesystemStorage
from attune.config_view import UNUSED_MARK, annotated_yaml, config_reference_markdown, redacted
from attune.errors import ConfigError, InputError


def write(tmp_path: Path, text: str, name: str = "attune.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_no_file_and_no_env_gives_defaults_that_reach_the_local_services() -> None:
    config = load_config(None, {})
    assert config == Config()
    assert config.database.url == "postgresql://postgres@127.0.0.1:5432/postgres"
    assert config.message_queue.url == "amqp://guest:guest@127.0.0.1:5672/%2F"
    assert config.worker.max_concurrent_tasks == 10
    assert config.worker.heartbeat_interval == 30
    assert config.worker.task_timeout == 300
    assert config.worker.worker_type == "local"
    assert config.packs_base_dir == "/var/lib/attune/packs"
    assert config.artifacts_dir == "/var/lib/attune/artifacts"
    assert config.sandbox.allow_unsafe is False


def test_config_structs_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Config().worker.name = "x"  # type: ignore[misc]


def test_yaml_file_sets_nested_and_top_level_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "worker:\n  name: w1\n  max_concurrent_tasks: 3\n  heartbeat_interval: 5\n"
        "database:\n  url: postgresql://u@db/x\npacks_base_dir: /srv/packs\n",
    )
    config = load_config(path, {})
    assert config.worker.name == "w1"
    assert config.worker.max_concurrent_tasks == 3
    assert config.worker.heartbeat_interval == 5.0
    assert isinstance(config.worker.heartbeat_interval, float)
    assert config.database.url == "postgresql://u@db/x"
    assert config.packs_base_dir == "/srv/packs"
    assert config.database.max_connections == 4  # untouched keys keep their defaults


def test_empty_file_and_empty_section_mean_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, ""), {}) == Config()
    assert load_config(write(tmp_path, "worker:\n  # name: x\n", "b.yaml"), {}) == Config()


def test_missing_file_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_config(path, {})


def test_invalid_yaml_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "worker: [unclosed\n")
    with pytest.raises(ConfigError, match=r"attune\.yaml: invalid YAML"):
        load_config(path, {})


def test_config_error_is_an_input_error() -> None:
    assert issubclass(ConfigError, InputError)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_config(write(tmp_path, "- a\n- b\n"), {})


def test_section_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^worker: expected a mapping"):
        load_config(write(tmp_path, "worker: 3\n"), {})


def test_unknown_key_in_file_names_the_key_path_and_suggests_the_right_one(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "worker:\n  max_concurent_tasks: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value).startswith("worker.max_concurent_tasks: unknown key (in ")
    assert "did you mean worker.max_concurrent_tasks?" in str(info.value)


def test_unknown_section_in_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^servr: unknown key .*did you mean server\?"):
        load_config(write(tmp_path, "servr:\n  port: 1\n"), {})


def test_wrong_type_in_file_names_key_value_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "worker:\n  max_concurrent_tasks: ten\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert str(info.value) == (f"worker.max_concurrent_tasks: expected int, got 'ten' (in {path})")


def test_file_values_are_strict_so_a_quoted_number_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected int, got '3'"):
        load_config(write(tmp_path, "worker:\n  max_concurrent_tasks: '3'\n"), {})


def test_env_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "worker:\n  name: from-file\n  max_concurrent_tasks: 3\n")
    config = load_config(path, {"ATTUNE__WORKER__NAME": "from-env"})
    assert config.worker.name == "from-env"
    assert config.worker.max_concurrent_tasks == 3


def test_env_values_are_converted_to_the_field_type() -> None:
    config = load_config(
        None,
        {
            "ATTUNE__WORKER__MAX_CONCURRENT_TASKS": "4",
            "ATTUNE__WORKER__HEARTBEAT_INTERVAL": "2.5",
            "ATTUNE__WORKER__PORT": "8080",
            "ATTUNE__DATABASE__URL": "postgresql://a@b/c",
            "ATTUNE__MESSAGE_QUEUE__URL": "amqp://x@y/",
            "ATTUNE__PACKS_BASE_DIR": "/p",
            "ATTUNE__ARTIFACTS_DIR": "/a",
            "ATTUNE__SECURITY__ENCRYPTION_KEY": "k" * 32,
        },
    )
    assert config.worker.max_concurrent_tasks == 4
    assert config.worker.heartbeat_interval == 2.5
    assert config.worker.port == 8080
    assert config.database.url == "postgresql://a@b/c"
    assert config.message_queue.url == "amqp://x@y/"
    assert config.packs_base_dir == "/p"
    assert config.artifacts_dir == "/a"
    assert config.security.encryption_key == "k" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [("true", True), ("false", False), ("1", True), ("0", False), ("TRUE", True)],
)
def test_env_booleans_accept_true_false_1_0(text: str, expected: bool) -> None:
    config = load_config(None, {"ATTUNE__SANDBOX__ALLOW_UNSAFE": text})
    assert config.sandbox.allow_unsafe is expected


def test_env_boolean_rejects_other_words() -> None:
    with pytest.raises(ConfigError, match=r"sandbox\.allow_unsafe: expected bool, got 'yes'"):
        load_config(None, {"ATTUNE__SANDBOX__ALLOW_UNSAFE": "yes"})


def test_env_wrong_type_names_key_value_and_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"ATTUNE__WORKER__MAX_CONCURRENT_TASKS": "ten"})
    assert str(info.value) == (
        "worker.max_concurrent_tasks: expected int, got 'ten' "
        "(from ATTUNE__WORKER__MAX_CONCURRENT_TASKS)"
    )


def test_env_var_names_are_case_insensitive_after_the_prefix() -> None:
    assert load_config(None, {"ATTUNE__worker__Name": "w"}).worker.name == "w"


def test_unknown_env_key_is_an_error() -> None:
    with pytest.raises(
        ConfigError, match=r"^worker.nmae: unknown key \(from ATTUNE__WORKER__NMAE\)"
    ):
        load_config(None, {"ATTUNE__WORKER__NMAE": "w"})


def test_env_naming_a_whole_section_is_an_error() -> None:
    with pytest.raises(ConfigError, match="worker is a section"):
        load_config(None, {"ATTUNE__WORKER": "x"})


def test_env_with_too_many_parts_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(None, {"ATTUNE__WORKER__NAME__X": "x"})


def test_single_underscore_attune_vars_and_other_vars_are_not_config() -> None:
    env = {"ATTUNE_EXEC_ID": "12", "ATTUNE_ACTION": "a.b", "PATH": "/bin", "HOME": "/root"}
    assert load_config(None, env) == Config()


def test_empty_env_value_unsets_an_optional_key(tmp_path: Path) -> None:
    path = write(tmp_path, "worker:\n  name: from-file\n  runtime_id: 3\n")
    config = load_config(path, {"ATTUNE__WORKER__NAME": "", "ATTUNE__WORKER__RUNTIME_ID": ""})
    assert config.worker.name is None
    assert config.worker.runtime_id is None


def test_empty_env_value_for_a_required_number_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"worker\.task_timeout: expected int, got ''"):
        load_config(None, {"ATTUNE__WORKER__TASK_TIMEOUT": ""})


def test_worker_type_must_be_one_of_the_known_kinds() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {"ATTUNE__WORKER__WORKER_TYPE": "cloud"})
    assert str(info.value) == (
        "worker.worker_type: expected one of 'local', 'remote', 'container', got 'cloud' "
        "(from ATTUNE__WORKER__WORKER_TYPE)"
    )


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("ATTUNE__WORKER__MAX_CONCURRENT_TASKS", "0", "expected int >= 1, got '0'"),
        ("ATTUNE__WORKER__HEARTBEAT_INTERVAL", "0", "expected float > 0.0, got '0'"),
        ("ATTUNE__WORKER__TASK_TIMEOUT", "-5", "expected int >= 1, got '-5'"),
        ("ATTUNE__WORKER__SHUTDOWN_TIMEOUT", "-1", "expected float >= 0.0, got '-1'"),
        ("ATTUNE__WORKER__PORT", "70000", "expected int <= 65535, got '70000'"),
    ],
)
def test_bounds_are_enforced(var: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, {var: value})


def test_shutdown_timeout_zero_is_allowed() -> None:
    config = load_config(None, {"ATTUNE__WORKER__SHUTDOWN_TIMEOUT": "0"})
    assert config.worker.shutdown_timeout == 0


def test_min_connections_above_max_connections_is_an_error() -> None:
    with pytest.raises(
        ConfigError, match=r"database.min_connections: 5 exceeds database.max_connections \(4\)"
    ):
        load_config(None, {"ATTUNE__DATABASE__MIN_CONNECTIONS": "5"})


def test_overrides_win_over_env_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "worker:\n  name: file\n")
    config = load_config(
        path,
        {"ATTUNE__WORKER__NAME": "env"},
        {"worker.name": "cli", "worker.max_concurrent_tasks": "2", "packs_base_dir": "/x"},
    )
    assert config.worker.name == "cli"
    assert config.worker.max_concurrent_tasks == 2
    assert config.packs_base_dir == "/x"


def test_override_with_unknown_key_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"^worker.nam: unknown key \(from command line\)"):
        load_config(None, {}, {"worker.nam": "x"})


def test_override_with_wrong_type_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"expected int, got 'many' \(from command line\)"):
        load_config(None, {}, {"worker.max_concurrent_tasks": "many"})


def test_encryption_key_value_is_never_echoed_in_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "security:\n  encryption_key: 12345678901234567890123456789012\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, {})
    assert "1234567890" not in str(info.value)
    assert "security.encryption_key: expected str | null, got ***" in str(info.value)


def test_effective_name_defaults_to_worker_hostname() -> None:
    assert WorkerConfig().effective_name("box1") == "worker-box1"
    assert WorkerConfig(name="w").effective_name("box1") == "w"
    assert WorkerConfig().effective_name().startswith("worker-")


def test_effective_profiles_dir_defaults_to_the_repo_profiles_dir() -> None:
    expected = Path(attune.__file__).resolve().parent.parent / "profiles"
    assert SandboxConfig().effective_profiles_dir() == expected
    assert SandboxConfig(profiles_dir="/etc/p").effective_profiles_dir() == Path("/etc/p")


def test_redacted_masks_url_passwords_and_the_encryption_key() -> None:
    config = Config(
        database=DatabaseConfig(url="postgresql://app:s3cret@db:5432/attune"),
        security=SecurityConfig(encryption_key="k" * 40),
    )
    data = redacted(config)
    assert data["database"]["url"] == "postgresql://app:***@db:5432/attune"
    assert data["message_queue"]["url"] == "amqp://guest:***@127.0.0.1:5672/%2F"
    assert data["security"]["encryption_key"] == "***"
    assert "s3cret" not in repr(data) and "k" * 40 not in repr(data)
    assert data["worker"]["max_concurrent_tasks"] == 10


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://app@db/x", "postgresql://app@db/x"),
        ("host=db password=s3cret user=app", "host=db password=*** user=app"),
        (
            "postgresql://db/x?password=s3cret&sslmode=require",
            "postgresql://db/x?password=***&sslmode=require",
        ),
    ],
)
def test_redacted_handles_urls_without_password_and_libpq_keyword_form(
    url: str, expected: str
) -> None:
    assert redacted(Config(database=DatabaseConfig(url=url)))["database"]["url"] == expected


def test_redacted_leaves_an_unset_key_as_none() -> None:
    assert redacted(Config())["security"]["encryption_key"] is None


def test_reference_markdown_lists_every_key_with_type_default_and_env_var() -> None:
    text = config_reference_markdown()
    lines = text.splitlines()
    assert lines[0] == "| key | type | default | env var | description |"
    rows = [line for line in lines if line.startswith("| `")]
    keys = [line.split("|")[1].strip().strip("`") for line in rows]
    assert sorted(keys) == sorted(key_types())
    assert (
        "| `worker.max_concurrent_tasks` | int (>= 1) | `10` | "
        "`ATTUNE__WORKER__MAX_CONCURRENT_TASKS` |" in text
    )
    assert "| `packs_base_dir` | str | `/var/lib/attune/packs` | `ATTUNE__PACKS_BASE_DIR` |" in text
    assert '"local" \\| "remote" \\| "container"' in text
    assert "| `sandbox.allow_unsafe` | bool | `false` |" in text
    used, _, shared = text.partition("### Accepted from the shared configuration")
    assert "`server.port`" in shared and "`server.port`" not in used
    assert "`worker.labels`" in used and "`worker.stream_logs`" in shared


def test_every_documented_env_var_is_a_known_key() -> None:
    lines = [line for line in config_reference_markdown().splitlines() if line.startswith("| `")]
    names = [line.split("|")[4].strip().strip("`") for line in lines]
    assert "ATTUNE__MESSAGE_QUEUE__URL" in names
    for name in names:
        try:
            load_config(None, {name: "1"})
        except ConfigError as exc:
            assert "unknown key" not in str(exc)


def test_env_var_name_maps_dotted_keys() -> None:
    assert env_var_name("worker.max_concurrent_tasks") == "ATTUNE__WORKER__MAX_CONCURRENT_TASKS"
    assert env_var_name("packs_base_dir") == "ATTUNE__PACKS_BASE_DIR"


# --- the reference's shared configuration -------------------------------------------------

REFERENCE_SHAPED = Path(__file__).parent / "reference_config.yaml"


def test_a_reference_shaped_file_with_every_section_loads() -> None:
    config = load_config(REFERENCE_SHAPED, {})
    assert config.database.max_connections == 20
    assert config.database.idle_timeout == 300
    assert config.server.cors_origins == ["http://localhost:3000", "http://localhost:5173"]
    assert config.security.jwt_secret == "reference-jwt-secret-value"
    assert config.security.ldap.enabled is False
    assert config.worker.labels == {"zone": "eu-1", "gpu": "none"}
    assert config.worker.taints[0].effect == "prefer_no_schedule"
    assert config.worker.max_stdout_bytes == 1048576
    assert config.log.level == "debug" and config.log.format == "json"
    assert config.retention.targets.audit_events.max_age_seconds == 7776000
    assert config.pack_registry.indices[0].url == "https://registry.example/index.json"
    assert isinstance(config.storage, FilesystemStorage)
    assert config.runtime_envs_dir == "/opt/attune/runtime_envs"


def test_every_top_level_section_of_the_reference_is_in_the_fixture() -> None:
    import yaml

    data = yaml.safe_load(REFERENCE_SHAPED.read_text())
    reference_sections = {
        "service_name", "environment", "database", "message_queue", "server", "log",
        "security", "worker", "sensor", "packs_base_dir", "packs", "runtime_envs_dir",
        "artifacts_dir", "artifacts", "storage", "notifier", "pack_registry", "executor",
        "agent", "pack_upload", "retention", "maintenance", "cache_retention",
        "cache_admission", "default_execution_timeout_seconds",
    }  # fmt: skip
    assert reference_sections <= set(data)
    assert reference_sections <= {k.split(".")[0] for k in key_types()}


def test_reference_env_overrides_reach_nested_keys() -> None:
    config = load_config(
        None,
        {
            "ATTUNE__DATABASE__MAX_CONNECTIONS": "20",
            "ATTUNE__SECURITY__LDAP__SEARCH_BIND_PASSWORD": "pw-from-env",
            "ATTUNE__RETENTION__TARGETS__EVENTS__MAX_AGE_SECONDS": "60",
            "ATTUNE__SERVER__CORS_ORIGINS": "http://a, http://b",
            "ATTUNE__PACK_REGISTRY__APPROVED_PRIVATE_HOSTS": "h1,h2",
            "ATTUNE__WORKER__TAINTS": '[{"key": "gpu", "effect": "no_schedule"}]',
            "ATTUNE__LOG__LEVEL": "warn",
        },
    )
    assert config.database.max_connections == 20
    assert config.security.ldap.search_bind_password == "pw-from-env"
    assert config.retention.targets.events.max_age_seconds == 60
    assert config.server.cors_origins == "http://a, http://b"
    assert config.pack_registry.approved_private_hosts == ["h1", "h2"]
    assert config.worker.taints[0].key == "gpu"
    assert config.log.level == "warn"


def test_env_sets_one_entry_of_a_map_and_keeps_the_files_others(tmp_path: Path) -> None:
    path = write(tmp_path, "worker:\n  labels: {zone: a, rack: r1}\n")
    config = load_config(path, {"ATTUNE__WORKER__LABELS__ZONE": "b"})
    assert config.worker.labels == {"zone": "b", "rack": "r1"}


def test_reference_keys_keep_their_types(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"server.port: expected int <= 65535"):
        load_config(write(tmp_path, "server:\n  port: 70000\n"), {})
    with pytest.raises(ConfigError, match=r"maintenance.enabled: expected bool"):
        load_config(write(tmp_path, "maintenance:\n  enabled: maybe\n", "b.yaml"), {})


def test_a_key_no_attune_service_defines_is_still_an_error_with_a_suggestion(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match=r"server.prot: unknown key .*did you mean server.port"):
        load_config(write(tmp_path, "server:\n  prot: 1\n"), {})
    with pytest.raises(ConfigError, match=r"retention.targets.event.max_age_seconds: unknown key"):
        load_config(None, {"ATTUNE__RETENTION__TARGETS__EVENT__MAX_AGE_SECONDS": "1"})
    with pytest.raises(ConfigError, match=r"did you mean database.max_connections"):
        load_config(None, {"ATTUNE__DATABASE__POOL_MAX": "3"})


def test_config_show_marks_accepted_but_unused_keys() -> None:
    text = annotated_yaml(load_config(REFERENCE_SHAPED, {}))
    lines = text.splitlines()
    assert f"server:  {UNUSED_MARK}" in lines
    assert any(line.startswith("  jwt_secret: ") and line.endswith(UNUSED_MARK) for line in lines)
    assert "  max_connections: 20" in lines  # used: no mark
    assert "  labels: " + '{"zone": "eu-1", "gpu": "none"}' in lines
    assert "reference-jwt-secret-value" not in text and "ldap-bind-secret" not in text


def test_unused_keys_are_exactly_the_shared_ones_this_worker_lacks() -> None:
    unused = unused_keys()
    for used in ("database.url", "worker.labels", "worker.max_stdout_bytes", "log.level"):
        assert used not in unused
    for shared in ("server", "security.jwt_secret", "database.log_statements", "storage"):
        assert shared in unused
