"""`attune key set|list|delete`: the keystore (the `key` table) from the command line.

Values are never printed. A value given as `-` is read from stdin, which keeps it out
of the shell history and the process list (prefer it for real secrets).
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from attune.cli.common import ConfigOpt, fail, load, run
from attune.errors import AttuneError, InputError

if TYPE_CHECKING:
    from attune.secrets import KeyRecord


def _owner(pack: str | None, action: str | None, system: bool) -> tuple[str, str | None]:
    chosen = [o for o in (pack and "pack", action and "action", system and "system") if o]
    if len(chosen) > 1:
        raise InputError("choose one owner: --owner-pack, --owner-action or --system")
    if pack:
        return "pack", pack
    if action:
        return "action", action
    return "system", None


def _read_value(value: str, as_json: bool) -> Any:
    text = value
    if value == "-":
        text = sys.stdin.read()
        text = text[:-1] if text.endswith("\n") else text
    if not as_json:
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"--json: VALUE is not valid JSON ({exc.msg} at position {exc.pos})"
        ) from None


def _is_weak(value: Any) -> bool:
    """Too short to be masked in output: some shown text of it is under 4 characters."""
    from attune.secrets.masking import MIN_MASK_CHARS, secret_texts

    texts = secret_texts(value)
    return not texts or any(len(t) < MIN_MASK_CHARS for t in texts)


def _weak_flag(key: KeyRecord, encryption_key: str | None) -> str:
    """yes/no, or `?` when the value is encrypted with a key this config does not hold."""
    if not key.encrypted:
        return "yes" if _is_weak(key.value) else "no"
    from attune.secrets import decrypt_value

    try:
        value = decrypt_value(
            encryption_key or "",
            key.value,
            key_hash=key.encryption_key_hash,
            what=f"key {key.ref!r}",
        )
    except AttuneError:
        return "?"
    return "yes" if _is_weak(value) else "no"


def _owner_text(key: KeyRecord) -> str:
    if key.owner_type == "pack":
        return f"pack:{key.owner_pack_ref or key.owner or '?'}"
    if key.owner_type == "action":
        return f"action:{key.owner_action_ref or key.owner or '?'}"
    return key.owner_type if not key.owner else f"{key.owner_type}:{key.owner}"


key_app = typer.Typer(
    help="Keystore: secrets and values delivered to actions.", no_args_is_help=True
)


@key_app.command("set")
def key_set(
    ref: Annotated[
        str,
        typer.Argument(
            help="Key ref, e.g. demo.api_token; its name is the part after the last dot."
        ),
    ],
    value: Annotated[
        str,
        typer.Argument(help="The value, or - to read it from stdin (recommended for secrets)."),
    ],
    owner_pack: Annotated[
        Optional[str],
        typer.Option("--owner-pack", help="Owned by this pack: visible to its actions."),
    ] = None,
    owner_action: Annotated[
        Optional[str], typer.Option("--owner-action", help="Owned by this action only.")
    ] = None,
    system: Annotated[
        bool,
        typer.Option(
            "--system", help="Owned by the system: visible to every action (the default)."
        ),
    ] = False,
    encrypt: Annotated[
        bool,
        typer.Option("--encrypt", help="Store AES-256-GCM encrypted with security.encryption_key."),
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="VALUE is JSON (an object, a number...) rather than a string."),
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Create or replace a key. Exit 2 on bad input or a missing/short encryption key."""
    cfg = load(config)
    name = ref.rsplit(".", 1)[-1]
    try:
        if not ref.strip() or not name or any(c.isspace() for c in ref):
            raise InputError(f"invalid key ref {ref!r}: no spaces, and a name after the last dot")
        owner_type, owner_ref = _owner(owner_pack, owner_action, system)
        stored = _read_value(value, as_json)
        key_hash: str | None = None
        if encrypt:
            from attune.secrets import check_key, encrypt_value
            from attune.secrets import key_hash as hash_of

            key = check_key(cfg.security.encryption_key, purpose=f"encrypt key {ref!r}")
            plain, stored, key_hash = stored, encrypt_value(key, stored), hash_of(key)
        else:
            plain = stored
    except AttuneError as exc:
        raise fail(str(exc)) from None
    if _is_weak(plain):
        typer.echo(
            f"attune: warning: the value of {ref} is shorter than 4 characters: "
            "too short to be masked in action output and logs",
            err=True,
        )

    async def main() -> tuple[int, bool]:
        from attune.db import Database

        async with Database.open_ctx(cfg.database.url) as db:
            return await db.set_key(
                ref,
                name=name,
                owner_type=owner_type,
                owner_ref=owner_ref,
                value=stored,
                encrypted=encrypt,
                encryption_key_hash=key_hash,
            )

    key_id, created = run(main)
    owner = owner_type if owner_ref is None else f"{owner_type}:{owner_ref}"
    typer.echo(
        f"key {ref} {'created' if created else 'replaced'} (id {key_id}, name "
        f"{name}, owner {owner}, {'encrypted' if encrypt else 'NOT encrypted'})"
    )


@key_app.command("list")
def key_list(
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array.")] = False,
) -> None:
    """List keys (never their values): ref, name, owner, encrypted, weak.

    weak: yes when the value is too short (< 4 characters) to be masked in output;
    ? when it is encrypted with a key other than the configured one.
    """
    cfg = load(config)

    async def main() -> list[KeyRecord]:
        from attune.db import Database

        async with Database.open_ctx(cfg.database.url) as db:
            return await db.list_keys()

    keys = run(main)
    rows = [
        {
            "ref": k.ref,
            "name": k.name,
            "owner": _owner_text(k),
            "encrypted": k.encrypted,
            "weak": _weak_flag(k, cfg.security.encryption_key),
        }
        for k in keys
    ]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    typer.echo(f"{'REF':<32} {'NAME':<20} {'OWNER':<28} {'ENCRYPTED':<9}  WEAK")
    for r in rows:
        typer.echo(
            f"{r['ref']:<32} {r['name']:<20} {r['owner']:<28} "
            f"{'yes' if r['encrypted'] else 'no':<9}  {r['weak']}"
        )


@key_app.command("delete")
def key_delete(
    ref: Annotated[str, typer.Argument(help="The key ref.")],
    config: ConfigOpt = None,
) -> None:
    """Delete a key. Exit 1 when there is no such key."""
    cfg = load(config)

    async def main() -> bool:
        from attune.db import Database

        async with Database.open_ctx(cfg.database.url) as db:
            return await db.delete_key(ref)

    if not run(main):
        raise fail(f"no key {ref!r}", 1)
    typer.echo(f"key {ref} deleted")
