"""Action parameters: parsing from the command line, schema defaults and checks, encodings.

Everything here is pure and cheap to import: `attune exec` starts on this path, so yaml is
imported only inside the functions that read or write YAML.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from attune.errors import InputError
from attune.models import ParameterFormat
from attune.schema_form import declared_properties, schema_form

_JSON_TYPES = ("string", "integer", "number", "boolean", "array", "object", "null")


def _json_type(value: Any) -> str:
    """The JSON Schema name of a value's type, as used in error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def _is_type(value: Any, name: str) -> bool:
    actual = _json_type(value)
    return actual == name or (name == "number" and actual == "integer")


def _parse_value(text: str) -> Any:
    """JSON when it parses (`1`, `true`, `{"a":1}`), else the text itself.

    NaN and Infinity stay text: they are not JSON and could not be delivered as such.
    """
    from attune.jsonsafe import DataInvalid, decode_json

    try:
        return decode_json(text, what="parameter value", strict=True)
    except DataInvalid:
        return text


def parse_kv_params(
    items: Sequence[str], schema: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """`--params name=value` items -> a dict; later items override earlier ones.

    Dotted names stay literal (no nesting): an action's parameter may contain a dot. When
    a schema is given and declares a parameter `string`, text that happens to parse as
    JSON (`zip=1234`) is kept as text unless the parsed type is also allowed.
    """
    props, _ = _schema_properties(schema)
    params: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep:
            raise InputError(f"parameter {item!r}: expected NAME=VALUE")
        if not name:
            raise InputError(f"parameter {item!r}: empty name")
        value = _parse_value(text)
        allowed = _declared_types(props.get(name))
        if allowed and "string" in allowed and not any(_is_type(value, t) for t in allowed):
            value = text
        params[name] = value
    return params


def parse_params_json(text: str, source: str = "parameters JSON") -> dict[str, Any]:
    """A JSON object of parameters; `source` names where it came from in errors."""
    from attune.jsonsafe import DataInvalid, decode_json

    try:
        data = decode_json(text, what=source, strict=True)
    except DataInvalid as exc:
        raise InputError(f"{source}: invalid JSON: {exc}") from None
    return _as_params(data, source)


def _parse_yaml(text: str, source: str) -> Any:
    from attune.yamlsafe import load_yaml

    return load_yaml(text, source=source)


def load_params_file(path: Path) -> dict[str, Any]:
    """Parameters from a `.json` or `.yaml`/`.yml` file; other names try JSON, then YAML."""
    source = f"parameters file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{source}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InputError(f"{source}: not UTF-8 text") from None
    suffix = path.suffix.lower()
    if suffix == ".json":
        return parse_params_json(text, source)
    if suffix not in (".yaml", ".yml"):
        from attune.jsonsafe import DataInvalid, decode_json

        try:
            data = decode_json(text, what=source, strict=True)
        except DataInvalid:
            pass
        else:
            return _as_params(data, source)
    return _as_params(_parse_yaml(text, source), source)


def _as_params(data: Any, source: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a mapping of parameters, got {_json_type(data)}")
    _check_plain(data, source, "")
    return data


def _check_plain(value: Any, source: str, where: str) -> None:
    """Parameters travel as JSON: refuse what YAML can hold but JSON cannot (sets, bytes)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InputError(f"{source}: key {key!r} at {where or '/'} is not a string")
            _check_plain(item, source, f"{where}/{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_plain(item, source, f"{where}/{index}")
    elif value is not None and not isinstance(value, str | int | float | bool):
        raise InputError(f"{source}: value at {where} is a {type(value).__name__}, not JSON")


# --- schema -------------------------------------------------------------------------


def _schema_properties(
    schema: Mapping[str, Any] | None,
) -> tuple[dict[str, Mapping[str, Any]], list[str]]:
    """(properties, required names) from either schema form pack metadata uses.

    JSON-Schema form: `{"type": "object", "properties": {...}, "required": [...]}`.
    Flat StackStorm form: `{name: {"type": ..., "required": true, ...}}`, recognised by
    having no `properties` and only mapping values. `required: true` on a property is
    honoured in both forms.
    """
    form = schema_form(schema)
    if form == "none" or schema is None:
        return {}, []
    if form == "json-schema":
        props = schema.get("properties") or {}
        required = schema.get("required") or []
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise InputError("parameter schema: 'required' must be a list of names")
    else:
        props, required = declared_properties(schema), []
    if not isinstance(props, Mapping) or not all(isinstance(p, Mapping) for p in props.values()):
        raise InputError("parameter schema: 'properties' must map names to mappings")
    names = list(required)
    names += [n for n, p in props.items() if p.get("required") is True and n not in names]
    return dict(props), names


def _declared_types(prop: Mapping[str, Any] | None) -> list[str]:
    """Declared type names; unknown names are ignored rather than failing every run."""
    if not prop:
        return []
    declared = prop.get("type")
    names = declared if isinstance(declared, list) else [declared]
    return [t for t in names if t in _JSON_TYPES]


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _same(a: Any, b: Any) -> bool:
    """JSON equality: `true` is not `1`, `1` is `1.0`."""
    return isinstance(a, bool) == isinstance(b, bool) and bool(a == b)


def _is_secret_marker(value: Any) -> bool:
    return isinstance(value, Mapping) and value.get("$attune_secret") is True


def _check(value: Any, prop: Mapping[str, Any], path: str, secret: bool, out: list[str]) -> None:
    """Append each way `value` breaks `prop`; secret values are never echoed."""
    where = f"parameter {path!r}"
    got = _json_type(value) if secret else f"{_json_type(value)} {_show(value)}"
    allowed = _declared_types(prop)
    if allowed and not any(_is_type(value, t) for t in allowed):
        out.append(f"{where}: expected {' or '.join(allowed)}, got {got}")
        return
    enum = prop.get("enum")
    if isinstance(enum, list) and not any(_same(value, e) for e in enum):
        choices = ", ".join(_show(e) for e in enum)
        out.append(f"{where}: must be one of {choices}, got {got}")
        return
    items = prop.get("items")
    if isinstance(value, list | tuple) and isinstance(items, Mapping):
        for index, item in enumerate(value):
            _check(item, items, f"{path}[{index}]", secret, out)
    if isinstance(value, Mapping) and "properties" in prop:
        props, required = _schema_properties(prop)
        out.extend(f"parameter {f'{path}.{n}'!r}: required" for n in required if n not in value)
        for name, sub in props.items():
            if name in value:
                _check(value[name], sub, f"{path}.{name}", secret or sub.get("secret") is True, out)


def apply_schema(schema: Mapping[str, Any] | None, params: Mapping[str, Any]) -> dict[str, Any]:
    """Fill defaults, then check required names, types and enums of the given values.

    Parameters the schema does not declare pass through: the reference worker delivers
    them too. Defaults come from the pack and are not type-checked, so a sloppy default
    does not make every run fail. A secret marker (docs/protocol.md §8) passes the checks; it is
    replaced by the real value later. All problems are reported in one InputError.
    """
    props, required = _schema_properties(schema)
    result = dict(params)
    for name, prop in props.items():
        if name not in result and "default" in prop:
            result[name] = copy.deepcopy(prop["default"])
    problems = [f"parameter {name!r}: required" for name in required if name not in result]
    for name, prop in props.items():
        if name in params and not _is_secret_marker(params[name]):
            _check(params[name], prop, name, prop.get("secret") is True, problems)
    if problems:
        raise InputError("; ".join(problems))
    return result


# --- encodings (docs/protocol.md §7) ---------------------------------------------------------


def _json_text(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InputError(f"parameters cannot be encoded as JSON: {exc}") from None


def _scalar_text(value: Any) -> str:
    """Text of a value for dotenv and env: strings as-is, JSON for everything else."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return _json_text(value)


_QUOTE = "'"
_QUOTE_ESCAPED = "'\\''"  # close the quote, a literal quote, reopen: shell-safe
# Names that can be a dotenv key or part of a PARAM_ variable: ASCII only, so that no
# two names differ only in how a locale folds or upper-cases them (`ß` -> `SS`).
_DOTENV_KEY = re.compile(r"[A-Za-z0-9_.\-]+")


def _flatten(params: Mapping[str, Any], prefix: str, out: dict[str, str]) -> None:
    """Nested objects become `a.b` keys; an empty object writes nothing, like the reference."""
    for key, value in params.items():
        name = f"{prefix}{key}"
        if not _DOTENV_KEY.fullmatch(name):
            raise InputError(
                f"parameter {name!r}: name cannot be written as a dotenv key "
                "(ASCII letters, digits, '_', '.' and '-' only)"
            )
        if isinstance(value, Mapping):
            _flatten(value, f"{name}.", out)
        elif name in out:
            raise InputError(
                f"parameter {name!r}: two parameters become the same dotenv key "
                "(a nested object and a dotted name); rename one or use json"
            )
        else:
            out[name] = _scalar_text(value)


def encode_params(params: Mapping[str, Any], fmt: ParameterFormat) -> bytes:
    """Parameters as delivered to the action on stdin or in the parameter file.

    dotenv lines end in `\\n` (the reference omits the last one) so `while read` loops
    see every line; values are single-quoted and keys are restricted to word characters,
    `.` and `-`, so a sourced file cannot run anything.
    """
    if fmt == "json":
        return (_json_text(params) + "\n").encode("utf-8")
    if fmt == "yaml":
        import yaml

        try:
            text = yaml.safe_dump(
                dict(params), allow_unicode=True, sort_keys=False, default_flow_style=False
            )
        except yaml.YAMLError as exc:
            raise InputError(f"parameters cannot be encoded as YAML: {exc}") from None
        return text.encode("utf-8")
    if fmt == "dotenv":
        flat: dict[str, str] = {}
        _flatten(params, "", flat)
        lines = sorted(f"{k}='{v.replace(_QUOTE, _QUOTE_ESCAPED)}'" for k, v in flat.items())
        return "".join(line + "\n" for line in lines).encode("utf-8")
    raise InputError(f"unknown parameter format {fmt!r}: expected json, yaml or dotenv")


_ENV_UNSAFE = re.compile(r"[^A-Z0-9_]")
# execve() refuses one string over 128 KiB and all of them over a quarter of the stack
# limit (2 MiB by default): larger parameters stay on stdin / in the parameter file.
PARAM_ENV_MAX_BYTES = 32 * 1024
PARAM_ENV_TOTAL_BYTES = 256 * 1024
NOT_IN_ENV = "ATTUNE_PARAMS_NOT_IN_ENV"


def shell_env(params: Mapping[str, Any]) -> dict[str, str]:
    """Each parameter as `PARAM_<NAME>`, for shell actions that read the environment.

    Names that collide after normalising (`a-b`, `a_b`) keep the first in sorted order,
    so the result does not depend on the order the parameters arrived in. A parameter
    whose name is not ASCII (`_DOTENV_KEY`), whose value is over PARAM_ENV_MAX_BYTES, or
    that would take the total over PARAM_ENV_TOTAL_BYTES is left out; their names are
    listed, comma-separated, in ATTUNE_PARAMS_NOT_IN_ENV (they are on stdin as always).
    """
    env: dict[str, str] = {}
    left_out: list[str] = []
    total = 0
    for name in sorted(params):
        value = params[name]
        text = value if isinstance(value, str) else _scalar_text(value)
        if "\0" in text:
            raise InputError(f"parameter {name!r}: a NUL byte cannot be put in the environment")
        size = len(text.encode("utf-8", "surrogatepass"))
        if (
            not _DOTENV_KEY.fullmatch(name)
            or size > PARAM_ENV_MAX_BYTES
            or total + size > PARAM_ENV_TOTAL_BYTES
        ):
            left_out.append(name)
            continue
        key = "PARAM_" + _ENV_UNSAFE.sub("_", name.upper())
        if key not in env:
            env[key] = text
            total += size
    if left_out:
        # Non-ASCII names as JSON escapes: the environment stays ASCII.
        shown = (n if _DOTENV_KEY.fullmatch(n) else json.dumps(n)[1:-1] for n in left_out)
        env[NOT_IN_ENV] = ",".join(shown)
    return env


# An execution's env_vars reach the action only under names of this shape (upper-case
# ASCII, 1 to 64 characters) and outside the families below: everything that a shell,
# an interpreter, the dynamic loader or libc reads before (or while) the action's own
# code runs, and the names the worker sets itself. docs/actions.md has the table.
_ENV_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
ENV_VALUE_MAX_BYTES = 32 * 1024
ENV_TOTAL_BYTES = 256 * 1024
# fmt: off
_ENV_FAMILIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # family: (exact names, name prefixes)
    "worker": (("PATH", "HOME", "LANG", "TMPDIR", "PWD", "OLDPWD", "SHELL", "USER",
                "LOGNAME", "TERM"), ("ATTUNE_", "PARAM_")),
    "shell": (("ENV", "IFS", "GLOBIGNORE", "CDPATH", "SHELLOPTS", "BASHOPTS", "POSIXLY_CORRECT",
               "PROMPT_COMMAND", "PROMPT_DIRTRIM", "INPUTRC", "MAIL", "MAILPATH", "MAILCHECK",
               "TMOUT", "SHLVL", "FUNCNEST", "EXECIGNORE", "FIGNORE", "HOSTFILE", "TIMEFORMAT",
               "OPTIND", "OPTARG", "OPTERR", "FPATH", "ZDOTDIR", "EDITOR", "VISUAL", "PAGER",
               "MANPAGER", "BROWSER", "TERMINFO", "TERMCAP", "COLUMNS", "LINES"),
              ("PS", "BASH", "HIST", "COMP_", "KSH_", "READLINE", "LESS", "SSH_", "GIT_",
               "SUDO_", "XDG_", "DBUS_")),
    "loader and libc": (("GCONV_PATH", "GETCONF_DIR", "HOSTALIASES", "LOCALDOMAIN",
                         "RES_OPTIONS", "NLSPATH", "LOCPATH", "TZ", "TZDIR", "LANGUAGE",
                         "NIS_PATH", "RESOLV_HOST_CONF", "POSIXLY_CORRECT", "TMP", "TEMP"),
                        ("LD_", "LC_", "GLIBC_", "MALLOC_", "GMON_", "NSS_")),
    "interpreters": (("CLASSPATH", "JAVA_HOME"),
                     ("PYTHON", "PERL", "RUBY", "GEM_", "BUNDLE", "NODE_", "NPM_", "COREPACK_",
                      "JAVA_", "JDK_", "LUA_", "TCL", "GUILE_", "PHP", "R_", "OPENSSL_", "SSL_",
                      "CURL_", "WGET", "PIP_", "VIRTUAL_ENV", "CONDA", "DENO_", "BUN_", "GO")),
}
# fmt: on
# Option, search-path, library, configuration-file and home variables of any tool:
# NODE_OPTIONS, RUBYOPT, PERL5OPT, JAVA_TOOL_OPTIONS, MANPATH, PERL5LIB, OPENSSL_CONF,
# PIP_CONFIG_FILE, NPMRC, GNUPGHOME...: a tool the action runs would obey them.
_ENV_TOOL_SUFFIXES = (
    "OPT",
    "OPTS",
    "OPTIONS",
    "PATH",
    "LIB",
    "LIBS",
    "CONF",
    "CONFIG",
    "RC",
    "_FILE",
    "HOME",
    "_PRELOAD",
)  # fmt: skip


def env_name_refusal(name: str) -> str | None:
    """Why an execution's env_vars may not set `name`; None when it may."""
    if _ENV_NAME.fullmatch(name) is None:
        return "not a name of 1-64 upper-case letters, digits and '_', starting with a letter"
    for family, (names, prefixes) in _ENV_FAMILIES.items():
        if name in names or name.startswith(prefixes):
            return f"read by the {family}"
    if name.endswith(_ENV_TOOL_SUFFIXES):
        return "an option, search path, library, configuration file or home of a tool"
    return None


def context_env(
    *,
    exec_id: str | int,
    action_ref: str,
    pack_ref: str,
    delivery: str,
    fmt: str,
    env_vars: Mapping[str, Any] | None,
) -> dict[str, str]:
    """The execution context variables, then the execution's own `env_vars` (docs/protocol.md §7).

    `env_vars` entries are skipped when the value is not a string, holds a NUL or is
    longer than ENV_VALUE_MAX_BYTES, or when `env_name_refusal` refuses the name: a
    caller must not be able to run code before (or beside) the action's own, e.g. with
    `PS4='$(...)'` under `set -x`, and must not override what the worker sets.
    """
    env = {
        "ATTUNE_EXEC_ID": str(exec_id),
        "ATTUNE_ACTION": action_ref,
        "ATTUNE_PACK_REF": pack_ref,
        "ATTUNE_PARAMETER_DELIVERY": delivery,
        "ATTUNE_PARAMETER_FORMAT": fmt,
    }
    total = 0
    for name, value in (env_vars or {}).items():
        if not (isinstance(name, str) and isinstance(value, str) and "\0" not in value):
            continue
        size = len(value.encode("utf-8", "surrogatepass"))
        if (
            size <= ENV_VALUE_MAX_BYTES
            and total + size <= ENV_TOTAL_BYTES
            and env_name_refusal(name) is None
        ):
            env[name] = value
            total += size
    return env
