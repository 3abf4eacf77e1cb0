"""Runtime profiles: strict TOML, runtime choice, the run() detection."""

from __future__ import annotations

from pathlib import Path

import pytest

from attune.errors import ConfigError
from attune.runner.profiles import (
    REPO_PROFILES_DIR,
    choose_runtime,
    load_profile,
    load_profiles,
    resolve_profile,
)
from attune.runner.sandbox import defines_run

PROFILES = load_profiles()


def write(tmp_path: Path, text: str, name: str = "p.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_bundled_profiles_load() -> None:
    assert sorted(PROFILES) == ["python", "shell"]
    python, shell = PROFILES["python"], PROFILES["shell"]
    assert python.command[0] == "/usr/bin/python3"
    assert {"-u", "-B", "-I"} <= set(python.command)
    assert python.function_wrapper == "python_wrapper.py"
    assert shell.command == ["/bin/bash"] and shell.params_as_env
    for profile in (python, shell):
        assert set(profile.env) == {"PATH", "HOME", "LANG", "TMPDIR"}
        assert profile.limits.tmpfs_mb > 0 and profile.limits.work_dir_mb > 0


def test_host_network_profile_key_is_refused_with_the_egress_hint(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "x"\ncommand = ["/bin/sh"]\nnetwork = true\n')
    with pytest.raises(ConfigError, match="network: egress"):
        load_profile(path)


def test_unknown_top_level_key_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "x"\ncommand = ["/bin/sh"]\nnetwrok = true\n')
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert str(path) in str(info.value)
    assert "netwrok" in str(info.value)


def test_unknown_nested_key_names_the_table(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "x"\ncommand = ["/bin/sh"]\n[limits]\ncpu_secs = 3\n')
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert str(path) in str(info.value)
    assert "cpu_secs" in str(info.value) and "limits" in str(info.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('name = "x"\ncommand = []\n', "command"),
        ('name = "x"\ncommand = ["sh"]\n', "absolute"),
        ('name = "x"\ncommand = ["/bin/sh"]\n[limits]\nopen_files = -1\n', "limits.open_files"),
        ('name = "x"\ncommand = ["/bin/sh"]\n[limits]\ntmpfs_mb = 0\n', "limits.tmpfs_mb"),
        ('name = "x"\ncommand = ["/bin/sh"]\n[limits]\nwork_dir_mb = 0\n', "limits.work_dir_mb"),
        ('name = "x"\ncommand = ["/bin/sh"]\n[limits]\ncpu_seconds = "5"\n', "cpu_seconds"),
        ('name = "x"\ncommand = ["/bin/sh"]\ndefault_output_format = "xml"\n', "xml"),
        ('name = "x"\ncommand = ["/bin/sh"\n', "invalid TOML"),
        ('command = ["/bin/sh"]\n', "name"),
    ],
)
def test_invalid_profiles_are_config_errors(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert str(path) in str(info.value)
    assert needle in str(info.value)


def test_zero_rlimits_mean_unlimited_and_are_accepted(tmp_path: Path) -> None:
    path = write(
        tmp_path, 'name = "x"\ncommand = ["/bin/sh"]\n[limits]\ncpu_seconds = 0\nprocesses = 0\n'
    )
    assert load_profile(path).limits.cpu_seconds == 0


def test_unreadable_file_and_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_profile(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_profiles(tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"no \*\.toml"):
        load_profiles(tmp_path)


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    write(tmp_path, 'name = "x"\ncommand = ["/bin/sh"]\n', "a.toml")
    write(tmp_path, 'name = "x"\ncommand = ["/bin/bash"]\n', "b.toml")
    with pytest.raises(ConfigError, match="duplicate"):
        load_profiles(tmp_path)


def test_resolve_profile_by_name_path_or_clear_error(tmp_path: Path) -> None:
    assert resolve_profile("shell", PROFILES) is PROFILES["shell"]
    path = write(tmp_path, 'name = "custom"\ncommand = ["/bin/sh"]\n')
    assert resolve_profile(str(path), PROFILES).name == "custom"
    assert resolve_profile(str(REPO_PROFILES_DIR / "python.toml"), PROFILES).name == "python"
    with pytest.raises(ConfigError) as info:
        resolve_profile("ruby", PROFILES)
    assert "known profiles: python, shell" in str(info.value)


@pytest.mark.parametrize(
    ("filename", "first_line", "explicit", "expected"),
    [
        ("a.py", b"", None, "python"),
        ("A.PY", b"", None, "python"),
        ("a.sh", b"", None, "shell"),
        ("a.bash", b"", None, "shell"),
        ("tool", b"#!/usr/bin/env python3", None, "python"),
        ("tool", b"#!/usr/bin/python3.11 -u", None, "python"),
        ("tool", b"#!/bin/bash", None, "shell"),
        ("tool", b"#!/bin/sh -e", None, "shell"),
        ("tool", b"#! /usr/bin/env bash", None, "shell"),
        ("a.sh", b"#!/usr/bin/env python3", None, "shell"),  # the extension wins
        ("a.py", b"", "shell", "shell"),  # --runtime wins over everything
    ],
)
def test_choose_runtime(
    filename: str, first_line: bytes, explicit: str | None, expected: str
) -> None:
    assert choose_runtime(PROFILES, filename, first_line, explicit).name == expected


def test_choose_runtime_unknown_explicit_lists_known() -> None:
    with pytest.raises(ConfigError) as info:
        choose_runtime(PROFILES, "a.py", b"", "ruby")
    assert str(info.value) == "unknown runtime 'ruby'; known runtimes: python, shell"


@pytest.mark.parametrize("first_line", [b"", b"#!/usr/bin/env ruby", b"#!", b"echo hi"])
def test_choose_runtime_undecidable_is_a_clear_error(first_line: bytes) -> None:
    with pytest.raises(ConfigError) as info:
        choose_runtime(PROFILES, "tool.rb", first_line)
    message = str(info.value)
    assert "cannot tell the runtime of 'tool.rb'" in message
    assert "pass --runtime, known runtimes: python, shell" in message


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (b"def run(x, y):\n    return x + y\n", True),
        (b"import os\n\nasync def run():\n    pass\n", True),
        (b"def run (**kw): pass\n", True),
        (b"print('no function')\n", False),
        (b"def runner():\n    pass\n", False),
        (b"class A:\n    def run(self):\n        pass\n", False),
        (b"# def run(x):\n", False),
        (b"x = 'def run(y)'\n", False),
    ],
)
def test_defines_run(code: bytes, expected: bool) -> None:
    assert defines_run(code) is expected
