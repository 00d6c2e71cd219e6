"""A client cannot grow the state bot's metrics without bound (issue 11, item 8).

The attack: every request with a new HTTP method (``FOO1``, ``FOO2``, ...) made a new
Prometheus series, so a stranger could make ``/metrics`` (and the bot's memory) as large
as they liked. Unknown methods now count as ``other``, unmatched paths as ``unmatched``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from datarooms.services.statebot import StateBot
from datarooms.testing import TestHomeserver
from tests.test_statebot import start_bot


@pytest.fixture
async def bot(homeserver: TestHomeserver, open_client: Any) -> AsyncIterator[StateBot]:
    b = await start_bot(homeserver, open_client)
    yield b
    await b.stop()


async def test_unknown_methods_and_paths_share_one_label(bot: StateBot) -> None:
    junk = [f"X{uuid.uuid4().hex[:8].upper()}" for _ in range(20)]
    async with aiohttp.ClientSession() as s:
        for i, method in enumerate(junk):
            path = "/v1/rooms/!r:x/state" if i % 2 else f"/junk/{method}"
            async with s.request(method, bot.url + path) as r:
                assert r.status >= 400
        async with s.get(bot.url + "/metrics") as r:
            text = await r.text()
    series = [line for line in text.splitlines() if line.startswith("statebot_requests_total")]
    assert any('method="other"' in line for line in series)
    assert any('route="unmatched"' in line for line in series)
    for method in junk:
        assert method not in text
    methods = {line.split('method="', 1)[1].split('"', 1)[0] for line in series}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}


async def test_room_sizes_are_gauges(
    bot: StateBot, homeserver: TestHomeserver, open_client: Any
) -> None:
    from tests.test_statebot import bot_room

    owner = await open_client(await homeserver.new_user("sizes-owner"))
    room = await bot_room(owner, bot)
    for v in range(3):
        await owner.records.put(room, "k", v)
    await bot.client.sync_once()
    async with aiohttp.ClientSession() as s, s.get(bot.url + "/metrics") as r:
        text = await r.text()
    assert f'datarooms_room_record_versions{{room="{room}"}} 3.0' in text
    assert f'datarooms_room_members{{room="{room}"}} 2.0' in text
