"""`datarooms keys ...`: cross-signing, recovery key, backup, restore."""

from __future__ import annotations

import getpass
import sys
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress

from datarooms.cli._common import console, err_console
from datarooms.cli.data import with_client
from datarooms.client import DataroomsClient
from datarooms.errors import ValidationError

keys_app = typer.Typer(help="Cross-signing, recovery key, key backup.", no_args_is_help=True)


@keys_app.command("status")
def keys_status(ctx: typer.Context) -> None:
    """Cross-signing, secret storage and backup state of this device."""

    async def go(c: DataroomsClient) -> None:
        st = await c.keys.status()
        yes = {True: "[green]yes[/]", False: "[red]no[/]"}
        console.print(f"account          {st.user_id}   device {st.device_id}")
        console.print(f"cross-signing    {yes[st.cross_signing]}   master key {st.master_key}")
        console.print(f"device signed    {yes[st.device_cross_signed]}")
        console.print(f"holds keys       {yes[st.holds_cross_signing_keys]}")
        console.print(f"secret storage   {yes[st.secret_storage]}")
        backup = f"version {st.backup_version}" if st.backup_version else "off"
        console.print(
            f"key backup       {yes[st.backup_enabled]} ({backup}; "
            f"{st.backed_up_sessions} of {st.local_sessions} local sessions backed up)"
        )
        console.print(f"trust policy     {st.trust_policy}")
        for user in st.changed_identities:
            console.print(
                f"[yellow]identity changed[/] {user}: their devices get no keys until you accept it"
            )
        if st.cross_signing and not st.device_cross_signed:
            console.print("this device is not cross-signed yet: run `datarooms keys restore`")

    with_client(ctx, go)


@keys_app.command("recovery-key")
def keys_recovery_key(ctx: typer.Context) -> None:
    """Set up secret storage and key backup; print the recovery key ONCE."""

    async def go(c: DataroomsClient) -> None:
        key = await c.keys.setup_recovery()
        console.print("Your recovery key (shown once; store it offline, it unlocks all history):")
        # Printed to the terminal only, never logged.
        sys.stdout.write(f"\n    {key}\n\n")
        sys.stdout.flush()

    with_client(ctx, go)


@keys_app.command("backup")
def keys_backup(ctx: typer.Context) -> None:
    """Upload every session not yet in the key backup."""

    async def go(c: DataroomsClient) -> None:
        if not c.keys.backup_enabled:
            raise ValidationError(
                "key backup is not set up on this device: run `datarooms keys recovery-key`, "
                "or `datarooms keys restore` on a new device"
            )
        n = await c.keys.backup_pending()
        st = await c.keys.status()
        console.print(f"backed up {n} new sessions; {st.backed_up_sessions} in the backup")

    with_client(ctx, go)


@keys_app.command("restore")
def keys_restore(
    ctx: typer.Context,
    recovery_key_stdin: Annotated[
        bool, typer.Option("--recovery-key-stdin", help="Read the recovery key from stdin")
    ] = False,
) -> None:
    """Unlock this device with the recovery key and restore all history keys from backup."""
    if recovery_key_stdin:
        key = sys.stdin.readline().strip()
    else:
        key = getpass.getpass("recovery key: ").strip()
    if not key:
        raise ValidationError("no recovery key given")

    async def go(c: DataroomsClient) -> None:
        with Progress(
            "restoring keys", BarColumn(), MofNCompleteColumn(), console=err_console
        ) as progress:
            task = progress.add_task("restore", total=None)
            n = await c.keys.restore(
                key, progress=lambda done, total: progress.update(task, completed=done, total=total)
            )
        console.print(f"restored {n} sessions; this device is cross-signed")

    with_client(ctx, go)


@keys_app.command("trust")
def keys_trust(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="@user:server whose new identity you checked")],
) -> None:
    """Accept a user's changed cross-signing identity (after checking it out of band)."""

    async def go(c: DataroomsClient) -> None:
        c.keys.accept_identity(user)
        console.print(f"accepted the new identity of {user}")

    with_client(ctx, go)
