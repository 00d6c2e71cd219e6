"""Notifications out of Matrix: an explicit trust boundary.

What a room forwards leaves end-to-end encryption, so forwarding needs two parties:

- the **room's admins declare it** in the room: the state event :data:`FORWARDING`
  (``state_key ""``, content ``{"forwards": {id: {"kind", "destination"}}}``), sent by
  an admin with :func:`declare`, which also makes the event type need admin power
  in the room's power levels. The destination is only the host (a Slack webhook URL
  is a secret and state is not encrypted). Every member sees it (``room members``);
- the **operator configures the target** (its full URL) in the automation service's
  registry (``datarooms forward add``).

The service forwards a room's alerts only while both agree: a forward id in the
registry, declared in the room's state by a user who is an admin now, and the room
requiring admin power for the declaration. Only a summary line leaves (the first line
of the alert), never the record or the samples. Sends are retried with backoff
(:class:`Notifier`); failures stay visible in its outbox.

Kinds: ``json`` (``{"room_id", "rule", "status", "severity", "text"}``, signed with
the target's secret when it has one: ``X-Datarooms-Signature``, as inbound ``hmac``
hooks), ``slack`` (the incoming-webhook shape ``{"text": ...}`` that Slack, Mattermost
and Discord's ``/slack`` endpoint accept; the URL is its secret) and ``ntfy`` (ntfy's
publish API: ``POST`` the line to ``https://server/<topic>`` with ``Title``,
``Priority`` and ``Tags`` headers; the target's secret, an ntfy access token, as
``Authorization: Bearer``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp

from datarooms._db import SQLITE, Database, StoreTarget
from datarooms.errors import AccessDeniedError, HomeserverError, ValidationError
from datarooms.events import FORWARDING
from datarooms.sdk.automation.signatures import SIGNATURE_HEADER, sign

if TYPE_CHECKING:
    from datarooms.sdk.client import DataroomsClient

log = logging.getLogger(__name__)

KINDS = ("json", "slack", "ntfy")
#: ntfy priorities (1 min .. 5 max) by alert severity; a resolve is "default".
NTFY_PRIORITY = {"page": 5, "warning": 4, "info": 3}
#: ntfy tags (shown as emoji by ntfy's apps) by alert status.
NTFY_TAGS = {"firing": "rotating_light", "repeat": "repeat", "resolved": "white_check_mark"}
ADMIN = 100


def destination(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(f"a forwarding target must be an http(s) URL, got {url!r}")
    return parts.hostname + (f":{parts.port}" if parts.port else "")


async def declare(
    client: DataroomsClient, room_id: str, forward_id: str, kind: str, url: str
) -> dict[str, Any]:
    """As a room admin: declare in the room that it forwards to ``url``'s host."""
    if kind not in KINDS:
        raise ValidationError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    await client.ensure_room(room_id)
    view = client.rooms.view(room_id)
    if view.access(client.user_id) != "admin":
        raise AccessDeniedError(
            f"only an admin of {room_id} may make it forward outside Matrix "
            f"({client.user_id} is {view.access(client.user_id)})"
        )
    # The homeserver's current power levels, not the index's (a grant just made may not
    # have synced yet; writing a stale copy would take that power away).
    resp = await client.nio.room_get_state_event(room_id, "m.room.power_levels")
    current_pl = getattr(resp, "content", None)
    if not isinstance(current_pl, dict):
        raise HomeserverError(f"could not read the power levels of {room_id}")
    pl = dict(current_pl)
    events = dict(pl.get("events") or {})
    if int(events.get(FORWARDING, 0)) < ADMIN:
        events[FORWARDING] = ADMIN
        pl["events"] = events
        await _put_state(client, room_id, "m.room.power_levels", pl)
    forwards = await _current_forwards(client, room_id)
    forwards[forward_id] = {"kind": kind, "destination": destination(url), "summary_only": True}
    content = {"forwards": forwards}
    await _put_state(client, room_id, FORWARDING, content)
    return content


async def undeclare(client: DataroomsClient, room_id: str, forward_id: str) -> None:
    await client.ensure_room(room_id)
    forwards = await _current_forwards(client, room_id)
    if forward_id not in forwards:
        raise ValidationError(f"{room_id} declares no forward {forward_id!r}")
    forwards.pop(forward_id, None)
    await _put_state(client, room_id, FORWARDING, {"forwards": forwards})


async def _current_forwards(client: DataroomsClient, room_id: str) -> dict[str, Any]:
    """The declaration as the homeserver has it now (another admin's change may not have
    synced here yet; writing a stale copy would drop it)."""
    resp = await client.nio.room_get_state_event(room_id, FORWARDING)
    content = getattr(resp, "content", None)
    if not isinstance(content, dict):  # none yet (M_NOT_FOUND)
        return {}
    forwards = content.get("forwards")
    return dict(forwards) if isinstance(forwards, dict) else {}


async def _put_state(client: DataroomsClient, room_id: str, kind: str, content: Any) -> None:
    resp = await client.nio.room_put_state(room_id, kind, content, "")
    if not hasattr(resp, "event_id"):
        raise HomeserverError(
            f"could not set {kind} in {room_id}: {getattr(resp, 'message', resp)}"
        )
    await client.sync_once()


def declarations(client: DataroomsClient, room_id: str) -> tuple[dict[str, Any], str | None, bool]:
    """What the room's state declares, who declared it, and whether it counts (its
    sender is an admin now and the room requires admin power for it): for reviews."""
    content = client.index.state(room_id, FORWARDING) or {}
    sender = client.index.state_sender(room_id, FORWARDING)
    forwards = content.get("forwards")
    forwards = dict(forwards) if isinstance(forwards, dict) else {}
    if not sender:
        return forwards, None, False
    view = client.rooms.view(room_id)
    ok = view.access(sender) == "admin" and view.required(FORWARDING) >= ADMIN
    return forwards, sender, ok


def declared(client: DataroomsClient, room_id: str) -> dict[str, dict[str, Any]]:
    """The forwards the room declares, if an admin declared them and the room requires
    admin power for the declaration; else nothing."""
    content = client.index.state(room_id, FORWARDING)
    sender = client.index.state_sender(room_id, FORWARDING)
    if not content or not sender:
        return {}
    view = client.rooms.view(room_id)
    if view.access(sender) != "admin" or view.required(FORWARDING) < ADMIN:
        return {}
    forwards = content.get("forwards")
    return dict(forwards) if isinstance(forwards, dict) else {}


_MIGRATIONS = [
    """
    CREATE TABLE forwards (
        forward_id TEXT PRIMARY KEY,
        room_id    TEXT NOT NULL,
        kind       TEXT NOT NULL,
        url        TEXT NOT NULL,
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE outbound (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        forward_id TEXT NOT NULL,
        body       TEXT NOT NULL,
        state      TEXT NOT NULL DEFAULT 'pending',
        attempts   INTEGER NOT NULL DEFAULT 0,
        error      TEXT,
        created_ms INTEGER NOT NULL
    )
    """,
    # Per-target secrets (an ntfy access token, the json kind's signing key).
    "ALTER TABLE forwards ADD COLUMN secret TEXT NOT NULL DEFAULT ''",
]


def _header_value(text: str) -> str:
    """A header value ntfy reads: ASCII as is, else RFC 2047 (``=?UTF-8?B?...?=``),
    which ntfy decodes."""
    text = " ".join(text.split())[:200]
    if text.isascii():
        return text
    return "=?UTF-8?B?" + base64.b64encode(text.encode()).decode() + "?="


def outbound_request(
    kind: str, room_id: str, line: str, data: dict[str, Any], secret: str
) -> tuple[bytes, dict[str, str]]:
    """The body and headers one notification is sent with (what leaves Matrix)."""
    if kind == "slack":
        return json.dumps({"text": line}).encode(), {"Content-Type": "application/json"}
    if kind == "ntfy":
        status = str(data.get("status", "firing"))
        severity = str(data.get("severity", "warning"))
        headers = {
            "Content-Type": "text/plain; charset=utf-8",
            "Title": _header_value(f"datarooms: {data.get('rule', 'alert')} {status}"),
            "Priority": str(3 if status == "resolved" else NTFY_PRIORITY.get(severity, 4)),
            "Tags": NTFY_TAGS.get(status, "bell"),
        }
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        return line.encode(), headers
    body = json.dumps({"room_id": room_id, "text": line, **data}).encode()
    headers = {"Content-Type": "application/json"}
    if secret:
        headers[SIGNATURE_HEADER] = sign(secret, body)
    return body, headers


class ForwardTargets:
    """The operator's side of forwarding: targets (full URL, kind, secret) and the
    outbound queue's state, in ``<data_dir>/automation/forward.db`` (mode 0600). The
    CLI (``datarooms forward add/list/remove``) and the service open the same file."""

    #: What ``datarooms migrate-to-postgres`` copies (datarooms._db.copy_store).
    NAME = "automation_forward"
    MIGRATIONS = _MIGRATIONS
    SEALED = {"forwards": ("url", "secret"), "outbound": ("body",)}

    def __init__(self, path: Path | str, target: StoreTarget = SQLITE) -> None:
        self._db: Database = target.open(self.NAME, Path(path), _MIGRATIONS)

    @property
    def db(self) -> Database:
        return self._db

    def close(self) -> None:
        self._db.close()

    def add(self, forward_id: str, room_id: str, kind: str, url: str, secret: str = "") -> None:
        check_forward_id(forward_id)
        if kind not in KINDS:
            raise ValidationError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if not room_id.startswith("!") or len(room_id) > 255:
            raise ValidationError(f"a forward needs a room id (!...), got {room_id!r}")
        destination(url)
        if kind == "ntfy" and not urlsplit(url).path.strip("/"):
            raise ValidationError("an ntfy target is the topic's URL: https://ntfy.sh/<topic>")
        if kind == "slack" and secret:
            raise ValidationError("a slack target has no secret (its URL is the secret)")
        with self._db.transaction() as db:
            db.execute(
                "INSERT INTO forwards"
                " (forward_id, room_id, kind, url, created_ms, secret) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (forward_id) DO UPDATE SET room_id = excluded.room_id,"
                " kind = excluded.kind, url = excluded.url, created_ms = excluded.created_ms,"
                " secret = excluded.secret",
                (
                    forward_id,
                    room_id,
                    kind,
                    db.seal(url, "url"),
                    int(time.time() * 1000),
                    db.seal(secret, "secret"),
                ),
            )

    def remove(self, forward_id: str) -> None:
        with self._db.transaction() as db:
            gone = db.execute("DELETE FROM forwards WHERE forward_id = ?", (forward_id,))
            if not gone.rowcount:
                raise ValidationError(f"no forwarding target {forward_id!r}")
            db.execute(
                "UPDATE outbound SET state = 'failed', error = 'target removed'"
                " WHERE forward_id = ? AND state = 'pending'",
                (forward_id,),
            )

    def targets(self, room_id: str) -> list[tuple[str, str, str]]:
        return [
            (str(a), str(b), self._db.unseal(str(c), "url"))
            for a, b, c in self._db.execute(
                "SELECT forward_id, kind, url FROM forwards WHERE room_id = ?", (room_id,)
            ).fetchall()
        ]

    def list(self) -> list[dict[str, Any]]:
        """Every target without its URL's path or its secret (both are secrets)."""
        rows = self._db.execute(
            "SELECT forward_id, room_id, kind, url, secret != '' FROM forwards ORDER BY forward_id"
        ).fetchall()
        out = []
        for fid, room, kind, url, has_secret in rows:
            counts = dict(
                self._db.execute(
                    "SELECT state, count(*) FROM outbound WHERE forward_id = ? GROUP BY state",
                    (fid,),
                ).fetchall()
            )
            out.append(
                {
                    "forward_id": fid,
                    "room_id": room,
                    "kind": kind,
                    "destination": destination(self._db.unseal(url, "url")),
                    "secret": bool(has_secret),
                    "sent": int(counts.get("sent", 0)),
                    "pending": int(counts.get("pending", 0)),
                    "failed": int(counts.get("failed", 0)),
                }
            )
        return out

    def status(self) -> dict[str, Any]:
        counts = dict(self._db.execute("SELECT state, count(*) FROM outbound GROUP BY state"))
        errors = [
            {"forward_id": f, "attempts": a, "error": e}
            for f, a, e in self._db.execute(
                "SELECT forward_id, attempts, error FROM outbound WHERE error IS NOT NULL"
                " ORDER BY seq DESC LIMIT 20"
            )
        ]
        return {"counts": {str(k): int(v) for k, v in counts.items()}, "errors": errors}


def check_forward_id(forward_id: str) -> None:
    if (
        not forward_id
        or len(forward_id) > 64
        or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in forward_id)
    ):
        raise ValidationError(
            f"a forward id is 1-64 letters, digits, '-', '_' or '.', got {forward_id!r}"
        )


class Notifier:
    """The service's side: :meth:`notify` queues a summary for each agreed forward of
    a room (in :class:`ForwardTargets`' outbound queue); a task posts them, retrying
    with backoff, ``max_attempts`` times, then marks them failed (visible in
    :meth:`status`)."""

    def __init__(
        self,
        client: DataroomsClient,
        path: Path | str,
        *,
        target: StoreTarget = SQLITE,
        max_attempts: int = 6,
        first_backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self.client = client
        self.store = ForwardTargets(path, target)
        self._db = self.store.db
        self._max_attempts = max_attempts
        self._first, self._max = first_backoff, max_backoff
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    # -- targets (the operator's side) ---------------------------------------------------

    def add(self, forward_id: str, room_id: str, kind: str, url: str, secret: str = "") -> None:
        self.store.add(forward_id, room_id, kind, url, secret)

    def remove(self, forward_id: str) -> None:
        self.store.remove(forward_id)

    def targets(self, room_id: str) -> list[tuple[str, str, str]]:
        return self.store.targets(room_id)

    def status(self) -> dict[str, Any]:
        return self.store.status()

    # -- sending ------------------------------------------------------------------------

    def notify(self, room_id: str, text: str, data: dict[str, Any]) -> int:
        """Queue ``text``'s first line (the summary: all that leaves) for every agreed
        forward of the room."""
        agreed = declared(self.client, room_id)
        line = text.splitlines()[0][:500] if text else ""
        n = 0
        with self._db.transaction() as db:
            for forward_id, kind, _url in self.targets(room_id):
                if forward_id not in agreed or agreed[forward_id].get("kind") != kind:
                    continue
                body = {"room_id": room_id, "text": line, **data}
                db.execute(
                    "INSERT INTO outbound (forward_id, body, created_ms) VALUES (?, ?, ?)",
                    (forward_id, db.seal(json.dumps(body), "body"), int(time.time() * 1000)),
                )
                n += 1
        if n:
            self._wake.set()
        return n

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="automation-notifier")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._http is not None:
            await self._http.close()
            self._http = None
        self._db.close()

    async def _loop(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        while True:
            self._wake.clear()
            rows = self._db.execute(
                "SELECT o.seq, o.body, o.attempts, f.url, f.kind, f.secret FROM outbound o"
                " JOIN forwards f USING (forward_id) WHERE o.state = 'pending'"
                " ORDER BY o.seq LIMIT 100"
            ).fetchall()
            if not rows:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), 5)
                continue
            # One at a time per loop; a receiver that is down never blocks the rooms
            # (alerts are posted in Matrix first; this is a queue of its own).
            for seq, queued, attempts, sealed_url, kind, sealed_secret in rows:
                item = json.loads(self._db.unseal(queued, "body"))
                url = self._db.unseal(sealed_url, "url")
                secret = self._db.unseal(sealed_secret, "secret")
                room_id, line = str(item.pop("room_id", "")), str(item.pop("text", ""))
                body, headers = outbound_request(kind, room_id, line, item, secret)
                await self._send(seq, body, headers, attempts, url)

    async def _send(
        self, seq: int, body: bytes, headers: dict[str, str], attempts: int, url: str
    ) -> None:
        assert self._http is not None
        error: str | None = None
        while True:
            try:
                async with self._http.post(url, data=body, headers=headers) as r:
                    if 200 <= r.status < 300:
                        error = None
                    else:
                        error = f"HTTP {r.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = type(exc).__name__
            attempts += 1
            if error is None:
                with self._db.transaction() as db:
                    db.execute(
                        "UPDATE outbound SET state = 'sent', attempts = ? WHERE seq = ?",
                        (attempts, seq),
                    )
                return
            done = attempts >= self._max_attempts
            with self._db.transaction() as db:
                db.execute(
                    "UPDATE outbound SET state = ?, attempts = ?, error = ? WHERE seq = ?",
                    ("failed" if done else "pending", attempts, error, seq),
                )
            if done:
                log.warning(
                    "an outbound notification failed for good",
                    extra={"seq": seq, "error": error, "destination": destination(url)},
                )
                return
            await asyncio.sleep(min(self._max, self._first * 2 ** (attempts - 1)))
