"""`attune exec`: one local run through exactly the worker's sandbox, no services."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from attune.errors import AttuneError, InputError, SandboxUnavailable

EXIT_BY_STATUS = {"completed": 0, "failed": 1, "timeout": 3, "cancelled": 4}


def default_run_dir() -> Path:
    """Where per-run directories go; must be traversable by the slot uids."""
    configured = os.environ.get("ATTUNE__SANDBOX__RUN_DIR")
    if configured:
        return Path(configured)
    if os.geteuid() == 0:
        return Path("/var/lib/attune/runs")
    return Path(f"/tmp/attune-runs-{os.geteuid()}")


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.echo(f"attune: error: {message}", err=True)
    return typer.Exit(code)


def explain() -> int:
    from attune.runner import host

    facts = host.detect()
    for layer in facts.layers:
        mark = "OK  " if layer.active else ("FAIL" if layer.required else "WARN")
        typer.echo(f"{mark} {layer.name:<18} {layer.detail}")
    return 0 if facts.usable else 2


def _collect_params(
    params: list[str], params_json: str | None, params_file: Path | None
) -> dict[str, Any]:
    from attune.params import load_params_file, parse_kv_params, parse_params_json

    merged: dict[str, Any] = {}
    if params_file is not None:
        merged.update(load_params_file(params_file))
    if params_json is not None:
        merged.update(parse_params_json(params_json))
    merged.update(parse_kv_params(params))
    return merged


def _metadata(code_path: Path) -> dict[str, Any] | None:
    """The action's metadata file beside the code (same name, .yaml), if any."""
    for candidate in (code_path.with_suffix(".yaml"), code_path.with_suffix(".yml")):
        if candidate.is_file():
            import yaml

            try:
                data = yaml.safe_load(candidate.read_text())
            except (OSError, yaml.YAMLError) as exc:
                raise InputError(f"{candidate}: cannot read action metadata: {exc}") from None
            if not isinstance(data, dict):
                raise InputError(f"{candidate}: action metadata must be a mapping")
            return data
    return None


async def run_file(
    code_path: Path,
    *,
    params: dict[str, Any],
    runtime: str | None,
    profile_name: str | None,
    timeout: float | None,
    output_format: str | None,
) -> dict[str, Any]:
    """Resolve everything about a local file and run it; returns status + result."""
    from attune.params import apply_schema
    from attune.runner import host
    from attune.runner.profiles import choose_runtime, load_profiles, resolve_profile
    from attune.runner.sandbox import RunSpec, Sandbox

    try:
        code = code_path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{code_path}: no such file") from None
    except OSError as exc:
        raise InputError(f"{code_path}: cannot read: {exc.strerror}") from None
    profiles = load_profiles()
    if profile_name is not None:
        profile = resolve_profile(profile_name, profiles)
    else:
        first_line = code.split(b"\n", 1)[0]
        profile = choose_runtime(profiles, code_path.name, first_line, runtime)
    meta = _metadata(code_path) or {}
    params = apply_schema(meta.get("parameters"), params)
    fmt = output_format or meta.get("output_format") or "json"
    delivery = meta.get("parameter_delivery", "stdin")
    param_format = meta.get("parameter_format", "json")
    seconds = timeout or meta.get("timeout") or profile.default_timeout
    facts = host.detect()
    if not facts.usable:
        raise SandboxUnavailable("sandbox unavailable: " + "; ".join(facts.problems()))
    sandbox = Sandbox(facts, default_run_dir())
    env = {
        "ATTUNE_EXEC_ID": "local",
        "ATTUNE_ACTION": meta.get("ref") or code_path.stem,
        "ATTUNE_PACK_REF": str(meta.get("ref", "")).partition(".")[0] or "local",
    }
    spec = RunSpec(
        profile=profile, code=code, code_name=code_path.name, params=params, env=env,
        parameter_delivery=delivery, parameter_format=param_format,
        output_format=fmt,  # type: ignore[arg-type]
    )
    outcome = await sandbox.run(spec, timeout=float(seconds))
    return {"status": outcome.status, "result": outcome.result}


def register(app: typer.Typer) -> None:
    @app.command("exec")
    def exec_command(
        file: Annotated[Optional[Path], typer.Argument(help="The action file (.py, .sh, or a shebang script).")] = None,
        params: Annotated[list[str], typer.Option("--params", "-p", help="k=v; v is JSON when it parses, else a string. Repeatable.")] = [],
        params_json: Annotated[Optional[str], typer.Option("--params-json", help="All parameters as one JSON object.")] = None,
        params_file: Annotated[Optional[Path], typer.Option("--params-file", help="Parameters from a JSON or YAML file.")] = None,
        runtime: Annotated[Optional[str], typer.Option("--runtime", "-r", help="python or shell (default: by extension, then shebang).")] = None,
        profile: Annotated[Optional[str], typer.Option("--profile", help="A profile name or a path to a profile TOML file.")] = None,
        timeout: Annotated[Optional[float], typer.Option("--timeout", "-t", help="Wall-clock limit in seconds.")] = None,
        output_format: Annotated[Optional[str], typer.Option("--output-format", help="text, json, yaml or jsonl (default json).")] = None,
        status_only: Annotated[bool, typer.Option("--with-status", help="Print {status, result} instead of the result alone.")] = False,
        explain_layers: Annotated[bool, typer.Option("--explain", help="Print which isolation layers this host provides, then exit.")] = False,
    ) -> None:
        """Run one action locally in the sandbox and print its result JSON.

        Exit codes: 0 succeeded, 1 the action failed, 2 usage or input error,
        3 timed out, 4 cancelled (Ctrl-C).
        """
        if explain_layers:
            raise typer.Exit(explain())
        if file is None:
            raise _fail("missing the action FILE argument (see attune exec --help)")
        if output_format not in (None, "text", "json", "yaml", "jsonl"):
            raise _fail(f"--output-format must be text, json, yaml or jsonl, not {output_format!r}")
        if timeout is not None and timeout <= 0:
            raise _fail("--timeout must be positive")
        import trio

        try:
            collected = _collect_params(params, params_json, params_file)
            outcome = trio.run(lambda: run_file(
                file, params=collected, runtime=runtime, profile_name=profile,
                timeout=timeout, output_format=output_format))
        except AttuneError as exc:
            raise _fail(str(exc)) from None
        except KeyboardInterrupt:
            raise _fail("interrupted", 4) from None
        shown = outcome if status_only else outcome["result"]
        sys.stdout.write(json.dumps(shown, ensure_ascii=False) + "\n")
        raise typer.Exit(EXIT_BY_STATUS[outcome["status"]])
