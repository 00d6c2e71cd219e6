"""Tools for alerts (issue 16): list and read them (read access); acknowledge, silence
and create rules, each granted by name only (an agent that may write records may not
quiet a room's alarms unless it was given that capability)."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import Field

from datarooms.sdk.automation.alerts import (
    ack_alert,
    list_alerts,
    put_rule,
    read_alert,
    silence_rule,
)
from datarooms.services.mcp.tools._common import EventArg, RoomArg, ToolBase

RuleArg = Annotated[
    str, Field(description="The rule's name, as list_alerts shows", min_length=1, max_length=100)
]


class AlertTools(ToolBase):
    """Alerts posted into rooms by the automation service (rules and Alertmanager)."""

    async def list_alerts(
        self,
        room: RoomArg,
        status: Annotated[
            Literal["firing", "resolved"] | None,
            Field(description="Only alerts with this status (default: all)"),
        ] = None,
        limit: Annotated[
            int, Field(description="Look at the room's last this many events", ge=1, le=1000)
        ] = 200,
    ) -> dict[str, Any]:
        """List the alerts in a room, newest first: rule, status (firing/resolved; repeat
        for a re-notification), severity, summary line, time and who acknowledged it."""
        rid = await self.rt.room(room)
        alerts = await list_alerts(self._c, rid, limit=limit, status=status)
        return {"room_id": rid, "alerts": alerts}

    async def read_alert(self, room: RoomArg, event_id: EventArg) -> dict[str, Any]:
        """Read one alert in full: its text and structured content (the series and their
        values, or Alertmanager's alerts with labels and annotations)."""
        rid = await self.rt.room(room)
        return {"room_id": rid, **await read_alert(self._c, rid, event_id)}

    async def ack_alert(
        self,
        room: RoomArg,
        event_id: EventArg,
        note: Annotated[
            str | None,
            Field(description="A reply to post as the acknowledgement", max_length=2000),
        ] = None,
    ) -> dict[str, Any]:
        """Acknowledge an alert (a reply with the note, else a reaction): it is no longer
        re-notified. Only with the capability ack_alert, granted by name."""
        rid = await self.rt.room(room, sends=True)
        sent = await ack_alert(self._c, rid, event_id, note)
        return {"room_id": rid, "alert": event_id, "event_id": sent}

    async def silence_alert(
        self,
        room: RoomArg,
        rule: RuleArg,
        minutes: Annotated[float, Field(description="For how long", gt=0, le=7 * 24 * 60)],
        series: Annotated[
            str | None, Field(description="Only this series (metric,tag=value,...)")
        ] = None,
    ) -> dict[str, Any]:
        """Silence a rule's notifications (its state still changes: a resolve is kept)
        for some minutes. Only with the capability silence_alert, granted by name."""
        rid = await self.rt.room(room, sends=True)
        until = int((time.time() + minutes * 60) * 1000)
        await silence_rule(self._c, rid, rule, until, series=series)
        return {"room_id": rid, "rule": rule, "until_ms": until}

    async def create_alert_rule(
        self,
        room: RoomArg,
        rule: Annotated[
            dict[str, Any],
            Field(
                description='The rule: {"name", "kind": threshold|rate|absence|anomaly, '
                '"metric", "tags"?, "above"?, "below"?, "clear"?, "max_rate_per_s"?, '
                '"seconds"?, "window"?, "z"?, "repeat_seconds"?, "summary"?, "severity"?}'
            ),
        ],
    ) -> dict[str, Any]:
        """Create or replace an alert rule on the room's telemetry (an encrypted record
        alert_rule.<name>). Only with the capability create_alert_rule, granted by name."""
        rid = await self.rt.room(room, sends=True)
        made = await put_rule(self._c, rid, rule)
        return {"room_id": rid, "rule": made.name, "kind": made.kind}
