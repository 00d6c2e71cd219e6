"""Telemetry over MCP (HTTP, the official client, the real Synapse): an agent reads the
samples a user's device wrote, raw and aggregated, after catching the room up; writes
samples the user reads; and is denied outside its rooms and access level."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from datarooms import DataroomsClient
from datarooms.errors import ValidationError
from datarooms.services.mcp import add_agent
from datarooms.services.mcp.reading import iso
from datarooms.services.mcp.tools import parse_step
from datarooms.testing import TestHomeserver
from tests._mcp import (
    agent_mxid,
    agent_name,
    agents_path,
    audit_lines,
    error,
    http_client,
    ok,
    platform_for,
    trust_operators,
)

T0 = 1_700_000_040_000  # a whole minute


def test_steps() -> None:
    assert [parse_step(s) for s in (250, "250", "250ms", "30s", "5m", "1h", "1d")] == [
        250,
        250,
        250,
        30_000,
        300_000,
        3_600_000,
        86_400_000,
    ]
    for bad in ("fast", "1w", "-5m", 0, "0s"):
        with pytest.raises(ValidationError, match="step must"):
            parse_step(bad)


async def test_agent_queries_and_aggregates_telemetry(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, open_client, service, tmp_path: Path
) -> None:
    ctx = await platform_for(homeserver, tmp_path / "data")
    path = agents_path(ctx)
    viewer, outsider = agent_name("tel"), agent_name("out")
    tok = {
        viewer: add_agent(path, viewer, access="write", room_kinds=["device"]),
        outsider: add_agent(path, outsider, access="read", room_kinds=["project"]),
    }
    alice: DataroomsClient = await open_client(await homeserver.new_user("alice"))
    trust_operators(path, alice.user_id)  # her rooms' kinds count for the agents
    _, url = await service(ctx)

    device = (await alice.rooms.create("device", name="pump-7")).room_id
    await alice.rooms.grant(device, agent_mxid(viewer, homeserver), "write")
    await alice.rooms.grant(device, agent_mxid(outsider, homeserver), "read")
    async with http_client(url, tok[viewer]) as mcp:
        ok(await mcp.call_tool("join_room", {"room": device}))
    await alice.sync_once()  # alice's device learns of the agent's: it gets the keys

    tel = alice.telemetry
    await tel.append_many(
        device,
        [
            (T0, "temp", 21.0, {"site": "a"}),
            (T0 + 1_000, "pressure", 1.5),
            (T0 + 10_000, "temp", 22.0, {"site": "b"}),
            (T0 + 20_000, "temp", 23.0, {"site": "a"}),
            (T0 + 65_000, "temp", 25.0, {"site": "a"}),
            (T0 + 90_000, "temp", 24.0, {"site": "b"}),
        ],
    )
    await tel.flush(timeout=60)

    async with http_client(url, tok[viewer]) as mcp:
        tools = {t.name: t for t in (await mcp.list_tools()).tools}
        assert {
            "query_telemetry",
            "aggregate_telemetry",
            "telemetry_series",
            "append_telemetry",
        } <= set(tools)
        assert tools["query_telemetry"].annotations.read_only_hint is True  # type: ignore[union-attr]
        assert set(tools["aggregate_telemetry"].input_schema["required"]) == {
            "room",
            "metric",
            "since",
            "step",
        }

        # The agent's device has never read this room: the tool catches it up first.
        raw = ok(await mcp.call_tool("query_telemetry", {"room": device, "metric": "temp"}))
        assert [(s["ts"], s["value"], s["tags"]) for s in raw["samples"]] == [
            (T0, 21.0, {"site": "a"}),
            (T0 + 10_000, 22.0, {"site": "b"}),
            (T0 + 20_000, 23.0, {"site": "a"}),
            (T0 + 65_000, 25.0, {"site": "a"}),
            (T0 + 90_000, 24.0, {"site": "b"}),
        ]
        assert raw["more"] is False and raw["samples"][0]["time"] == iso(T0)
        # Every metric, merged in time order; a limit; newest first; a range in ISO 8601.
        every = ok(await mcp.call_tool("query_telemetry", {"room": device}))["samples"]
        assert [(s["metric"], s["value"]) for s in every][:3] == [
            ("temp", 21.0),
            ("pressure", 1.5),
            ("temp", 22.0),
        ]
        assert len(every) == 6
        first = ok(await mcp.call_tool("query_telemetry", {"room": device, "limit": 2}))
        assert [s["value"] for s in first["samples"]] == [21.0, 1.5] and first["more"] is True
        last = ok(
            await mcp.call_tool(
                "query_telemetry",
                {"room": device, "metric": "temp", "limit": 1, "newest_first": True},
            )
        )
        assert [s["value"] for s in last["samples"]] == [24.0] and last["more"] is True
        window = ok(
            await mcp.call_tool(
                "query_telemetry",
                {
                    "room": device,
                    "metric": "temp",
                    "since": iso(T0 + 10_000),
                    "until": T0 + 65_000,
                    "tags": {"site": "a"},
                },
            )
        )
        assert [s["value"] for s in window["samples"]] == [23.0]
        series = ok(await mcp.call_tool("telemetry_series", {"room": device}))["series"]
        assert {(s["metric"], tuple(s["tags"].items()), s["count"]) for s in series} == {
            ("pressure", (), 1),
            ("temp", (("site", "a"),), 3),
            ("temp", (("site", "b"),), 2),
        }

        # Aggregates per minute (ISO since, duration step), and per half minute (ms).
        agg = ok(
            await mcp.call_tool(
                "aggregate_telemetry",
                {
                    "room": device,
                    "metric": "temp",
                    "since": iso(T0),
                    "until": T0 + 120_000,
                    "step": "1m",
                },
            )
        )
        assert agg["step_ms"] == 60_000 and agg["since"] == T0
        assert [
            (b["start"], b["count"], b["min"], b["max"], b["mean"], b["last"])
            for b in agg["buckets"]
        ] == [
            (T0, 3, 21.0, 23.0, 22.0, 23.0),
            (T0 + 60_000, 2, 24.0, 25.0, 24.5, 24.0),
        ]
        half = ok(
            await mcp.call_tool(
                "aggregate_telemetry",
                {
                    "room": device,
                    "metric": "temp",
                    "since": T0,
                    "until": T0 + 120_000,
                    "step": 30_000,
                    "tags": {"site": "a"},
                },
            )
        )["buckets"]
        assert [(b["start"], b["count"], b["mean"]) for b in half] == [
            (T0, 2, 22.0),
            (T0 + 60_000, 1, 25.0),
        ]

        # Bad arguments: clear errors.
        msg = error(await mcp.call_tool("query_telemetry", {"room": device, "since": "noon"}))
        assert "DR_INVALID" in msg and "since must be an ISO 8601 time" in msg
        msg = error(
            await mcp.call_tool("query_telemetry", {"room": device, "since": T0 + 5, "until": T0})
        )
        assert "until" in msg and "must be after since" in msg
        msg = error(
            await mcp.call_tool(
                "aggregate_telemetry",
                {"room": device, "metric": "temp", "since": T0, "step": "fast"},
            )
        )
        assert "step must be milliseconds or a duration" in msg
        msg = error(
            await mcp.call_tool(
                "aggregate_telemetry",
                {
                    "room": device,
                    "metric": "temp",
                    "since": T0,
                    "until": T0 + 86_400_000,
                    "step": 1,
                },
            )
        )
        assert "choose a larger step" in msg
        msg = error(await mcp.call_tool("aggregate_telemetry", {"room": device, "metric": "temp"}))
        assert "since is required" in msg and "step is required" in msg

        # The agent writes samples the user's device reads.
        put = ok(
            await mcp.call_tool(
                "append_telemetry",
                {
                    "room": device,
                    "samples": [
                        {"metric": "setpoint", "value": 7.5, "ts": T0 + 100_000},
                        {
                            "metric": "setpoint",
                            "value": 8,
                            "ts": iso(T0 + 110_000),
                            "tags": {"by": "agent"},
                        },
                    ],
                },
            )
        )
        assert put["appended"] == 2 and put["acknowledged"] is True
        msg = error(
            await mcp.call_tool(
                "append_telemetry",
                {
                    "room": device,
                    "samples": [{"metric": "setpoint", "value": 1, "ts": "yesterday"}],
                },
            )
        )
        assert "samples[0].ts must be an ISO 8601 time" in msg
    got: list[float] = []
    for _ in range(100):  # the agent's room key reaches alice's device by to-device message
        got = [s.value for s in await tel.query(device, "setpoint")]
        if len(got) == 2:
            break
        await asyncio.sleep(0.1)
    assert got == [7.5, 8.0]

    # Outside its rooms, or beyond its access level: denied by name, nothing read.
    async with http_client(url, tok[outsider]) as mcp:
        msg = error(await mcp.call_tool("query_telemetry", {"room": device, "metric": "temp"}))
        assert "DR_CAPABILITY" in msg and f"room:{device}" in msg and "kinds project" in msg
        msg = error(
            await mcp.call_tool(
                "aggregate_telemetry", {"room": device, "metric": "temp", "since": T0, "step": "1m"}
            )
        )
        assert f"room:{device}" in msg
        assert "append_telemetry" not in {t.name for t in (await mcp.list_tools()).tools}
        msg = error(
            await mcp.call_tool(
                "append_telemetry", {"room": device, "samples": [{"metric": "x", "value": 1}]}
            )
        )
        assert "access:write" in msg

    records = audit_lines(ctx)
    mine = [r for r in records if r.get("agent") == viewer]
    assert any(
        r["tool"] == "query_telemetry" and r["room"] == device and r["decision"] == "allowed"
        for r in mine
    )
    assert any(r["tool"] == "aggregate_telemetry" and r["room"] == device for r in mine)
    denied = {
        (r["tool"], r["capability"])
        for r in records
        if r.get("agent") == outsider and r["decision"] == "denied"
    }
    assert denied == {
        ("query_telemetry", f"room:{device}"),
        ("aggregate_telemetry", f"room:{device}"),
        ("append_telemetry", "access:write"),
    }
