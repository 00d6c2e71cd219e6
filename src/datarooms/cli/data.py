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
    print_json,
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

    from datarooms.config import Settings
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
        _print_moderation(c, rid)

    with_client(ctx, go)


@room_app.command("usage")
def room_usage(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a room")] = False,
    server: Annotated[
        bool, typer.Option(help="Also ask the homeserver for its own figures")
    ] = True,
) -> None:
    """How big each room is: records, files, telemetry, index; the homeserver's events
    and bytes where it says. Biggest first, with totals."""
    settings = state(ctx).settings()

    async def go(c: DataroomsClient) -> None:
        stats = await _server_stats(settings, c) if server else None
        rows = c.rooms.usage(stats)
        if as_json:
            for r in rows:
                print(json.dumps(r.to_json()), flush=True)
            return
        table = _table(
            "room",
            "kind",
            "members",
            "keys",
            "versions",
            "files",
            "telemetry",
            "server events",
            "total",
        )
        for r in rows:
            table.add_row(
                r.name or r.room_id,
                r.kind or "-",
                str(r.members),
                str(r.keys),
                str(r.versions),
                f"{r.files} ({_mb(r.file_bytes)})",
                f"{r.telemetry_samples} samples",
                "-" if r.server_events is None else str(r.server_events),
                _mb(r.total_bytes),
            )
        console.print(table)
        console.print(
            f"{len(rows)} room{'' if len(rows) == 1 else 's'}; "
            f"{sum(r.versions for r in rows)} record versions, "
            f"{sum(r.files for r in rows)} files, "
            f"{sum(r.telemetry_samples for r in rows)} telemetry samples; "
            f"{_mb(sum(r.total_bytes for r in rows))} in all",
            highlight=False,
        )

    with_client(ctx, go, rooms_from_index=True)


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 10_000 else f"{n} B"


async def _server_stats(
    settings: Settings, c: DataroomsClient
) -> dict[str, tuple[int | None, int]] | None:
    """The homeserver's own room sizes: an embedded Synapse's database, else its admin API
    (PostgreSQL only; an admin's token); None where neither answers."""
    from datarooms.errors import DataroomsError
    from datarooms.homeserver import stats

    try:
        if settings.homeserver.mode == "embedded" and settings.homeserver.profile != "scale":
            found = stats.sqlite_room_stats(settings.synapse_dir / "homeserver.db")
        else:
            found = await stats.admin_room_stats(c.homeserver_url, c.access_token)
    except DataroomsError:
        return None
    return {r: (s.events, s.bytes) for r, s in found.items()}


@room_app.command("retention")
def room_retention(
    ctx: typer.Context,
    room: RoomArg,
    record_versions_days: Annotated[
        int | None,
        typer.Option(help="Record versions older than this go (each key's latest stays)"),
    ] = None,
    files_days: Annotated[int | None, typer.Option(help="Files older than this go")] = None,
    legal_hold: Annotated[
        bool | None,
        typer.Option("--legal-hold/--no-legal-hold", help="Block every cleanup of the room"),
    ] = None,
    off: Annotated[bool, typer.Option("--off", help="No policy: keep everything")] = False,
) -> None:
    """Show or set a room's retention policy (room state; `datarooms cleanup` applies it)."""
    from datarooms.sdk.retention import RetentionPolicy

    changing = off or any(v is not None for v in (record_versions_days, files_days, legal_hold))

    async def go(c: DataroomsClient) -> None:
        rid = await c.rooms.resolve(room)
        if changing:
            if off:
                await c.retention.set_policy(rid, None)
            else:
                old = c.retention.policy(rid) or RetentionPolicy()
                await c.retention.set_policy(
                    rid,
                    RetentionPolicy(
                        record_versions_days
                        if record_versions_days is not None
                        else old.record_versions_days,
                        files_days if files_days is not None else old.files_days,
                        legal_hold if legal_hold is not None else old.legal_hold,
                    ),
                )
        policy = c.retention.policy(rid)
        if policy is None:
            echo(f"{rid}: no retention policy (everything is kept)")
            return
        echo(
            f"{rid}: record versions {_days_text(policy.record_versions_days)}, "
            f"files {_days_text(policy.files_days)}"
            + ("; LEGAL HOLD: no cleanup" if policy.legal_hold else "")
        )

    with_client(ctx, go)


def _days_text(days: int | None) -> str:
    return "kept" if days is None else f"{days} days"


def cleanup(
    ctx: typer.Context,
    rooms: Annotated[list[str] | None, typer.Argument(help="Rooms (default with --all)")] = None,
    all_rooms: Annotated[bool, typer.Option("--all", help="Every room this account is in")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say exactly what would go; change nothing")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON report a room")] = False,
) -> None:
    """Apply rooms' retention policies: redact what is older (safe to run again)."""
    if bool(rooms) == all_rooms:
        raise ValidationError("name the rooms to clean up, or give --all")

    async def go(c: DataroomsClient) -> None:
        targets = c.joined_rooms() if all_rooms else [await c.rooms.resolve(r) for r in rooms or []]
        for rid in targets:
            if all_rooms and c.retention.policy(rid) is None:
                continue
            report = await c.retention.cleanup(rid, dry_run=dry_run)
            if as_json:
                print(json.dumps(report.to_json()), flush=True)
                continue
            if report.refused:
                echo(f"{rid}: {report.refused}")
                continue
            verb = "would go" if dry_run else "redacted"
            echo(f"{rid}: {len(report.items)} {verb} ({report.bytes} bytes of files)")
            for item in report.items:
                echo(f"  {item.kind} {item.event_id} {ts(item.ts)} {item.what}")
            if report.not_allowed:
                echo(
                    f"  {len(report.not_allowed)} more are other members' and need the room's "
                    "redact power (an admin)"
                )
            if not dry_run and (report.media_deleted or report.media_kept):
                echo(
                    f"  media deleted from the homeserver: {report.media_deleted}"
                    + (f"; kept (not its admin): {report.media_kept}" if report.media_kept else "")
                )

    with_client(ctx, go, rooms_from_index=True)


@room_app.command("review")
def room_review(
    ctx: typer.Context,
    room: RoomArg,
    stale_days: Annotated[
        float | None,
        typer.Option(help="A member not active for this long is a finding [default: 90]"),
    ] = None,
    grant_days: Annotated[
        float | None, typer.Option(help="Write or admin access held longer is a finding")
    ] = None,
    post: Annotated[
        bool, typer.Option("--post", help="Also post it into the room, mentioning its admins")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON")] = False,
) -> None:
    """Access review report: members, devices, servers, and what to look at (with the
    command that revokes it). Uses the room's review schedule's settings if it has one."""

    async def go(c: DataroomsClient) -> None:
        rid = await c.rooms.resolve(room)
        sched = c.reviews.schedule(rid)
        report = await c.reviews.report(
            rid,
            stale_days=stale_days or (sched.stale_days if sched else 90),
            grant_days=grant_days
            if grant_days is not None
            else (sched.grant_days if sched else None),
        )
        if post:
            await c.reviews.post(rid, report)
        if as_json:
            print_json(report.to_json())
        else:
            echo(report.to_text())

    with_client(ctx, go)


@room_app.command("review-schedule")
def room_review_schedule(
    ctx: typer.Context,
    room: RoomArg,
    every: Annotated[
        int | None, typer.Option("--every", help="Review every this many days")
    ] = None,
    stale_days: Annotated[int, typer.Option(help="See `room review`")] = 90,
    grant_days: Annotated[int | None, typer.Option(help="See `room review`")] = None,
    off: Annotated[bool, typer.Option("--off", help="No more scheduled reviews")] = False,
) -> None:
    """Schedule access reviews of a room (room state; the state bot posts them)."""
    if off == (every is not None):
        raise ValidationError("give --every DAYS or --off")

    async def go(c: DataroomsClient) -> None:
        rid = await c.rooms.resolve(room)
        sched = await c.reviews.set_schedule(
            rid, None if off else every, stale_days=stale_days, grant_days=grant_days
        )
        if sched is None:
            echo(f"{rid}: no scheduled access reviews")
        else:
            echo(f"{rid}: access review every {sched.interval_days} days")

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


def _print_moderation(c: DataroomsClient, rid: str) -> None:
    """The policy lists and flood control the room follows (io.datarooms.moderation)."""
    from datarooms.sdk.automation.moderation import moderation

    config = moderation(c, rid)
    if config is None:
        return
    lists = config.get("policy_lists") or []
    flood = config.get("flood")
    echo(
        f"moderation: follows {len(lists)} policy list(s)"
        + (", redacts banned users' events" if config.get("redact") else "")
        + (
            f"; flood control: over {flood['max_messages']} events in "
            f"{flood['per_seconds']} s -> {flood.get('action', 'mute')}"
            if flood
            else ""
        )
    )
    for lst in lists:
        echo(f"  {lst}")


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


#: `datarooms rooms usage`: the same command, under the name the platform's other
#: operations use for every room at once.
rooms_app = typer.Typer(help="Every room at once: sizes.", no_args_is_help=True)
rooms_app.command("usage")(room_usage)


def register(app: typer.Typer) -> None:
    app.add_typer(room_app, name="room")
    app.add_typer(rooms_app, name="rooms")
    app.add_typer(file_app, name="file")
    for fn in (put, get, history, send, tail, cleanup):
        app.command()(fn)
