"""What every typer command shares: the --config option, error exits, running trio."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from attune.cli import EXIT_USAGE
from attune.errors import AttuneError

if TYPE_CHECKING:
    from attune.config import Config

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file.")]


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print one clear line and return the Exit to raise (exit 2: usage or input error)."""
    typer.echo(f"attune: error: {message}", err=True)
    return typer.Exit(code)


def load(path: Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """The effective config (file, ATTUNE__ environment, CLI overrides); errors exit 2.

    Without --config, `ATTUNE_CONFIG` names the file, as for the reference's services.
    """
    from attune.config import load_config

    if path is None and os.environ.get("ATTUNE_CONFIG"):
        path = Path(os.environ["ATTUNE_CONFIG"])
    try:
        return load_config(path, os.environ, overrides or {})
    except AttuneError as exc:
        raise fail(str(exc)) from None


def run(fn: Any) -> Any:
    """trio.run, turning our errors (also from inside a nursery) into one-line exits."""
    import trio

    try:
        return trio.run(fn)
    except AttuneError as exc:
        raise fail(str(exc)) from None
    except BaseExceptionGroup as group:  # raised inside a nursery: one error, wrapped
        leaf: BaseException = group
        while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
            leaf = leaf.exceptions[0]
        if isinstance(leaf, AttuneError):
            raise fail(str(leaf)) from None
        raise
