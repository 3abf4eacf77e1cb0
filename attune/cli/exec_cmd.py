"""`attune exec`: one local run through exactly the worker's sandbox, no services.

The start-up cost of this command is paid on every local run, so it does not go
through typer: `attune.cli.main` hands `exec` straight to the argparse parser here
(typer only lists it in `attune --help`). Nothing of the database, the broker, YAML or
rich is imported unless the run needs it.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast, get_args

from attune.cli import EXIT_BY_STATUS, EXIT_USAGE
from attune.errors import AttuneError, InputError, SandboxUnavailable
from attune.models import OutputFormat

if TYPE_CHECKING:
    import argparse

    from attune.runner.egress import EgressPolicy

OUTPUT_FORMATS: tuple[str, ...] = get_args(OutputFormat)


def default_run_dir() -> Path:
    """Where per-run directories go; must be traversable by the slot uids."""
    configured = os.environ.get("ATTUNE__SANDBOX__RUN_DIR")
    if configured:
        return Path(configured)
    if os.geteuid() == 0:
        return Path("/var/lib/attune/runs")
    return Path(f"/tmp/attune-runs-{os.geteuid()}")


def explain() -> int:
    from attune.runner import host

    facts = host.detect()
    for layer in facts.layers:
        mark = "OK  " if layer.active else ("FAIL" if layer.required else "WARN")
        print(f"{mark} {layer.name:<18} {layer.detail}")
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
            from attune.yamlsafe import METADATA_LIMITS, load_yaml

            try:
                with open(candidate, "rb") as handle:
                    raw = handle.read(METADATA_LIMITS.max_bytes + 1)
            except OSError as exc:
                raise InputError(f"{candidate}: cannot read action metadata: {exc}") from None
            data = load_yaml(raw, source=f"{candidate}: action metadata")
            if not isinstance(data, dict):
                raise InputError(f"{candidate}: action metadata must be a mapping")
            return data
    return None


def metadata_timeout(value: Any, code_path: Path) -> float | None:
    """The metadata `timeout`: a positive, finite number of seconds, or absent.

    `-1`, `0`, `.inf`, `.nan`, `true` or text are errors, never "no limit".
    """
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise InputError(
            f"{code_path.with_suffix('.yaml')}: timeout: must be a positive number of "
            f"seconds, got {value!r}"
        )
    return float(value)


async def run_file(
    code_path: Path,
    *,
    params: dict[str, Any],
    runtime: str | None,
    profile_name: str | None,
    timeout: float | None,
    output_format: str | None,
    secrets: dict[str, str] | None = None,
    network: EgressPolicy | None = None,
) -> dict[str, Any]:
    """Resolve everything about a local file and run it; returns status + result.

    `secrets` are delivered like keystore secrets in the worker (ATTUNE_SECRETS_FILE,
    attune_secrets()) and masked in the printed result.
    """
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
    if meta.get("network") == "egress" and network is None:
        raise InputError(
            f"{code_path}: the action declares `network: egress`; run it with "
            "--network egress (egress rules from --config FILE's network section)"
        )
    params = apply_schema(meta.get("parameters"), params)
    fmt = _output_format(output_format or meta.get("output_format") or "json")
    delivery = meta.get("parameter_delivery", "stdin")
    param_format = meta.get("parameter_format", "json")
    for key, value, allowed in (
        ("output_format", fmt, OUTPUT_FORMATS),
        ("parameter_delivery", delivery, ("stdin", "file")),
        ("parameter_format", param_format, ("json", "yaml", "dotenv")),
    ):
        if value not in allowed:
            raise InputError(
                f"{code_path.with_suffix('.yaml')}: {key}: must be one of "
                f"{', '.join(allowed)}, got {value!r}"
            )
    seconds = timeout or metadata_timeout(meta.get("timeout"), code_path) or profile.default_timeout
    facts = host.detect(probe_version=False)
    if not facts.usable:
        raise SandboxUnavailable("sandbox unavailable: " + "; ".join(facts.problems()))
    sandbox = Sandbox(facts, default_run_dir())
    env = {
        "ATTUNE_EXEC_ID": "local",
        "ATTUNE_ACTION": meta.get("ref") or code_path.stem,
        "ATTUNE_PACK_REF": str(meta.get("ref", "")).partition(".")[0] or "local",
    }
    spec = RunSpec(
        profile=profile,
        code=code,
        code_name=code_path.name,
        params=params,
        env=env,
        parameter_delivery=delivery,
        parameter_format=param_format,
        output_format=fmt,
        secrets=dict(secrets or {}),
        network=network,
    )
    outcome = await sandbox.run(spec, timeout=float(seconds))
    if network is not None:
        from attune.runner.network import reap_all_dying

        await reap_all_dying()  # the result is ready; the user-mode network is gone too
    result = outcome.result
    if secrets:
        from attune.secrets.masking import Masker, redact_result

        result, _ = redact_result(result, Masker(secrets.values()), meta.get("output_schema"))
    return {"status": outcome.status, "result": result}


def _output_format(value: Any) -> OutputFormat:
    """The metadata's or the option's output format, checked against the known ones."""
    if value not in OUTPUT_FORMATS:
        raise InputError(f"output_format must be one of {', '.join(OUTPUT_FORMATS)}")
    return cast(OutputFormat, value)


def _parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="attune exec",
        description="Run one action locally in the sandbox and print its result JSON. "
        "Exit codes: 0 succeeded, 1 the action failed, 2 usage or input error, "
        "3 timed out, 4 cancelled (Ctrl-C).",
    )
    parser.add_argument(
        "file", nargs="?", type=Path, help="the action file (.py, .sh, or a script with a shebang)"
    )
    parser.add_argument(
        "-p",
        "--params",
        action="append",
        default=[],
        metavar="K=V",
        help="a parameter; V is JSON when it parses, else a string (repeatable)",
    )
    parser.add_argument("--params-json", metavar="JSON", help="all parameters as one object")
    parser.add_argument(
        "--params-file", type=Path, metavar="FILE", help="parameters from a JSON or YAML file"
    )
    parser.add_argument("-r", "--runtime", help="python or shell (default: extension, shebang)")
    parser.add_argument("--profile", help="a profile name or a path to a profile TOML file")
    parser.add_argument("-t", "--timeout", type=float, help="wall-clock limit in seconds")
    parser.add_argument(
        "--output-format",
        choices=OUTPUT_FORMATS,
        help="how stdout of a script is parsed (default json)",
    )
    parser.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a secret for the action (attune_secrets(), $ATTUNE_SECRETS_FILE)",
    )
    parser.add_argument(
        "--secrets-file",
        type=Path,
        metavar="FILE",
        help="secrets from a JSON or YAML object of names to strings",
    )
    parser.add_argument(
        "--network",
        choices=("none", "egress"),
        default="none",
        help="egress: outbound connections the policy allows (docs/network.md); "
        "default none: loopback only",
    )
    parser.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="'CIDR|HOST [PROTO/PORT]'",
        help="with --network egress: the allowlist of this run, replacing network.allow "
        "of --config (repeatable)",
    )
    parser.add_argument(
        "--dns",
        choices=("resolver", "hosts", "off"),
        help="with --network egress: DNS mode (default: network.dns of --config, resolver)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="worker config whose network section gives the egress policy",
    )
    parser.add_argument(
        "--with-status",
        action="store_true",
        help="print {status, result} instead of the result alone",
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="print which isolation layers this host provides, then exit",
    )
    return parser


def _egress_policy(args: argparse.Namespace) -> EgressPolicy | None:
    """`--network egress`: the config's network section, with --allow/--dns on top."""
    if args.network != "egress":
        if args.allow or args.dns:
            raise InputError("--allow and --dns need --network egress")
        return None
    from attune.config import load_config
    from attune.runner.egress import parse_policy
    from attune.runner.host import egress_detail

    usable, detail = egress_detail()
    if not usable or os.geteuid() != 0:
        raise SandboxUnavailable(f"--network egress: {detail if not usable else 'needs root'}")
    section = load_config(args.config, os.environ).network
    allow = args.allow or section.allow
    return parse_policy(allow, section.deny, args.dns or section.dns)


def _collect_secrets(items: list[str], path: Path | None) -> dict[str, str]:
    from attune.params import load_params_file

    secrets: dict[str, str] = {}
    if path is not None:
        for name, value in load_params_file(path).items():
            if not isinstance(value, str):
                raise InputError(f"{path}: secret {name!r} must be a string")
            secrets[name] = value
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InputError(f"--secret {item.split('=')[0]!r}: expected NAME=VALUE")
        secrets[name] = value
    return secrets


def main(argv: list[str]) -> int:
    """`attune exec ARGS`: returns the exit code."""
    args = _parser().parse_args(argv)
    if args.explain:
        return explain()
    if args.file is None:
        print(
            "attune: error: missing the action FILE argument (see attune exec --help)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.timeout is not None and not (math.isfinite(args.timeout) and args.timeout > 0):
        print("attune: error: --timeout must be a positive number of seconds", file=sys.stderr)
        return EXIT_USAGE
    import trio

    try:
        params = _collect_params(args.params, args.params_json, args.params_file)
        secrets = _collect_secrets(args.secret, args.secrets_file)
        network = _egress_policy(args)
        outcome = trio.run(
            lambda: run_file(
                args.file,
                params=params,
                runtime=args.runtime,
                profile_name=args.profile,
                timeout=args.timeout,
                output_format=args.output_format,
                secrets=secrets,
                network=network,
            )
        )
    except AttuneError as exc:
        print(f"attune: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("attune: error: interrupted", file=sys.stderr)
        return EXIT_BY_STATUS["cancelled"]
    shown = outcome if args.with_status else outcome["result"]
    sys.stdout.write(json.dumps(shown, ensure_ascii=False) + "\n")
    return EXIT_BY_STATUS[outcome["status"]]
