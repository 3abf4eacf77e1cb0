"""Runs inside the sandbox: import a Python action, call run(**params), report the value.

The return value travels through /attune/out/result.json rather than stdout, so the
action can print freely: a file on the run's own small tmpfs, which the sandbox's pid 1
(attune-init) forwards to the worker once the action has ended. Only the standard
library of /usr/bin/python3 is available here; this file must stay importable by a
bare interpreter started with -I.

Start-up time is the cost of every Python run, so the success path imports nothing
beyond what the interpreter already loaded: the C `_json` codec instead of `json`
(which pulls in `re`), compile()+exec() instead of `importlib.util`, and `traceback`
only when something failed.
"""

import os
import sys

RESULT_PATH = "/attune/out/result.json"


class _DecodeContext:
    """What `_json.make_scanner` reads off a JSONDecoder, without importing json."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict = {}  # noqa: RUF012  (read by _json.make_scanner as a plain attribute)

    @staticmethod
    def parse_constant(name):
        raise ValueError(f"invalid JSON constant {name}")


def _not_serialisable(value):
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _json_codec():
    try:
        import _json
    except ImportError:  # a Python without the C accelerator
        import json

        return json.loads, lambda v: json.dumps(v, ensure_ascii=False, allow_nan=False)
    scan = _json.make_scanner(_DecodeContext())
    # markers {} keep the circular-reference check; allow_nan=False refuses NaN/inf.
    encode = _json.make_encoder(
        {}, _not_serialisable, _json.encode_basestring, None, ":", ",", False, False, False
    )
    blank = " \t\n\r"

    def loads(text):
        start = len(text) - len(text.lstrip(blank))
        try:
            value, end = scan(text, start)
        except StopIteration:
            raise ValueError("expecting a JSON value") from None
        if text[end:].strip(blank):
            raise ValueError(f"extra data after the JSON value at character {end}")
        return value

    def dumps(value):
        return "".join(encode(value, 0))

    return loads, dumps


_loads, _dumps = _json_codec()


def _write_report(report):
    text = _dumps(report)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate can only sit inside a JSON string: written as its \uXXXX
        # escape, the worker reads it back and stores U+FFFD (attune/jsonsafe.py).
        data = text.encode("utf-8", "backslashreplace")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    write_file(RESULT_PATH, flags, 0o600, data)


def write_file(path, flags, mode, data):
    """All of `data` into a file opened with `flags` (also the parked launcher's)."""
    fd = os.open(path, flags, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _read_params():
    delivery = os.environ.get("ATTUNE_PARAMETER_DELIVERY", "stdin")
    fmt = os.environ.get("ATTUNE_PARAMETER_FORMAT", "json")
    if delivery == "file":
        with open(os.environ["ATTUNE_PARAMETER_FILE"], encoding="utf-8") as handle:
            text = handle.read()
    else:
        # The worker writes the whole payload and closes stdin: yaml and dotenv span lines.
        text = sys.stdin.read()
    if not text.strip():
        return {}
    if fmt == "yaml":
        import yaml  # present only where the profile provides it

        return yaml.safe_load(text) or {}
    if fmt == "dotenv":
        return parse_dotenv(text)
    return _loads(text)


def parse_dotenv(text):
    """`key='value'` lines as the worker writes them: single-quoted, `'` as `'\\''`.

    Quoted values may span lines (a parameter with a newline), so this is a small
    shell-quote reader rather than a split on newlines.
    """
    params = {}
    i, n = 0, len(text)
    while i < n:
        if text[i] in "\n \t":
            i += 1
            continue
        eq = text.find("=", i)
        if eq < 0:
            raise ValueError(f"dotenv line without '=': {text[i:].splitlines()[0]!r}")
        key = text[i:eq].strip()
        i = eq + 1
        value = []
        while i < n and text[i] != "\n":
            if text[i] == "'":
                end = text.find("'", i + 1)
                if end < 0:
                    raise ValueError(f"unterminated quote in the value of {key!r}")
                value.append(text[i + 1 : end])
                i = end + 1
            elif text.startswith("\\'", i):
                value.append("'")
                i += 2
            else:
                value.append(text[i])
                i += 1
        params[key] = "".join(value)
    return params


def _wait_for_network():
    """Egress runs: the worker attaches the network while this interpreter starts; the
    action is loaded only after its "go" line. One byte out on fd 1, one line in on fd 0,
    unbuffered, so nothing of the parameters behind it is consumed."""
    os.write(1, b"r")
    line = b""
    while len(line) < 3 and not line.endswith(b"\n"):
        byte = os.read(0, 1)
        if not byte:
            break
        line += byte
    if line != b"go\n":
        os._exit(125)  # the worker gave up or died: the action never starts


def main(path):
    if os.environ.get("ATTUNE_NETWORK_GATE") == "stdio":
        _wait_for_network()
    try:
        params = _read_params()
        if not isinstance(params, dict):
            raise TypeError("parameters must be a JSON object")
    except Exception as exc:  # reported, not hidden
        _write_report({"ok": False, "error": f"Invalid parameters: {exc}"})
        return 2
    sys.argv = [path]
    sys.path.insert(0, os.path.dirname(path))
    sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))  # /attune: attune_secrets
    try:
        module = type(sys)("action")
        module.__file__ = path
        sys.modules["action"] = module
        with open(path, "rb") as handle:
            code = compile(handle.read(), path, "exec")
        exec(code, module.__dict__)
        value = module.run(**params)
        if hasattr(value, "__await__"):
            import asyncio

            value = asyncio.run(value)
    except SystemExit as exc:
        if exc.code in (None, 0):
            value = None
        else:
            raise
    except BaseException as exc:  # the action's failure is the result
        import traceback

        traceback.print_exc()
        message = str(exc)
        error = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
        _write_report({"ok": False, "error": error})
        return 1
    sys.stdout.flush()
    try:
        _write_report({"ok": True, "value": value})
    except (TypeError, ValueError) as exc:
        error = f"Return value is not JSON-serialisable: {exc}"
    except OSError as exc:
        import errno

        # /attune/out is a tmpfs a little larger than the result limit (ENOSPC beyond
        # it) and RLIMIT_FSIZE caps any one file (EFBIG): either way, too large.
        if exc.errno in (errno.ENOSPC, errno.EFBIG):
            error = "The return value is larger than the result size limit"
        else:
            error = f"Cannot write the return value: {exc.strerror or exc}"
    else:
        return 0
    print(error, file=sys.stderr)
    _write_report({"ok": False, "error": error})
    return 1


def exit_now(code):
    """End the process once the report is written, skipping the interpreter's teardown.

    Finalisation (module and object teardown) takes a few milliseconds that the run's
    answer would wait for, and the sandbox is thrown away anyway. It is skipped only
    when nothing of the action's can still need it: no atexit callback (logging,
    multiprocessing and others register one) and no other thread; the standard
    streams are flushed first. Otherwise the normal exit runs, as it always did.
    """
    import atexit  # built in: costs no import

    threading = sys.modules.get("threading")
    callbacks = getattr(atexit, "_ncallbacks", None)  # CPython's; unknown elsewhere
    if callbacks is None or callbacks() or (threading is not None and threading.active_count() > 1):
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105  (contextlib would be one more import on every run)
            stream.flush()
        except Exception:  # a stream the action closed or replaced: nothing to keep
            pass
    os._exit(code if isinstance(code, int) else 1)


if __name__ == "__main__":
    exit_now(main(sys.argv[1]))
