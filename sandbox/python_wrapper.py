"""Runs inside the sandbox: import a Python action, call run(**params), report the value.

The return value travels through /attune/out/result.json rather than stdout, so the
action can print freely. Only the standard library of /usr/bin/python3 is available
here; this file must stay importable by a bare interpreter started with -I.
"""

import importlib.util
import json
import os
import sys
import traceback

RESULT_PATH = "/attune/out/result.json"


def _write_report(report):
    data = json.dumps(report, ensure_ascii=False, allow_nan=False).encode("utf-8")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(RESULT_PATH, flags, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _read_params():
    delivery = os.environ.get("ATTUNE_PARAMETER_DELIVERY", "stdin")
    fmt = os.environ.get("ATTUNE_PARAMETER_FORMAT", "json")
    if delivery == "file":
        with open(os.environ["ATTUNE_PARAMETER_FILE"], encoding="utf-8") as handle:
            text = handle.read()
    else:
        text = sys.stdin.readline()
    if not text.strip():
        return {}
    if fmt == "yaml":
        import yaml  # present only where the profile provides it

        return yaml.safe_load(text) or {}
    if fmt == "dotenv":
        params = {}
        for line in text.splitlines():
            key, _, value = line.partition("=")
            if value.startswith("'") and value.endswith("'"):
                value = value[1:-1].replace("'\\''", "'")
            params[key] = value
        return params
    return json.loads(text)


def main(path):
    try:
        params = _read_params()
        if not isinstance(params, dict):
            raise TypeError("parameters must be a JSON object")
    except Exception as exc:  # noqa: BLE001 - reported, not hidden
        _write_report({"ok": False, "error": f"Invalid parameters: {exc}"})
        return 2
    sys.argv = [path]
    sys.path.insert(0, os.path.dirname(path))
    try:
        spec = importlib.util.spec_from_file_location("action", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["action"] = module
        spec.loader.exec_module(module)
        value = module.run(**params)
        if hasattr(value, "__await__"):
            import asyncio

            value = asyncio.run(value)
    except SystemExit as exc:
        if exc.code in (None, 0):
            value = None
        else:
            raise
    except BaseException as exc:  # noqa: BLE001 - the action's failure is the result
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
        print(error, file=sys.stderr)
        _write_report({"ok": False, "error": error})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
