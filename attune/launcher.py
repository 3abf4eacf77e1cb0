"""`Launcher`: runs one claimed execution in the sandbox and says how it ended.

It resolves everything the run needs (code, profile, parameters with their secrets
restored, timeout), runs it, masks what comes out, streams the logs, and returns the
outcome word and the result to record. The result's artifact (`result.json`) is for
whoever reads the artifacts later, not for the answer: it is written in `after_end`,
once the end is recorded and announced. A reason the execution cannot run is an
`AttuneError` turned into a `failed` result here; anything else escapes to the
pipeline, which records it `failed` too (docs/protocol.md §5, "Execution lifecycle").
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from attune.artifacts import ArtifactStore, RunArtifacts
from attune.config import Config
from attune.db import Database
from attune.errors import AttuneError, ExecutionError
from attune.lifecycle import cancelled_before_start
from attune.log import log_event
from attune.models import Action, Execution
from attune.pack_env import pack_source
from attune.packs import read_code, resolve_code
from attune.params import context_env
from attune.retry import with_db_retry
from attune.runner.egress import EgressPolicy
from attune.runner.profiles import Profile
from attune.runner.sandbox import PackSource, RunSpec, Sandbox
from attune.runner.supervise import RunControl
from attune.runtimes import canonical_runtime
from attune.secrets import OutputGuard, RunSecrets, SecretRows, load_run_secrets

log = logging.getLogger("attune.worker")

DEFAULT_TIMEOUT = 300


def runtime_of(action: Action) -> str:
    """The profile name for an action's runtime row (name or alias, any case)."""
    return canonical_runtime(action.runtime_name)


def build_spec(
    config: Config,
    profiles: Mapping[str, Profile],
    execution: Execution,
    action: Action,
    secrets: RunSecrets,
) -> tuple[RunSpec, float]:
    """Resolve code, profile, parameters and timeout; ExecutionError when it cannot run."""
    if not action.enabled:
        raise ExecutionError(
            f"action {action.ref} is disabled (enabled: false in its pack); "
            "it is loaded but refuses to run until it is enabled"
        )
    runtime = runtime_of(action)
    profile = profiles.get(runtime)
    if profile is None:
        known = ", ".join(sorted(profiles))
        raise ExecutionError(
            f"unknown runtime {action.runtime_name!r} for action "
            f"{action.ref}; this worker runs: {known}"
        )
    network = egress_of(config, action)
    resolved = resolve_code(
        Path(config.packs_base_dir), action.pack_ref, action.entrypoint, runtime
    )
    pack: PackSource | None = None
    if resolved.path is not None:
        code, code_name = read_code(resolved.path), resolved.path.name
        pack = pack_source(config, action.pack_ref, resolved.path, runtime)
    else:
        code, code_name = (resolved.inline or "").encode(), "inline.sh"
    env = context_env(
        exec_id=execution.id,
        action_ref=action.ref,
        pack_ref=action.pack_ref,
        delivery=action.parameter_delivery,
        fmt=action.parameter_format,
        env_vars=execution.env_vars,
    )
    if pack is not None and runtime == "python":
        env["PYTHONPATH"] = f"{pack.pack_dir}/lib"  # as the reference's python runtime does
    timeouts = (execution.timeout_seconds, action.timeout_seconds, config.worker.task_timeout)
    timeout = next((t for t in timeouts if t and t > 0), DEFAULT_TIMEOUT)
    spec = RunSpec(
        profile=profile,
        code=code,
        code_name=code_name,
        params=secrets.params,  # execution.config with the secret markers restored
        env=env,
        parameter_delivery=action.parameter_delivery,
        parameter_format=action.parameter_format,
        output_format=action.output_format,
        label=f"execution-{execution.id}",
        secrets=secrets.keystore,
        pack=pack,
        network=network,
    )
    return spec, float(timeout)


def egress_of(config: Config, action: Action) -> EgressPolicy | None:
    """The action's egress policy; ExecutionError before the run when it is not offered."""
    if action.network != "egress":
        return None
    if not config.network.egress:
        raise ExecutionError(
            f"action {action.ref} declares `network: egress`, but this worker does not "
            "offer egress (the operator enables it with network.egress: true in the "
            "worker config); it was not run"
        )
    return config.network.policy()


class Launcher:
    """The pipeline's runner: the sandbox, the artifacts and the secrets of a run."""

    def __init__(
        self,
        config: Config,
        db: Database,
        sandbox: Sandbox,
        profiles: Mapping[str, Profile],
        artifacts: ArtifactStore,
    ) -> None:
        self.config = config
        self.db = db
        self.sandbox = sandbox
        self.profiles = profiles
        self.artifacts = artifacts
        # result.json of runs whose end is being recorded (one per run in flight)
        self._unwritten: dict[int, tuple[RunArtifacts, str, dict[str, Any]]] = {}

    def runtime_label(self, action: Action | None) -> str:
        """The metrics label: a runtime this worker serves, or `other`."""
        runtime = runtime_of(action) if action is not None else ""
        return runtime if runtime in self.profiles else "other"

    async def run(
        self,
        execution: Execution,
        action: Action,
        control: RunControl,
        slot: int,
        *,
        secret_rows: SecretRows | None = None,
    ) -> tuple[str, dict[str, Any]]:
        key = self.config.security.encryption_key
        try:
            secrets = await with_db_retry(
                f"load secrets of execution {execution.id}",
                lambda: load_run_secrets(self.db, execution, action, key, secret_rows),
            )
            spec, timeout = build_spec(self.config, self.profiles, execution, action, secrets)
        except AttuneError as exc:
            return "failed", {"succeeded": False, "error": str(exc)}
        if secrets.too_short:
            log_event(
                log,
                "secret_too_short_to_mask",
                logging.WARNING,
                execution_id=execution.id,
                sources=",".join(secrets.too_short),
            )
        if control.reason is not None:  # cancelled while its code and secrets loaded
            return "cancelled", cancelled_before_start(control.reason)
        artifacts = self.artifacts.open_run(execution.id)
        try:
            # Output, result and log lines of the run pass through the masker.
            async with OutputGuard(
                secrets.masker, artifacts.write, action.out_schema, artifacts.directory
            ) as guard:
                outcome = await self.sandbox.run(
                    spec, timeout=timeout, slot=slot, control=control, on_output=guard.write
                )
                result = await guard.redact(outcome.result)
        except AttuneError as exc:
            return "failed", {"succeeded": False, "error": secrets.masker.text(str(exc))}
        finally:
            artifacts.close()
        self._unwritten[execution.id] = (artifacts, outcome.status, result)
        return outcome.status, result

    async def after_end(self, execution_id: int) -> None:
        """Write the run's result.json (masked, as recorded); a failure is logged."""
        unwritten = self._unwritten.pop(execution_id, None)
        if unwritten is None:  # the run never started: there is no result to keep
            return
        artifacts, status, result = unwritten
        try:
            await trio.to_thread.run_sync(artifacts.write_result, status, result)
        except Exception as exc:  # the end is recorded: say what is missing, go on
            log_event(
                log,
                "artifact_write_failed",
                logging.ERROR,
                execution_id=execution_id,
                path=str(artifacts.directory / "result.json"),
                reason=f"{type(exc).__name__}: {exc}",
            )
