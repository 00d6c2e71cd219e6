"""Exactly once, across crashes: entities registered while the rooms bot is SIGKILLed and
restarted at random moments end up with exactly one room each (and no space: spaces are
made when asked for); then clients asking at once for some entities' spaces get exactly
one space each, listing the entity's room.

The bot runs as a separate OS process (``python -m datarooms.cli roomsbot``), so a
kill is a real SIGKILL: no cleanup, requests in flight, store writes cut short. Each kill
comes at a random point while rooms are being created. At the end the homeserver itself
(its admin API and its room directory), not the bot, says what exists.

``DATAROOMS_TEST_KILL_ENTITIES`` sets the number of entities: 60 by default, 300 with
``DATAROOMS_FULL_TESTS=1`` (about two minutes here; ``bench/roomsbot.py`` does 1,000).
``DATAROOMS_TEST_SEED`` (printed) replays a run's waves and kill points.

The homeserver is shared with the other rooms-bot tests, so only the rooms the bot
created during this test are counted.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from datarooms._transport.http import MatrixHttp
from datarooms.chain import ENTITY_CREATED_QUERY, CometRpc, parse_tx_events
from datarooms.services.roomsbot.entity_rooms import alias_localpart
from tests._cli import clean_env
from tests._roomsbot import (
    AppserviceHomeserver,
    get_json,
    own_data_dir,
    register,
    running_devchain,
)

ENTITIES = int(
    os.environ.get(
        "DATAROOMS_TEST_KILL_ENTITIES",
        "300" if os.environ.get("DATAROOMS_FULL_TESTS") == "1" else "60",
    )
)
KILLS = 5
SPACES = 5

pytestmark = [pytest.mark.timeout(600), pytest.mark.xdist_group("appservice")]


@pytest.fixture
def ashs(appservice_hs: AppserviceHomeserver, tmp_path: Path) -> AppserviceHomeserver:
    """The session's appservice homeserver, with a data dir of this test's own."""
    return own_data_dir(appservice_hs, tmp_path / "ashs")


class BotProcess:
    def __init__(self, ashs: AppserviceHomeserver, chain_url: str, log: Path) -> None:
        self.ashs = ashs
        self.url = ashs.registration.url
        env = clean_env(
            DATAROOMS_ROOMSBOT_PORT=str(ashs.port),
            DATAROOMS_CHAIN_MODE="external",
            DATAROOMS_CHAIN_RPC_URL=chain_url,
        )
        self.log = log.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "datarooms.cli",
                "--data-dir",
                str(ashs.data_dir),
                "--log-level",
                "INFO",
                "roomsbot",
                "--homeserver-url",
                ashs.hs.base_url,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    async def health(self) -> dict[str, Any] | None:
        try:
            status, body = await get_json(self.url + "/health")
        except OSError:
            return None
        return body if status == 200 else None

    async def wait_healthy(self, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"the rooms bot exited with {self.proc.returncode}; see {self.log.name}"
                )
            health = await self.health()
            if health is not None:
                return health
            await asyncio.sleep(0.1)
        raise AssertionError("the rooms bot did not become healthy")

    async def wait_entities(self, n: int, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        health: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the rooms bot exited; see {self.log.name}")
            health = await self.health()
            if health is not None and health["entities"] >= n:
                return health
            await asyncio.sleep(0.05)
        raise AssertionError(f"only {health and health['entities']} of {n} entities in time")

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: nothing in the bot gets to run
        self.proc.wait()
        self.log.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


async def _bot_rooms(ashs: AppserviceHomeserver, admin_token: str) -> list[dict[str, Any]]:
    """Every room the bot created, as Synapse's admin API lists them."""
    rooms: list[dict[str, Any]] = []
    start: Any = 0
    async with MatrixHttp(ashs.hs.base_url, admin_token) as http:
        while start is not None:
            page = await http.request(
                "GET", "/_synapse/admin/v1/rooms", params={"limit": "500", "from": str(start)}
            )
            rooms.extend(r for r in page["rooms"] if r.get("creator") == ashs.registration.user_id)
            start = page.get("next_batch")
    return rooms


async def test_exactly_once_across_sigkills(ashs: AppserviceHomeserver, tmp_path: Path) -> None:
    seed = int(os.environ.get("DATAROOMS_TEST_SEED", "20201"))
    rng = random.Random(seed)
    print(f"seed {seed}, {ENTITIES} entities, {KILLS} kills")
    admin = await ashs.hs.new_user("admin", admin=True)
    before = {r["room_id"] for r in await _bot_rooms(ashs, admin.access_token)}
    log = tmp_path / "roomsbot.log"
    started = time.monotonic()
    async with running_devchain(tmp_path / "chain") as chain:

        async def registrar() -> list[str]:
            dids: list[str] = []
            while len(dids) < ENTITIES:
                # 10-50 entities a wave for 300 entities, proportionally fewer for fewer.
                wave = rng.randint(max(1, ENTITIES // 30), max(2, ENTITIES // 6))
                wave = min(ENTITIES - len(dids), wave)
                dids += await register(chain.url, wave, controllers=["did:ixo:ixo1owner"])
                await asyncio.sleep(rng.uniform(0.1, 1.0))
            return dids

        registering = asyncio.create_task(registrar())
        # Kill points: random progress levels spread over the run, so every kill lands
        # while rooms are being created (requests in flight, store writes half done).
        marks = sorted(rng.sample(range(ENTITIES // 20, ENTITIES * 8 // 10), KILLS))
        try:
            for i, mark in enumerate(marks):
                bot = BotProcess(ashs, chain.url, log)
                await bot.wait_healthy()
                await bot.wait_entities(mark, timeout=240)
                await asyncio.sleep(rng.uniform(0, 0.3))
                bot.kill()
                print(f"kill {i + 1} at {mark}+ entities, {time.monotonic() - started:.0f} s")
            registered = await registering
            bot = BotProcess(ashs, chain.url, log)
            try:
                await bot.wait_healthy()
                health = await bot.wait_entities(ENTITIES, timeout=400)
                print(f"all {ENTITIES} ready after {time.monotonic() - started:.0f} s")
            finally:
                bot.stop()
        finally:
            registering.cancel()

        # What the chain says was registered.
        async with CometRpc(chain.url) as rpc:
            on_chain: list[str] = []
            async for page in rpc.search_pages(
                ENTITY_CREATED_QUERY, min_height=1, max_height=chain.chain.height
            ):
                for tx in page:
                    on_chain += [
                        e.did for e in parse_tx_events(tx.height, tx.hash, tx.events).entities
                    ]
        # Spaces for some entities, asked for by two clients at once each (through the
        # homeserver's alias lookup), with the bot running again.
        with_space = on_chain[:SPACES]
        bot = BotProcess(ashs, chain.url, log)
        try:
            await bot.wait_healthy()
            clients = [await ashs.hs.new_user("client") for _ in range(2)]
            async with (
                MatrixHttp(ashs.hs.base_url, clients[0].access_token) as c0,
                MatrixHttp(ashs.hs.base_url, clients[1].access_token) as c1,
            ):
                answers = await asyncio.gather(
                    *(
                        c.request(
                            "GET",
                            "/_matrix/client/v3/directory/room/"
                            + quote(f"#{alias_localpart(did, 'space')}:localhost"),
                        )
                        for did in with_space
                        for c in (c0, c1)
                    )
                )
            pairs = zip(answers[::2], answers[1::2], strict=True)
            assert all(a["room_id"] == b["room_id"] for a, b in pairs)
        finally:
            bot.stop()
    assert sorted(on_chain) == sorted(registered) and len(set(on_chain)) == ENTITIES
    assert health["entities"] == ENTITIES and health["skipped_events"] == 0

    # What the homeserver says exists: exactly one room per entity, one space for each
    # entity whose space was asked for.
    rooms = [r for r in await _bot_rooms(ashs, admin.access_token) if r["room_id"] not in before]
    live = [r for r in rooms if r.get("joined_local_members", 0) > 0]
    by_alias = Counter(r.get("canonical_alias") for r in live)
    expected = {f"#{alias_localpart(d, 'entity')}:localhost" for d in on_chain} | {
        f"#{alias_localpart(d, 'space')}:localhost" for d in with_space
    }
    assert None not in by_alias, "a room without its alias: a second room for an entity"
    assert set(by_alias) == expected, "rooms missing, or rooms no entity asked for"
    assert all(n == 1 for n in by_alias.values()), "an alias on two rooms"
    assert len(live) == ENTITIES + len(with_space)
    assert sum(1 for r in live if r.get("room_type") == "m.space") == len(with_space)

    # And the directory agrees, and every space lists its entity's room.
    ids = {r["canonical_alias"]: r["room_id"] for r in live}
    token = ashs.registration.as_token
    async with MatrixHttp(ashs.hs.base_url, token) as http:
        for did in on_chain:
            room_alias = f"#{alias_localpart(did, 'entity')}:localhost"
            room = await http.request(
                "GET", f"/_matrix/client/v3/directory/room/{quote(room_alias)}"
            )
            assert room["room_id"] == ids[room_alias]
        for did in with_space:
            room_alias = f"#{alias_localpart(did, 'entity')}:localhost"
            space_alias = f"#{alias_localpart(did, 'space')}:localhost"
            child = await http.request(
                "GET",
                f"/_matrix/client/v3/rooms/{quote(ids[space_alias])}/state/"
                f"m.space.child/{quote(ids[room_alias])}",
            )
            assert child["via"] == ["localhost"]
