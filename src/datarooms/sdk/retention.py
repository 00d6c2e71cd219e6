"""Retention: a room's policy for how long old data stays, and the cleanup that applies it.

The policy is room state, ``io.datarooms.retention`` (state_key ""), readable by
every member's client; only admins may set it:

- ``record_versions_days``: record versions older than this go, except the latest
  version of each key (the twin stays whole);
- ``files_days``: files older than this go;
- ``legal_hold``: true blocks every cleanup of the room, whatever else it says.

A cleanup (``client.retention.cleanup(room, dry_run=...)``) works from this
device's index: it finds what the policy says must go and, unless it is a dry run,
**redacts** each event (Matrix's own deletion: the homeserver drops the
ciphertext's content, and every member's device drops the record or file from its
index when the redaction reaches it), deletes the file's media from our own
homeserver when the caller is its admin (the admin media API), and drops them from
this device's index at once. Redacting another member's events needs the room's
``redact`` power (admins); what the caller may not redact is reported, not
touched. Each redaction has a transaction id made from the event it redacts, so an
interrupted cleanup run again redoes only what is left, never twice.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from datarooms import events as ev
from datarooms.errors import AccessDeniedError, DataroomsError, HomeserverError, ValidationError
from datarooms.sdk.rooms import state_path

if TYPE_CHECKING:
    from datarooms.sdk.client import DataroomsClient

log = logging.getLogger(__name__)
DAY_MS = 86_400_000
MAX_DAYS = 36_500


@dataclass(frozen=True)
class RetentionPolicy:
    """Whole days (room state is canonical JSON, which has no floats); None: kept."""

    record_versions_days: int | None = None
    files_days: int | None = None
    legal_hold: bool = False
    telemetry_raw_days: int | None = None

    def content(self) -> dict[str, Any]:
        out: dict[str, Any] = {"legal_hold": self.legal_hold}
        if self.telemetry_raw_days is not None:
            out["telemetry_raw_days"] = self.telemetry_raw_days
        if self.record_versions_days is not None:
            out["record_versions_days"] = self.record_versions_days
        if self.files_days is not None:
            out["files_days"] = self.files_days
        return out


@dataclass
class CleanupItem:
    kind: str  # record_version | file | telemetry_batch
    event_id: str
    sender: str
    ts: int
    what: str  # "temp v3" / "report.pdf (12 MB)"
    bytes: int = 0


@dataclass
class CleanupReport:
    room_id: str
    dry_run: bool
    policy: RetentionPolicy | None
    #: Why nothing was done (a legal hold, no policy), else None.
    refused: str | None = None
    #: What goes (dry run: would go).
    items: list[CleanupItem] = field(default_factory=list)
    #: What the policy says must go but the caller may not redact (others' events).
    not_allowed: list[CleanupItem] = field(default_factory=list)
    redacted: int = 0
    media_deleted: int = 0
    #: Files whose media stayed on the server (not its admin; the event is redacted).
    media_kept: int = 0
    bytes: int = 0
    #: Telemetry: raw samples that go from this device's index (their rollups stay),
    #: and the rollup events posted for the rooms' later devices.
    telemetry_samples: int = 0
    rollup_events: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _days(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{name} must be a whole number of days, got {value!r}")
    if value < 1:
        raise ValidationError(
            f"{name} = {value} would delete everything at once; the shortest retention is 1 day"
        )
    if value > MAX_DAYS:
        raise ValidationError(f"{name} must be at most {MAX_DAYS} days, got {value}")
    return value


def _parse(content: dict[str, Any]) -> RetentionPolicy | None:
    if not content:
        return None

    def days(key: str) -> int | None:
        v = content.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_DAYS else None

    return RetentionPolicy(
        days("record_versions_days"),
        days("files_days"),
        content.get("legal_hold") is True,
        days("telemetry_raw_days"),
    )


class Retention:
    """Retention policies and cleanups (``client.retention``)."""

    def __init__(self, client: DataroomsClient) -> None:
        self._c = client

    def policy(self, room_id: str) -> RetentionPolicy | None:
        """The room's policy as this device knows its state (None: keep everything)."""
        return _parse(self._c.index.state(room_id, ev.RETENTION) or {})

    async def set_policy(self, room_id: str, policy: RetentionPolicy | None) -> None:
        """Set (or, with None, remove) the room's policy. Admins only."""
        from datarooms.sdk.rooms import _as_access_error

        if policy is not None:
            _days("record_versions_days", policy.record_versions_days)
            _days("files_days", policy.files_days)
            _days("telemetry_raw_days", policy.telemetry_raw_days)
        await self._c.ensure_room(room_id)
        async with self._c.http() as http:
            try:
                await http.request(
                    "PUT",
                    state_path(room_id, ev.RETENTION),
                    json=policy.content() if policy else {},
                )
            except HomeserverError as exc:
                raise _as_access_error(exc, room_id) from None
        await self._c.sync_once()

    def _may_redact_others(self, room_id: str) -> bool:
        view = self._c.rooms.view(room_id)
        needed = (view.power_levels or {}).get("redact", 50)
        return view.power(self._c.user_id) >= (needed if isinstance(needed, int) else 50)

    def plan(self, room_id: str, *, now_ms: int | None = None) -> CleanupReport:
        """What a cleanup would do now (nothing is changed)."""
        return self._plan(room_id, now_ms=now_ms, dry_run=True)

    def _plan(self, room_id: str, *, now_ms: int | None, dry_run: bool) -> CleanupReport:
        policy = self.policy(room_id)
        report = CleanupReport(room_id, dry_run, policy)
        if policy is None:
            report.refused = "the room has no retention policy: everything is kept"
            return report
        if policy.legal_hold:
            report.refused = "the room is under legal hold: nothing may be cleaned up"
            return report
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        items: list[CleanupItem] = []
        if policy.record_versions_days is not None:
            cutoff = now - policy.record_versions_days * DAY_MS
            for r in self._c.index.old_versions(room_id, cutoff):
                items.append(CleanupItem("record_version", r.event_id, r.sender, r.ts, r.key))
        if policy.files_days is not None:
            cutoff = now - policy.files_days * DAY_MS
            for f in self._c.index.files(room_id, before_ts=cutoff):
                items.append(CleanupItem("file", f.event_id, f.sender, f.ts, f.name, bytes=f.size))
        raw_cutoff = self._telemetry_cutoff(policy, now)
        if raw_cutoff is not None and self._telemetry_indexed():
            idx = self._c.telemetry.index
            for event_id, n, sender, t0 in idx.old_batches(room_id, raw_cutoff):
                items.append(CleanupItem("telemetry_batch", event_id, sender, t0, f"{n} samples"))
            report.telemetry_samples = idx.raw_before(room_id, raw_cutoff)
        others = self._may_redact_others(room_id)
        me = self._c.user_id
        for item in items:
            (report.items if others or item.sender == me else report.not_allowed).append(item)
        report.bytes = sum(i.bytes for i in report.items)
        return report

    @staticmethod
    def _telemetry_cutoff(policy: RetentionPolicy, now: int) -> int | None:
        """Raw telemetry before this goes: whole minutes only, so that every sample that
        goes is in a minute whose rollup is posted."""
        if policy.telemetry_raw_days is None:
            return None
        cutoff = now - policy.telemetry_raw_days * DAY_MS
        return cutoff - cutoff % 60_000

    def raw_telemetry_cutoff(self, room_id: str, now_ms: int | None = None) -> int | None:
        """Raw telemetry of the room older than this is past its policy (None: kept)."""
        policy = self.policy(room_id)
        if policy is None or policy.legal_hold:
            return None
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        return self._telemetry_cutoff(policy, now)

    def _telemetry_indexed(self) -> bool:
        return (self._c.telemetry.directory / "index.db").exists()

    async def cleanup(
        self, room_id: str, *, dry_run: bool = False, now_ms: int | None = None
    ) -> CleanupReport:
        """Apply the room's policy (see the module). Safe to run again after an interruption."""
        await self._c.ensure_room(room_id)
        await self._c.sync_once()  # the policy, power and redactions as they are now
        policy = self.policy(room_id)
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        if policy is not None and not policy.legal_hold and policy.telemetry_raw_days:
            await self._c.telemetry.catch_up(room_id)  # every batch, to roll up and redact
        report = self._plan(room_id, now_ms=now, dry_run=dry_run)
        if dry_run or report.refused or not (report.items or report.telemetry_samples):
            return report
        cutoff = self._telemetry_cutoff(report.policy, now) if report.policy else None
        batches = [i for i in report.items if i.kind == "telemetry_batch"]
        if cutoff is not None and batches:
            # The rollups first: once the raw batches are redacted, they are all a later
            # device can have of those minutes.
            since = min(i.ts for i in batches)
            report.rollup_events = await self._post_rollups(room_id, since, cutoff)
        files = {f.event_id: f for f in self._c.index.files(room_id)}
        done: list[str] = []
        try:
            for item in report.items:
                await self._redact(room_id, item.event_id)
                done.append(item.event_id)
                report.redacted += 1
                f = files.get(item.event_id)
                if f is not None and f.url:
                    if await self._delete_media(f.url):
                        report.media_deleted += 1
                    else:
                        report.media_kept += 1
        finally:
            self._c.index.forget(room_id, done)
        if cutoff is not None:
            await asyncio.to_thread(self._c.telemetry.index.prune_raw, room_id, cutoff)
        log.info(
            "cleaned up a room",
            extra={"room": room_id, "redacted": report.redacted, "media": report.media_deleted},
        )
        return report

    async def _post_rollups(self, room_id: str, since: int, until: int) -> int:
        """Post the per-minute rollups of ``[since, until)``, in events of at most ~30 KB."""
        series = self._c.telemetry.index.rollups_between(room_id, since - since % 60_000, until)
        posted = 0
        chunk: list[dict[str, Any]] = []
        size = 0
        for metric, tags, minutes in series:
            for i in range(0, len(minutes), 400):  # ~60 bytes a minute
                part = {"metric": metric, "tags": tags, "minutes": minutes[i : i + 400]}
                n = len(json.dumps(part))
                if chunk and size + n > 30_000:
                    await self._c.send(
                        room_id, ev.TELEMETRY_ROLLUP, {"v": 1, "until": until, "series": chunk}
                    )
                    posted += 1
                    chunk, size = [], 0
                chunk.append(part)
                size += n
        if chunk:
            await self._c.send(
                room_id, ev.TELEMETRY_ROLLUP, {"v": 1, "until": until, "series": chunk}
            )
            posted += 1
        return posted

    async def _redact(self, room_id: str, event_id: str) -> None:
        txn = "cleanup-" + event_id.lstrip("$").replace("/", "_")[:100]
        path = (
            f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/redact/"
            f"{quote(event_id, safe='')}/{quote(txn, safe='')}"
        )
        async with self._c.http() as http:
            try:
                await http.request("PUT", path, json={"reason": "retention policy"})
            except HomeserverError as exc:
                if exc.errcode == "M_FORBIDDEN":
                    raise AccessDeniedError(
                        f"may not redact {event_id} in {room_id}: {exc.message}"
                    ) from None
                raise

    async def _delete_media(self, url: str) -> bool:
        """Delete an encrypted file's media from our own homeserver (admins only)."""
        if not url.startswith("mxc://"):
            return False
        server, _, media_id = url[len("mxc://") :].partition("/")
        if not media_id:
            return False
        async with self._c.http() as http:
            try:
                await http.request(
                    "DELETE",
                    f"/_synapse/admin/v1/media/{quote(server, safe='')}/{quote(media_id, safe='')}",
                )
            except DataroomsError:
                return False  # not a server admin, another server's media, or gone already
        return True


__all__ = ["CleanupItem", "CleanupReport", "Retention", "RetentionPolicy"]
