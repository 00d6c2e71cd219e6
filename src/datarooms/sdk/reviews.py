"""Access reviews: who can read and write a room, and what deserves a second look.

``client.reviews.report(room)`` gathers, as of now (after a sync and a fresh key
query): each member and invitee with their power and access, since when they
have held their membership, when they were last active in the room, and each of
their devices (verified here, cross-signed by its owner); the homeservers that
hold a copy of the room. Findings name what to look at, each with the command
that revokes it:

- ``stale_member``: a member not seen in the room for ``stale_days`` (90 by default;
  one who never wrote counts from their join);
- ``unverified_device``: a device its owner never cross-signed (nobody can tell it
  from an attacker's device added to the account);
- ``old_grant``: write or admin access held for more than ``grant_days``;
- ``server_outside_acl``: a server still holding a copy that the ACL no longer allows.

A **schedule** is room state (``io.datarooms.review``: ``interval_days``,
``stale_days``, ``grant_days``), readable by every member's client. Whoever runs
:meth:`Reviews.run_due` (the state bot does, for the rooms it is in) posts the
report into the room, end-to-end encrypted, as an ``m.notice`` that mentions the
room's admins and carries the report as structured content
(``io.datarooms.review.report``). The report holds only what every member can see
anyway (the member list, their devices, the servers); the last run of each room is
kept in the reviewing device's index.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from datarooms import events as ev
from datarooms.errors import DataroomsError, ValidationError
from datarooms.sdk.rooms import POWER, state_path

if TYPE_CHECKING:
    from datarooms.sdk.client import DataroomsClient

log = logging.getLogger(__name__)

DAY_MS = 86_400_000
DEFAULT_STALE_DAYS = 90


@dataclass(frozen=True)
class ReviewedDevice:
    device_id: str
    display_name: str
    verified: bool
    cross_signed: bool


@dataclass(frozen=True)
class ReviewedMember:
    user_id: str
    membership: str
    power: int
    access: str
    #: When the member's current membership (join or invite) began, ms.
    since_ms: int | None
    #: Their last event in the room this device saw, ms.
    last_active_ms: int | None
    devices: list[ReviewedDevice] = field(default_factory=list)


@dataclass(frozen=True)
class Finding:
    kind: str  # stale_member | unverified_device | old_grant | server_outside_acl
    subject: str  # a user id or a server name
    detail: str
    #: The command that removes what was found (None: nothing to revoke here).
    revoke: str | None = None


@dataclass(frozen=True)
class ReviewSchedule:
    """Whole days: room state is canonical JSON, which has no floats."""

    interval_days: int
    stale_days: int = DEFAULT_STALE_DAYS
    grant_days: int | None = None

    def content(self) -> dict[str, Any]:
        out: dict[str, Any] = {"interval_days": self.interval_days, "stale_days": self.stale_days}
        if self.grant_days is not None:
            out["grant_days"] = self.grant_days
        return out


@dataclass(frozen=True)
class AccessReport:
    room_id: str
    generated_ms: int
    stale_days: float
    grant_days: float | None
    members: list[ReviewedMember]
    servers: list[dict[str, Any]]
    findings: list[Finding]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        """The report as people read it (the body of the posted notice)."""
        day = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(self.generated_ms / 1000))
        lines = [f"Access review of {self.room_id} ({day})", ""]
        lines.append(f"{len(self.members)} members and invitees:")
        for m in self.members:
            devices = ", ".join(
                f"{d.device_id}{'' if d.cross_signed else ' (not cross-signed)'}" for d in m.devices
            )
            seen = _ago(self.generated_ms, m.last_active_ms) if m.last_active_ms else "never"
            lines.append(
                f"- {m.user_id}: {m.access} (power {m.power}, {m.membership}); "
                f"last active {seen}; devices: {devices or 'none'}"
            )
        lines.append("")
        lines.append(
            "servers holding a copy: "
            + ", ".join(
                s["name"] + ("" if s["allowed"] else " (NOT allowed by the ACL)")
                for s in self.servers
            )
        )
        lines.append("")
        if not self.findings:
            lines.append("Nothing to look at.")
        else:
            lines.append(f"{len(self.findings)} to look at:")
            for f in self.findings:
                fix = f" -> {f.revoke}" if f.revoke else ""
                lines.append(f"- [{f.kind}] {f.subject}: {f.detail}{fix}")
        return "\n".join(lines)


def _ago(now_ms: int, then_ms: int) -> str:
    days = (now_ms - then_ms) / DAY_MS
    return f"{days:.0f} days ago" if days >= 1 else "today"


def _number(content: dict[str, Any], key: str, default: int | None) -> int | None:
    value = content.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 3650:
        return default
    return value


def _check_days(name: str, value: float | None, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if (
        value is None
        or isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not 0 < value <= 3650
    ):
        raise ValidationError(f"{name} must be a number of days between 0 and 3650, got {value!r}")


def _whole_days(name: str, value: float) -> int:
    if value != int(value):
        raise ValidationError(f"{name} must be a whole number of days, got {value!r}")
    return int(value)


class Reviews:
    """Access reviews of rooms (``client.reviews``)."""

    def __init__(self, client: DataroomsClient) -> None:
        self._c = client

    def schedule(self, room_id: str) -> ReviewSchedule | None:
        """The room's review schedule, as this device knows its state."""
        content = self._c.index.state(room_id, ev.REVIEW) or {}
        interval = _number(content, "interval_days", None)
        if interval is None:
            return None
        return ReviewSchedule(
            interval,
            _number(content, "stale_days", DEFAULT_STALE_DAYS) or DEFAULT_STALE_DAYS,
            _number(content, "grant_days", None),
        )

    async def set_schedule(
        self,
        room_id: str,
        interval_days: int | None,
        *,
        stale_days: int = DEFAULT_STALE_DAYS,
        grant_days: int | None = None,
    ) -> ReviewSchedule | None:
        """Review the room every ``interval_days`` (None: no more scheduled reviews).
        Room state: the room's admins may set it."""
        from datarooms.errors import HomeserverError
        from datarooms.sdk.rooms import _as_access_error

        if interval_days is not None:
            _check_days("interval_days", interval_days)
            _check_days("stale_days", stale_days)
            _check_days("grant_days", grant_days, optional=True)
            sched: ReviewSchedule | None = ReviewSchedule(
                _whole_days("interval_days", interval_days),
                _whole_days("stale_days", stale_days),
                None if grant_days is None else _whole_days("grant_days", grant_days),
            )
        else:
            sched = None
        await self._c.ensure_room(room_id)
        async with self._c.http() as http:
            try:
                await http.request(
                    "PUT", state_path(room_id, ev.REVIEW), json=sched.content() if sched else {}
                )
            except HomeserverError as exc:
                raise _as_access_error(exc, room_id) from None
        await self._c.sync_once()
        return sched

    async def report(
        self,
        room_id: str,
        *,
        stale_days: float = DEFAULT_STALE_DAYS,
        grant_days: float | None = None,
        now_ms: int | None = None,
    ) -> AccessReport:
        """Who has access to the room now, and what deserves a second look."""
        _check_days("stale_days", stale_days)
        _check_days("grant_days", grant_days, optional=True)
        c = self._c
        reviewed = await c.rooms.review(room_id)  # synced, keys queried
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        since = await self._membership_times(room_id)
        members: list[ReviewedMember] = []
        findings: list[Finding] = []
        for m in reviewed:
            trust = {d.device_id: d for d in await c.keys.devices(m.user_id)}
            devices = []
            for d in m.devices:
                t = trust.get(d.device_id)
                own = (m.user_id, d.device_id) == (c.user_id, c.device_id)
                cross = True if own else bool(t and t.cross_signed)
                devices.append(
                    ReviewedDevice(d.device_id, d.display_name or "", bool(d.verified), cross)
                )
                if not cross:
                    findings.append(
                        Finding(
                            "unverified_device",
                            m.user_id,
                            f"device {d.device_id} ({d.display_name or 'no name'}) is not "
                            "cross-signed by its owner",
                        )
                    )
            started = since.get(m.user_id)
            members.append(
                ReviewedMember(
                    m.user_id,
                    m.membership,
                    m.power,
                    m.access,
                    started,
                    m.last_active_ts,
                    devices,
                )
            )
            if m.user_id == c.user_id:
                continue
            revoke = f"datarooms room revoke {room_id} {m.user_id}"
            seen = m.last_active_ts or started
            if seen is not None and now - seen > stale_days * DAY_MS:
                what = "last active" if m.last_active_ts else "joined and never active since"
                findings.append(
                    Finding(
                        "stale_member",
                        m.user_id,
                        f"{what} {_ago(now, seen)} (more than {stale_days:g} days)",
                        revoke,
                    )
                )
            if (
                grant_days is not None
                and m.power >= POWER["write"]
                and started is not None
                and now - started > grant_days * DAY_MS
            ):
                findings.append(
                    Finding(
                        "old_grant",
                        m.user_id,
                        f"{m.access} access since {_ago(now, started)} "
                        f"(more than {grant_days:g} days)",
                        revoke,
                    )
                )
        copies = c.rooms.servers(room_id)
        servers: list[dict[str, Any]] = [
            {"name": s.server_name, "members": list(s.members), "allowed": s.allowed}
            for s in copies
        ]
        for s in copies:
            if not s.allowed:
                findings.append(
                    Finding(
                        "server_outside_acl",
                        s.server_name,
                        "the ACL no longer allows this server, but its members "
                        f"({', '.join(s.members)}) are still joined",
                        f"datarooms room revoke {room_id} {s.members[0]}",
                    )
                )
        return AccessReport(room_id, now, stale_days, grant_days, members, servers, findings)

    async def _membership_times(self, room_id: str) -> dict[str, int]:
        """When each member's current membership event was sent (the room's /members)."""
        from urllib.parse import quote

        async with self._c.http() as http:
            res = await http.request(
                "GET", f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/members"
            )
        out: dict[str, int] = {}
        for e in res.get("chunk", []):
            ts = e.get("origin_server_ts")
            if isinstance(ts, int) and isinstance(e.get("state_key"), str):
                out[e["state_key"]] = ts
        return out

    async def post(self, room_id: str, report: AccessReport) -> str:
        """Post the report into the room (encrypted), mentioning its admins."""
        admins = sorted(
            m.user_id
            for m in report.members
            if m.power >= POWER["admin"] and m.membership == "join" and m.user_id != self._c.user_id
        )
        body = report.to_text()
        if admins:
            body = " ".join(admins) + ": " + body
        content = {
            "msgtype": "m.notice",
            "body": body,
            "m.mentions": {"user_ids": admins},
            ev.REVIEW_REPORT: report.to_json(),
        }
        event_id = await self._c.send(room_id, "m.room.message", content)
        self._c.index.set_meta(f"review:{room_id}", str(report.generated_ms))
        return str(event_id)

    def last_run_ms(self, room_id: str) -> int | None:
        raw = self._c.index.get_meta(f"review:{room_id}")
        return int(raw) if raw and raw.isdigit() else None

    async def run_due(self, now_ms: int | None = None) -> list[str]:
        """Post the report of every joined room whose schedule says a review is due.
        Returns the rooms reviewed."""
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        done = []
        for room_id in self._c.joined_rooms():
            sched = self.schedule(room_id)
            if sched is None:
                continue
            last = self.last_run_ms(room_id)
            if last is not None and now - last < sched.interval_days * DAY_MS:
                continue
            try:
                report = await self.report(
                    room_id, stale_days=sched.stale_days, grant_days=sched.grant_days, now_ms=now
                )
                await self.post(room_id, report)
            except DataroomsError as exc:  # one room's failure (say, no power to post)
                log.warning(
                    "could not post a room's access review",
                    extra={"room": room_id, "error": exc.message},
                )
                continue
            done.append(room_id)
        return done


__all__ = [
    "AccessReport",
    "Finding",
    "ReviewSchedule",
    "ReviewedDevice",
    "ReviewedMember",
    "Reviews",
]
