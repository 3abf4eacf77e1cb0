"""`attune pack env ...` and the environment step of `attune pack load`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from attune.cli.common import ConfigOpt, fail, load, run

if TYPE_CHECKING:
    from attune.config import Config


async def build_with_progress(cfg: Config, pack_ref: str, pack_dir: Path, *, force: bool) -> bool:
    """Build (or confirm) the pack's environment, saying what happens; False if it failed."""
    from attune import pack_env

    text = pack_env.manifest(pack_dir)
    if text is None:
        return True
    count = len(text.splitlines())
    typer.echo(f"pack {pack_ref}: Python environment for {count} requirement line(s)...")
    outcome = await pack_env.build(cfg, pack_ref, pack_dir, force=force)
    st = outcome.status
    if st.state == "ready":
        verb = "built" if outcome.built else "up to date"
        typer.echo(f"pack {pack_ref}: environment {verb} at {st.path} ({outcome.seconds:.1f} s)")
        return True
    typer.echo(outcome.output.rstrip(), err=True)
    typer.echo(f"pack {pack_ref}: environment build failed: {st.reason}", err=True)
    return False


def register_env(pack_app: typer.Typer) -> None:
    env_app = typer.Typer(help="Per-pack Python environments.", no_args_is_help=True)
    pack_app.add_typer(env_app, name="env")

    @env_app.command("list")
    def env_list(config: ConfigOpt = None) -> None:
        """Every environment under runtime_envs_dir and its state."""
        from attune import pack_env

        rows = pack_env.listing(load(config))
        for pack_ref, name, state in rows:
            typer.echo(f"{pack_ref:24} {name:28} {state}")
        if not rows:
            typer.echo("no environments")

    @env_app.command("build")
    def env_build(
        pack_ref: Annotated[str, typer.Argument(help="An installed pack's ref.")],
        force: Annotated[bool, typer.Option("--force", help="Rebuild even if ready.")] = False,
        config: ConfigOpt = None,
    ) -> None:
        """Build the installed pack's environment (a no-op when it is up to date)."""
        cfg = load(config)
        pack_dir = Path(cfg.packs_base_dir) / pack_ref
        if not (pack_dir / "pack.yaml").is_file():
            raise fail(f"pack {pack_ref} is not installed under {cfg.packs_base_dir}")

        async def main() -> bool:
            return await build_with_progress(cfg, pack_ref, pack_dir, force=force)

        if not run(main):
            raise typer.Exit(1)

    @env_app.command("remove")
    def env_remove(
        pack_ref: Annotated[str, typer.Argument(help="The pack whose environments go.")],
        config: ConfigOpt = None,
    ) -> None:
        """Delete every environment of the pack."""
        from attune import pack_env

        gone = pack_env.remove(load(config), pack_ref)
        typer.echo(f"removed {len(gone)} environment(s) of pack {pack_ref}")
