"""Running alert rules in rooms: :class:`AlertWatcher` reads a room's rules (records
``alert_rule.*``), evaluates them on the room's telemetry as it arrives, and posts
alerts into the room, encrypted: firing, re-notified, resolved. A reaction to an
alert, or a reply to it, by a member acknowledges it: it is not re-notified again, and
the watcher says so in the room (an ``acked`` notice, replying to the alert). A record
``alert_silence.<rule>`` (``{"rule", "until_ms", "series"?}``) silences a rule.

Every alert, fired, re-notified, resolved or acknowledged, is an event of the room, so
it is an entry of the room's audit trail (``datarooms.sdk.audit``; its act is
``alert.<status>``).

For members and agents: :func:`list_alerts`, :func:`ack_alert`, :func:`silence_rule`
and :func:`put_rule` (what the MCP alert tools call).

What is open in a room is read from the room itself (:func:`open_alerts`: the alerts
posted, firing and not resolved since, with who acknowledged them), and a person
acknowledges one with :func:`acknowledge` (a reaction to the alert, which the watcher
takes as an ack like any other member's reaction).

Transitions of one evaluation are grouped per rule and status into one message; the
structured alert is under :data:`~datarooms.sdk.automation.formats.ALERT_KEY` with
``source: "rule"``. A rule record changed in the room is picked up as it arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from datarooms.errors import AccessDeniedError, DataroomsError, NotFoundError, ValidationError
from datarooms.events import RECORD
from datarooms.sdk.automation.formats import ALERT_KEY
from datarooms.sdk.automation.rules import (
    RULE_KEY_PREFIX,
    Rule,
    RuleEngine,
    Transition,
    rule_schema,
)
from datarooms.sdk.hooks import RoomEventReceived, Subscription

if TYPE_CHECKING:
    from datarooms.sdk.client import DataroomsClient

log = logging.getLogger(__name__)

#: How far back :func:`open_alerts` reads a room's timeline by default.
ALERT_SCAN = 5000

_ICON = {"firing": "🔥 [FIRING", "repeat": "🔁 [STILL FIRING", "resolved": "✅ [RESOLVED"}
SILENCE_KEY_PREFIX = "alert_silence."
#: The reaction :func:`ack_alert` and :func:`acknowledge` send.
ACK_REACTION = "👀"


def alert_text(rule: Rule | None, name: str, status: str, items: list[Transition]) -> str:
    head = _ICON[status] + (f":{len(items)}]" if len(items) > 1 else "]") + f" {name}"
    summary = (rule.summary if rule else "") or ""
    lines = [head + (f": {summary}" if summary else "")]
    for t in items[:50]:
        value = "" if t.value is None else f" = {t.value:g}"
        lines.append(f"- {t.series}{value}")
    if len(items) > 50:
        lines.append(f"(and {len(items) - 50} more)")
    return "\n".join(lines)


class AlertWatcher:
    """Alert rules of the rooms it watches, on their telemetry (see the module doc)."""

    def __init__(
        self,
        client: DataroomsClient,
        *,
        tick_seconds: float = 1.0,
        clock: Callable[[], float] = time.time,
        on_alert: Callable[[str, str, dict[str, Any]], Any] | None = None,
    ) -> None:
        self.client = client
        self.engines: dict[str, RuleEngine] = {}
        #: alert event id -> (room, rule, series) it announced, for acknowledgements.
        self.alerts: dict[str, tuple[str, str, list[str]]] = {}
        self.acks: list[tuple[str, str, str]] = []  # (room, rule, by)
        self._tick = tick_seconds
        self._clock = clock
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._ticker: asyncio.Task[None] | None = None
        self._hook: Subscription | None = None
        self._post_lock = asyncio.Lock()
        self._acking: set[asyncio.Task[None]] = set()
        #: ``(room_id, text, alert)`` after each alert posted (the forwarding out).
        self.on_alert = on_alert

    def start(self) -> None:
        if self._hook is None:
            self._hook = self.client.hooks.on(RoomEventReceived, self._on_event)
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick_loop(), name="alerts-tick")

    async def stop(self) -> None:
        if self._hook is not None:
            self._hook.cancel()
            self._hook = None
        tasks = [t for t in (self._ticker, *self._tasks.values()) if t is not None]
        self._ticker = None
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def watch(self, room_id: str) -> int:
        """Load the room's rules and follow its telemetry; how many rules it has."""
        engine = self.engines.setdefault(room_id, RuleEngine())
        twin = await self.client.records.twin(room_id)
        for key, value in twin.items():
            if key.startswith((RULE_KEY_PREFIX, SILENCE_KEY_PREFIX)):
                self._load(room_id, engine, key, value)
        if room_id not in self._tasks:
            self._tasks[room_id] = asyncio.create_task(
                self._follow(room_id), name=f"alerts-{room_id}"
            )
        return len(engine.rules)

    def _load(self, room_id: str, engine: RuleEngine, key: str, value: Any) -> None:
        if key.startswith(SILENCE_KEY_PREFIX):
            if isinstance(value, dict) and isinstance(value.get("until_ms"), int):
                series = value.get("series")
                engine.silence(
                    key[len(SILENCE_KEY_PREFIX) :],
                    int(value["until_ms"]),
                    series if isinstance(series, str) else None,
                )
            return
        name = key[len(RULE_KEY_PREFIX) :]
        if value is None:
            engine.remove(name)
            return
        try:
            rule = Rule.from_value(value)
        except (DataroomsError, TypeError) as exc:
            log.warning(
                "ignoring an invalid alert rule",
                extra={"room": room_id, "key": key, "error": str(exc)},
            )
            return
        engine.add(rule)

    async def _follow(self, room_id: str) -> None:
        while True:
            try:
                async for sample in self.client.telemetry.subscribe(room_id):
                    engine = self.engines.get(room_id)
                    if engine is None or not engine.rules:
                        continue
                    out = engine.observe(sample.metric, sample.value, sample.ts, sample.tags)
                    if out:
                        await self._post(room_id, out)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a lagging subscriber, a failed post: go on
                log.warning(
                    "alert rules: telemetry subscription restarted",
                    exc_info=True,
                    extra={"room": room_id, "error": str(exc)},
                )
                await asyncio.sleep(1)

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self._tick)
            now = int(self._clock() * 1000)
            for room_id, engine in list(self.engines.items()):
                out = engine.tick(now)
                if out:
                    with contextlib.suppress(DataroomsError):
                        await self._post(room_id, out)

    async def _post(self, room_id: str, transitions: list[Transition]) -> None:
        engine = self.engines[room_id]
        groups: dict[tuple[str, str], list[Transition]] = defaultdict(list)
        for t in transitions:
            groups[(t.rule, t.status)].append(t)
        async with self._post_lock:
            for (name, status), items in groups.items():
                rule = engine.rules.get(name)
                content = {
                    "msgtype": "m.notice",
                    "body": alert_text(rule, name, status, items),
                    ALERT_KEY: {
                        "source": "rule",
                        "rule": name,
                        "status": "firing" if status == "repeat" else status,
                        "repeat": status == "repeat",
                        "severity": rule.severity if rule else "warning",
                        "series": [
                            {"series": t.series, "value": t.value, "ts": t.ts_ms} for t in items
                        ],
                    },
                }
                event_id = await self.client.send(room_id, "m.room.message", content)
                if self.on_alert is not None and (rule is None or rule.forward != "none"):
                    try:
                        self.on_alert(
                            room_id,
                            str(content["body"]),
                            {
                                "rule": name,
                                "status": status,
                                "severity": rule.severity if rule else "warning",
                            },
                        )
                    except Exception:
                        log.exception("forwarding an alert failed", extra={"room": room_id})
                if status != "resolved":
                    self.alerts[str(event_id)] = (room_id, name, [t.series for t in items])

    def _on_event(self, received: RoomEventReceived) -> None:
        ev = received.event
        if ev.sender == self.client.user_id or ev.room_id not in self.engines:
            return
        if ev.type == RECORD and isinstance(ev.content.get("key"), str):
            key = ev.content["key"]
            if key.startswith((RULE_KEY_PREFIX, SILENCE_KEY_PREFIX)):
                self._load(ev.room_id, self.engines[ev.room_id], key, ev.content.get("value"))
            return
        rel = ev.relates_to
        target = None
        if ev.type == "m.reaction" and rel.get("rel_type") == "m.annotation":
            target = rel.get("event_id")
        elif ev.type == "m.room.message":
            target = (rel.get("m.in_reply_to") or {}).get("event_id")
        if not isinstance(target, str) or target not in self.alerts:
            return
        room_id, name, series = self.alerts.pop(target)
        engine = self.engines[room_id]
        for s in series:
            engine.ack(name, s)
        self.acks.append((room_id, name, ev.sender))
        log.info("alert acknowledged", extra={"room": room_id, "rule": name, "by": ev.sender})
        task = asyncio.create_task(
            self._post_ack(room_id, target, name, ev.sender, ev.event_id), name="alerts-ack"
        )
        self._acking.add(task)
        task.add_done_callback(self._acking.discard)

    async def _post_ack(self, room_id: str, alert: str, name: str, by: str, via: str) -> None:
        """Say in the room who acknowledged the alert (an audit-trail entry of its own)."""
        content = {
            "msgtype": "m.notice",
            "body": f"👀 [ACKED] {name} by {by}",
            "m.relates_to": {"m.in_reply_to": {"event_id": alert}},
            ALERT_KEY: {
                "source": "rule",
                "rule": name,
                "status": "acked",
                "by": by,
                "alert_event": alert,
                "ack_event": via,
            },
        }
        try:
            async with self._post_lock:
                await self.client.send(room_id, "m.room.message", content)
        except DataroomsError as exc:
            log.warning("could not post an acknowledgement", extra={"error": exc.message})


# -- for members and agents -----------------------------------------------------------


def _summary(content: dict[str, Any]) -> str:
    body = content.get("body")
    return body.splitlines()[0] if isinstance(body, str) and body else ""


async def list_alerts(
    client: DataroomsClient, room_id: str, *, limit: int = 200, status: str | None = None
) -> list[dict[str, Any]]:
    """The alerts among the room's last ``limit`` events, newest first: rule alerts and
    Alertmanager's, each with who acknowledged it (a reaction, a reply, or the
    automation service's ``acked`` notice)."""
    if status not in (None, "firing", "resolved"):
        raise ValidationError(f"status must be firing or resolved, got {status!r}")
    events = await client.messages.recent(room_id, limit)
    alerts: dict[str, dict[str, Any]] = {}
    acked: dict[str, set[str]] = defaultdict(set)
    for e in events:
        alert = e.content.get(ALERT_KEY) if e.type == "m.room.message" else None
        if isinstance(alert, dict) and alert.get("status") == "acked":
            if isinstance(alert.get("alert_event"), str) and isinstance(alert.get("by"), str):
                acked[alert["alert_event"]].add(alert["by"])
            continue
        if isinstance(alert, dict):
            alerts[e.event_id] = {
                "event_id": e.event_id,
                "source": alert.get("source", "alertmanager"),
                "rule": alert.get("rule") or (alert.get("group_labels") or {}).get("alertname"),
                "status": alert.get("status"),
                "repeat": bool(alert.get("repeat")),
                "severity": alert.get("severity"),
                "summary": _summary(e.content),
                "ts": e.ts,
                "sender": e.sender,
            }
            continue
        rel = e.relates_to
        target = None
        if e.type == "m.reaction" and rel.get("rel_type") == "m.annotation":
            target = rel.get("event_id")
        elif e.type == "m.room.message":
            target = (rel.get("m.in_reply_to") or {}).get("event_id")
        if isinstance(target, str):
            acked[target].add(e.sender)
    out = []
    for event_id, a in reversed(alerts.items()):
        if status is not None and a["status"] != status:
            continue
        a["acked_by"] = sorted(acked.get(event_id, set()) - {a["sender"]})
        out.append(a)
    return out


async def read_alert(client: DataroomsClient, room_id: str, event_id: str) -> dict[str, Any]:
    """One alert: its text and its whole structured content (series and values, or
    Alertmanager's alerts with labels and annotations)."""
    event = await client.messages.event(room_id, event_id)
    alert = event.content.get(ALERT_KEY) if event.type == "m.room.message" else None
    if not isinstance(alert, dict) or alert.get("status") == "acked":
        raise NotFoundError(f"{event_id} is not an alert in {room_id}")
    return {"event_id": event_id, "ts": event.ts, "sender": event.sender,
            "text": event.content.get("body", ""), "alert": alert}  # fmt: skip


async def ack_alert(
    client: DataroomsClient, room_id: str, event_id: str, note: str | None = None
) -> str:
    """Acknowledge an alert: a reply with ``note``, or the reaction :data:`ACK_REACTION`
    (either stops its re-notification). The event it sent."""
    await read_alert(client, room_id, event_id)  # an alert, or NotFoundError
    if note:
        return str(await client.messages.reply(room_id, event_id, note))
    return str(await client.messages.react(room_id, event_id, ACK_REACTION))


async def silence_rule(
    client: DataroomsClient,
    room_id: str,
    rule: str,
    until_ms: int,
    *,
    series: str | None = None,
) -> None:
    """No notifications of ``rule`` (or one of its series) until ``until_ms``: the
    record ``alert_silence.<rule>`` the automation service reads."""
    if not rule or len(rule) > 100:
        raise ValidationError("a rule name is 1-100 characters")
    value: dict[str, Any] = {"rule": rule, "until_ms": int(until_ms)}
    if series:
        value["series"] = series
    await client.records.put(room_id, SILENCE_KEY_PREFIX + rule, value)


async def put_rule(client: DataroomsClient, room_id: str, value: dict[str, Any]) -> Rule:
    """Create or replace an alert rule (checked first; the schema is published in the
    room if it is not there yet)."""
    rule = Rule.from_value(value)
    name, schema = rule_schema()
    try:
        await client.records.schema(room_id, name)
    except NotFoundError:
        try:
            await client.records.publish_schema(room_id, name, schema)
        except AccessDeniedError:
            raise AccessDeniedError(
                f"{room_id} does not publish the alert rule schema {name!r} and only an "
                "admin may: an admin publishes it first (records.publish_schema(room, "
                "*rule_schema()))"
            ) from None
    await client.records.put(room_id, RULE_KEY_PREFIX + rule.name, dict(value), schema=name)
    return rule


# -- the alert state of a room, read from the room -----------------------------------------


@dataclass
class OpenAlert:
    """One alert firing in a room and not resolved since (as its messages say).

    ``key`` names it: ``rule:<rule>:<series>`` for the alert rules,
    ``alertmanager:<group_key>:<fingerprint or labels>`` for Alertmanager's.
    ``event_id`` is its newest notification (what :func:`acknowledge` reacts to);
    ``acked_by`` the members who reacted or replied to one of its notifications.
    """

    key: str
    source: str
    name: str
    series: str
    severity: str
    value: float | None
    since_ts: int
    last_ts: int
    event_id: str
    summary: str
    acked_by: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "source": self.source,
            "name": self.name,
            "series": self.series,
            "severity": self.severity,
            "value": self.value,
            "since_ts": self.since_ts,
            "last_ts": self.last_ts,
            "event_id": self.event_id,
            "summary": self.summary,
            "acked": bool(self.acked_by),
            "acked_by": list(self.acked_by),
        }


def _alert_items(alert: dict[str, Any]) -> list[tuple[str, str, str, str, float | None]]:
    """``(key, status, name, series, value)`` of each alert one message announces."""
    out: list[tuple[str, str, str, str, float | None]] = []
    if alert.get("source") == "rule":
        name = str(alert.get("rule", ""))
        status = str(alert.get("status", ""))
        for s in alert.get("series") or []:
            if not isinstance(s, dict):
                continue
            series = str(s.get("series", ""))
            value = s.get("value")
            num = float(value) if isinstance(value, int | float) else None
            out.append((f"rule:{name}:{series}", status, name, series, num))
    elif alert.get("source") == "alertmanager":
        group = str(alert.get("group_key", ""))
        for a in alert.get("alerts") or []:
            if not isinstance(a, dict):
                continue
            raw = a.get("labels")
            labels: dict[str, Any] = raw if isinstance(raw, dict) else {}
            ident = str(a.get("fingerprint") or "") or ",".join(
                f"{k}={v}" for k, v in sorted(labels.items())
            )
            name = str(labels.get("alertname") or "alert")
            series = ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "alertname")
            out.append(
                (f"alertmanager:{group}:{ident}", str(a.get("status", "")), name, series, None)
            )
    return out


async def open_alerts(
    client: DataroomsClient, room_id: str, *, max_scan: int = ALERT_SCAN
) -> list[OpenAlert]:
    """The alerts firing in ``room_id`` and not resolved since, newest first, from the
    room's last ``max_scan`` events (the alert messages and the reactions and replies
    to them that this device can decrypt)."""
    await client.ensure_room(room_id)
    events = [e async for e in client.messages.backwards(room_id, max_scan=max_scan)]
    state: dict[str, OpenAlert] = {}
    by_event: dict[str, list[str]] = {}
    acks: list[tuple[str, str]] = []  # (target event, by)
    for e in reversed(events):  # oldest first
        if not e.decrypted:
            continue
        rel = e.relates_to
        if e.type == "m.reaction" and rel.get("rel_type") == "m.annotation":
            if isinstance(rel.get("event_id"), str):
                acks.append((rel["event_id"], e.sender))
            continue
        if e.type != "m.room.message":
            continue
        reply = (rel.get("m.in_reply_to") or {}).get("event_id")
        if isinstance(reply, str):
            acks.append((reply, e.sender))
        alert = e.content.get(ALERT_KEY)
        if not isinstance(alert, dict):
            continue
        severity = str(
            alert.get("severity") or (alert.get("common_labels") or {}).get("severity") or "warning"
        )
        summary = str(e.content.get("body", "")).split("\n", 1)[0][:300]
        for key, status, name, series, value in _alert_items(alert):
            if status == "resolved":
                state.pop(key, None)
                continue
            if status != "firing":
                continue
            current = state.get(key)
            if current is None:
                current = state[key] = OpenAlert(
                    key,
                    str(alert.get("source")),
                    name,
                    series,
                    severity,
                    value,
                    e.ts,
                    e.ts,
                    e.event_id,
                    summary,
                )
            current.last_ts, current.event_id, current.value = e.ts, e.event_id, value
            current.severity, current.summary = severity, summary
            current.events.append(e.event_id)
            by_event.setdefault(e.event_id, []).append(key)
    for target, by in acks:
        for key in by_event.get(target, []):
            found = state.get(key)
            if found is not None and target in found.events and by not in found.acked_by:
                found.acked_by.append(by)
    return sorted(state.values(), key=lambda a: (a.last_ts, a.key), reverse=True)


async def acknowledge(
    client: DataroomsClient, room_id: str, event_id: str, *, max_scan: int = ALERT_SCAN
) -> OpenAlert:
    """Acknowledge the open alert whose notification is ``event_id``: react to it (the
    same ack as a member's reaction in any client: the watcher stops re-notifying it).
    Refused, with a clear error, for an event that is not an open alert of the room."""
    if not isinstance(event_id, str) or not event_id.startswith("$") or len(event_id) > 255:
        raise ValidationError("not an event id ($...)")
    for alert in await open_alerts(client, room_id, max_scan=max_scan):
        if event_id in alert.events:
            await client.messages.react(room_id, event_id, ACK_REACTION)
            if client.user_id not in alert.acked_by:
                alert.acked_by.append(client.user_id)
            return alert
    raise NotFoundError(f"{event_id} is not an open alert of {room_id} (resolved, or not an alert)")
