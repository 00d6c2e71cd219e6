"""Data-room commands: rooms, records, files, messages. Thin over the SDK.

Scripts call ``put`` and ``get`` in loops, so a command imports only what it uses
(rich tables and progress bars inside the commands that draw them) and the
record and message commands open the device from its index (see
:func:`open_client`) instead of re-reading every room's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from datarooms.cli._common import (
    console,
    echo,
    parse_value,
    real_console,
    run,
    state,
)
from datarooms.cli._device import (
    open_client,
    perform,
    show_get,
    show_history,
    show_put,
    show_send,
    ts,
)
from datarooms.errors import ValidationError
from datarooms.events import ROOM_KINDS

if TYPE_CHECKING:
    from rich.progress import Progress
    from rich.table import Table

    from datarooms.sdk.client import DataroomsClient
    from datarooms.sdk.rooms import Access

T = TypeVar("T")

room_app = typer.Typer(help="Create data rooms and control access to them.", no_args_is_help=True)
file_app = typer.Typer(help="Encrypted files in rooms.", no_args_is_help=True)

RoomArg = Annotated[str, typer.Argument(help="Room id (!...) or alias (#...)")]


def with_client(
    ctx: typer.Context,
    fn: Callable[[DataroomsClient], Awaitable[T]],
    *,
    rooms_from_index: bool = False,
) -> T:
    settings = state(ctx).settings()

    async def go() -> T:
        async with open_client(settings, rooms_from_index=rooms_from_index) as client:
            return await fn(client)

    return run(go())


def _table(*columns: str) -> Table:
    from rich.table import Table

    return Table(*columns)


# -- rooms ---------------------------------------------------------------------


@room_app.command("create")
def room_create(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help=f"One of: {', '.join(ROOM_KINDS)}")],
    name: Annotated[str | None, typer.Option(help="Room name (visible to the server)")] = None,
    topic: Annotated[str | None, typer.Option(help="Room topic (visible to the server)")] = None,
    did: Annotated[str | None, typer.Option(help="Entity DID (required for entity rooms)")] = None,
    purpose: Annotated[str | None, typer.Option(help="What the room is for")] = None,
    alias: Annotated[bool, typer.Option(help="Give an entity room its DID alias")] = False,
    server: Annotated[
        list[str] | None,
        typer.Option(
            "--server",
            help="Only this homeserver (and ours) may take part; repeat for several "
            "(a server ACL). Default: any server ours federates with",
        ),
    ] = None,
) -> None:
    """Create an encrypted data room."""

    async def go(c: DataroomsClient) -> None:
        room = await c.rooms.create(
            kind, name=name, topic=topic, did=did, purpose=purpose, alias=alias, servers=server
        )
        echo(room.room_id)
        if room.alias:
            echo(f"alias: {room.alias}")

    with_client(ctx, go)


@room_app.command("list")
def room_list(ctx: typer.Context) -> None:
    """Rooms this account is in, with their kind."""

    async def go(c: DataroomsClient) -> None:
        table = _table("room", "kind", "name", "alias / DID")
        for r in c.rooms.list():
            table.add_row(r.room_id, r.kind or "-", r.name or "", r.alias or r.did or "")
        console.print(table)
        invites = c.rooms.invites()
        if invites:
            console.print("invited to: " + ", ".join(invites) + "  (datarooms room join ROOM)")

    with_client(ctx, go)


@room_app.command("join")
def room_join(ctx: typer.Context, room: RoomArg) -> None:
    """Join a room you are invited to."""
    with_client(ctx, lambda c: _join(c, room))


async def _join(c: DataroomsClient, room: str) -> None:
    echo(f"joined {await c.rooms.join(room)}")


@room_app.command("members")
def room_members(ctx: typer.Context, room: RoomArg) -> None:
    """Access review: members, their access, devices and last activity."""

    async def go(c: DataroomsClient) -> None:
        rid = await c.rooms.resolve(room)
        table = _table("user", "membership", "access", "power", "devices", "last active")
        for m in await c.rooms.review(rid):
            devices = ", ".join(
                f"{d.device_id}{' (verified)' if d.verified else ''}" for d in m.devices
            )
            table.add_row(
                m.user_id,
                m.membership,
                m.access,
                str(m.power),
                devices or "-",
                ts(m.last_active_ts),
            )
        console.print(table)
        _print_servers(c, rid)
        _print_forwarding(c, rid)

    with_client(ctx, go)


def _print_forwarding(c: DataroomsClient, rid: str) -> None:
    """A room that forwards outside Matrix says so (io.datarooms.forwarding)."""
    from datarooms.sdk.automation.forward import declarations

    forwards, sender, ok = declarations(c, rid)
    if not forwards:
        echo("forwarding outside Matrix: none")
        return
    echo(
        "forwarding outside Matrix (alert summaries leave end-to-end encryption), declared by "
        f"{sender}" + ("" if ok else " (NOT in force: not an admin's declaration)") + ":"
    )
    for fid, f in sorted(forwards.items()):
        echo(f"  {fid}: {f.get('kind')} to {f.get('destination')}")


def _print_servers(c: DataroomsClient, rid: str) -> None:
    acl = c.rooms.server_acl(rid)
    table = _table("server holding a copy", "members", "allowed by the room")
    for copy in c.rooms.servers(rid):
        table.add_row(copy.server_name, str(len(copy.members)), "yes" if copy.allowed else "NO")
    console.print(table)
    if acl is None:
        echo("server ACL: none (any server our homeserver federates with may take part)")
    else:
        echo(
            "server ACL: allow "
            + (", ".join(acl.allow) or "-")
            + ("; deny " + ", ".join(acl.deny) if acl.deny else "")
        )


@room_app.command("allow-server")
def room_allow_server(
    ctx: typer.Context, room: RoomArg, server: Annotated[str, typer.Argument(help="server name")]
) -> None:
    """Let a homeserver take part in the room (its server ACL)."""

    async def go(c: DataroomsClient) -> None:
        rid = await c.rooms.resolve(room)
        acl = await c.rooms.allow_server(rid, server)
        echo(f"{server} may take part in {rid}" + ("" if acl else " (the room has no server ACL)"))

    with_client(ctx, go)


@room_app.command("deny-server")
def room_deny_server(
    ctx: typer.Context, room: RoomArg, server: Annotated[str, typer.Argument(help="server name")]
) -> None:
    """Shut a homeserver out of the room: deny it, and revoke its members."""

    async def go(c: DataroomsClient) -> None:
        rid = await c.rooms.resolve(room)
        await c.rooms.deny_server(rid, server)
        echo(f"{server} is denied in {rid}; its members were removed")

    with_client(ctx, go)


@room_app.command("grant")
def room_grant(
    ctx: typer.Context,
    room: RoomArg,
    user: Annotated[str, typer.Argument(help="@user:server")],
    access: Annotated[str, typer.Argument(help="read, write or admin")] = "read",
) -> None:
    """Give a user read, write or admin access (invites them)."""
    if access not in ("read", "write", "admin"):
        raise ValidationError(f"access must be read, write or admin, got {access!r}")

    async def go(c: DataroomsClient) -> None:
        rid = await c.rooms.resolve(room)
        acc: Access = access  # type: ignore[assignment]
        await c.rooms.grant(rid, user, acc)
        echo(f"{user} has {access} access to {rid}")

    with_client(ctx, go)


@room_app.command("revoke")
def room_revoke(
    ctx: typer.Context, room: RoomArg, user: Annotated[str, typer.Argument(help="@user:server")]
) -> None:
    """Remove a user; later writes use a key they never get."""

    async def go(c: DataroomsClient) -> None:
        rid = await c.rooms.resolve(room)
        await c.rooms.revoke(rid, user)
        echo(f"revoked {user} from {rid}")

    with_client(ctx, go)


# -- records -------------------------------------------------------------------


def put(
    ctx: typer.Context,
    room: RoomArg,
    key: Annotated[str, typer.Argument(help="Record key")],
    value: Annotated[str, typer.Argument(help="JSON value, or - to read it from stdin")],
    schema: Annotated[str | None, typer.Option(help="Validate against this room schema")] = None,
    txn: Annotated[str | None, typer.Option(help="Transaction id (retries are safe)")] = None,
    text: Annotated[bool, typer.Option("--text", help="Store VALUE as a plain string")] = False,
) -> None:
    """Write a new version of a record (end-to-end encrypted)."""
    args = {"room": room, "key": key, "value": parse_value(value, text)}
    args.update({k: v for k, v in (("schema", schema), ("txn", txn)) if v is not None})
    show_put(perform(state(ctx).settings(), "put", args))


def get(
    ctx: typer.Context,
    room: RoomArg,
    key: Annotated[str | None, typer.Argument(help="Record key; omit for the whole twin")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="With metadata")] = False,
) -> None:
    """Print the latest value of a record, or the twin's current state."""
    result = perform(state(ctx).settings(), "get", {"room": room, "key": key})
    show_get(result, whole=key is None, as_json=as_json)


def history(
    ctx: typer.Context,
    room: RoomArg,
    key: Annotated[str, typer.Argument(help="Record key")],
    limit: Annotated[int | None, typer.Option(help="At most this many versions")] = None,
) -> None:
    """Every version of a record, oldest first."""
    args = {"room": room, "key": key, "limit": limit}
    show_history(perform(state(ctx).settings(), "history", args))


# -- files ---------------------------------------------------------------------


def _progress() -> Progress:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=real_console(console),
        transient=False,
    )


@file_app.command("put")
def file_put(
    ctx: typer.Context, room: RoomArg, path: Annotated[Path, typer.Argument(help="File to upload")]
) -> None:
    """Encrypt and upload a file into a room (streamed, with progress)."""
    if not path.is_file():
        raise ValidationError(f"{path} is not a file")

    async def go(c: DataroomsClient) -> None:
        rid = await c.rooms.resolve(room)
        with _progress() as progress:
            task = progress.add_task(
                f"encrypting + uploading {path.name}", total=path.stat().st_size
            )
            ref = await c.files.put(
                rid, path, progress=lambda d, t: progress.update(task, completed=d)
            )
        echo(f"{ref.event_id}  {ref.name}  {ref.size} bytes")

    with_client(ctx, go, rooms_from_index=True)


@file_app.command("get")
def file_get(
    ctx: typer.Context,
    room: RoomArg,
    event_id: Annotated[str, typer.Argument(help="The file's event id ($...)")],
    dest: Annotated[Path, typer.Argument(help="File or directory to write")] = Path("."),
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing file; allow a hidden name")
    ] = False,
) -> None:
    """Download, verify (SHA-256) and decrypt a file. Nothing is written if it was tampered.

    Into a directory, the file takes the sender's name (made safe); an existing file or a
    hidden name (``.bashrc``) is refused unless ``--force``.
    """

    async def go(c: DataroomsClient) -> None:
        rid = await c.rooms.resolve(room)
        ref = await c.files.ref(rid, event_id)
        with _progress() as progress:
            task = progress.add_task(f"downloading {ref.name}", total=ref.size or None)
            out = await c.files.get(
                rid,
                event_id,
                dest,
                progress=lambda d, t: progress.update(task, completed=d),
                overwrite=force,
            )
        echo(f"wrote {out}")

    with_client(ctx, go, rooms_from_index=True)


# -- messages ------------------------------------------------------------------


def send(
    ctx: typer.Context, room: RoomArg, text: Annotated[str, typer.Argument(help="Message text")]
) -> None:
    """Send an encrypted text message."""
    show_send(perform(state(ctx).settings(), "send", {"room": room, "text": text}))


def tail(
    ctx: typer.Context,
    room: RoomArg,
    recent: Annotated[int, typer.Option(help="Show this many recent events first")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
) -> None:
    """Print a room's events as they arrive, until Ctrl-C."""

    async def go(c: DataroomsClient) -> None:
        rid = await c.rooms.resolve(room)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if recent:
            for e in await c.messages.recent(rid, limit=recent):
                _print_event(e, as_json)

        async def follow() -> None:
            async for e in c.messages.events(rid):
                _print_event(e, as_json)

        follower = asyncio.create_task(follow())
        await stop.wait()
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower

    with_client(ctx, go)


def _print_event(e: Any, as_json: bool) -> None:
    if as_json:
        print(
            json.dumps(
                {
                    "event_id": e.event_id,
                    "sender": e.sender,
                    "type": e.type,
                    "ts": e.ts,
                    "encrypted": e.encrypted,
                    "decrypted": e.decrypted,
                    "content": e.content,
                }
            ),
            flush=True,
        )
        return
    if not e.decrypted:
        what = "[cannot decrypt yet: no key on this device]"
    elif e.type == "m.room.message":
        what = e.body or ""
    elif e.type == "io.datarooms.record":
        what = f"record {e.content.get('key')} = {json.dumps(e.content.get('value'))}"
    else:
        what = e.type
    lock = "🔒" if e.encrypted else "  "
    print(f"{ts(e.ts)} {lock} {e.sender}: {what}", flush=True)


def register(app: typer.Typer) -> None:
    app.add_typer(room_app, name="room")
    app.add_typer(file_app, name="file")
    for fn in (put, get, history, send, tail):
        app.command()(fn)
