import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from attune.errors import InputError
from attune.params import (
    ENV_VALUE_MAX_BYTES,
    PARAM_ENV_MAX_BYTES,
    PARAM_ENV_TOTAL_BYTES,
    apply_schema,
    context_env,
    encode_params,
    env_name_refusal,
    load_params_file,
    parse_kv_params,
    parse_params_json,
    shell_env,
)
from attune.secrets import schema_secret_paths

# --- parse_kv_params --------------------------------------------------------------


def test_kv_values_are_json_when_they_parse_else_text() -> None:
    params = parse_kv_params(
        [
            "x=1",
            "name=World",
            "flag=true",
            'obj={"a":1}',
            "ratio=2.5",
            "nothing=null",
            "list=[1,2]",
            'quoted="1"',
        ]
    )
    assert params == {
        "x": 1,
        "name": "World",
        "flag": True,
        "obj": {"a": 1},
        "ratio": 2.5,
        "nothing": None,
        "list": [1, 2],
        "quoted": "1",
    }


def test_kv_empty_value_is_an_empty_string() -> None:
    assert parse_kv_params(["x="]) == {"x": ""}


def test_kv_splits_on_the_first_equals_only() -> None:
    assert parse_kv_params(["expr=a=b"]) == {"expr": "a=b"}


def test_kv_nan_and_infinity_stay_text() -> None:
    assert parse_kv_params(["a=NaN", "b=Infinity"]) == {"a": "NaN", "b": "Infinity"}


def test_kv_later_items_override_earlier() -> None:
    assert parse_kv_params(["x=1", "x=2"]) == {"x": 2}


def test_kv_dotted_names_are_kept_literal() -> None:
    assert parse_kv_params(["a.b=1"]) == {"a.b": 1}


def test_kv_missing_equals_is_an_input_error_naming_the_item() -> None:
    with pytest.raises(InputError, match=r"parameter 'oops': expected NAME=VALUE"):
        parse_kv_params(["x=1", "oops"])


def test_kv_empty_name_is_an_input_error_naming_the_item() -> None:
    with pytest.raises(InputError, match=r"parameter '=5': empty name"):
        parse_kv_params(["=5"])


def test_kv_keeps_text_for_a_string_parameter_that_looks_like_json() -> None:
    schema = {"properties": {"zip": {"type": "string"}, "n": {"type": "integer"}}}
    assert parse_kv_params(["zip=1234", "n=5"], schema) == {"zip": "1234", "n": 5}


def test_kv_keeps_json_when_its_type_is_also_allowed() -> None:
    schema = {"properties": {"v": {"type": ["integer", "string"]}}}
    assert parse_kv_params(["v=5"], schema) == {"v": 5}


# --- parse_params_json / load_params_file -----------------------------------------


def test_params_json_parses_an_object() -> None:
    assert parse_params_json('{"a": 1, "b": [true]}') == {"a": 1, "b": [True]}


def test_params_json_must_be_an_object() -> None:
    with pytest.raises(
        InputError, match="--params-json: expected a mapping of parameters, got array"
    ):
        parse_params_json("[1]", "--params-json")


def test_params_json_invalid_names_its_source() -> None:
    with pytest.raises(InputError, match="--params-json: invalid JSON"):
        parse_params_json("{nope", "--params-json")


def test_params_file_json_by_extension(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text('{"a": 1}')
    assert load_params_file(path) == {"a": 1}


def test_params_file_yaml_by_extension(tmp_path: Path) -> None:
    path = tmp_path / "p.yml"
    path.write_text("a: 1\nb: [x, y]\n")
    assert load_params_file(path) == {"a": 1, "b": ["x", "y"]}


def test_params_file_without_known_extension_tries_json_then_yaml(tmp_path: Path) -> None:
    as_json = tmp_path / "p1"
    as_json.write_text('{"a": "1"}')
    as_yaml = tmp_path / "p2.txt"
    as_yaml.write_text("a: 1\n")
    assert load_params_file(as_json) == {"a": "1"}
    assert load_params_file(as_yaml) == {"a": 1}


def test_params_file_yaml_dates_stay_strings(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("day: 2024-01-02\n")
    assert load_params_file(path) == {"day": "2024-01-02"}


def test_params_file_must_hold_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("- 1\n")
    with pytest.raises(InputError, match=r"p\.yaml: expected a mapping of parameters, got array"):
        load_params_file(path)


def test_params_file_missing_is_an_input_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"parameters file .*nope\.json: cannot read"):
        load_params_file(tmp_path / "nope.json")


def test_params_file_bad_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text("{bad")
    with pytest.raises(InputError, match=r"p\.json: invalid JSON"):
        load_params_file(path)


def test_params_file_bad_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("a: [unclosed\n")
    with pytest.raises(InputError, match=r"p\.yaml: invalid YAML"):
        load_params_file(path)


def test_params_file_rejects_values_json_cannot_hold(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("a: !!binary aGVsbG8=\n")
    with pytest.raises(InputError, match="value at /a is a bytes, not JSON"):
        load_params_file(path)


def test_params_file_rejects_non_string_keys(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("1: a\n")
    with pytest.raises(InputError, match="key 1 at / is not a string"):
        load_params_file(path)


# --- apply_schema ------------------------------------------------------------------

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "a": {"type": "integer", "description": "first"},
        "b": {"type": "integer", "default": 2},
        "mode": {"type": "string", "enum": ["fast", "slow"], "default": "fast"},
        "password": {"type": "string", "secret": True},
    },
    "required": ["a"],
}


def test_schema_fills_defaults_and_keeps_given_values() -> None:
    assert apply_schema(SCHEMA, {"a": 1}) == {"a": 1, "b": 2, "mode": "fast"}
    assert apply_schema(SCHEMA, {"a": 1, "b": 5}) == {"a": 1, "b": 5, "mode": "fast"}


def test_schema_defaults_are_copies() -> None:
    schema = {"properties": {"tags": {"type": "array", "default": []}}}
    first = apply_schema(schema, {})
    first["tags"].append("x")
    assert apply_schema(schema, {}) == {"tags": []}


def test_schema_does_not_change_its_input() -> None:
    params = {"a": 1}
    apply_schema(SCHEMA, params)
    assert params == {"a": 1}


def test_schema_extra_params_pass_through() -> None:
    assert apply_schema(SCHEMA, {"a": 1, "extra": "x"})["extra"] == "x"


def test_no_schema_returns_the_params_unchanged() -> None:
    assert apply_schema(None, {"x": 1}) == {"x": 1}
    assert apply_schema({}, {"x": 1}) == {"x": 1}
    assert apply_schema({"type": "object"}, {"x": 1}) == {"x": 1}


def test_schema_missing_required_is_reported() -> None:
    with pytest.raises(InputError, match=r"^parameter 'a': required$"):
        apply_schema(SCHEMA, {})


def test_schema_collects_every_violation_in_one_error() -> None:
    with pytest.raises(InputError) as info:
        apply_schema(SCHEMA, {"b": "a", "mode": "medium"})
    assert str(info.value) == (
        "parameter 'a': required; "
        "parameter 'b': expected integer, got string 'a'; "
        "parameter 'mode': must be one of 'fast', 'slow', got string 'medium'"
    )


@pytest.mark.parametrize(
    ("type_name", "good", "bad"),
    [
        ("string", ["", "x"], [1, None, True]),
        ("integer", [0, -3, 10**20], [True, 2.0, "1", None]),
        ("number", [1, 2.5], [True, "1.5", None]),
        ("boolean", [True, False], [0, 1, "true"]),
        ("array", [[], [1, "a"]], [{}, "[]"]),
        ("object", [{}, {"k": 1}], [[], "{}"]),
        ("null", [None], [0, "", False]),
    ],
)
def test_schema_type_checks(type_name: str, good: list[Any], bad: list[Any]) -> None:
    schema = {"properties": {"v": {"type": type_name}}}
    for value in good:
        assert apply_schema(schema, {"v": value}) == {"v": value}
    for value in bad:
        with pytest.raises(InputError, match=f"parameter 'v': expected {type_name}, got"):
            apply_schema(schema, {"v": value})


def test_boolean_is_not_an_integer_in_the_message() -> None:
    with pytest.raises(InputError, match="expected integer, got boolean true"):
        apply_schema({"properties": {"n": {"type": "integer"}}}, {"n": True})


def test_schema_type_may_be_a_list() -> None:
    schema = {"properties": {"v": {"type": ["string", "null"]}}}
    assert apply_schema(schema, {"v": None}) == {"v": None}
    with pytest.raises(InputError, match="expected string or null, got integer 1"):
        apply_schema(schema, {"v": 1})


def test_schema_unknown_type_names_are_not_enforced() -> None:
    assert apply_schema({"properties": {"v": {"type": "int"}}}, {"v": "x"}) == {"v": "x"}


def test_enum_does_not_confuse_true_with_1() -> None:
    schema = {"properties": {"v": {"enum": [1, 2]}}}
    assert apply_schema(schema, {"v": 1}) == {"v": 1}
    with pytest.raises(InputError, match="must be one of 1, 2, got boolean true"):
        apply_schema(schema, {"v": True})


def test_secret_values_are_never_echoed_in_errors() -> None:
    with pytest.raises(InputError) as info:
        apply_schema(SCHEMA, {"a": 1, "password": 123456789})
    assert str(info.value) == "parameter 'password': expected string, got integer"
    assert "123456789" not in str(info.value)


def test_secret_marker_passes_the_checks_until_restored() -> None:
    marker = {"$attune_secret": True, "redacted": True}
    assert apply_schema(SCHEMA, {"a": 1, "password": marker})["password"] == marker


def test_defaults_are_not_type_checked() -> None:
    schema = {"properties": {"n": {"type": "integer", "default": "oops"}}}
    assert apply_schema(schema, {}) == {"n": "oops"}


def test_array_items_and_nested_objects_are_checked() -> None:
    schema = {
        "properties": {
            "ports": {"type": "array", "items": {"type": "integer"}},
            "target": {
                "type": "object",
                "properties": {"host": {"type": "string"}},
                "required": ["host"],
            },
        }
    }
    with pytest.raises(InputError) as info:
        apply_schema(schema, {"ports": [80, "x"], "target": {}})
    assert str(info.value) == (
        "parameter 'ports[1]': expected integer, got string 'x'; parameter 'target.host': required"
    )


def test_long_values_are_shortened_in_errors() -> None:
    with pytest.raises(InputError) as info:
        apply_schema({"properties": {"n": {"type": "integer"}}}, {"n": "x" * 500})
    assert len(str(info.value)) < 120


def test_flat_stackstorm_schema_is_understood() -> None:
    flat = {
        "name": {"type": "string", "required": True},
        "count": {"type": "integer", "default": 3},
        "token": {"type": "string", "secret": True},
    }
    assert apply_schema(flat, {"name": "x"}) == {"name": "x", "count": 3}
    with pytest.raises(InputError) as info:
        apply_schema(flat, {"count": "3"})
    assert str(info.value) == (
        "parameter 'name': required; parameter 'count': expected integer, got string '3'"
    )
    assert schema_secret_paths(flat) == ["/token"]


def test_flat_schema_may_have_a_parameter_called_type() -> None:
    flat = {"type": {"type": "string", "default": "a"}}
    assert apply_schema(flat, {}) == {"type": "a"}


def test_per_property_required_is_honoured_in_json_schema_form() -> None:
    schema = {"properties": {"x": {"type": "string", "required": True}}}
    with pytest.raises(InputError, match="parameter 'x': required"):
        apply_schema(schema, {})


def test_malformed_schema_is_an_input_error() -> None:
    with pytest.raises(InputError, match="parameter schema: 'properties' must map"):
        apply_schema({"properties": {"x": "string"}}, {})
    with pytest.raises(InputError, match="parameter schema: 'required' must be a list"):
        apply_schema({"properties": {}, "required": "x"}, {})


def test_secret_paths_of_a_json_schema_are_its_secret_properties() -> None:
    schema = {
        "properties": {
            "user": {"type": "string"},
            "password": {"type": "string", "secret": True},
            "api_key": {"type": "string", "secret": True},
            "maybe": {"type": "string", "secret": "yes"},
        }
    }
    assert schema_secret_paths(schema) == ["/api_key", "/password"]
    assert schema_secret_paths(None) == []


# --- encode_params -------------------------------------------------------------------


def test_json_encoding_is_one_compact_line_plus_newline() -> None:
    data = encode_params({"name": "Wörld", "n": 1, "o": {"a": [1, 2]}}, "json")
    assert data == '{"name":"Wörld","n":1,"o":{"a":[1,2]}}\n'.encode()
    assert data.count(b"\n") == 1


def test_json_encoding_escapes_newlines_inside_values() -> None:
    assert encode_params({"t": "a\nb"}, "json") == b'{"t":"a\\nb"}\n'


def test_json_encoding_refuses_nan() -> None:
    with pytest.raises(InputError, match="cannot be encoded as JSON"):
        encode_params({"x": float("nan")}, "json")


def test_yaml_encoding_round_trips() -> None:
    params = {"name": "Wörld", "n": 1, "o": {"a": [1, 2]}, "b": True, "z": None}
    data = encode_params(params, "yaml")
    assert yaml.safe_load(data.decode()) == params
    assert "Wörld" in data.decode()


def test_dotenv_encoding_quotes_flattens_and_sorts() -> None:
    params = {
        "url": "https://example.com",
        "count": 42,
        "ratio": 2.5,
        "enabled": True,
        "off": False,
        "nothing": None,
        "headers": {"Content-Type": "application/json", "deep": {"x": 1}},
        "list": [1, "a"],
        "empty": {},
    }
    assert encode_params(params, "dotenv").decode() == (
        "count='42'\n"
        "enabled='true'\n"
        "headers.Content-Type='application/json'\n"
        "headers.deep.x='1'\n"
        "list='[1,\"a\"]'\n"
        "nothing=''\n"
        "off='false'\n"
        "ratio='2.5'\n"
        "url='https://example.com'\n"
    )


def test_dotenv_escapes_single_quotes_the_shell_way() -> None:
    assert encode_params({"message": "It's a test"}, "dotenv") == b"message='It'\\''s a test'\n"


def test_dotenv_file_is_safe_to_source_in_a_shell() -> None:
    nasty = 'it\'s $(touch /tmp/pwned) `id` "q"\nline2 \\ end'
    data = encode_params({"msg": nasty}, "dotenv")
    script = data.decode() + 'printf %s "$msg"'
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout == nasty


def test_dotenv_refuses_a_name_that_could_inject_a_line() -> None:
    with pytest.raises(InputError, match="cannot be written as a dotenv key"):
        encode_params({"x='1';id;y": "v"}, "dotenv")
    with pytest.raises(InputError, match="cannot be written as a dotenv key"):
        encode_params({"a": {"b\nc": 1}}, "dotenv")


def test_empty_params_encode_to_the_empty_forms() -> None:
    assert encode_params({}, "json") == b"{}\n"
    assert encode_params({}, "dotenv") == b""
    assert yaml.safe_load(encode_params({}, "yaml")) == {}


def test_unknown_format_is_an_input_error() -> None:
    with pytest.raises(InputError, match="unknown parameter format 'xml'"):
        encode_params({}, "xml")  # type: ignore[arg-type]


# --- shell_env ---------------------------------------------------------------------


def test_shell_env_names_and_values() -> None:
    env = shell_env(
        {
            "name": "World",
            "count": 1,
            "ratio": 2.5,
            "flag": True,
            "off": False,
            "none": None,
            "obj": {"a": [1, "é"]},
            "list": [1, 2],
            "my-param.x": "v",
        }
    )
    assert env == {
        "PARAM_NAME": "World",
        "PARAM_COUNT": "1",
        "PARAM_RATIO": "2.5",
        "PARAM_FLAG": "true",
        "PARAM_OFF": "false",
        "PARAM_NONE": "",
        "PARAM_OBJ": '{"a":[1,"é"]}',
        "PARAM_LIST": "[1,2]",
        "PARAM_MY_PARAM_X": "v",
    }


def test_shell_env_refuses_nul_bytes() -> None:
    with pytest.raises(InputError, match=r"parameter 'x': a NUL byte cannot be put in the env"):
        shell_env({"x": "a\0b"})


def test_shell_env_nul_inside_an_object_is_escaped_json() -> None:
    assert shell_env({"o": {"k": "a\0b"}}) == {"PARAM_O": '{"k":"a\\u0000b"}'}


def test_shell_env_collisions_resolve_the_same_way_whatever_the_order() -> None:
    assert shell_env({"a_b": 2, "a-b": 1}) == shell_env({"a-b": 1, "a_b": 2}) == {"PARAM_A_B": "1"}


# --- context_env -------------------------------------------------------------------


def ctx(env_vars: dict[str, Any] | None) -> dict[str, str]:
    return context_env(
        exec_id=12,
        action_ref="demo.add",
        pack_ref="demo",
        delivery="stdin",
        fmt="json",
        env_vars=env_vars,
    )


def test_context_env_sets_the_attune_variables() -> None:
    assert ctx(None) == {
        "ATTUNE_EXEC_ID": "12",
        "ATTUNE_ACTION": "demo.add",
        "ATTUNE_PACK_REF": "demo",
        "ATTUNE_PARAMETER_DELIVERY": "stdin",
        "ATTUNE_PARAMETER_FORMAT": "json",
    }


def test_context_env_adds_string_env_vars() -> None:
    env = ctx({"GREETING": "hi", "API_URL": "https://x", "RETRIES2": "3", "X": "1"})
    assert env["GREETING"] == "hi"
    assert env["API_URL"] == "https://x"
    assert env["RETRIES2"] == "3" and env["X"] == "1"


@pytest.mark.parametrize("name", ["_private", "lower_ok1", "http_proxy", "A" * 65])
def test_context_env_names_are_upper_case_ascii_and_short(name: str) -> None:
    assert name not in ctx({name: "x"})
    assert env_name_refusal(name) is not None


def test_context_env_skips_huge_values() -> None:
    assert "BIG" not in ctx({"BIG": "x" * (ENV_VALUE_MAX_BYTES + 1)})
    assert "BIG" in ctx({"BIG": "x" * ENV_VALUE_MAX_BYTES})


def test_context_env_skips_non_strings() -> None:
    env = ctx({"N": 1, "B": True, "O": {"a": 1}, "Z": None})
    assert set(env) == set(ctx(None))


def test_context_env_cannot_override_the_attune_context() -> None:
    env = ctx({"ATTUNE_EXEC_ID": "99", "ATTUNE_PARAMETER_FILE": "/etc/shadow"})
    assert env["ATTUNE_EXEC_ID"] == "12"
    assert "ATTUNE_PARAMETER_FILE" not in env


@pytest.mark.parametrize(
    "name",
    [
        "PATH",
        "HOME",
        "LANG",
        "TMPDIR",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "PYTHONHOME",
        "BASH_ENV",
        "ENV",
        "BASH_FUNC_x%%",
        "SHELLOPTS",
        "GLIBC_TUNABLES",
        "IFS",
    ],
)
def test_context_env_cannot_redirect_the_interpreter(name: str) -> None:
    assert name not in ctx({name: "/tmp/evil"})


# One or more names of every family an interpreter, the loader or libc reads.
FAMILIES = {
    "bash prompts and hooks": ["PS0", "PS1", "PS2", "PS3", "PS4", "PROMPT_COMMAND"],
    "bash and sh start-up": ["ENV", "BASH_ENV", "BASH_FUNC_F", "BASH_XTRACEFD", "BASHOPTS"],
    "shell parsing": ["IFS", "GLOBIGNORE", "CDPATH", "SHELLOPTS", "POSIXLY_CORRECT", "FPATH"],
    "shell history and input": ["HISTFILE", "HISTCONTROL", "INPUTRC", "MAILPATH", "TMOUT"],
    "tools that run commands": ["EDITOR", "VISUAL", "PAGER", "LESSOPEN", "GIT_SSH_COMMAND"],
    "dynamic loader": ["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "LD_DEBUG"],
    "libc": ["GCONV_PATH", "LOCPATH", "NLSPATH", "HOSTALIASES", "RES_OPTIONS", "LOCALDOMAIN",
             "GLIBC_TUNABLES", "MALLOC_CHECK_", "TZ", "LC_ALL", "LANGUAGE", "TMPDIR"],
    "python": ["PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "PYTHONINSPECT", "PYTHONWARNINGS"],
    "perl": ["PERL5OPT", "PERL5LIB", "PERLLIB", "PERL5DB", "PERL_UNICODE"],
    "ruby": ["RUBYOPT", "RUBYLIB", "GEM_PATH", "GEM_HOME", "BUNDLE_GEMFILE"],
    "node": ["NODE_OPTIONS", "NODE_PATH", "NODE_REPL_EXTERNAL_MODULE", "NPM_CONFIG_PREFIX"],
    "jvm and others": ["JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH", "LUA_INIT",
                       "TCLLIBPATH", "OPENSSL_CONF", "SSL_CERT_FILE", "MAVEN_OPTS"],
    "tool options and configuration": ["CURL_HOME", "WGETRC", "PIP_CONFIG_FILE", "GNUPGHOME",
                                       "SOME_TOOL_OPTIONS", "MANPATH", "XDG_CONFIG_HOME"],
    "the worker's own": ["PATH", "HOME", "LANG", "ATTUNE_SECRETS_FILE", "PARAM_X", "SHELL"],
}  # fmt: skip


@pytest.mark.parametrize(
    "name", [n for names in FAMILIES.values() for n in names], ids=lambda n: str(n)
)
def test_context_env_refuses_every_interpreter_family(name: str) -> None:
    assert name not in ctx({name: "$(touch /tmp/pwned)"})
    assert env_name_refusal(name) is not None


@pytest.mark.parametrize("name", ["1ABC", "A-B", "A B", "A=B", "", "É"])
def test_context_env_skips_invalid_names(name: str) -> None:
    assert name not in ctx({name: "x"})


def test_context_env_skips_values_with_nul() -> None:
    assert "X" not in ctx({"X": "a\0b"})


# --- import cost -------------------------------------------------------------------


def test_importing_params_does_not_import_yaml() -> None:
    code = "import sys, attune.params; print('yaml' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_json_encoding_matches_the_stdlib_compact_form() -> None:
    params = {"b": [1, {"c": None}], "a": "x"}
    assert (
        encode_params(params, "json") == (json.dumps(params, separators=(",", ":")) + "\n").encode()
    )


# --- names and sizes that cannot be environment variables or dotenv keys --------------


def test_shell_env_leaves_large_values_on_stdin_only_and_says_so() -> None:
    big = "x" * (PARAM_ENV_MAX_BYTES + 1)
    env = shell_env({"big": big, "small": "s"})
    assert "PARAM_BIG" not in env
    assert env["PARAM_SMALL"] == "s"
    assert env["ATTUNE_PARAMS_NOT_IN_ENV"] == "big"


def test_shell_env_total_is_bounded() -> None:
    chunk = "y" * PARAM_ENV_MAX_BYTES
    params = {f"p{i:02d}": chunk for i in range(20)}
    env = shell_env(params)
    kept = [k for k in env if k.startswith("PARAM_")]
    assert sum(len(env[k]) for k in kept) <= PARAM_ENV_TOTAL_BYTES
    assert len(kept) == PARAM_ENV_TOTAL_BYTES // PARAM_ENV_MAX_BYTES
    assert env["ATTUNE_PARAMS_NOT_IN_ENV"].split(",") == [f"p{i:02d}" for i in range(8, 20)]


def test_shell_env_leaves_out_non_ascii_names() -> None:
    env = shell_env({"é": 1, "straße": 2, "ok": 3})
    assert env == {"PARAM_OK": "3", "ATTUNE_PARAMS_NOT_IN_ENV": "stra\\u00dfe,\\u00e9"}
    assert all(k.isascii() and v.isascii() for k, v in env.items() if k != "PARAM_OK")


@pytest.mark.parametrize("name", ["é", "straße", "Ｘ", "x\u200by", "٣"])
def test_dotenv_refuses_non_ascii_names(name: str) -> None:
    with pytest.raises(InputError, match="ASCII letters, digits"):
        encode_params({name: 1}, "dotenv")
    with pytest.raises(InputError, match="ASCII letters, digits"):
        encode_params({"a": {name: 1}}, "dotenv")


@pytest.mark.parametrize(
    "params",
    [{"a": {"b": 1}, "a.b": 2}, {"a.b": 2, "a": {"b": 1}}, {"a": {"b.c": 1, "b": {"c": 2}}}],
)
def test_dotenv_refuses_two_parameters_that_become_one_key(params: dict[str, Any]) -> None:
    with pytest.raises(InputError, match="become the same dotenv key"):
        encode_params(params, "dotenv")
