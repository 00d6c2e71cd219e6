"""The CLI's E2EE device: opened in this process, or the platform's copy of it.

The record and message commands run through :func:`perform`: on the platform's
copy of the device when ``datarooms up`` runs on this data dir
(:mod:`datarooms.services.clidevice`), else here. Both run the same operation
(:data:`~datarooms.services.clidevice.OPERATIONS`) and print it with the same
renderer below, so a command prints the same either way.

No typer here: the fast path (:mod:`datarooms.cli._fast`) uses this module before
(and instead of) importing the command-line framework.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from datarooms.cli._console import console, echo, print_json
from datarooms.services import clidevice

if TYPE_CHECKING:
    from datarooms.account import Credentials
    from datarooms.config import Settings
    from datarooms.sdk.client import DataroomsClient

#: How long a command waits for the platform to let go of the device.
DEVICE_WAIT_S = 30.0


def acting_credentials(settings: Settings) -> Credentials:
    """Who the CLI acts as (``[account]``, else the platform's service account), at the
    homeserver URL of the platform running on this data dir (its run file) when the
    homeserver is embedded, whoever the account is: ``datarooms up --port N`` moves it."""
    from datarooms.account import resolve_credentials

    creds = resolve_credentials(settings)
    if settings.homeserver.mode == "embedded":
        from datarooms.services.platform import running_homeserver_url

        url = running_homeserver_url(settings)
        if url and url != creds.homeserver_url:
            creds = replace(creds, homeserver_url=url)
    return creds


@contextlib.asynccontextmanager
async def open_client(
    settings: Settings, *, rooms_from_index: bool = False
) -> AsyncIterator[DataroomsClient]:
    """This account's CLI device, opened in this process. ``rooms_from_index``: catch
    up with an incremental sync from the stored position, taking what the device
    already knows of each room (members, encryption) from its index, instead of a
    full-state sync of every room: enough for writing and reading records and
    messages, and what keeps a `put` fast.

    The platform, if it holds this device, is asked to let go of it first: it
    keeps its copy open only while no other process has the device open."""
    from datarooms.sdk.client import DataroomsClient
    from datarooms.services.platform import device_store_dir

    creds = acting_credentials(settings)
    if not creds.user_id:
        from datarooms.homeserver.api import MatrixApi

        async with MatrixApi(creds.homeserver_url, creds.access_token) as http:
            creds = replace(creds, user_id=(await http.whoami())["user_id"])
    await asyncio.to_thread(clidevice.release, settings, creds.user_id)
    client = await DataroomsClient.open(
        creds,
        device_store_dir(settings, creds.user_id),
        device_name="datarooms CLI",
        trust=settings.trust_policy,  # type: ignore[arg-type]
        rooms_from_index=rooms_from_index,
        share="shared",
        share_wait=DEVICE_WAIT_S,
    )
    # Entity rooms are the rooms bot's where one runs (datarooms.sdk.roomsbot).
    client.rooms.roomsbot_url = settings.roomsbot.url or settings.running_url("roomsbot")
    try:
        yield client
    finally:
        await client.close()


def perform(settings: Settings, op: str, args: dict[str, Any]) -> Any:
    """Run a record or message operation on the platform's device, else in this process."""
    from datarooms.account import resolve_credentials

    creds = resolve_credentials(settings)
    if creds.user_id:
        with contextlib.suppress(clidevice.Declined):
            return clidevice.call(settings, creds, op, args)
    return run_here(settings, op, args)


def run_here(settings: Settings, op: str, args: dict[str, Any]) -> Any:
    """Run a record or message operation on the CLI's device, opened in this process."""

    async def here() -> Any:
        async with open_client(settings, rooms_from_index=True) as client:
            return await clidevice.OPERATIONS[op](client, args)

    return asyncio.run(here())


# -- what each operation prints -------------------------------------------------------


def ts(ms: int | None) -> str:
    if not ms:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))


def show_put(result: dict[str, Any]) -> None:
    echo(f"{result['key']} v{result['version'] or '?'} {result['event_id']}")


def show_get(result: dict[str, Any], *, whole: bool, as_json: bool) -> None:
    if whole:
        print_json(result if as_json else {k: r["value"] for k, r in result.items()})
    else:
        print_json(result if as_json else result["value"])


def show_history(result: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table("version", "time", "sender", "value")
    for r in result:
        table.add_row(str(r["version"]), ts(r["ts"]), r["sender"], json.dumps(r["value"]))
    console.print(table)


def show_send(result: str) -> None:
    echo(result)
