"""Per-pack environments: manifests, addresses, states, pip settings, the build sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from attune import pack_env
from attune.config import Config, NetworkConfig
from attune.errors import ExecutionError
from attune.pip_config import index_destinations, local_path, settings_from
from attune.runner import env_build


def _pack(tmp_path: Path, requirements: str | None, deps: list[str] | None = None) -> Path:
    pack = tmp_path / "p"
    pack.mkdir(exist_ok=True)
    meta = "ref: p\nversion: '1'\n"
    if deps is not None:
        meta += f"meta: {{python_dependencies: {deps}}}\n"
    (pack / "pack.yaml").write_text(meta)
    if requirements is not None:
        (pack / "requirements.txt").write_text(requirements)
    return pack


def test_a_pack_without_requirements_needs_no_environment(tmp_path: Path) -> None:
    assert pack_env.manifest(_pack(tmp_path, None)) is None
    assert pack_env.status(tmp_path / "envs", "p", _pack(tmp_path, None)).state == "none"


def test_manifest_joins_requirements_and_python_dependencies_without_comments(
    tmp_path: Path,
) -> None:
    pack = _pack(tmp_path, "# deps\nsix==1.16  # pinned\n\nattrs\n", ["requests>=2"])
    assert pack_env.manifest(pack) == "six==1.16\nattrs\nrequests>=2\n"


def test_environment_is_addressed_by_its_manifest(tmp_path: Path) -> None:
    base = tmp_path / "envs"
    a = pack_env.env_dir(base, "p", "six\n")
    assert a == pack_env.env_dir(base, "p", "six\n")
    assert a != pack_env.env_dir(base, "p", "six==1.16\n")
    assert a.parent == base / "p" and a.name.startswith("python-")


def test_status_follows_the_markers(tmp_path: Path) -> None:
    base, pack = tmp_path / "envs", _pack(tmp_path, "six\n")
    path = pack_env.env_dir(base, "p", "six\n")
    assert pack_env.status(base, "p", pack).state == "missing"
    path.mkdir(parents=True)
    (path.parent / f"{path.name}{pack_env.BUILDING}").write_text("1")
    assert pack_env.status(base, "p", pack).state == "building"
    (path.parent / f"{path.name}{pack_env.FAILED}").write_text("pip install failed\nno six")
    failed = pack_env.status(base, "p", pack)
    assert failed.state == "failed" and "no six" in failed.reason
    (path / pack_env.READY).write_text("six\n")
    assert pack_env.status(base, "p", pack) == pack_env.EnvStatus("ready", path)


def test_bad_pack_ref_cannot_address_an_environment(tmp_path: Path) -> None:
    with pytest.raises(ExecutionError):
        pack_env.env_root(tmp_path, "../etc")


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ("/opt/wheels", "/opt/wheels"),
        ("file:///srv/simple/", "/srv/simple/"),
        ("file:/srv/x%20y", "/srv/x y"),
        ("https://pypi.example/simple", None),
        ("relative/dir", None),
    ],
)
def test_local_paths_in_pip_options(value: str, path: str | None) -> None:
    assert local_path(value) == path


def test_pip_settings_collect_env_config_and_every_local_path() -> None:
    settings = settings_from(
        {"PIP_FIND_LINKS": "/opt/wheels /srv/more", "PIP_NO_INDEX": "1", "HOME": "/root"},
        {
            "/etc/pip.conf": "[global]\ncert = /etc/ssl/ca.pem\nindex-url = file:///srv/idx\n",
            "/etc/xdg/pip/pip.conf": "[install]\nconstraint = /etc/xdg/pip/c.txt\n",
        },
    )
    assert settings.env == {"PIP_FIND_LINKS": "/opt/wheels /srv/more", "PIP_NO_INDEX": "1"}
    assert settings.config_files == ("/etc/pip.conf", "/etc/xdg/pip/pip.conf")
    assert settings.local_paths == (
        "/etc/ssl/ca.pem",
        "/etc/xdg/pip/c.txt",
        "/opt/wheels",
        "/srv/idx",
        "/srv/more",
    )


def _plan(**kw: object) -> env_build.BuildPlan:
    base: dict[str, object] = {
        "env_dir": "/envs/p/python-1",
        "stage_dir": "/envs/p/python-1",
        "pack_dir": "/packs/p",
        "manifest_file": "/envs/p/.manifest",
        "etc_dir": "/envs/.etc",
        "pip": settings_from({"PIP_NO_INDEX": "1"}, {}),
    }
    base.update(kw)
    return env_build.BuildPlan(**base)  # type: ignore[arg-type]


def test_build_sandbox_has_no_network_by_default_and_a_capped_env_tmpfs() -> None:
    args = env_build.build_args(_plan(), 9)
    assert "--unshare-net" in args
    i = args.index("/envs/p/python-1")
    assert args[i - 3 : i + 1] == [
        "--size",
        str(1024 * env_build.MiB),
        "--tmpfs",
        "/envs/p/python-1",
    ]
    assert args[args.index("--chdir") + 1] == "/packs/p"
    assert args.index("--remount-ro") > args.index(env_build.STAGE)
    assert "/root" not in args and "/home" not in args and "/var" not in args
    assert args[-2:] == ["--seccomp", "9"]
    env = {args[j + 1]: args[j + 2] for j, a in enumerate(args) if a == "--setenv"}
    assert env["PIP_NO_INDEX"] == "1" and env["HOME"] == "/tmp"


def test_build_network_is_a_parameter() -> None:
    net = env_build.BuildNetwork(extra_args=("--ro-bind", "/run/x/resolv.conf", "/etc/resolv.conf"))
    args = env_build.build_args(_plan(network=net), 9)
    assert args.count("--unshare-net") == 1  # always a namespace of its own
    assert "/run/x/resolv.conf" in args


def test_build_command_is_capped_and_uses_the_system_python() -> None:
    cmd = env_build.build_command(_plan())
    assert cmd[0] == "/usr/bin/prlimit" and any(a.startswith("--as=") for a in cmd)
    assert cmd[-3:] == ["/usr/bin/python3", "/envs/p/python-1", env_build.MANIFEST]


def test_index_destinations_name_the_configured_index_hosts_on_their_ports() -> None:
    pip = settings_from(
        {"PIP_INDEX_URL": "https://pypi.internal.example/simple"},
        {
            "/etc/pip.conf": "[global]\nextra-index-url = http://mirror.example:8080/simple "
            "file:///opt/pypi/simple\nfind-links = /opt/wheels https://wheels.example/\n"
        },
    )
    assert index_destinations(pip) == [
        "pypi.internal.example tcp/443",
        "mirror.example tcp/8080",
        "wheels.example tcp/443",
    ]


def test_without_an_index_url_the_destinations_are_pypi_and_its_file_host() -> None:
    pip = settings_from({}, {"/etc/pip.conf": "[global]\nfind-links = /opt/wheels\n"})
    assert index_destinations(pip) == ["pypi.org tcp/443", "files.pythonhosted.org tcp/443"]


def test_no_index_or_a_local_index_needs_no_network() -> None:
    assert index_destinations(settings_from({"PIP_NO_INDEX": "1"}, {})) == []
    local = settings_from({"PIP_INDEX_URL": "file:///opt/pypi/simple"}, {})
    assert index_destinations(local) == []


def _config(egress: bool, allow: list[str] | None = None) -> Config:
    return Config(network=NetworkConfig(egress=egress, allow=allow or []))


def test_the_build_network_is_the_operators_egress_narrowed_to_the_indexes() -> None:
    pip = settings_from({"PIP_INDEX_URL": "https://idx.example/simple"}, {})
    net = pack_env.build_network(_config(True, ["203.0.113.0/24"]), pip, True)
    assert net.policy is not None and net.policy.dns == "hosts"
    assert [str(r) for r in net.policy.allow] == ["203.0.113.0/24"]  # the operator's, kept
    assert [str(r) for r in net.policy.narrowed or ()] == ["idx.example tcp/443"]
    assert pack_env.offline_hint(pip, net) == ""


def test_the_build_stays_offline_without_egress_and_a_failure_says_why() -> None:
    pip = settings_from({"PIP_INDEX_URL": "https://idx.example/simple"}, {})
    for net in (
        pack_env.build_network(_config(False), pip, True),
        pack_env.build_network(_config(True), pip, False),  # not root / no egress layer
        pack_env.build_network(_config(True), settings_from({"PIP_NO_INDEX": "1"}, {}), True),
    ):
        assert net.policy is None
    hint = pack_env.offline_hint(pip, env_build.BuildNetwork())
    assert "package index (idx.example) was unreachable because egress is off" in hint


def test_an_egress_build_gets_the_runs_own_hosts_and_resolver_files() -> None:
    args = env_build.build_args(_plan(), 9, "/run/net-etc")
    binds = [(args[i + 1], args[i + 2]) for i, a in enumerate(args) if a == "--ro-bind"]
    for name in ("hosts", "nsswitch.conf", "resolv.conf"):
        assert (f"/run/net-etc/{name}", f"/etc/{name}") in binds
    assert "/etc/resolv.conf" not in [
        args[i + 1] for i, a in enumerate(args) if a == "--ro-bind-try"
    ]
