"""Access reviews against the real homeserver: the report names stale members,
devices their owner never cross-signed and old grants, each with the command that
revokes it; a schedule in room state makes the state bot post it, encrypted."""

from __future__ import annotations

import asyncio
import time

import pytest

from datarooms import AccessDeniedError, Credentials, DataroomsClient, ValidationError
from datarooms.events import REVIEW, REVIEW_REPORT
from datarooms.sdk.reviews import DAY_MS
from datarooms.testing import TestHomeserver
from tests.test_statebot import bot_room, start_bot


async def test_report_findings_and_revoke(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, open_client, tmp_path
) -> None:
    alice = await open_client(await homeserver.new_user("rv-alice"))
    bob_user = await homeserver.new_user("rv-bob")
    bob = await open_client(bob_user)
    carol = await open_client(await homeserver.new_user("rv-carol"))
    room = (await alice.rooms.create("project", name="reviewed")).room_id
    for member, access in ((bob, "write"), (carol, "read")):
        await alice.rooms.grant(room, member.user_id, access)  # type: ignore[arg-type]
        await member.sync_once()
        await member.rooms.join(room)
    await bob.records.put(room, "k", 1)  # bob is active, carol never is
    # Bob logs in a second device that nobody cross-signs.
    creds = Credentials(homeserver.base_url, bob.user_id, password=bob_user.password)
    async with await DataroomsClient.open(
        creds, tmp_path / "bob-unsigned", cross_sign=False, device_name="unsigned laptop"
    ) as bob2:
        now = await alice.reviews.report(room)
        assert {m.user_id for m in now.members} == {alice.user_id, bob.user_id, carol.user_id}
        kinds = {(f.kind, f.subject) for f in now.findings}
        assert kinds == {("unverified_device", bob.user_id)}, now.findings
        assert bob2.device_id in now.findings[0].detail
        assert [s["name"] for s in now.servers] == [homeserver.server_name]

        later = int(time.time() * 1000) + 100 * DAY_MS
        report = await alice.reviews.report(room, grant_days=30, now_ms=later)
    by_kind = {(f.kind, f.subject): f for f in report.findings}
    assert ("stale_member", carol.user_id) in by_kind
    assert "100 days ago" in by_kind[("stale_member", carol.user_id)].detail
    assert ("stale_member", bob.user_id) in by_kind  # 100 days after his put
    assert ("old_grant", bob.user_id) in by_kind  # write access; carol only reads
    assert ("old_grant", carol.user_id) not in by_kind
    assert not any(
        f.subject == alice.user_id for f in report.findings if f.kind != "unverified_device"
    )
    revoke = by_kind[("stale_member", carol.user_id)].revoke
    assert revoke == f"datarooms room revoke {room} {carol.user_id}"
    text = report.to_text()
    assert carol.user_id in text and revoke in text and "not cross-signed" in text
    assert report.to_json()["findings"]

    # The one command the report gives, done through the SDK it calls.
    await alice.rooms.revoke(room, carol.user_id)
    after = await alice.reviews.report(room, now_ms=later)
    assert carol.user_id not in {m.user_id for m in after.members if m.membership == "join"}
    assert ("stale_member", carol.user_id) not in {(f.kind, f.subject) for f in after.findings}

    with pytest.raises(ValidationError, match="stale_days"):
        await alice.reviews.report(room, stale_days=0)
    with pytest.raises(AccessDeniedError):
        await bob.reviews.set_schedule(room, 7)  # only admins set room state


async def test_the_state_bot_posts_scheduled_reviews(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, open_client
) -> None:
    alice = await open_client(await homeserver.new_user("rs-alice"))
    bob = await open_client(await homeserver.new_user("rs-bob"))
    bot = await start_bot(homeserver, open_client, review_check_seconds=0.3)
    try:
        room = await bot_room(alice, bot, (bob, "read"), bot_access="write")
        with pytest.raises(ValidationError, match="interval_days"):
            await alice.reviews.set_schedule(room, 0)
        sched = await alice.reviews.set_schedule(room, 7, stale_days=30)
        assert sched is not None and alice.reviews.schedule(room) == sched
        assert await bob.reviews.report(room)  # any member can run one

        async def posted() -> list[dict]:
            await alice.sync_once()
            return [
                e.content
                for e in await alice.messages.recent(room, limit=50)
                if REVIEW_REPORT in e.content
            ]

        deadline = time.monotonic() + 30
        while not (reports := await posted()):
            assert time.monotonic() < deadline, "the state bot posted no review"
            await asyncio.sleep(0.3)
        first = reports[0]
        assert first["msgtype"] == "m.notice"
        assert alice.user_id in first["m.mentions"]["user_ids"]  # the admin
        assert first[REVIEW_REPORT]["stale_days"] == 30
        assert {m["user_id"] for m in first[REVIEW_REPORT]["members"]} >= {
            alice.user_id,
            bob.user_id,
        }
        await asyncio.sleep(1.5)  # several checks later: not again within the interval
        assert len(await posted()) == 1
        # The schedule is room state every member sees; off again.
        await bob.sync_once()
        assert bob.reviews.schedule(room) is not None
        assert await alice.reviews.set_schedule(room, None) is None
        await bob.sync_once()
        assert bob.reviews.schedule(room) is None
        assert bob.index.state(room, REVIEW) == {}
    finally:
        await bot.stop()


async def test_review_from_the_cli(homeserver: TestHomeserver, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from tests._cli import clean_env, cli

    alice = await homeserver.new_user("rc-alice")
    env = clean_env(
        DATAROOMS_HOMESERVER_MODE="external",
        DATAROOMS_HOMESERVER_URL=homeserver.base_url,
        DATAROOMS_ACCOUNT_USER_ID=alice.user_id,
        DATAROOMS_ACCOUNT_ACCESS_TOKEN=alice.access_token,
    )
    data_dir = tmp_path / "cli"

    def run(*args: str, code: int = 0) -> str:
        res = cli(*args, data_dir=data_dir, env=env)
        assert res.returncode == code, f"{args}: {res.stdout} {res.stderr}"
        return res.stdout + res.stderr

    room = run("room", "create", "project", "--name", "r").split()[0]
    assert "review every 7 days" in run("room", "review-schedule", room, "--every", "7")
    report = json.loads(run("room", "review", room, "--json"))
    assert report["stale_days"] == 90 and [m["user_id"] for m in report["members"]] == [
        alice.user_id
    ]
    assert "Nothing to look at." in run("room", "review", room, "--post")
    assert "--every DAYS or --off" in run("room", "review-schedule", room, code=1)
    assert "between 0 and 3650" in run("room", "review", room, "--stale-days", "-1", code=1)
