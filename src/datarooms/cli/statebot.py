"""CLI of the state bot: ``datarooms state get|set|acl|keys|join|room`` and ``datarooms statebot``.

Wire into the main CLI with::

    from datarooms.cli.statebot import state_app, statebot
    app.add_typer(state_app, name="state")
    app.command()(statebot)

The ``state`` commands talk to the bot's REST API as the CLI's account, with an
OpenID token from its homeserver. The bot is found at ``--url`` (or
``DATAROOMS_STATEBOT_URL``), else where the running platform says it listens
(``<data_dir>/run/statebot.json``), else on its configured port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from datarooms._logging import configure_logging
from datarooms.account import resolve_credentials
from datarooms.cli._common import console, parse_value, run, state
from datarooms.config import Settings
from datarooms.errors import HomeserverError, PlatformError, ValidationError
from datarooms.homeserver.api import MatrixApi
from datarooms.services.platform import PlatformContext, live_homeserver_url
from datarooms.services.statebot.client import StateBotClient
from datarooms.services.statebot.service import StateBotService, running_url

T = TypeVar("T")

state_app = typer.Typer(
    help="Keyed room state and ACLs through the state bot (ixo.room.state).",
    no_args_is_help=True,
)

RoomArg = Annotated[str, typer.Argument(help="Room id (!...) or alias (#...)")]
KeyArg = Annotated[str, typer.Argument(help="The state key")]
PathOpt = Annotated[
    str, typer.Option("--path", "-p", help="JSON Pointer into the value, e.g. /thresholds/max")
]


@state_app.callback()
def _state_options(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="The state bot's URL [default: the running one]",
            envvar="DATAROOMS_STATEBOT_URL",
            show_envvar=True,
        ),
    ] = None,
) -> None:
    ctx.meta["statebot_url"] = url


def _homeserver_url(settings: Settings) -> str:
    if settings.homeserver.mode == "embedded":
        return live_homeserver_url(settings)
    return settings.homeserver.base_url


def bot_url(settings: Settings, explicit: str | None = None) -> str:
    if explicit:
        return explicit.rstrip("/")
    found = running_url(settings)
    if found:
        return found
    return f"http://127.0.0.1:{settings.statebot.port or 8010}"


@contextlib.asynccontextmanager
async def open_bot(settings: Settings, url: str | None) -> AsyncIterator[StateBotClient]:
    """A client of the bot acting as the CLI's account."""
    creds = resolve_credentials(settings)
    hs = _homeserver_url(settings)
    if creds.access_token:
        bot = StateBotClient.for_access_token(
            bot_url(settings, url), hs, creds.access_token, creds.user_id or None
        )
        async with bot:
            yield bot
        return
    # Password only: use the CLI's persistent device (no new device per command).
    from datarooms.cli._device import open_client

    async with (
        open_client(settings) as client,
        StateBotClient.for_client(bot_url(settings, url), client) as bot,
    ):
        yield bot


def _with_bot(ctx: typer.Context, fn: Callable[[StateBotClient], Awaitable[T]]) -> T:
    settings = state(ctx).settings()
    url = ctx.meta.get("statebot_url")

    async def go() -> T:
        async with open_bot(settings, url) as bot:
            return await fn(bot)

    return run(go())


async def _room_id(settings: Settings, room: str) -> str:
    if room.startswith("!"):
        return room
    if not room.startswith("#"):
        raise ValidationError(f"{room!r} is neither a room id (!...) nor an alias (#...)")
    creds = resolve_credentials(settings)
    if not creds.access_token:
        raise ValidationError(
            f"cannot resolve the alias {room} without an access token; give the room id (!...)"
        )
    from datarooms.sdk.rooms import resolve_alias  # nio is heavy: only when an alias is given

    return await resolve_alias(_homeserver_url(settings), creds.access_token, room)


# -- commands ---------------------------------------------------------------------


@state_app.command("get")
def get(ctx: typer.Context, room: RoomArg, key: KeyArg, path: PathOpt = "") -> None:
    """Print a key's value (or the part at --path) as JSON."""

    async def go(bot: StateBotClient) -> None:
        room_id = await _room_id(state(ctx).settings(), room)
        value = await bot.get(room_id, key, path)
        print(json.dumps(value, indent=2, ensure_ascii=False))

    _with_bot(ctx, go)


@state_app.command("set")
def set_(
    ctx: typer.Context,
    room: RoomArg,
    key: KeyArg,
    value: Annotated[str, typer.Argument(help="JSON value, or - to read it from stdin")],
    path: PathOpt = "",
    replace_: Annotated[
        bool, typer.Option("--replace", help="Replace at the path instead of merging")
    ] = False,
    secure: Annotated[
        bool | None,
        typer.Option(
            "--secure/--clear",
            help="Keep the value out of room state (encrypted record) / in the clear "
            "[default: as the key is now]",
        ),
    ] = None,
    text: Annotated[bool, typer.Option("--text", help="Take the value as text, not JSON")] = False,
) -> None:
    """Merge a JSON value into a key (at --path), through the state bot."""
    parsed = parse_value(value, text)

    async def go(bot: StateBotClient) -> None:
        room_id = await _room_id(state(ctx).settings(), room)
        res = await bot.set(
            room_id, key, parsed, path=path, mode="replace" if replace_ else "merge", secure=secure
        )
        console.print(
            f"set {key!r} in {room_id}" + (" (secure)" if res.secure else "") + f": {res.event_id}"
        )

    _with_bot(ctx, go)


@state_app.command("acl")
def acl(
    ctx: typer.Context,
    room: RoomArg,
    key: KeyArg,
    read: Annotated[
        list[str] | None, typer.Option("--read", "-r", help="May read (repeat for more)")
    ] = None,
    write: Annotated[
        list[str] | None, typer.Option("--write", "-w", help="May write (repeat for more)")
    ] = None,
    empty: Annotated[bool, typer.Option("--empty", help="Set an ACL that lists nobody")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """Show a key's ACL; with --read/--write (or --empty), replace it with exactly those lists."""

    async def go(bot: StateBotClient) -> None:
        room_id = await _room_id(state(ctx).settings(), room)
        if read or write or empty:
            await bot.set_acl(room_id, key, read=list(read or []), write=list(write or []))
        current = await bot.get_acl(room_id, key)
        if as_json:
            print(json.dumps(None if current is None else current.to_content()))
        elif current is None:
            console.print(
                f"{key!r} has no ACL: every member may read it; writing it needs power in the room"
            )
        else:
            console.print(f"read:  {', '.join(current.read) or '(nobody)'}")
            console.print(f"write: {', '.join(current.write) or '(nobody)'}")

    _with_bot(ctx, go)


@state_app.command("keys")
def keys(ctx: typer.Context, room: RoomArg) -> None:
    """List a room's keys and what you may do with each."""

    async def go(bot: StateBotClient) -> None:
        room_id = await _room_id(state(ctx).settings(), room)
        table = Table("key", "secure", "acl", "read", "write")
        for k in await bot.keys(room_id):
            table.add_row(
                k.key, *("yes" if b else "" for b in (k.secure, k.has_acl, k.readable, k.writable))
            )
        console.print(table)

    _with_bot(ctx, go)


@state_app.command("join")
def join(ctx: typer.Context, room: RoomArg) -> None:
    """Have the state bot join a room (invite it first)."""

    async def go(bot: StateBotClient) -> None:
        console.print(f"the state bot joined {await bot.join(room)}")

    _with_bot(ctx, go)


@state_app.command("room")
def room_status(ctx: typer.Context, room: RoomArg) -> None:
    """What the state bot can do in a room, and why not."""

    async def go(bot: StateBotClient) -> None:
        room_id = await _room_id(state(ctx).settings(), room)
        print(json.dumps(await bot.room(room_id), indent=2))

    _with_bot(ctx, go)


# -- running the bot alone -----------------------------------------------------------


def statebot(
    ctx: typer.Context,
    port: Annotated[int | None, typer.Option(help="Port to listen on [default: 8010]")] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on")] = None,
) -> None:
    """Run the state bot alone, in the foreground, against the running homeserver."""
    st = state(ctx)
    settings = st.settings()
    configure_logging(st.log_level or settings.log_level)
    overrides: dict[str, Any] = {}
    if port is not None:
        overrides["port"] = port
    if host is not None:
        overrides["host"] = host
    run(_run_alone(settings, overrides))


async def _run_alone(settings: Settings, overrides: dict[str, Any]) -> None:
    url = _homeserver_url(settings)
    async with MatrixApi(url, timeout=5) as http:
        try:
            await http.versions()
        except HomeserverError:
            raise PlatformError(
                f"the homeserver at {url} is not answering; start it first (`datarooms up`)"
            ) from None
    creds = replace(resolve_credentials(settings), homeserver_url=url)
    embedded = None
    if settings.homeserver.mode == "embedded":
        from datarooms.homeserver.embedded import EmbeddedSynapse

        candidate = EmbeddedSynapse(settings.synapse_dir)
        if candidate.secrets_path.exists():
            embedded = candidate  # only its registration secret is used, to create the account
    platform = PlatformContext(settings, url, creds, embedded)
    service = StateBotService(**overrides)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    info = await service.start(platform)
    try:
        console.print(
            f"state bot {info['user']} listening on {info['url']} "
            f"(docs: {info['docs']}). Ctrl-C stops it."
        )
        sys.stdout.flush()
        await stop.wait()
    finally:
        console.print("stopping the state bot ...")
        await service.stop()


__all__ = ["bot_url", "open_bot", "state_app", "statebot"]
