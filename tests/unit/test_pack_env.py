"""Per-pack environments: manifests, addresses, states, pip settings, the build sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest

from attune import pack_env
from attune.errors import ExecutionError
from attune.pip_config import local_path, settings_from
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
