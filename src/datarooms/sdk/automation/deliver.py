"""The deliverer: posts the outbox's deliveries into their rooms, encrypted, in order
per room, each with the transaction id stored with it (so a resend after a crash is
answered by the homeserver with the event it already has).

Rooms are independent: each room with pending deliveries has its own worker, so a
slow or refused room never delays another. A transient failure (the homeserver down,
the bot not yet invited) is retried with backoff, its error visible in the outbox; a
permanent one (the room refuses the content) is marked failed and the room moves on.

Telemetry deliveries go through the SDK's telemetry outbox; a crash between its
commit and ours may append that request's samples twice (the only at-least-once
window; messages and records are exactly once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from datarooms.errors import (
    AccessDeniedError,
    DataroomsError,
    HomeserverError,
    NotFoundError,
    ValidationError,
)
from datarooms.sdk.automation.outbox import HookOutbox, OutboxRow

if TYPE_CHECKING:
    from datarooms.sdk.client import DataroomsClient

log = logging.getLogger(__name__)

#: ``(row, seconds from receipt to sent)`` after each delivery.
OnSent = Callable[[OutboxRow, float], None]


class Deliverer:
    def __init__(
        self,
        client: DataroomsClient,
        outbox: HookOutbox,
        *,
        on_sent: OnSent | None = None,
        max_backoff: float = 30.0,
        poll_seconds: float = 2.0,
    ) -> None:
        self.client = client
        self.outbox = outbox
        self._on_sent = on_sent
        self._max_backoff = max_backoff
        self._poll = poll_seconds
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._workers: dict[str, asyncio.Task[None]] = {}
        self.failures = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="automation-deliverer")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._workers.values()) if t is not None]
        self._task = None
        self._workers.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    async def _loop(self) -> None:
        pruned = 0.0
        while True:
            if time.monotonic() - pruned > 3600:  # sent deliveries (and dedupe keys) > 1 day
                pruned = time.monotonic()
                await asyncio.to_thread(self.outbox.prune)
            self._wake.clear()
            rows = await asyncio.to_thread(self.outbox.pending)
            rooms = {r.room_id for r in rows}
            for room in rooms:
                if room not in self._workers:
                    self._workers[room] = asyncio.create_task(
                        self._room_worker(room), name=f"automation-deliver-{room}"
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll)

    async def _room_worker(self, room: str) -> None:
        try:
            backoff = 0.5
            while True:
                rows = [
                    r for r in await asyncio.to_thread(self.outbox.pending) if r.room_id == room
                ]
                if not rows:
                    return
                for row in rows:
                    while True:
                        retry = await self._deliver(row)
                        if retry is None:
                            backoff = 0.5
                            break
                        await asyncio.sleep(min(backoff, self._max_backoff))
                        backoff = min(backoff * 2, self._max_backoff)
        finally:
            self._workers.pop(room, None)

    async def _deliver(self, row: OutboxRow) -> str | None:
        """Send one delivery; ``None`` when done (sent or failed for good), else the
        error to retry after."""
        c = self.client
        try:
            if c.membership(row.room_id) != "join":
                raise _NotInRoom(
                    f"the automation bot {c.user_id} is not in {row.room_id}: invite it"
                )
            if row.kind == "message":
                event_id = str(
                    await c.send(
                        row.room_id, "m.room.message", row.payload["content"], txn_id=row.txn
                    )
                )
            elif row.kind == "record":
                record = await c.records.put(
                    row.room_id, row.payload["key"], row.payload["value"], txn_id=row.txn
                )
                event_id = str(record.event_id)
            elif row.kind == "telemetry":
                samples = [(int(s[0]), s[1], float(s[2]), s[3]) for s in row.payload["samples"]]
                n = await c.telemetry.append_many(row.room_id, samples)
                event_id = f"telemetry:{n}"
            else:
                raise ValidationError(f"unknown delivery kind {row.kind!r}")
        except (ValidationError, NotFoundError) as exc:
            self.failures += 1
            await asyncio.to_thread(self.outbox.mark_failed, row.seq, exc.message)
            log.warning(
                "a webhook delivery was refused for good",
                extra={"room": row.room_id, "hook": row.hook_id, "error": exc.message},
            )
            return None
        except (_NotInRoom, AccessDeniedError, HomeserverError, DataroomsError, OSError) as exc:
            error = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            await asyncio.to_thread(self.outbox.note_attempt, row.seq, error)
            log.info(
                "a webhook delivery will be retried",
                extra={"room": row.room_id, "hook": row.hook_id, "error": error},
            )
            return error
        await asyncio.to_thread(self.outbox.mark_sent, row.seq, event_id)
        if self._on_sent is not None:
            self._on_sent(row, time.time() - row.received_ms / 1000)
        return None


class _NotInRoom(DataroomsError):
    errcode = "DR_NOT_IN_ROOM"
