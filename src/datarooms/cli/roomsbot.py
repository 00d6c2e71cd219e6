"""CLI: ``datarooms entity register|list``, ``datarooms roomsbot``, ``datarooms devchain``.

Thin: each command calls the chain client, the devchain or the rooms bot.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from datarooms._fs import ProcessLock
from datarooms.chain.devchain.node import DevChain, create_entity_tx
from datarooms.chain.devchain.rpc import DevChainServer
from datarooms.chain.entity import ENTITY_CREATED_QUERY, parse_tx_events
from datarooms.chain.errors import TxRejectedError
from datarooms.chain.rpc import CometRpc, TxResult
from datarooms.config import Settings, load_settings
from datarooms.services.devchain import chain_url, devchain_dir
from datarooms.services.platform import live_homeserver_url
from datarooms.services.roomsbot.bot import RoomsBot
from datarooms.services.roomsbot.service import store_path, write_appservice_registration
from datarooms.services.roomsbot.settings import roomsbot_dir
from datarooms.services.roomsbot.store import Store
from datarooms.services.scaffold import ServiceRun
from datarooms.services.stores import store_target

T = TypeVar("T")
# Piped output is read by scripts: do not fold tables to 80 columns (as the main CLI).
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 250)

entity_app = typer.Typer(
    help="IXO entities on the chain (the devchain by default): register and list them.",
    no_args_is_help=True,
)

RpcOption = Annotated[
    str | None,
    typer.Option("--rpc", help="CometBFT RPC URL [default: this data dir's devchain]"),
]


def run(coro: Awaitable[T]) -> T:
    async def _main() -> T:
        return await coro

    return asyncio.run(_main())


def _settings(ctx: typer.Context) -> Settings:
    """The settings of the CLI this command runs in (its root ``obj``), else the defaults."""
    obj = ctx.find_root().obj
    settings = getattr(obj, "settings", None)
    if callable(settings):
        result = settings()
        if isinstance(result, Settings):
            return result
    return load_settings()


def _rpc_url(ctx: typer.Context, rpc: str | None) -> str:
    return rpc or chain_url(_settings(ctx))


# -- entity register / list -----------------------------------------------------------


@entity_app.command("register")
def entity_register(
    ctx: typer.Context,
    entity_type: Annotated[str, typer.Option("--type", "-t", help="IXO entity type")] = (
        "asset/device"
    ),
    controller: Annotated[
        list[str] | None,
        typer.Option(
            "--controller",
            "-c",
            help="Controller DID, e.g. did:ixo:ixo1abc (repeat for more); its Matrix "
            "user @did-ixo-ixo1abc:<server> is invited to the entity's rooms",
        ),
    ] = None,
    owner: Annotated[
        str | None, typer.Option("--owner", help="Owner DID [default: the first controller]")
    ] = None,
    count: Annotated[
        int, typer.Option("--count", "-n", min=1, max=100_000, help="Register this many entities")
    ] = 1,
    rpc: RpcOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line")] = False,
) -> None:
    """Register entities on the chain (MsgCreateEntity) and wait until they are in a block."""
    url = _rpc_url(ctx, rpc)
    controllers = list(controller or [])

    async def one(chain: CometRpc, sem: asyncio.Semaphore) -> list[dict[str, Any]]:
        async with sem:
            tx = create_entity_tx(entity_type=entity_type, controllers=controllers, owner_did=owner)
            res = await chain.broadcast_tx_commit(tx)
        check = res.get("check_tx") or {}
        if int(check.get("code") or 0) != 0:
            raise TxRejectedError(
                f"the chain refused the registration: {check.get('log')}",
                code=int(check["code"]),
                log=str(check.get("log")),
            )
        height = int(res.get("height") or 0)
        result = TxResult.from_search(
            {"hash": res.get("hash"), "height": height, "tx_result": res.get("tx_result"), "tx": ""}
        )
        parsed = parse_tx_events(height, result.hash, result.events)
        return [
            {
                "did": e.did,
                "type": e.type,
                "controllers": list(e.controllers),
                "height": e.height,
                "tx": e.tx_hash,
            }
            for e in parsed.entities
        ]

    async def go() -> list[dict[str, Any]]:
        sem = asyncio.Semaphore(64)
        async with CometRpc(url, timeout=120) as chain:
            done = await asyncio.gather(*(one(chain, sem) for _ in range(count)))
        return [e for batch in done for e in batch]

    entities = run(go())
    if as_json:
        for e in entities:
            typer.echo(json.dumps(e))
        return
    if count == 1 and entities:
        e = entities[0]
        console.print(f"registered {e['did']} ({e['type']}) at height {e['height']}")
        return
    console.print(f"registered {len(entities)} entities; the last: {entities[-1]['did']}")


@entity_app.command("list")
def entity_list(
    ctx: typer.Context,
    rpc: RpcOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object a line")] = False,
) -> None:
    """List the entities registered on the chain, with their rooms where the rooms bot
    of this data dir has made them."""
    settings = _settings(ctx)
    url = _rpc_url(ctx, rpc)

    async def go() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        async with CometRpc(url) as chain:
            top = await chain.latest_height()
            async for page in chain.search_pages(
                ENTITY_CREATED_QUERY, min_height=1, max_height=top
            ):
                for tx in page:
                    for e in parse_tx_events(tx.height, tx.hash, tx.events).entities:
                        out.append(
                            {
                                "did": e.did,
                                "type": e.type,
                                "height": e.height,
                                "controllers": list(e.controllers),
                            }
                        )
        return out

    entities = run(go())
    path = store_path(settings)
    target = store_target(settings)
    store = Store(path, target) if target.backend == "postgres" or path.exists() else None
    try:
        for e in entities:
            record = store.get(e["did"]) if store else None
            e["room_id"] = record.room_id if record else None
            e["space_id"] = record.space.room_id if record and record.space else None
    finally:
        if store is not None:
            store.close()
    if as_json:
        for e in entities:
            typer.echo(json.dumps(e))
        return
    table = Table(title=f"{len(entities)} entities on {url}", title_justify="left")
    for col in ("DID", "type", "height", "room", "space"):
        table.add_column(col)
    for e in entities:
        table.add_row(
            e["did"], e["type"] or "", str(e["height"]), e["room_id"] or "-", e["space_id"] or "-"
        )
    console.print(table)


# -- long-running commands -------------------------------------------------------------


async def _until_signalled(
    start: Callable[[], Awaitable[str]], stop: Callable[[], Awaitable[None]]
) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        message = await start()
        console.print(message)
        await stopping.wait()
    finally:
        with contextlib.suppress(Exception):
            await stop()


def roomsbot_command(
    ctx: typer.Context,
    homeserver_url: Annotated[
        str | None, typer.Option("--homeserver-url", help="[default: the platform's homeserver]")
    ] = None,
    chain_rpc: Annotated[
        str | None,
        typer.Option(
            "--chain-rpc", help="CometBFT RPC to watch [default: this data dir's devchain]"
        ),
    ] = None,
    no_watch: Annotated[bool, typer.Option("--no-watch", help="Do not watch the chain")] = False,
) -> None:
    """Run the rooms bot on its own (appservice, REST API, chain watcher) until Ctrl-C."""
    settings = _settings(ctx)
    rb, cs = settings.roomsbot, settings.chain
    reg = write_appservice_registration(settings, rb)
    url = homeserver_url or live_homeserver_url(settings)
    watch = None if no_watch or not cs.watch else (chain_rpc or chain_url(settings, cs))
    from datarooms.services.openid import federation_trust

    bot = RoomsBot(
        homeserver_url=url,
        registration=reg,
        store_path=store_path(settings),
        settings=rb,
        chain_url=watch,
        chain=cs,
        federation=federation_trust(settings),
        store_target=store_target(settings),
    )

    running = ServiceRun(
        settings,
        "roomsbot",
        ProcessLock(
            roomsbot_dir(settings.data_dir) / "roomsbot.lock",
            what=f"a rooms bot on {settings.data_dir}",
        ),
    )

    async def start() -> str:
        running.acquire()
        await bot.start()
        running.publish({"url": bot.url})
        return (
            f"rooms bot running at {bot.url} as {reg.user_id}; "
            f"watching {watch or 'no chain'}; registration {reg.path}"
        )

    async def stop() -> None:
        try:
            await bot.stop()
        finally:
            running.release()

    run(_until_signalled(start, stop))


def devchain_command(
    ctx: typer.Context,
    port: Annotated[int | None, typer.Option(help="RPC port (0: any free port)")] = None,
    verify: Annotated[
        bool, typer.Option("--verify", help="Only verify the stored chain, then exit")
    ] = False,
    allow_raw_events: Annotated[
        bool,
        typer.Option(
            "--allow-raw-events",
            help="Accept txs that emit arbitrary events (fault injection)",
        ),
    ] = False,
) -> None:
    """Run the embedded devchain on its own until Ctrl-C (or only --verify it)."""
    settings = _settings(ctx)
    cs = settings.chain
    directory = devchain_dir(settings.data_dir)
    if verify:
        height = DevChain.verify(directory)
        console.print(f"the devchain in {directory} is intact: {height} blocks verified")
        return
    chain = DevChain(
        directory,
        chain_id=cs.chain_id,
        block_interval=cs.block_interval,
        allow_raw_events=allow_raw_events,
    )
    server = DevChainServer(chain, host=cs.host, port=cs.port if port is None else port)

    running = ServiceRun(settings, "devchain")

    async def start() -> str:
        await server.start()
        running.publish({"url": server.url})
        return (
            f"devchain {chain.chain_id} at height {chain.height}, RPC {server.url} "
            f"(verified {chain.height} blocks)"
        )

    async def stop() -> None:
        try:
            await server.stop()
        finally:
            running.release()

    run(_until_signalled(start, stop))


__all__ = ["devchain_command", "entity_app", "roomsbot_command"]
