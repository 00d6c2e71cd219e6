"""MCP alert tools (issue 16): an agent with read access lists and reads the alerts the
automation service posts; acknowledging, silencing and creating rules are capabilities
granted by name only. Every alert, fired, acknowledged and resolved, is an entry of the
room's audit trail."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datarooms import DataroomsClient
from datarooms.sdk.audit_bundle import verify_bundle
from datarooms.sdk.automation.rules import rule_schema
from datarooms.services.mcp import add_agent
from datarooms.testing import TestHomeserver
from tests._automation import room_with_bot, start_service
from tests._mcp import agent_mxid, agent_name, agents_path, error, http_client, ok, platform_for
from tests._wait import until

ALERT_TOOLS = ["join_room", "list_alerts", "read_alert", "ack_alert", "silence_alert",
               "create_alert_rule"]  # fmt: skip


async def test_alert_tools_read_and_granted_ack_silence_rules_and_audit(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, open_client, service, tmp_path: Path
) -> None:
    ctx = await platform_for(homeserver, tmp_path / "mcp")
    reader, writer, responder = agent_name("ar"), agent_name("aw"), agent_name("ao")
    paths = agents_path(ctx)
    reader_token = add_agent(paths, reader, access="read", rooms=["*"])
    writer_token = add_agent(paths, writer, access="write", rooms=["*"])
    responder_token = add_agent(paths, responder, access="write", rooms=["*"], tools=ALERT_TOOLS)
    _, url = await service(ctx)
    _actx, auto, _ = await start_service(homeserver, tmp_path / "auto")
    assert auto.bot is not None
    bot = auto.bot
    try:
        alice: DataroomsClient = await open_client(await homeserver.new_user("alice"))
        room = await room_with_bot(alice, auto)
        await alice.records.publish_schema(room, *rule_schema())  # an admin's act
        for name in (reader, writer, responder):
            await alice.rooms.grant(room, agent_mxid(name, homeserver), "write")
        rule = {"name": "hot", "kind": "threshold", "metric": "temp", "above": 80,
                "repeat_seconds": 2, "summary": "boiler too hot"}  # fmt: skip

        async with http_client(url, writer_token) as mcp:
            ok(await mcp.call_tool("join_room", {"room": room}))
            names = {t.name for t in (await mcp.list_tools()).tools}
            assert "list_alerts" in names and "ack_alert" not in names
            denied = error(await mcp.call_tool("create_alert_rule", {"room": room, "rule": rule}))
            assert "tool:create_alert_rule" in denied and "explicitly" in denied

        async with http_client(url, responder_token) as mcp:
            ok(await mcp.call_tool("join_room", {"room": room}))
            bad = error(
                await mcp.call_tool("create_alert_rule", {"room": room, "rule": {"name": "x"}})
            )
            assert "not a valid alert rule" in bad
            made = ok(await mcp.call_tool("create_alert_rule", {"room": room, "rule": rule}))
            assert made == {"room_id": room, "rule": "hot", "kind": "threshold"}
        await until(
            lambda: "hot" in getattr(bot.alerts.engines.get(room), "rules", {}), 30, "the rule"
        )
        await alice.telemetry.append(room, "temp", 93.0, tags={"boiler": "b7"})
        await alice.telemetry.flush()

        async with http_client(url, reader_token) as mcp:
            ok(await mcp.call_tool("join_room", {"room": room}))

            async def firing() -> list[dict[str, Any]]:
                got = ok(await mcp.call_tool("list_alerts", {"room": room, "status": "firing"}))
                return [a for a in got["alerts"] if not a["repeat"]]

            alerts: list[dict[str, Any]] = []
            for _ in range(120):
                if alerts := await firing():
                    break
                await alice.sync_once()
            (alert,) = alerts
            assert (alert["rule"], alert["summary"]) == ("hot", "🔥 [FIRING] hot: boiler too hot")
            assert alert["sender"] == bot.client.user_id and alert["acked_by"] == []
            full = ok(
                await mcp.call_tool("read_alert", {"room": room, "event_id": alert["event_id"]})
            )
            assert full["alert"]["series"][0]["value"] == 93.0
            assert "ack_alert" not in {t.name for t in (await mcp.list_tools()).tools}
            denied = error(
                await mcp.call_tool("ack_alert", {"room": room, "event_id": alert["event_id"]})
            )
            assert "ack_alert" in denied
            assert not bot.alerts.acks

        async with http_client(url, responder_token) as mcp:
            acked = ok(
                await mcp.call_tool(
                    "ack_alert",
                    {"room": room, "event_id": alert["event_id"], "note": "on it"},
                )
            )
            assert acked["alert"] == alert["event_id"]
            await until(lambda: bot.alerts.acks, 30, "the ack")
            assert bot.alerts.acks[0][1:] == ("hot", agent_mxid(responder, homeserver))
            listed = ok(await mcp.call_tool("list_alerts", {"room": room}))
            first = next(a for a in listed["alerts"] if a["event_id"] == alert["event_id"])
            assert agent_mxid(responder, homeserver) in first["acked_by"]

            # Resolved (and said so), then silenced: the service reads the silence.
            await alice.telemetry.append(room, "temp", 20.0, tags={"boiler": "b7"})
            await alice.telemetry.flush()
            for _ in range(120):
                got = ok(await mcp.call_tool("list_alerts", {"room": room, "status": "resolved"}))
                if got["alerts"]:
                    break
                await alice.sync_once()
            assert got["alerts"][0]["summary"] == "✅ [RESOLVED] hot: boiler too hot"
            silenced = ok(
                await mcp.call_tool("silence_alert", {"room": room, "rule": "hot", "minutes": 30})
            )
            engine = bot.alerts.engines[room]
            await until(
                lambda: engine._silenced("hot", "temp,boiler=b7", silenced["until_ms"] - 1000),
                30,
                "the silence to reach the service",
            )

        # The trail: fired, acknowledged, resolved are entries of their own.
        report = verify_bundle(await alice.audit.export(room))
        acts = report.to_json()["acts"]
        assert (acts["alert.firing"], acts["alert.acked"], acts["alert.resolved"]) == (1, 1, 1)
        assert report.verdict != "broken", report.to_json()
    finally:
        await auto.stop()
