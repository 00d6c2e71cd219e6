"""The state bot against the real homeserver: auth, ACLs, IXO's event format, secure values."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import typer
from typer.testing import CliRunner

from datarooms import AccessDeniedError, Credentials, DataroomsClient, NotFoundError
from datarooms.cli._common import CliState
from datarooms.cli.statebot import state_app
from datarooms.config import Settings
from datarooms.errors import AlreadyRunningError, ValidationError
from datarooms.services.platform import PlatformContext
from datarooms.services.statebot import (
    Acl,
    BotPowerError,
    StateBot,
    StateBotClient,
    StateBotConfig,
    StateBotService,
    TooLargeError,
)
from datarooms.testing import TestHomeserver

OpenClient = Callable[..., Awaitable[DataroomsClient]]


# -- helpers (also used by test_statebot_fuzz.py) -------------------------------------


async def start_bot(homeserver: TestHomeserver, open_client: OpenClient, **config: Any) -> StateBot:
    """A state bot with its own account and device, listening on a free port."""
    user = await homeserver.new_user("statebot")
    client = await open_client(user, f"statebot-{uuid.uuid4().hex[:6]}")
    bot = StateBot(client, config=StateBotConfig(port=0, **config))
    await bot.start()
    return bot


async def bot_room(
    owner: DataroomsClient,
    bot: StateBot,
    *members: tuple[DataroomsClient, str],
    bot_access: str = "admin",
) -> str:
    """``owner`` creates a data room, grants the bot and ``members``; all have joined."""
    room = await owner.rooms.create("device", name="state bot test")
    for member, access in members:
        await owner.rooms.grant(room.room_id, member.user_id, access)  # type: ignore[arg-type]
        await member.sync_once()
        await member.rooms.join(room.room_id)
    await owner.rooms.grant(room.room_id, bot.client.user_id, bot_access)  # type: ignore[arg-type]
    async with StateBotClient.for_client(bot.url, owner) as api:
        assert await api.join(room.room_id) == room.room_id
    await owner.sync_once()
    return room.room_id


async def raw_state(client: DataroomsClient, room: str, etype: str, key: str) -> Any:
    """A state event's content read straight from the homeserver."""
    async with client.http() as http:
        return await http.request(
            "GET", f"/_matrix/client/v3/rooms/{room}/state/{etype}/{quote(key, safe='')}"
        )


async def openid_token(client: DataroomsClient) -> str:
    async with client.http() as http:
        res = await http.request(
            "POST", f"/_matrix/client/v3/user/{client.user_id}/openid/request_token", json={}
        )
    return str(res["access_token"])


async def raw_call(
    bot: StateBot,
    method: str,
    path: str,
    *,
    token: str | None = None,
    server: str | None = None,
    data: bytes | None = None,
    json_body: Any = None,
) -> tuple[int, Any]:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if server is not None:
        headers["X-Matrix-Server-Name"] = server
    if data is not None:
        headers["Content-Type"] = "application/json"
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, bot.url + path, headers=headers, data=data, json=json_body) as resp,
    ):
        return resp.status, await resp.json(content_type=None)


async def wait_until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def bot(homeserver: TestHomeserver, open_client: OpenClient) -> AsyncIterator[StateBot]:
    b = await start_bot(homeserver, open_client)
    yield b
    await b.stop()


# -- the proof: two users, an ACL'd key, every allowed and denied path -------------------


async def test_acl_allows_and_denies_each_path_in_ixo_format(
    homeserver: TestHomeserver, open_client: OpenClient, bot: StateBot
) -> None:
    alice = await open_client(await homeserver.new_user("alice"))
    bob = await open_client(await homeserver.new_user("bob"))
    mallory = await open_client(await homeserver.new_user("mallory"))
    room = await bot_room(alice, bot, (bob, "read"))
    a = StateBotClient.for_client(bot.url, alice)
    b = StateBotClient.for_client(bot.url, bob)
    m = StateBotClient.for_client(bot.url, mallory)
    try:
        # Alice (room admin) writes; the event is IXO's: type ixo.room.state,
        # state_key = the key, content = the JSON value.
        await a.set(room, "config", {"unit": "C", "limits": {"min": 0, "max": 40}})
        await a.set(room, "config", 45, path="/limits/max")
        expected = {"unit": "C", "limits": {"min": 0, "max": 45}}
        assert await raw_state(alice, room, "ixo.room.state", "config") == expected

        # No ACL: every member reads, power decides writes.
        assert await b.get(room, "config", "/limits/max") == 45
        with pytest.raises(AccessDeniedError, match="may not write 'config'"):
            await b.set(room, "config", {"unit": "F"})
        assert [k.key for k in await b.keys(room)] == ["config"]
        # An outsider may do nothing.
        with pytest.raises(AccessDeniedError, match="not a joined member"):
            await m.get(room, "config")
        with pytest.raises(AccessDeniedError, match="not a joined member"):
            await m.set(room, "config", {"x": 1})

        # Setting an ACL needs power: Bob (read access) may not, Alice may.
        with pytest.raises(AccessDeniedError, match="may not change ACLs"):
            await b.set_acl(room, "config", read=[bob.user_id], write=[bob.user_id])
        assert await a.get_acl(room, "config") is None
        await a.set_acl(room, "config", read=[alice.user_id], write=[])
        assert await raw_state(alice, room, "ixo.room.state.acl", "config") == {
            "read": [alice.user_id],
            "write": [],
        }
        assert await b.get_acl(room, "config") == Acl((alice.user_id,), ())
        await wait_until(lambda: _denied(b.get(room, "config")), "bob's read to be refused")

        # With the ACL: Bob is in no list, so he may neither read nor write.
        with pytest.raises(AccessDeniedError, match="may not read 'config'"):
            await b.get(room, "config")
        with pytest.raises(AccessDeniedError, match="may not write 'config'"):
            await b.set(room, "config", {"x": 1})
        info = {k.key: k for k in await b.keys(room)}["config"]
        assert info.has_acl and not info.readable and not info.writable
        # Alice reads from the read list, and writes with her power (not in the write list).
        assert await a.get(room, "config", "/unit") == "C"
        await a.set(room, "config", {"unit": "K"})

        # Bob in the write list: he may write, and read what he writes into.
        await a.set_acl(room, "config", read=[alice.user_id], write=[bob.user_id])
        await bob.sync_once()
        await b.set(room, "config", {"by": "bob"})
        assert await b.get(room, "config") == {
            "unit": "K",
            "limits": {"min": 0, "max": 45},
            "by": "bob",
        }
        assert (await raw_state(alice, room, "ixo.room.state", "config"))["by"] == "bob"
    finally:
        for c in (a, b, m):
            await c.close()


async def _denied(aw: Awaitable[Any]) -> bool:
    try:
        await aw
    except AccessDeniedError:
        return True
    return False


# -- authentication ------------------------------------------------------------------


async def test_forged_expired_and_missing_tokens_are_refused(
    homeserver: TestHomeserver, open_client: OpenClient, bot: StateBot
) -> None:
    alice = await open_client(await homeserver.new_user("alice"))
    room = await bot_room(alice, bot)
    path = f"/v1/rooms/{room}/state"

    status, body = await raw_call(bot, "GET", path)
    assert (status, body["errcode"]) == (401, "M_MISSING_TOKEN")
    status, body = await raw_call(bot, "GET", path, token="forged" + uuid.uuid4().hex)
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    assert "unknown or expired" in body["error"]
    # A token of a homeserver the bot does not trust.
    status, body = await raw_call(
        bot, "GET", path, token=await openid_token(alice), server="evil.example.org"
    )
    assert (status, body["errcode"]) == (401, "DR_UNKNOWN_HOMESERVER")
    assert "the homeserver 'evil.example.org' is not one this service trusts" in body["error"]
    # An access token is not an OpenID token.
    status, body = await raw_call(bot, "GET", path, token=alice.access_token)
    assert status == 401

    # A real token the homeserver has since expired: the bot asks, and refuses.
    token = await openid_token(alice)
    homeserver.sql("UPDATE open_id_tokens SET ts_valid_until_ms = 0 WHERE token = ?", (token,))
    status, body = await raw_call(bot, "GET", path, token=token)
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")

    # A valid token works, and is then answered from the cache.
    def count(result: str) -> float:
        value = bot.metrics.registry.get_sample_value("statebot_auth_total", {"result": result})
        return value or 0.0

    verified, cached = count("verified"), count("cached")
    token = await openid_token(alice)
    for _ in range(3):
        status, body = await raw_call(bot, "GET", path, token=token, server="localhost")
        assert status == 200 and body == {"room_id": room, "keys": []}
    assert count("verified") - verified == 1 and count("cached") - cached == 2
    assert count("rejected") >= 4 and count("missing") == 1


async def test_token_cache_expires(homeserver: TestHomeserver, open_client: OpenClient) -> None:
    bot = await start_bot(homeserver, open_client, token_cache_seconds=0)
    try:
        alice = await open_client(await homeserver.new_user("alice"))
        room = await bot_room(alice, bot)
        token = await openid_token(alice)
        path = f"/v1/rooms/{room}/state"
        assert (await raw_call(bot, "GET", path, token=token))[0] == 200
        homeserver.sql("UPDATE open_id_tokens SET ts_valid_until_ms = 0 WHERE token = ?", (token,))
        # Nothing cached: the bot asks again and learns the token has expired.
        assert (await raw_call(bot, "GET", path, token=token))[0] == 401
    finally:
        await bot.stop()


# -- bad input ---------------------------------------------------------------------


async def test_bad_input_gets_clear_4xx(
    homeserver: TestHomeserver, open_client: OpenClient, bot: StateBot
) -> None:
    alice = await open_client(await homeserver.new_user("alice"))
    room = await bot_room(alice, bot)
    token = await openid_token(alice)
    key_path = f"/v1/rooms/{room}/state/k"

    async def call(method: str, path: str, **kw: Any) -> tuple[int, dict[str, Any]]:
        status, body = await raw_call(bot, method, path, token=token, **kw)
        assert (isinstance(body, dict) and set(body) >= {"errcode", "error"}) or status < 400
        return status, body

    cases: list[tuple[tuple[int, str], tuple[str, str], dict[str, Any]]] = [
        ((400, "M_NOT_JSON"), ("PUT", key_path), {"data": b'{"value": '}),
        ((400, "M_BAD_JSON"), ("PUT", key_path), {"json_body": {"path": "/a"}}),
        ((400, "M_BAD_JSON"), ("PUT", key_path), {"json_body": {"value": {}, "extra": 1}}),
        ((400, "DR_BAD_PATH"), ("PUT", key_path), {"json_body": {"value": 1, "path": "a/b"}}),
        ((400, "DR_INVALID"), ("PUT", key_path), {"json_body": {"value": 5}}),
        ((400, "DR_INVALID"), ("PUT", key_path), {"json_body": {"value": {"t": 21.5}}}),
        (
            (400, "DR_INVALID"),
            ("PUT", key_path),
            {"json_body": {"value": {"io.datarooms.secure": {}}}},
        ),
        ((413, "M_TOO_LARGE"), ("PUT", key_path), {"json_body": {"value": {"x": "y" * 70_000}}}),
        ((413, "M_TOO_LARGE"), ("PUT", key_path), {"data": b"[" * 300_000}),
        ((400, "M_INVALID_PARAM"), ("GET", "/v1/rooms/not-a-room/state"), {}),
        ((404, "DR_UNKNOWN_ROOM"), ("GET", "/v1/rooms/!nosuchroom:localhost/state"), {}),
        ((404, "DR_NOT_FOUND"), ("GET", key_path), {}),
        ((404, "DR_NOT_FOUND"), ("GET", f"/v1/rooms/{room}/acl/k"), {}),
        (
            (400, "M_BAD_JSON"),
            ("PUT", f"/v1/rooms/{room}/acl/k"),
            {"json_body": {"read": ["not a user"], "write": []}},
        ),
        ((404, "M_UNRECOGNIZED"), ("GET", "/v1/nothing"), {}),
        ((405, "M_UNRECOGNIZED"), ("DELETE", key_path), {}),
    ]
    for (want_status, want_code), (method, path), kw in cases:
        status, body = await call(method, path, **kw)
        assert (status, body.get("errcode")) == (want_status, want_code), (method, path, body)
        assert body["error"]

    # A good write, then bad reads of it.
    status, _ = await call("PUT", key_path, json_body={"value": {"a": {"b": [1, 2]}}})
    assert status == 200
    assert (await call("GET", key_path + "?path=/a/b/1"))[1]["value"] == 2
    status, body = await call("GET", key_path + "?path=/a/b/9")
    assert status == 404 and "no value at /a/b/9" in body["error"]
    status, body = await call("GET", key_path + "?path=a")
    assert status == 400
    status, body = await call("PUT", key_path, json_body={"value": 1, "path": "/a/b/x/y"})
    assert (status, body["errcode"]) == (400, "DR_BAD_PATH")
    # Nothing was logged with a stack trace, and the bot still answers.
    assert (await call("GET", key_path))[0] == 200


# -- the bot's own power ---------------------------------------------------------------


async def test_bot_without_power_says_so(
    homeserver: TestHomeserver, open_client: OpenClient, bot: StateBot
) -> None:
    alice = await open_client(await homeserver.new_user("alice"))
    room = await bot_room(alice, bot, bot_access="read")
    async with StateBotClient.for_client(bot.url, alice) as a:
        with pytest.raises(BotPowerError, match=r"has power 0 .* needs 100") as err:
            await a.set(room, "config", {"x": 1})
        assert err.value.errcode == "DR_BOT_POWER"
        status = await a.room(room)
        assert status["bot_power"] == 0 and not status["bot_can_write_state"]
        assert any("datarooms room grant" in p for p in status["problems"])
        # Once an admin raises the bot's power, the same write goes through.
        await alice.rooms.grant(room, bot.client.user_id, "admin")
        await wait_until(lambda: _bot_can_write(a, room), "the bot's new power to sync")
        await a.set(room, "config", {"x": 1})
        assert await a.get(room, "config") == {"x": 1}


async def _bot_can_write(api: StateBotClient, room: str) -> bool:
    return bool((await api.room(room))["bot_can_write_state"])


# -- secure values ---------------------------------------------------------------------


async def test_secure_value_never_reaches_room_state(
    homeserver: TestHomeserver,
    open_client: OpenClient,
    bot: StateBot,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    alice = await open_client(await homeserver.new_user("alice"))
    bob = await open_client(await homeserver.new_user("bob"))
    room = await bot_room(alice, bot, (bob, "read"))
    secret = "s3cret-" + uuid.uuid4().hex
    async with (
        StateBotClient.for_client(bot.url, alice) as a,
        StateBotClient.for_client(bot.url, bob) as b,
    ):
        res = await a.set(room, "credentials", {"api_key": secret, "user": "pump-7"}, secure=True)
        assert res.secure and res.record_event_id
        # The state holds only a reference to the encrypted record.
        content = await raw_state(alice, room, "ixo.room.state", "credentials")
        assert content == {
            "io.datarooms.secure": {
                "v": 1,
                "record": "ixo.room.state/credentials",
                "event_id": res.record_event_id,
                "algorithm": "m.megolm.v1.aes-sha2",
            }
        }
        assert secret not in json.dumps(content)
        # A merge keeps the key secure without saying so again.
        again = await a.set(room, "credentials", "pump-8", path="/user")
        assert again.secure
        entry = await b.entry(room, "credentials")
        assert entry.secure and entry.value == {"api_key": secret, "user": "pump-8"}
        assert await b.get(room, "credentials", "/api_key") == secret
        assert {k.key: k.secure for k in await b.keys(room)} == {"credentials": True}

    # Members' own E2EE devices can read the record too (the bot shares the room key).
    await bob.sync_once()
    record = await bob.records.get(room, "ixo.room.state/credentials")
    assert record.value == {"api_key": secret, "user": "pump-8"}
    # Nothing logged the secret, or an OpenID token.
    assert secret not in caplog.text
    assert "access_token=" not in caplog.text and "Bearer " not in caplog.text
    assert "state set" in caplog.text  # the bot did log the writes (without values)
    # And the homeserver never saw the secret: not in its database.
    dump = homeserver.database_dump()
    assert dump and secret.encode() not in dump


# -- the local cache follows the room -------------------------------------------------------


async def test_cache_follows_changes_made_outside_the_bot(
    homeserver: TestHomeserver, open_client: OpenClient, bot: StateBot
) -> None:
    alice = await open_client(await homeserver.new_user("alice"))
    room = await bot_room(alice, bot)
    async with StateBotClient.for_client(bot.url, alice) as a:
        await a.set(room, "mode", {"run": True})
        # An IXO client writes the state event directly; the bot's sync brings it in.
        async with alice.http() as http:
            await http.request(
                "PUT",
                f"/_matrix/client/v3/rooms/{room}/state/ixo.room.state/mode",
                json={"run": False, "by": "ixo"},
            )

        async def updated() -> bool:
            return bool(await a.get(room, "mode") == {"run": False, "by": "ixo"})

        await wait_until(updated, "the bot to see the direct write")
        # A merge through the bot merges into the direct write.
        await a.set(room, "mode", {"speed": 3})
        assert await raw_state(alice, room, "ixo.room.state", "mode") == {
            "run": False,
            "by": "ixo",
            "speed": 3,
        }
        # Kicked out, the bot stops answering for the room.
        await alice.rooms.revoke(room, bot.client.user_id)

        async def gone() -> bool:
            try:
                await a.get(room, "mode")
            except NotFoundError as exc:
                return exc.errcode == "DR_UNKNOWN_ROOM"
            return False

        await wait_until(gone, "the bot to notice it was removed")


# -- the platform service, health, metrics, docs, CLI -------------------------------------


async def test_service_runs_with_platform_context(
    homeserver: TestHomeserver, tmp_path: Path, open_client: OpenClient
) -> None:
    admin = await homeserver.new_user("admin", admin=True)
    settings = Settings(data_dir=tmp_path / "data")
    ctx = PlatformContext(
        settings,
        homeserver.base_url,
        Credentials(homeserver.base_url, admin.user_id, admin.access_token, admin.device_id),
        homeserver.synapse,
    )
    localpart = f"statebot-{uuid.uuid4().hex[:8]}"
    service = StateBotService(port=0, localpart=localpart)
    info = await service.start(ctx)
    try:
        assert info["user"] == f"@{localpart}:localhost" and info["url"].startswith("http://")
        # The running bot is findable, and a second one on the same device is refused.
        run = json.loads((settings.run_dir / "statebot.json").read_text())
        assert run["url"] == info["url"]
        with pytest.raises(AlreadyRunningError, match="already running"):
            await StateBotService(port=0, localpart=localpart).start(ctx)
        async with aiohttp.ClientSession() as s:
            async with s.get(info["url"] + "/health") as r:
                health = await r.json()
            assert health["status"] == "ok" and health["user_id"] == info["user"]
            assert health["synced"] is True
            async with s.get(info["url"] + "/openapi.json") as r:
                spec = await r.json()
            assert "/v1/rooms/{room_id}/state/{key}" in spec["paths"]
            async with s.get(info["url"] + "/docs") as r:
                assert r.status == 200 and "swagger" in (await r.text()).lower()
            async with s.get(info["url"] + "/metrics") as r:
                text = await r.text()
            assert 'statebot_requests_total{method="GET",route="/health",status="200"} 1.0' in text
            assert "statebot_rooms_joined" in text
    finally:
        await service.stop()
    assert not (settings.run_dir / "statebot.json").exists()


async def test_cli_state_commands(
    homeserver: TestHomeserver, open_client: OpenClient, bot: StateBot, tmp_path: Path
) -> None:
    alice_user = await homeserver.new_user("alice")
    alice = await open_client(alice_user)
    bob = await open_client(await homeserver.new_user("bob"))
    room = await bot_room(alice, bot, (bob, "read"))

    root = typer.Typer()

    @root.callback()
    def _root(ctx: typer.Context) -> None:
        ctx.obj = CliState(data_dir=tmp_path / "cli")

    root.add_typer(state_app, name="state")
    env = {
        "DATAROOMS_HOMESERVER_MODE": "external",
        "DATAROOMS_HOMESERVER_URL": homeserver.base_url,
        "DATAROOMS_ACCOUNT_USER_ID": alice_user.user_id,
        "DATAROOMS_ACCOUNT_ACCESS_TOKEN": alice_user.access_token,
        "DATAROOMS_STATEBOT_URL": bot.url,
    }

    def cli(*args: str, input: str | None = None) -> Any:
        return CliRunner().invoke(root, ["state", *args], env=env, input=input)

    async def ok(*args: str, input: str | None = None) -> str:
        res = await asyncio.to_thread(cli, *args, input=input)
        assert res.exit_code == 0, (args, res.output, res.exception)
        return str(res.output)

    await ok("set", room, "pump", '{"rpm": 1200, "on": true}')
    await ok("set", room, "pump", "-", "--path", "/rpm", input="1500")
    assert json.loads(await ok("get", room, "pump")) == {"rpm": 1500, "on": True}
    assert json.loads(await ok("get", room, "pump", "--path", "/on")) is True
    await ok("set", room, "token", '{"t": "x"}', "--secure")
    assert "secure" in await ok("set", room, "token", '"y"', "--path", "/t")
    out = await ok("acl", room, "pump", "--read", bob.user_id, "--write", alice_user.user_id)
    assert bob.user_id in out
    assert json.loads(await ok("acl", room, "pump", "--json")) == {
        "read": [bob.user_id],
        "write": [alice_user.user_id],
    }
    assert "pump" in await ok("keys", room)
    bad = await asyncio.to_thread(cli, "set", room, "pump", "{not json")
    assert bad.exit_code != 0 and isinstance(bad.exception, ValidationError)
    missing = await asyncio.to_thread(cli, "get", room, "nope")
    assert isinstance(missing.exception, NotFoundError)


async def test_sdk_client_maps_errors(
    homeserver: TestHomeserver, open_client: OpenClient, bot: StateBot
) -> None:
    alice = await open_client(await homeserver.new_user("alice"))
    room = await bot_room(alice, bot)
    async with StateBotClient.for_access_token(
        bot.url, homeserver.base_url, alice.access_token
    ) as a:
        with pytest.raises(TooLargeError):
            await a.set(room, "big", {"x": "y" * 66_000})
        with pytest.raises(ValidationError):
            await a.set(room, "k", {"t": 0.5})
        a.tokens._token = "forged"  # an expired token is renewed once, transparently
        await a.set(room, "k", {"t": 1})
        assert await a.get(room, "k") == {"t": 1}
        with pytest.raises(NotFoundError, match="no value at /t/u"):
            await a.get(room, "k", "/t/u")


_STANDALONE = """
import sys
from pathlib import Path

import typer

from datarooms.cli._common import CliState
from datarooms.errors import DataroomsError
from datarooms.cli.statebot import statebot

app = typer.Typer()


@app.callback()
def root(ctx: typer.Context, data_dir: Path = typer.Option(..., "--data-dir")) -> None:
    ctx.obj = CliState(data_dir=data_dir)


app.command()(statebot)
try:
    app()
except DataroomsError as exc:
    print("error: " + exc.message, file=sys.stderr)
    sys.exit(1)
"""


async def test_statebot_command_runs_alone_and_stops_on_sigint(
    homeserver: TestHomeserver, tmp_path: Path
) -> None:
    """`datarooms statebot`: its own account and device, found by the CLI, Ctrl-C stops it."""
    admin = await homeserver.new_user("admin", admin=True)
    localpart = f"statebot-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAROOMS_")}
    env.update(
        DATAROOMS_HOMESERVER_MODE="external",
        DATAROOMS_HOMESERVER_URL=homeserver.base_url,
        DATAROOMS_HOMESERVER_REGISTRATION_SHARED_SECRET=(
            homeserver.synapse.registration_shared_secret
        ),
        DATAROOMS_ACCOUNT_USER_ID=admin.user_id,
        DATAROOMS_ACCOUNT_ACCESS_TOKEN=admin.access_token,
        DATAROOMS_STATEBOT_PORT="0",
        DATAROOMS_STATEBOT_LOCALPART=localpart,
    )
    data_dir = tmp_path / "data"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _STANDALONE,
        "--data-dir",
        str(data_dir),
        "statebot",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        run_file = data_dir / "run" / "statebot.json"
        await wait_until(lambda: _exists(run_file, proc), "the state bot to start", timeout=90)
        url = json.loads(run_file.read_text())["url"]
        async with aiohttp.ClientSession() as s, s.get(url + "/health") as r:
            assert (await r.json())["user_id"] == f"@{localpart}:localhost"
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert b"listening on" in out and b"Traceback" not in err
        assert not run_file.exists()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _exists(path: Path, proc: asyncio.subprocess.Process) -> bool:
    if proc.returncode is not None:
        _out, err = await proc.communicate()
        raise AssertionError(f"the state bot exited {proc.returncode}: {err.decode()}")
    return path.exists()
