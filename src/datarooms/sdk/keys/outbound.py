"""One outbound Megolm session per device and room, across processes.

Every ``datarooms put`` is a new process; without this each one started (and
shared by Olm, and backed up) a new Megolm session. The session is pickled with
the device's pickle key into the index (``outbound_sessions``) after every use,
and loaded again by the next process. A per-room file lock (``fcntl.flock``) is
held from loading the session to persisting it after the encryption, so two
processes of one device never encrypt with the same message index.

Rotation (a new session is created and shared):
- nio's rules: ``rotation_period_ms`` / ``rotation_period_msgs`` of the room's
  ``m.room.encryption`` (defaults: 7 days, 100 messages);
- the members changed since it was shared (a join, a leave, a revocation);
- the history visibility moved between shareable (``shared``/``world_readable``)
  and not: the session's ``m.shared_history`` flag must tell the truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from nio.crypto.sessions import OutboundGroupSession

from datarooms._store.index import LocalIndex

SHAREABLE_VISIBILITY = ("shared", "world_readable")
_DEFAULT_PERIOD_MS = 7 * 24 * 3600 * 1000
_DEFAULT_MSGS = 100


def history_shareable(index: LocalIndex, room_id: str) -> bool:
    """Whether the room's current history visibility lets a newcomer read history."""
    content = index.state(room_id, "m.room.history_visibility") or {}
    return content.get("history_visibility") in SHAREABLE_VISIBILITY


def rotation_rules(index: LocalIndex, room_id: str) -> tuple[timedelta, int]:
    content = index.state(room_id, "m.room.encryption") or {}
    period = content.get("rotation_period_ms")
    msgs = content.get("rotation_period_msgs")
    period_ms = period if isinstance(period, int) and period > 0 else _DEFAULT_PERIOD_MS
    max_msgs = msgs if isinstance(msgs, int) and msgs > 0 else _DEFAULT_MSGS
    return timedelta(milliseconds=period_ms), max_msgs


@contextlib.asynccontextmanager
async def room_file_lock(store_dir: Path, room_id: str) -> AsyncIterator[None]:
    """A lock on this device's outbound session in ``room_id``, across processes."""
    locks = store_dir / "locks"
    locks.mkdir(mode=0o700, exist_ok=True)
    name = hashlib.sha256(room_id.encode()).hexdigest()[:32]
    fd = os.open(locks / f"outbound-{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def load(
    index: LocalIndex, room_id: str, pickle_key: str, members: set[str], shareable: bool
) -> OutboundGroupSession | None:
    """The persisted session, if it may still be used; else drop it and return None."""
    row = index.outbound(room_id)
    if row is None:
        return None
    period, max_msgs = rotation_rules(index, room_id)
    age_ms = int(time.time() * 1000) - row["created_ms"]
    if (
        set(row["members"]) != members
        or row["shared_history"] != shareable
        or row["message_count"] >= max_msgs
        or age_ms >= period.total_seconds() * 1000
    ):
        index.drop_outbound(room_id)
        return None
    session = OutboundGroupSession.from_pickle(row["pickle"].encode(), pickle_key)
    session.creation_time = datetime.fromtimestamp(row["created_ms"] / 1000)
    session.message_count = row["message_count"]
    session.max_age, session.max_messages = period, max_msgs
    session.users_shared_with = {tuple(x) for x in row["shared_with"]}
    session.users_ignored = {tuple(x) for x in row.get("ignored", [])}
    session.shared = True
    return session


def unshared_devices(
    session: OutboundGroupSession, devices: dict[str, list[str]], own: tuple[str, str]
) -> set[tuple[str, str]]:
    """Devices of the members (``{user: [device ids]}``) this session has neither been
    shared with nor withheld from: a member's new device since it was shared (nio shares
    a session once; another process of this device loaded it shared)."""
    known = session.users_shared_with | session.users_ignored | {own}
    return {(u, d) for u, ids in devices.items() for d in ids if (u, d) not in known}


def save(
    index: LocalIndex,
    room_id: str,
    session: OutboundGroupSession,
    pickle_key: str,
    members: set[str],
    shareable: bool,
) -> None:
    data: dict[str, Any] = {
        "session_id": session.id,
        "pickle": session.pickle(pickle_key).decode(),
        "created_ms": int(session.creation_time.timestamp() * 1000),
        "message_count": session.message_count,
        "shared_history": shareable,
        "shared_with": sorted(list(x) for x in session.users_shared_with),
        "ignored": sorted(list(x) for x in session.users_ignored),
        "members": sorted(members),
    }
    index.put_outbound(room_id, data)
