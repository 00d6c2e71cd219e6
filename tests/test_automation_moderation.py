"""Moderation (issue 16): data rooms subscribe to a Matrix policy list (the spec's
"Moderation policy lists", the format Mjolnir and Draupnir use); the automation service
bans matched users and denies matched servers in every subscribed room, redacts a banned
user's events where the room says so, and mutes a member who floods. The policy list and
its rules are written by matrix-js-sdk, a client no one here wrote."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from datarooms import DataroomsClient
from datarooms.errors import AccessDeniedError
from datarooms.events import MODERATION
from datarooms.sdk.automation.moderation import (
    POLICY_ROOM_TYPE,
    create_policy_list,
    glob_regex,
    moderation,
    policy_rules,
    put_rule,
    remove_rule,
    subscribe,
)
from datarooms.sdk.rooms import state_path
from datarooms.testing import TestHomeserver
from tests._automation import room_with_bot, start_service
from tests._cli import clean_env, cli
from tests._wait import until
from tests.interop.jsclient import JsClient, ensure_js_deps


def test_globs_are_the_specs() -> None:
    assert glob_regex("@spam*:example.org").fullmatch("@spam-bot:example.org")
    assert glob_regex("?.evil.org").fullmatch("a.evil.org")
    assert not glob_regex("?.evil.org").fullmatch("ab.evil.org")
    assert not glob_regex("evil.org").fullmatch("evilxorg")  # '.' is not special
    assert not glob_regex("[ab].org").fullmatch("a.org")  # nor are brackets


async def test_our_policy_rules_are_the_specs_events(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, open_client
) -> None:
    alice: DataroomsClient = await open_client(await homeserver.new_user("alice"))
    lst = await create_policy_list(alice, "bans")
    assert not alice.rooms.is_encrypted(lst)
    key = await put_rule(alice, lst, "server", "*.evil.example", "abuse")
    # What the spec says a rule is: m.policy.rule.server, entity/recommendation/reason.
    assert alice.index.state(lst, "m.policy.rule.server", key) == {
        "entity": "*.evil.example",
        "recommendation": "m.ban",
        "reason": "abuse",
    }
    (rule,) = policy_rules(alice, lst)
    assert (rule.kind, rule.bans, rule.matches("a.evil.example")) == ("server", True, True)
    await remove_rule(alice, lst, "server", "*.evil.example")
    assert policy_rules(alice, lst) == []


async def test_moderation_cli(homeserver: TestHomeserver, tmp_path: Path) -> None:
    ops = await homeserver.new_user("ops")
    env = clean_env(
        DATAROOMS_HOMESERVER_MODE="external",
        DATAROOMS_HOMESERVER_URL=homeserver.base_url,
        DATAROOMS_ACCOUNT_USER_ID=ops.user_id,
        DATAROOMS_ACCOUNT_ACCESS_TOKEN=ops.access_token,
    )

    def run(*args: str) -> str:
        done = cli(*args, data_dir=tmp_path / "cli", env=env)
        assert done.returncode == 0, done.stderr + done.stdout
        return done.stdout

    def state(room: str, event_type: str, key: str = "") -> Any:
        url = f"{homeserver.base_url}{state_path(room, event_type, key)}"
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {ops.access_token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    lst = run("moderation", "create-list", "coc").strip()
    run("moderation", "ban", lst, "@spam*:example.org", "--reason", "spam")
    assert state(lst, "m.policy.rule.user", "rule:@spam*:example.org") == {
        "entity": "@spam*:example.org",
        "recommendation": "m.ban",
        "reason": "spam",
    }
    (shown,) = json.loads(run("moderation", "rules", lst, "--json"))
    assert (shown["kind"], shown["entity"]) == ("user", "@spam*:example.org")
    room = run("room", "create", "project", "--name", "p").split()[0]
    run("moderation", "subscribe", room, "--list", lst, "--flood", "10/30s", "--redact")
    assert state(room, MODERATION) == {
        "policy_lists": [lst],
        "redact": True,
        "flood": {"max_messages": 10, "per_seconds": 30, "action": "mute"},
    }
    shown = run("room", "members", room)  # what every member sees
    assert "moderation: follows 1 policy list(s), redacts banned users' events" in shown
    assert "over 10 events in 30 s -> mute" in shown and lst in shown
    bad = cli(
        "moderation", "subscribe", room, "--flood", "lots", data_dir=tmp_path / "cli", env=env
    )
    assert bad.returncode != 0 and "--flood is N/SECONDSs" in bad.stderr + bad.stdout


@pytest.fixture(scope="module")
def js_deps() -> None:
    ensure_js_deps()  # npm ci on first use; a missing Node.js is a failure, not a skip


async def test_policy_list_bans_across_three_rooms_redacts_and_flood_mutes(  # type: ignore[no-untyped-def]
    js_deps, homeserver: TestHomeserver, open_client, tmp_path: Path
) -> None:
    _ctx, svc, _ = await start_service(homeserver, tmp_path / "data")
    assert svc.bot is not None
    bot = svc.bot
    alice: DataroomsClient = await open_client(await homeserver.new_user("alice"))
    spam: DataroomsClient = await open_client(await homeserver.new_user("spam"))
    carol: DataroomsClient = await open_client(await homeserver.new_user("carol"))
    mod = await homeserver.new_user("mod")
    server = homeserver.server_name
    glob = spam.user_id[: len("@spam-") + 4] + "*:" + server
    try:
        async with JsClient() as js:
            await js.login(homeserver.base_url, mod.user_id, mod.password)
            policy = await js.create_plain_room("coc bans", room_type=POLICY_ROOM_TYPE)
            await js.send_state(
                policy,
                "m.policy.rule.user",
                {"entity": glob, "recommendation": "m.ban", "reason": "spam"},
                f"rule:{glob}",
            )
            await js.send_state(
                policy,
                "m.policy.rule.server",
                {"entity": "*.evil.example", "recommendation": "m.ban", "reason": "abuse"},
                "rule:*.evil.example",
            )
            await js.invite(policy, bot.client.user_id)

        rooms = []
        for _ in range(3):
            room = await room_with_bot(alice, svc)
            await alice.rooms.grant(room, bot.client.user_id, "admin")  # to ban and set ACLs
            await alice.rooms.grant(room, spam.user_id, "write")
            rooms.append(room)
        await alice.rooms.grant(rooms[0], carol.user_id, "write")
        await spam.sync_once()
        await carol.sync_once()
        await spam.rooms.join(rooms[0])  # joined in one room, invited to the others
        await carol.rooms.join(rooms[0])
        spam_said = await spam.messages.send(rooms[0], "buy now")

        # Only an admin may subscribe a room.
        with pytest.raises(AccessDeniedError, match="only an admin"):
            await subscribe(carol, rooms[0], [policy])
        flood = {"max_messages": 4, "per_seconds": 30, "action": "mute_and_redact"}
        await subscribe(alice, rooms[0], [policy], redact=True, flood=flood)
        for room in rooms[1:]:
            await subscribe(alice, room, [policy])

        def banned() -> bool:
            return all(bot.client.rooms.view(r).membership(spam.user_id) == "ban" for r in rooms)

        await until(banned, 60, "the ban in all three rooms")
        assert bot.client.membership(policy) == "join"
        (user_rule,) = [r for r in policy_rules(bot.client, policy) if r.kind == "user"]
        assert (user_rule.entity, user_rule.reason) == (glob, "spam")
        for room in rooms:
            await until(
                lambda r=room: "*.evil.example" in (bot.client.rooms.server_acl(r) or _NoAcl).deny,
                30,
                "the server ACL",
            )
        await alice.sync_once()
        for room in rooms:
            # Why, in the room itself: the ban's reason names the list and the rule.
            member = alice.index.state(room, "m.room.member", spam.user_id) or {}
            assert member.get("membership") == "ban"
            assert policy in member.get("reason", "") and glob in member["reason"]
            assert moderation(alice, room) is not None

        # rooms[0] redacts a banned user's events.
        async def redacted(event_id: str) -> bool:
            event = await alice.messages.event(rooms[0], event_id)
            return not event.content.get("body")

        for _ in range(60):
            if await redacted(spam_said):
                break
            await asyncio.sleep(0.5)
        assert await redacted(spam_said)

        # Flood control: carol sends up to 6 in a burst (more than the 4 allowed); she is
        # muted, the flood redacted. A fast bot mutes her before her 6th is sent, never
        # before her 5th (the first over the limit).
        sent: list[str] = []
        for i in range(6):
            try:
                sent.append(await carol.messages.send(rooms[0], f"flood {i}"))
            except AccessDeniedError:
                break
        assert len(sent) >= 5, sent
        await until(
            lambda: bot.client.rooms.view(rooms[0]).access(carol.user_id) == "read",
            30,
            "carol muted",
        )
        await until(
            lambda: any(
                a.action == "redact" and a.target == carol.user_id for a in bot.moderator.actions
            ),
            30,
            "the flood redacted",
        )
        assert await redacted(sent[0])
        actions = {(a.room_id, a.action, a.target) for a in bot.moderator.actions}
        assert {(r, "ban", spam.user_id) for r in rooms} <= actions
        assert (rooms[0], "mute", carol.user_id) in actions
        assert all(a.why for a in bot.moderator.actions)
        # Alice (admin) is never touched; her room stays hers.
        assert alice.rooms.view(rooms[0]).access(alice.user_id) == "admin"
    finally:
        await svc.stop()


class _NoAcl:
    deny: tuple[str, ...] = ()
