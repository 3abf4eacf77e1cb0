"""Pack loading, installing and code resolution (files only, no services)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from attune.errors import ExecutionError, InputError
from attune.packs import install_pack, load_pack, read_code, resolve_code

DEMO = Path(__file__).resolve().parents[2] / "examples" / "packs" / "demo"

GOOD_ACTION = (
    "ref: demo.thing\nlabel: Thing\ndescription: d\nrunner_type: python\nentry_point: add.py\n"
)


@pytest.fixture
def pack(tmp_path: Path) -> Path:
    """A writable copy of the demo pack."""
    dst = tmp_path / "src" / "demo"
    shutil.copytree(DEMO, dst)
    return dst


def _action(pack: Path, text: str, name: str = "thing") -> Path:
    path = pack / "actions" / f"{name}.yaml"
    path.write_text(text)
    return path


# --- the demo pack --------------------------------------------------------------------


def test_demo_pack_loads_with_all_its_actions() -> None:
    spec = load_pack(DEMO)
    assert (spec.ref, spec.label, spec.version) == ("demo", "Demo", "1.0.0")
    by_ref = {a.ref: a for a in spec.actions}
    assert set(by_ref) == {
        "demo.add",
        "demo.hello",
        "demo.greet_script",
        "demo.fail",
        "demo.sleep",
        "demo.shell_json",
        "demo.secret_hash",
    }
    assert by_ref["demo.add"].runner_type == "python"
    assert by_ref["demo.add"].parameters == {
        "type": "object",
        "properties": {
            "x": {"type": "number", "description": "First addend"},
            "y": {"type": "number", "description": "Second addend"},
        },
        "required": ["x", "y"],
    }
    assert by_ref["demo.hello"].runner_type == "shell"
    assert by_ref["demo.greet_script"].output_format == "json"
    assert by_ref["demo.shell_json"].output_format == "json"
    assert by_ref["demo.sleep"].timeout == 60
    assert by_ref["demo.add"].parameter_delivery == "stdin"
    assert by_ref["demo.add"].parameter_format == "json"
    assert by_ref["demo.add"].name == "add"


def test_demo_python_actions_behave_as_documented() -> None:
    namespace: dict[str, object] = {}
    exec((DEMO / "actions" / "add.py").read_text(), namespace)
    assert namespace["run"](2, 3) == 5  # type: ignore[operator]
    exec((DEMO / "actions" / "fail.py").read_text(), namespace)
    with pytest.raises(RuntimeError, match="boom"):
        namespace["run"]()  # type: ignore[operator]
    assert "def run" not in (DEMO / "actions" / "greet_script.py").read_text()


# --- pack.yaml ------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["ref", "version"])
def test_pack_yaml_missing_required_field_names_file_and_field(pack: Path, field: str) -> None:
    meta = pack / "pack.yaml"
    lines = [ln for ln in meta.read_text().splitlines() if not ln.startswith(f"{field}:")]
    meta.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as info:
        load_pack(pack)
    assert str(meta) in str(info.value) and field in str(info.value)


@pytest.mark.parametrize("ref", ["Demo", "1demo", "de mo", "demo.x", "-demo", ""])
def test_pack_ref_must_be_lowercase_identifier(pack: Path, ref: str) -> None:
    meta = pack / "pack.yaml"
    text = meta.read_text().replace("ref: demo", f"ref: {ref!r}")
    meta.write_text(text)
    with pytest.raises(InputError, match="ref"):
        load_pack(pack)


def test_pack_version_must_be_a_string(pack: Path) -> None:
    meta = pack / "pack.yaml"
    meta.write_text(meta.read_text().replace("version: 1.0.0", "version: 1.0"))
    with pytest.raises(InputError, match=r"version"):
        load_pack(pack)


def test_pack_yaml_unknown_key_is_refused_with_a_suggestion(pack: Path) -> None:
    meta = pack / "pack.yaml"
    meta.write_text(meta.read_text() + "runtime_dep: [shell]\n")
    with pytest.raises(InputError, match=r"unknown key 'runtime_dep'; did you mean 'runtime_deps'"):
        load_pack(pack)


def test_pack_yaml_label_defaults_to_the_ref(pack: Path) -> None:
    meta = pack / "pack.yaml"
    meta.write_text(meta.read_text().replace("label: Demo\n", ""))
    assert load_pack(pack).label == "demo"


def test_pack_yaml_legacy_names_fold_into_canonical_keys(pack: Path) -> None:
    meta = pack / "pack.yaml"
    text = meta.read_text().replace("label: Demo", "name: Old Demo").replace("tags:", "keywords:")
    meta.write_text(text + "config_schema: {a: {type: string}}\nmetadata: {category: x}\n")
    spec = load_pack(pack)
    assert (spec.label, spec.meta.tags) == ("Old Demo", ["example"])
    assert spec.meta.conf_schema == {"a": {"type": "string"}}
    assert spec.meta.meta == {"category": "x"}


def test_pack_yaml_legacy_name_conflicting_with_canonical_is_refused(pack: Path) -> None:
    meta = pack / "pack.yaml"
    meta.write_text(meta.read_text() + "name: Other\n")
    with pytest.raises(InputError, match="'label' and its legacy name 'name'"):
        load_pack(pack)


def test_python_dependencies_must_be_requirement_strings(pack: Path) -> None:
    meta = pack / "pack.yaml"
    meta.write_text(meta.read_text() + "meta: {python_dependencies: [1]}\n")
    with pytest.raises(InputError, match=r"meta\.python_dependencies"):
        load_pack(pack)


def test_missing_pack_yaml_is_named(pack: Path) -> None:
    (pack / "pack.yaml").unlink()
    with pytest.raises(InputError, match=r"pack\.yaml.*missing"):
        load_pack(pack)


def test_invalid_yaml_names_the_file(pack: Path) -> None:
    (pack / "pack.yaml").write_text("ref: [unclosed\n")
    with pytest.raises(InputError, match=r"pack\.yaml.*invalid YAML"):
        load_pack(pack)


LAUGHS = "".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n']
    + [
        f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n"
        for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    ]
)


@pytest.mark.parametrize("where", ["pack.yaml", "actions/thing.yaml"])
@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (LAUGHS, "aliases expanded"),
        ("ref: demo.thing\nparameters: " + "{a: " * 70 + "1" + "}" * 70 + "\n", "deeper than 64"),
        ("tags: [" + "x, " * 100_001 + "x]\n", "more than 100000 values"),
    ],
    ids=["alias-bomb", "deep", "wide"],
)
def test_metadata_bombs_are_refused_naming_the_file_and_the_bound(
    pack: Path, where: str, text: str, needle: str
) -> None:
    (pack / where).write_text(text)
    with pytest.raises(InputError, match=needle) as caught:
        load_pack(pack)
    assert where.split("/")[-1] in str(caught.value)


def test_metadata_dates_stay_text(pack: Path) -> None:
    text = (pack / "pack.yaml").read_text()
    (pack / "pack.yaml").write_text(
        "\n".join(line for line in text.splitlines() if not line.startswith("version:"))
        + "\nversion: 2024-01-01\n"
    )
    assert load_pack(pack).version == "2024-01-01"


def test_pack_yaml_that_is_not_a_mapping_is_refused(pack: Path) -> None:
    (pack / "pack.yaml").write_text("- a\n- b\n")
    with pytest.raises(InputError, match="mapping"):
        load_pack(pack)


def test_not_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a pack directory"):
        load_pack(tmp_path / "nope")


# --- actions/*.yaml -------------------------------------------------------------------


def test_a_valid_extra_action_loads(pack: Path) -> None:
    _action(pack, GOOD_ACTION)
    assert "demo.thing" in {a.ref for a in load_pack(pack).actions}


def test_unknown_action_key_names_file_and_key(pack: Path) -> None:
    path = _action(pack, GOOD_ACTION + "timout: 5\n")
    with pytest.raises(InputError) as info:
        load_pack(pack)
    assert str(path) in str(info.value) and "timout" in str(info.value)
    assert "did you mean 'timeout'" in str(info.value)


@pytest.mark.parametrize("field", ["ref", "entry_point"])
def test_action_missing_required_field_names_file_and_field(pack: Path, field: str) -> None:
    text = "".join(ln + "\n" for ln in GOOD_ACTION.splitlines() if not ln.startswith(field))
    path = _action(pack, text)
    with pytest.raises(InputError) as info:
        load_pack(pack)
    assert str(path) in str(info.value) and field in str(info.value)


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("runner_type: 3", "runner_type"),
        ("enabled: maybe", "enabled"),
        ("timeout_seconds: 0", "timeout_seconds"),
        ("default_execution_permission_set_refs: x", "default_execution_permission_set_refs"),
        ("worker_tolerations: {}", "worker_tolerations"),
        ("accesses_mcp: 2", "accesses_mcp"),
        ("output: [1]", "output"),
        ("timeout: 0", "timeout"),
        ("timeout: -5", "timeout"),
        ("timeout: 1.5", "timeout"),
        ("timeout: true", "timeout"),
        ("parameter_delivery: argv", "parameter_delivery"),
        ("parameter_format: toml", "parameter_format"),
        ("output_format: xml", "output_format"),
        ("tags: notalist", "tags"),
        ("parameters: [1, 2]", "parameters"),
        ("output_schema: 3", "output_schema"),
    ],
)
def test_bad_action_field_values_name_file_and_field(pack: Path, line: str, field: str) -> None:
    key = line.split(":")[0]
    text = "".join(ln + "\n" for ln in GOOD_ACTION.splitlines() if not ln.startswith(key))
    path = _action(pack, text + line + "\n")
    with pytest.raises(InputError) as info:
        load_pack(pack)
    assert str(path) in str(info.value) and field in str(info.value)


@pytest.mark.parametrize("ref", ["other.thing", "demo.Thing", "demo.", "thing", "demo.a b"])
def test_action_ref_must_be_pack_ref_dot_lowercase_name(pack: Path, ref: str) -> None:
    path = _action(pack, GOOD_ACTION.replace("ref: demo.thing", f"ref: {ref!r}"))
    with pytest.raises(InputError) as info:
        load_pack(pack)
    assert str(path) in str(info.value) and "ref" in str(info.value)


def test_label_and_runner_type_default_like_the_reference(pack: Path) -> None:
    (pack / "actions" / "x.sh").write_text("echo hi\n")
    _action(pack, "ref: demo.my_thing\nentry_point: x.sh\n")
    spec = next(a for a in load_pack(pack).actions if a.ref == "demo.my_thing")
    assert (spec.display_label, spec.runner_type, spec.runtime) == ("My Thing", "shell", "shell")
    assert spec.enabled is True


def test_foreign_runner_type_loads_with_a_warning(pack: Path) -> None:
    _action(pack, GOOD_ACTION.replace("runner_type: python", "runner_type: nodejs"))
    spec = load_pack(pack)
    thing = next(a for a in spec.actions if a.ref == "demo.thing")
    assert thing.runtime is None
    assert any("nodejs" in w for w in spec.warnings)


def test_missing_shell_entry_point_loads_as_inline_code_with_a_warning(pack: Path) -> None:
    _action(pack, "ref: demo.thing\nrunner_type: shell\nentry_point: gone.sh\n")
    assert any("gone.sh" in w and "inline" in w for w in load_pack(pack).warnings)


def test_output_and_output_schema_must_agree(pack: Path) -> None:
    _action(pack, GOOD_ACTION + "output: {a: {type: string}}\noutput_schema: {type: number}\n")
    with pytest.raises(InputError, match="output_schema"):
        load_pack(pack)


def test_flat_parameters_with_non_boolean_secret_are_refused(pack: Path) -> None:
    _action(pack, GOOD_ACTION + "parameters: {token: {type: string, secret: 'yes'}}\n")
    with pytest.raises(InputError, match=r"parameters\.token\.secret"):
        load_pack(pack)


def test_duplicate_action_refs_are_refused(pack: Path) -> None:
    _action(pack, GOOD_ACTION.replace("demo.thing", "demo.add"))
    with pytest.raises(InputError, match="also defined"):
        load_pack(pack)


@pytest.mark.parametrize("entry", ["missing.py", "../pack.yaml", "/etc/passwd", "", "sub"])
def test_entry_point_must_be_an_existing_file_under_actions(pack: Path, entry: str) -> None:
    (pack / "actions" / "sub").mkdir()
    path = _action(pack, GOOD_ACTION.replace("entry_point: add.py", f"entry_point: {entry!r}"))
    with pytest.raises(InputError) as info:
        load_pack(pack)
    assert str(path) in str(info.value) and "entry_point" in str(info.value)


def test_entry_point_in_a_subdirectory_is_allowed(pack: Path) -> None:
    (pack / "actions" / "lib").mkdir()
    (pack / "actions" / "lib" / "x.py").write_text("def run():\n    return 1\n")
    _action(pack, GOOD_ACTION.replace("entry_point: add.py", "entry_point: lib/x.py"))
    assert any(a.entry_point == "lib/x.py" for a in load_pack(pack).actions)


@pytest.mark.parametrize(
    ("schema", "needle"),
    [
        ("{type: array}", "parameters.type"),
        ("{type: object, properties: [a]}", "parameters.properties"),
        ("{type: object, properties: {a: 1}}", "parameters.properties.a"),
        ("{type: object, properties: {a: {secret: 'yes'}}}", "secret"),
        ("{type: object, properties: {a: {}}, required: [b]}", "parameters.required"),
        ("{type: object, required: a}", "parameters.required"),
    ],
)
def test_parameters_must_be_an_object_schema(pack: Path, schema: str, needle: str) -> None:
    path = _action(pack, GOOD_ACTION + f"parameters: {schema}\n")
    with pytest.raises(InputError) as info:
        load_pack(pack)
    assert str(path) in str(info.value) and needle in str(info.value)


@pytest.mark.parametrize(
    ("schema", "needle"),
    [("{token: {type: string, secret: 'yes'}}", "parameters.token.secret")],
)
def test_flat_parameters_are_checked_like_the_json_schema_form(
    pack: Path, schema: str, needle: str
) -> None:
    path = _action(pack, GOOD_ACTION + f"parameters: {schema}\n")
    with pytest.raises(InputError) as info:
        load_pack(pack)
    assert str(path) in str(info.value) and needle in str(info.value)


def test_well_formed_flat_parameters_load(pack: Path) -> None:
    flat = "{name: {type: string, required: true}, token: {type: string, secret: true}}"
    _action(pack, GOOD_ACTION + f"parameters: {flat}\n")
    assert any(a.parameters and "token" in a.parameters for a in load_pack(pack).actions)


# --- special files ----------------------------------------------------------------------


def test_symlink_anywhere_in_the_pack_is_refused(pack: Path) -> None:
    (pack / "actions" / "evil.py").symlink_to("/etc/passwd")
    with pytest.raises(InputError, match=r"evil\.py.*symlink"):
        load_pack(pack)


def test_symlinked_directory_is_refused(pack: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (pack / "lib").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InputError, match="symlink"):
        load_pack(pack)


def test_hard_link_is_refused(pack: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    os.link(outside, pack / "actions" / "linked.py")
    with pytest.raises(InputError, match=r"linked\.py.*hard-linked"):
        load_pack(pack)


def test_fifo_is_refused(pack: Path) -> None:
    os.mkfifo(pack / "actions" / "pipe")
    with pytest.raises(InputError, match="pipe"):
        load_pack(pack)


def test_nested_special_file_is_found(pack: Path) -> None:
    deep = pack / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "link").symlink_to("/")
    with pytest.raises(InputError, match=r"a/b/c/link"):
        load_pack(pack)


# --- install ----------------------------------------------------------------------------


def test_install_copies_with_readable_modes(pack: Path, tmp_path: Path) -> None:
    os.chmod(pack / "actions" / "add.py", 0o600)
    os.chmod(pack / "actions", 0o700)
    base = tmp_path / "packs"
    target = install_pack(load_pack(pack), base)
    assert target == base / "demo"
    assert (target / "actions" / "add.py").read_text() == (pack / "actions" / "add.py").read_text()
    for root, dirs, files in os.walk(target):
        for d in dirs:
            assert stat.S_IMODE(os.stat(Path(root) / d).st_mode) == 0o755
        for f in files:
            assert stat.S_IMODE(os.stat(Path(root) / f).st_mode) == 0o644
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o755
    assert load_pack(target).ref == "demo"


def test_install_replaces_the_old_copy_and_leaves_no_temp_dirs(pack: Path, tmp_path: Path) -> None:
    base = tmp_path / "packs"
    install_pack(load_pack(pack), base)
    (base / "demo" / "stale.txt").write_text("old")
    (pack / "actions" / "add.py").write_text("def run(x, y):\n    return x * y\n")
    target = install_pack(load_pack(pack), base)
    assert not (target / "stale.txt").exists()
    assert "x * y" in (target / "actions" / "add.py").read_text()
    assert sorted(p.name for p in base.iterdir()) == ["demo"]


def test_install_onto_itself_is_a_noop(pack: Path) -> None:
    base = pack.parent
    before = (pack / "actions" / "add.py").stat().st_ino
    assert install_pack(load_pack(pack), base) == pack
    assert (pack / "actions" / "add.py").stat().st_ino == before


def test_install_rechecks_the_source_tree(pack: Path, tmp_path: Path) -> None:
    spec = load_pack(pack)
    (pack / "actions" / "late.py").symlink_to("/etc/shadow")
    with pytest.raises(InputError, match="symlink"):
        install_pack(spec, tmp_path / "packs")
    assert not (tmp_path / "packs" / "demo").exists()


# --- code resolution ----------------------------------------------------------------------


@pytest.fixture
def base(tmp_path: Path) -> Path:
    packs = tmp_path / "packs"
    install_pack(load_pack(DEMO), packs)
    return packs


def test_resolve_finds_the_action_file(base: Path) -> None:
    code = resolve_code(base, "demo", "add.py", "python")
    assert code.inline is None
    assert code.path == (base / "demo" / "actions" / "add.py").resolve()
    assert b"def run(x, y)" in read_code(code.path)


@pytest.mark.parametrize("entry", ["../pack.yaml", "../../x", "a/../../b", "/etc/passwd"])
@pytest.mark.parametrize("runtime", ["python", "shell"])
def test_resolve_refuses_dotdot_and_absolute(base: Path, entry: str, runtime: str) -> None:
    with pytest.raises(ExecutionError):
        resolve_code(base, "demo", entry, runtime)


def test_resolve_refuses_a_symlink_that_leaves_the_pack(base: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.py"
    outside.write_text("x = 1\n")
    (base / "demo" / "actions" / "escape.py").symlink_to(outside)
    (base / "demo" / "actions" / "dir").symlink_to(tmp_path)
    for runtime in ("python", "shell"):
        with pytest.raises(ExecutionError, match="outside"):
            resolve_code(base, "demo", "escape.py", runtime)
        with pytest.raises(ExecutionError, match="outside"):
            resolve_code(base, "demo", "dir/secret.py", runtime)


def test_resolve_refuses_a_dangling_symlink_pointing_out(base: Path, tmp_path: Path) -> None:
    (base / "demo" / "actions" / "gone.sh").symlink_to(tmp_path / "does-not-exist")
    with pytest.raises(ExecutionError, match="outside"):
        resolve_code(base, "demo", "gone.sh", "shell")


def test_resolve_missing_python_file_names_the_path(base: Path) -> None:
    with pytest.raises(ExecutionError, match=r"demo/actions/nope\.py"):
        resolve_code(base, "demo", "nope.py", "python")


def test_resolve_missing_shell_file_is_inline_code(base: Path) -> None:
    assert resolve_code(base, "demo", "date", "shell").inline == "date"
    code = resolve_code(base, "demo", 'echo "hi" > /dev/null; cd .. && ls', "shell")
    assert (code.path, code.inline) == (None, 'echo "hi" > /dev/null; cd .. && ls')


def test_resolve_shell_file_wins_over_inline(base: Path) -> None:
    code = resolve_code(base, "demo", "hello.sh", "shell")
    assert code.path is not None and code.inline is None


@pytest.mark.parametrize("pack_ref", ["../demo", "Demo", "", "demo/actions"])
def test_resolve_refuses_a_bad_pack_ref(base: Path, pack_ref: str) -> None:
    with pytest.raises(ExecutionError):
        resolve_code(base, pack_ref, "add.py", "python")


def test_resolve_refuses_a_directory_entrypoint(base: Path) -> None:
    (base / "demo" / "actions" / "sub").mkdir()
    with pytest.raises(ExecutionError, match="regular file"):
        resolve_code(base, "demo", "sub", "python")


def test_resolve_refuses_empty_or_nul_entrypoints(base: Path) -> None:
    for entry in ("", "add.py\x00.txt"):
        with pytest.raises(ExecutionError):
            resolve_code(base, "demo", entry, "python")


# --- read_code ---------------------------------------------------------------------------


def test_read_code_refuses_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real.py"
    real.write_text("x = 1\n")
    link = tmp_path / "link.py"
    link.symlink_to(real)
    with pytest.raises(ExecutionError, match="symlink"):
        read_code(link)


def test_read_code_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ExecutionError, match="regular file"):
        read_code(fifo)


def test_read_code_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ExecutionError):
        read_code(tmp_path)


def test_read_code_enforces_the_size_cap(tmp_path: Path) -> None:
    big = tmp_path / "big.py"
    big.write_bytes(b"#" * 101)
    assert read_code(big, max_bytes=101) == b"#" * 101
    with pytest.raises(ExecutionError, match="larger"):
        read_code(big, max_bytes=100)


def test_read_code_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ExecutionError, match=r"absent\.py"):
        read_code(tmp_path / "absent.py")


def test_network_key_of_an_action_or_its_pack(pack: Path) -> None:
    _action(pack, GOOD_ACTION + "network: egress\n")
    spec = load_pack(pack)
    by_ref = {a.ref: a for a in spec.actions}
    assert spec.network_of(by_ref["demo.thing"]) == "egress"
    assert spec.network_of(by_ref["demo.add"]) == "none"
    meta = pack / "pack.yaml"
    meta.write_text(meta.read_text() + "network: egress\n")
    _action(pack, GOOD_ACTION + "network: none\n")
    spec = load_pack(pack)
    by_ref = {a.ref: a for a in spec.actions}
    assert spec.network_of(by_ref["demo.add"]) == "egress"  # the pack's default
    assert spec.network_of(by_ref["demo.thing"]) == "none"  # the action's own wins


def test_network_key_accepts_only_none_or_egress(pack: Path) -> None:
    path = _action(pack, GOOD_ACTION + "network: host\n")
    with pytest.raises(InputError) as info:
        load_pack(pack)
    assert str(path) in str(info.value) and "network" in str(info.value)
