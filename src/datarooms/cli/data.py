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
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from datarooms.cli._common import (
    acting_credentials,
    console,
    echo,
    parse_value,
    print_json,
    real_console,
    run,
    state,
)
from datarooms.config import Settings
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


@contextlib.asynccontextmanager
async def open_client(
    settings: Settings, *, rooms_from_index: bool = False
) -> AsyncIterator[DataroomsClient]:
    """This account's CLI device. ``rooms_from_index``: catch up with an incremental
    sync from the stored position, taking what the device already knows of each room
    (members, encryption) from its index, instead of a full-state sync of every room:
    enough for writing and reading records and messages, and what keeps a `put` fast."""
    from datarooms.sdk.client import DataroomsClient
    from datarooms.services.platform import device_store_dir

    creds = acting_credentials(settings)
    if not creds.user_id:
        from datarooms.homeserver.api import MatrixApi

        async with MatrixApi(creds.homeserver_url, creds.access_token) as http:
            creds = replace(creds, user_id=(await http.whoami())["user_id"])
    client = await DataroomsClient.open(
        creds,
        device_store_dir(settings, creds.user_id),
        device_name="datarooms CLI",
        trust=settings.trust_policy,  # type: ignore[arg-type]
        rooms_from_index=rooms_from_index,
    )
    # Entity rooms are the rooms bot's where one runs (datarooms.sdk.roomsbot).
    client.rooms.roomsbot_url = settings.roomsbot.url or settings.running_url("roomsbot")
    try:
        yield client
    finally:
        await client.close()


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


def _ts(ms: int | None) -> str:
    if not ms:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


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
                _ts(m.last_active_ts),
            )
        console.print(table)
        _print_servers(c, rid)

    with_client(ctx, go)


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
    parsed = parse_value(value, text)

    async def go(c: DataroomsClient) -> None:
        rid = await c.rooms.resolve(room)
        rec = await c.records.put(rid, key, parsed, schema=schema, txn_id=txn)
        echo(f"{key} v{rec.version or '?'} {rec.event_id}")

    with_client(ctx, go, rooms_from_index=True)


def get(
    ctx: typer.Context,
    room: RoomArg,
    key: Annotated[str | None, typer.Argument(help="Record key; omit for the whole twin")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="With metadata")] = False,
) -> None:
    """Print the latest value of a record, or the twin's current state."""

    async def go(c: DataroomsClient) -> None:
        rid = await c.rooms.resolve(room)
        if key is None:
            latest = await c.records.latest(rid)
            if as_json:
                out = {k: _record_json(r) for k, r in latest.items()}
            else:
                out = {k: r.value for k, r in latest.items()}
            print_json(out)
            return
        rec = await c.records.get(rid, key)
        print_json(_record_json(rec) if as_json else rec.value)

    with_client(ctx, go, rooms_from_index=True)


def history(
    ctx: typer.Context,
    room: RoomArg,
    key: Annotated[str, typer.Argument(help="Record key")],
    limit: Annotated[int | None, typer.Option(help="At most this many versions")] = None,
) -> None:
    """Every version of a record, oldest first."""

    async def go(c: DataroomsClient) -> None:
        rid = await c.rooms.resolve(room)
        table = _table("version", "time", "sender", "value")
        for r in await c.records.history(rid, key, limit=limit):
            table.add_row(str(r.version), _ts(r.ts), r.sender, json.dumps(r.value))
        console.print(table)

    with_client(ctx, go, rooms_from_index=True)


def _record_json(r: Any) -> dict[str, Any]:
    return {
        "key": r.key,
        "value": r.value,
        "version": r.version,
        "event_id": r.event_id,
        "sender": r.sender,
        "ts": r.ts,
        "schema": r.schema,
    }


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

    async def go(c: DataroomsClient) -> None:
        rid = await c.rooms.resolve(room)
        echo(await c.messages.send(rid, text))

    with_client(ctx, go, rooms_from_index=True)


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
    print(f"{_ts(e.ts)} {lock} {e.sender}: {what}", flush=True)


def register(app: typer.Typer) -> None:
    app.add_typer(room_app, name="room")
    app.add_typer(file_app, name="file")
    for fn in (put, get, history, send, tail):
        app.command()(fn)
