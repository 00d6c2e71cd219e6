"""No one can make the rooms bot create rooms for made-up entities (issue 11, item 6).

The attack: ``GET /_matrix/client/v3/directory/room/{alias}`` needs no login, and for an
unknown ``#did-…`` alias the homeserver asks the rooms bot, which created an entity room
and a space for whatever DID the alias named, without bound. Now an alias query creates
rooms only for a DID the bot knows or finds on the chain, and at a bounded pace.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from datarooms.config import ChainSettings
from datarooms.homeserver.embedded import free_port
from datarooms.services.roomsbot import RoomsBot, RoomsBotSettings
from tests._roomsbot import (
    AppserviceHomeserver,
    appservice_homeserver,
    new_controller,
    register,
    running_devchain,
    state_of,
)

#: One worker, so the module's homeserver is started once.
pytestmark = [pytest.mark.timeout(240), pytest.mark.xdist_group("roomsbot-hardening")]


@pytest.fixture(scope="module")
def ashs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppserviceHomeserver]:
    with appservice_homeserver(tmp_path_factory.mktemp("roomsbot-hardening")) as env:
        yield env


async def lookup(ashs: AppserviceHomeserver, alias: str) -> int:
    """An unauthenticated directory lookup (what any stranger can do); its HTTP status."""
    from urllib.parse import quote

    url = f"{ashs.hs.base_url}/_matrix/client/v3/directory/room/{quote(alias)}"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status


def alias_of(did: str) -> str:
    return "#" + did.replace(":", "-") + ":localhost"


@pytest.fixture
async def bot(ashs: AppserviceHomeserver, tmp_path: Path) -> AsyncIterator[tuple[RoomsBot, str]]:
    async with running_devchain(tmp_path / "chain") as chain:
        # Not watching: only an alias query can make rooms here, so each one is seen.
        bot = RoomsBot(
            homeserver_url=ashs.hs.base_url,
            registration=ashs.registration,
            store_path=tmp_path / "store.db",
            settings=RoomsBotSettings(port=ashs.port, on_demand_per_minute=1, on_demand_burst=3),
            chain_url=chain.url,
            chain=ChainSettings(watch=False),
        )
        await bot.start()
        try:
            yield bot, chain.url
        finally:
            await bot.stop()


async def test_alias_queries_create_rooms_only_for_chain_entities_at_a_bounded_pace(
    ashs: AppserviceHomeserver, bot: tuple[RoomsBot, str]
) -> None:
    rb, chain_url = bot
    created = rb.metrics.rooms_created.labels("entity")

    # A made-up DID: nothing is created, by a stranger without a login.
    made_up = "did:ixo:entity:" + uuid.uuid4().hex
    assert await lookup(ashs, alias_of(made_up)) == 404
    assert await lookup(ashs, "#space." + alias_of(made_up)[1:]) == 404
    assert rb.store.get(made_up) is None and rb.store.count() == 0
    assert created._value.get() == 0

    # A DID registered on the chain (the bot does not watch it): its rooms are made, from
    # the chain's facts, with its controller invited as admin.
    ctl, ctl_did = await new_controller(ashs)
    (did,) = await register(chain_url, controllers=[ctl_did])
    assert await lookup(ashs, alias_of(did)) == 200
    record = rb.store.get(did)
    assert record is not None and record.facts.source == "chain"
    assert record.members == (ctl.user_id,)
    state = await state_of(ashs.hs, ashs.registration.as_token, record.room_id)
    assert state[("m.room.member", ctl.user_id)]["membership"] == "invite"
    assert created._value.get() == 1
    # Known now: asking again is not a new creation and costs nothing from the budget.
    assert await lookup(ashs, alias_of(did)) == 200

    # A burst: the budget (3: the made-up DID's two aliases, the real one's) is spent,
    # and then even a real entity has to wait.
    (later,) = await register(chain_url, controllers=[ctl_did])
    assert await lookup(ashs, alias_of(made_up + "1")) == 404
    assert await lookup(ashs, alias_of(later)) == 404
    assert rb.store.get(later) is None
    assert rb.metrics.alias_queries.labels("rate_limited")._value.get() >= 1
    assert rb.store.count() == 1


async def test_health_never_shows_the_chain_url(ashs: AppserviceHomeserver, tmp_path: Path) -> None:
    """Issue 11, item 8: the unauthenticated ``/health`` showed the chain URL (with any
    credentials in it), in ``chain.url`` and in the watcher's last error."""
    secret = "s3cret-" + uuid.uuid4().hex[:8]
    port = free_port()
    chain_url = f"http://watcher:{secret}@127.0.0.1:{port}"  # nothing listens there
    bot = RoomsBot(
        homeserver_url=ashs.hs.base_url,
        registration=ashs.registration,
        store_path=tmp_path / "store.db",
        settings=RoomsBotSettings(port=ashs.port),
        chain_url=chain_url,
    )
    await bot.start()
    try:
        for _ in range(200):
            if bot.watcher is not None and bot.watcher.status.last_error:
                break
            await asyncio.sleep(0.05)
        assert bot.watcher is not None and bot.watcher.status.last_error
        async with aiohttp.ClientSession() as s, s.get(f"{bot.url}/health") as r:
            body = await r.text()
        assert r.status == 200
        health = json.loads(body)
        assert health["status"] == "degraded" and health["chain"]["connected"] is False
        assert secret not in body and f":{port}" not in body and "watcher:" not in body
    finally:
        await bot.stop()
