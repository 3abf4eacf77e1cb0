"""Keystore secrets of this run, for Python actions: `attune_secret("api_token")`.

The worker writes the run's keystore secrets (system keys, then the action's pack's,
then the action's own; later owners override earlier ones by name) as one JSON object
of name -> text into a read-only file and names it in ATTUNE_SECRETS_FILE. They are
not in the environment or on a command line, where other tools would copy them.
Structured values arrive as their compact JSON text: `json.loads(attune_secret(n))`.

Standard library only: this runs under a bare `python3 -I` in the sandbox.
"""

import json
import os

SECRETS_ENV = "ATTUNE_SECRETS_FILE"


def attune_secrets() -> dict[str, str]:
    """All secrets of this run, name -> text; {} when the run has none."""
    path = os.environ.get(SECRETS_ENV)
    if not path:
        return {}
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict):
        raise ValueError(f"{SECRETS_ENV} does not hold a JSON object")
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}


def attune_secret(name: str) -> str:
    """One secret by key name; KeyError (naming the key, never a value) if absent."""
    secrets = attune_secrets()
    if name not in secrets:
        raise KeyError(f"no secret named {name!r} for this action (set it with `attune key set`)")
    return secrets[name]
