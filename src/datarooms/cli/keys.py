"""`datarooms keys ...`: cross-signing, recovery key, backup, restore, verification."""

from __future__ import annotations

import asyncio
import getpass
import sys
from typing import TYPE_CHECKING, Annotated

import click
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress

from datarooms.cli._common import console, err_console, real_console
from datarooms.cli.data import with_client
from datarooms.errors import ValidationError
from datarooms.sdk.keys import Verification, VerificationCancelled

if TYPE_CHECKING:
    from datarooms.sdk.client import DataroomsClient

keys_app = typer.Typer(
    help="Cross-signing, recovery key, key backup, device verification.", no_args_is_help=True
)


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
        console.print(f"verified devices {st.verified_devices} (by SAS, from this device)")
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
            "restoring keys", BarColumn(), MofNCompleteColumn(), console=real_console(err_console)
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


@keys_app.command("devices")
def keys_devices(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="@user:server whose devices to list")],
) -> None:
    """A user's devices: verified here (SAS), cross-signed, and whether they get room keys."""

    async def go(c: DataroomsClient) -> None:
        devices = await c.keys.devices(user)
        if not devices:
            console.print(f"no devices with valid keys known for {user}")
            return
        yes = {True: "yes", False: "no"}
        console.print(f"{'device':<14}{'verified':<10}{'cross-signed':<14}{'gets keys':<11}ed25519")
        for d in devices:
            console.print(
                f"{d.device_id:<14}{yes[d.verified]:<10}{yes[d.cross_signed]:<14}"
                f"{yes[d.trusted]:<11}{d.ed25519}  {d.display_name}",
                markup=False,
            )

    with_client(ctx, go)


@keys_app.command("verify")
def keys_verify(
    ctx: typer.Context,
    user: Annotated[
        str | None,
        typer.Argument(help="@user:server to verify (with --incoming: only accept theirs)"),
    ] = None,
    device: Annotated[
        str | None, typer.Argument(help="Their device id (default: ask all their devices)")
    ] = None,
    room: Annotated[
        str | None, typer.Option("--room", help="Verify in this room instead of to-device")
    ] = None,
    incoming: Annotated[
        bool, typer.Option("--incoming", help="Wait for a request from the other side")
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the other side at each step")
    ] = 300.0,
) -> None:
    """Verify another device interactively: compare emoji (or numbers), answer y/n.

    On a match both devices are marked verified (the trust policy `verified` then
    shares room keys with it). Exits 1 if the codes differ or the other side cancels.
    """
    if not incoming and user is None:
        raise ValidationError("give the user to verify, or --incoming to wait for a request")
    if incoming and (device is not None or room is not None):
        raise ValidationError("--incoming takes at most a user: the request says the rest")

    async def go(c: DataroomsClient) -> None:
        verifier = c.keys.verification
        v: Verification
        if incoming:
            err_console.print(
                f"waiting for a verification request{f' from {user}' if user else ''}…"
            )
            v = await verifier.wait_request(user, timeout=timeout)
            err_console.print(
                f"request from {v.other_user} (device {v.other_device}, {v.transport}); accepting"
            )
            await v.accept()
            await v.start()  # either side may start; if both do, the spec picks one
        else:
            assert user is not None
            v = await verifier.request(user, device, room_id=room)
            err_console.print(
                f"asked {user} to verify ({v.transport}); waiting for them to accept…"
            )
        await v.wait_for_sas(timeout)
        console.print(f"Compare with the other screen ({v.other_user}, device {v.other_device}):")
        console.print("  " + "   ".join(e.symbol for e in v.emojis()))
        console.print("  " + "   ".join(e.description for e in v.emojis()))
        console.print("  " + "  ".join(f"{n:04d}" for n in v.decimals()))
        sys.stdout.flush()
        try:
            match = await asyncio.to_thread(
                typer.confirm, "Do they match exactly?", default=False, err=True
            )
        except click.exceptions.Abort:  # no answer (end of input, Ctrl-C)
            await v.cancel("no answer")
            raise VerificationCancelled("m.user", "no answer", True) from None
        if not match:
            await v.mismatch()
            raise VerificationCancelled("m.mismatched_sas", "you said the codes differ", True)
        await v.confirm()
        err_console.print("waiting for the other side to confirm…")
        await v.done(timeout)
        console.print(f"[green]verified[/] {v.other_user} device {v.other_device}")

    with_client(ctx, go)
