"""Alert rules run by the automation service on a room's telemetry (issue 16): an alert
fires, is re-notified until a member acknowledges it by a reaction, and resolves; an
absence rule fires when a writer stops."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from datarooms import DataroomsClient
from datarooms.sdk.automation import ALERT_KEY
from datarooms.sdk.automation.rules import RULE_KEY_PREFIX, rule_schema
from datarooms.testing import TestHomeserver
from tests._automation import room_with_bot, start_service
from tests._wait import until


async def _alerts(client: DataroomsClient, room: str) -> list[tuple[str, dict[str, Any]]]:
    events = await client.messages.recent(room, 200)
    return [
        (e.event_id, e.content)
        for e in events
        if e.type == "m.room.message" and e.content.get(ALERT_KEY, {}).get("source") == "rule"
    ]


async def _wait_alert(
    client: DataroomsClient, room: str, pred: Any, what: str, timeout: float = 60
) -> tuple[str, dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        for event_id, content in await _alerts(client, room):
            if pred(content):
                return event_id, content
        assert asyncio.get_running_loop().time() < deadline, f"no alert: {what}"
        await asyncio.sleep(0.5)


async def test_rules_fire_renotify_ack_by_reaction_resolve_and_absence(
    homeserver: TestHomeserver, tmp_path: Path, open_client: Any
) -> None:
    alice: DataroomsClient = await open_client(await homeserver.new_user("alice"))
    _ctx, svc, _url = await start_service(homeserver, tmp_path / "data")
    assert svc.bot is not None
    try:
        room = await room_with_bot(alice, svc)
        name, schema = rule_schema()
        await alice.records.publish_schema(room, name, schema)
        hot = {
            "name": "hot",
            "kind": "threshold",
            "metric": "temp",
            "above": 80,
            "clear": 70,
            "repeat_seconds": 2,
            "summary": "boiler too hot",
        }
        gone = {"name": "gone", "kind": "absence", "metric": "beat", "seconds": 3}
        await alice.records.put(room, RULE_KEY_PREFIX + "hot", hot, schema=name)
        await alice.records.put(room, RULE_KEY_PREFIX + "gone", gone, schema=name)
        engines = svc.bot.alerts.engines
        await until(
            lambda: room in engines and set(engines[room].rules) == {"hot", "gone"},
            30,
            "the bot to load the room's rules",
        )
        await alice.telemetry.append(room, "beat", 1.0)
        await alice.telemetry.append(room, "temp", 90.0)
        await alice.telemetry.flush()
        first_id, first = await _wait_alert(
            alice,
            room,
            lambda c: c[ALERT_KEY]["rule"] == "hot" and c[ALERT_KEY]["status"] == "firing",
            "hot firing",
        )
        assert first["body"].startswith("🔥 [FIRING] hot: boiler too hot")
        # Not acknowledged: re-notified.
        await _wait_alert(alice, room, lambda c: c[ALERT_KEY].get("repeat"), "a repeat")
        # The writer of "beat" stopped: the absence rule fires.
        await _wait_alert(alice, room, lambda c: c[ALERT_KEY]["rule"] == "gone", "absence")
        await alice.messages.react(room, first_id, "👀")
        await until(lambda: svc.bot is not None and svc.bot.alerts.acks, 30, "the ack")
        assert svc.bot.alerts.acks[0][1:] == ("hot", alice.user_id)
        repeats = len([c for _, c in await _alerts(alice, room) if c[ALERT_KEY].get("repeat")])
        await asyncio.sleep(5)  # two repeat intervals: none may come after the ack
        later = [
            c
            for _, c in await _alerts(alice, room)
            if c[ALERT_KEY].get("repeat") and c[ALERT_KEY]["rule"] == "hot"
        ]
        assert len(later) <= repeats
        # 75 is inside the hysteresis band: still firing; 60 resolves, and says so.
        await alice.telemetry.append(room, "temp", 75.0)
        await alice.telemetry.append(room, "temp", 60.0)
        await alice.telemetry.flush()
        _, resolved = await _wait_alert(
            alice,
            room,
            lambda c: c[ALERT_KEY]["rule"] == "hot" and c[ALERT_KEY]["status"] == "resolved",
            "hot resolved",
        )
        assert resolved["body"].startswith("✅ [RESOLVED] hot")
        assert resolved[ALERT_KEY]["series"][0]["value"] == 60.0
    finally:
        await svc.stop()
