"""The telemetry reader: room history and live batches into the index, and live samples out.

The reader walks each room's timeline **forward with ``/messages``** from a
per-room cursor, decrypts, decodes and indexes the batch events of every page,
and stores the page's end token in the same SQLite transaction as the page's
batches. So:

- a new device (or a lost index) starts at the beginning of the room and
  backfills everything it can decrypt;
- a crash repeats a page, never skips one, and the (sender, stream, seq)
  uniqueness of batches makes the repeat harmless;
- nothing depends on sync's timeline limits: a long absence is just more pages.

A *followed* room is caught up whenever sync reports an event in it (the
client's :meth:`~datarooms.sdk.client.DataroomsClient.subscribe`), and every
``poll_s`` seconds in any case; live subscribers get each new batch once it
is indexed. Batch events this device cannot decrypt yet are kept and retried
once their Megolm session arrives.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from jsonschema import Draft202012Validator
from nio import MegolmEvent, RoomMessagesError
from nio.api import MessageDirection
from nio.exceptions import EncryptionError

from datarooms.errors import DataroomsError, HomeserverError, ValidationError
from datarooms.events import TELEMETRY_ROLLUP, TELEMETRY_ROLLUP_SCHEMA
from datarooms.sdk.attachments import EncryptedFile, TamperedFileError, download_decrypted_bytes
from datarooms.sdk.telemetry._aio import cancel_and_wait, wait_event
from datarooms.sdk.telemetry.encoding import decode_batch
from datarooms.sdk.telemetry.index import DecodedBatch, PendingBatch, TelemetryIndex
from datarooms.sdk.telemetry.model import Sample
from datarooms.sdk.telemetry.schema import BATCH_SCHEMA, TELEMETRY_BATCH

if TYPE_CHECKING:
    from datarooms.sdk.client import DataroomsClient

log = logging.getLogger(__name__)

_VALIDATOR = Draft202012Validator(BATCH_SCHEMA)
_ROLLUP_VALIDATOR = Draft202012Validator(TELEMETRY_ROLLUP_SCHEMA)
_FILTER = {"types": ["m.room.encrypted", TELEMETRY_BATCH], "lazy_load_members": False}
_MAX_MEDIA_BYTES = 64 << 20


class SubscriptionLagError(DataroomsError):
    """A live subscriber fell too far behind; the samples it missed are in the index."""

    errcode = "DR_SUBSCRIBER_LAG"


@dataclass(eq=False)
class _Subscriber:
    room_id: str
    metric: str | None
    tags: dict[str, str]
    queue: asyncio.Queue[DecodedBatch | None] = field(
        default_factory=lambda: asyncio.Queue(maxsize=1024)
    )
    lagged: bool = False

    def offer(self, batch: DecodedBatch) -> None:
        if self.lagged:
            return
        try:
            self.queue.put_nowait(batch)
        except asyncio.QueueFull:
            self.lagged = True
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(None)


class TelemetryReader:
    """Runs on the client's event loop; :class:`datarooms.sdk.telemetry.Telemetry` owns it."""

    def __init__(
        self,
        client: DataroomsClient,
        index: TelemetryIndex,
        *,
        page_size: int = 50,
        poll_s: float = 30.0,
        download_concurrency: int = 4,
        key_wait_s: float = 5.0,
    ) -> None:
        self._c = client
        self.index = index
        self.page_size = page_size
        self.poll_s = poll_s
        self.key_wait_s = key_wait_s
        self._download_sem = asyncio.Semaphore(download_concurrency)
        self._locks: dict[str, asyncio.Lock] = {}
        self._followers: dict[str, asyncio.Task[None]] = {}
        self._triggers: dict[str, asyncio.Event] = {}
        self._subscribers: set[_Subscriber] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._caught_up: set[str] = set()

    async def close(self) -> None:
        tasks = list(self._followers.values())
        if self._watcher is not None:
            tasks.append(self._watcher)
        await cancel_and_wait(tasks)
        self._followers.clear()
        self._watcher = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def following(self, room_id: str) -> bool:
        task = self._followers.get(room_id)
        return task is not None and not task.done()

    def caught_up_once(self, room_id: str) -> bool:
        return room_id in self._caught_up

    # -- catching up ---------------------------------------------------------------------

    async def catch_up(self, room_id: str) -> int:
        """Index every batch the homeserver has in the room; returns samples added."""
        lock = self._locks.setdefault(room_id, asyncio.Lock())
        async with lock:
            await self._c.ensure_room(room_id)
            if not self.following(room_id) and not self._c.syncing:
                # A one-off read: collect room keys waiting in to-device messages first
                # (a running sync loop collects them as they come: no need to wait for it).
                await self._key_sync()
            added = await self._retry_pending(room_id)
            token = self.index.cursor(room_id)
            undecryptable = 0
            while True:
                resp = await self._c.nio.room_messages(
                    room_id,
                    start=token,
                    direction=MessageDirection.front,
                    limit=self.page_size,
                    message_filter=_FILTER,
                )
                if isinstance(resp, RoomMessagesError):
                    raise HomeserverError(
                        f"reading the history of {room_id} failed: {resp.message}",
                        errcode=resp.status_code,
                    )
                batches, pending = await self._decode_events(room_id, resp.chunk)
                next_token = resp.end or token
                new = await asyncio.to_thread(
                    self.index.add_page, room_id, batches, pending=pending, cursor=next_token
                )
                added += self._dispatch(new)
                undecryptable += len(pending)
                if not resp.chunk or not resp.end:
                    break
                token = resp.end
            if undecryptable:
                # Their keys may be waiting for us in to-device messages: one sync round
                # (or the running loop's next one), then try them again.
                await self._key_sync()
                added += await self._retry_pending(room_id)
            self._caught_up.add(room_id)
            return added

    async def _key_sync(self) -> None:
        """One sync round (or the running loop's next), for room keys; at most key_wait_s."""
        sync = asyncio.ensure_future(self._c.sync_once())
        sync.add_done_callback(_ignore_result)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(sync), self.key_wait_s)

    async def _retry_pending(self, room_id: str) -> int:
        """Decrypt kept events whose Megolm session has arrived since."""
        olm = self._c.nio.olm
        if olm is None:
            return 0
        ready = []
        for p in self.index.pending(room_id):
            sender_key = p.source.get("content", {}).get("sender_key", "")
            if olm.inbound_group_store.get(room_id, sender_key, p.session_id) is not None:
                ready.append(p)
        if not ready:
            return 0
        sources: list[dict[str, Any]] = []
        resolved: list[str] = []
        for p in ready:
            try:
                megolm = MegolmEvent.from_dict(p.source)
                megolm.room_id = room_id
                decrypted = self._c.nio.decrypt_event(megolm)
            except (EncryptionError, AttributeError, KeyError):
                continue
            resolved.append(p.event_id)
            source = getattr(decrypted, "source", None)
            if isinstance(source, dict) and source.get("type") == TELEMETRY_BATCH:
                sources.append(source)
            elif isinstance(source, dict) and source.get("type") == TELEMETRY_ROLLUP:
                await asyncio.to_thread(self._rollups, room_id, source)
        decoded = await self._decode_sources(room_id, sources)
        new = await asyncio.to_thread(self.index.add_page, room_id, decoded, resolved=resolved)
        return self._dispatch(new)

    async def _decode_events(
        self, room_id: str, events: list[Any]
    ) -> tuple[list[DecodedBatch], list[PendingBatch]]:
        pending: list[PendingBatch] = []
        sources: list[dict[str, Any]] = []
        for e in events:
            source = getattr(e, "source", None)
            if not isinstance(source, dict) or "event_id" not in source:
                continue
            if isinstance(e, MegolmEvent):
                pending.append(
                    PendingBatch(
                        e.event_id,
                        room_id,
                        e.session_id,
                        int(source.get("origin_server_ts", 0)),
                        source,
                    )
                )
                continue
            if source.get("type") == TELEMETRY_ROLLUP and getattr(e, "decrypted", False):
                await asyncio.to_thread(self._rollups, room_id, source)
                continue
            if source.get("type") != TELEMETRY_BATCH:
                continue
            if not getattr(e, "decrypted", False):
                log.warning(
                    "ignoring an unencrypted telemetry batch",
                    extra={"event_id": source["event_id"], "room_id": room_id},
                )
                continue
            sources.append(source)
        return await self._decode_sources(room_id, sources), pending

    def _rollups(self, room_id: str, source: dict[str, Any]) -> None:
        """Index the rollups a retention cleanup posted (see datarooms.sdk.retention)."""
        content = source.get("content")
        error = next(iter(_ROLLUP_VALIDATOR.iter_errors(content)), None)
        if error is not None or not isinstance(content, dict):
            log.warning(
                "skipping a malformed telemetry rollup",
                extra={"event_id": source.get("event_id"), "room_id": room_id},
            )
            return
        for s in content["series"]:
            self.index.put_rollups(room_id, s["metric"], s.get("tags") or {}, s["minutes"])

    async def _decode_sources(
        self, room_id: str, sources: list[dict[str, Any]]
    ) -> list[DecodedBatch]:
        results = await asyncio.gather(*(self._decode_one(room_id, s) for s in sources))
        return [b for b in results if b is not None]

    async def _decode_one(self, room_id: str, source: dict[str, Any]) -> DecodedBatch | None:
        event_id = str(source["event_id"])
        content = source.get("content")
        sender = str(source.get("sender", ""))
        try:
            if not isinstance(content, dict):
                raise ValidationError("the content is not an object")
            error = next(iter(_VALIDATOR.iter_errors(content)), None)
            if error is not None:
                where = "/".join(str(p) for p in error.path) or "(content)"
                raise ValidationError(f"at {where}: {error.message[:200]}")
            stream, seq, n = str(content["stream"]), int(content["seq"]), int(content["n"])
            if self.index.has_batch(room_id, sender, stream, seq):
                return None  # seen before (a resend, or a page read again)
            if "data" in content:
                payload = _b64(content["data"])
            else:
                payload = await self._download(content["file"], int(content["size"]))
            series = await asyncio.to_thread(decode_batch, payload, max_samples=n)
            count = sum(len(s.ts) for s in series)
            if count != n:
                raise ValidationError(f"the payload holds {count} samples, the event says {n}")
            lo = min(min(s.ts) for s in series)
            hi = max(max(s.ts) for s in series)
            if lo != content["t0"] or hi != content["t1"]:
                raise ValidationError("t0/t1 do not match the samples")
        except (ValidationError, TamperedFileError) as exc:
            log.warning(
                "skipping a malformed telemetry batch",
                extra={"event_id": event_id, "room_id": room_id, "error": exc.message},
            )
            return None
        return DecodedBatch(
            room_id,
            event_id,
            sender,
            stream,
            seq,
            int(source.get("origin_server_ts", 0)),
            lo,
            hi,
            series,
        )

    async def _download(self, file_obj: Any, size: int) -> bytes:
        file = EncryptedFile.from_json(file_obj)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        async with self._download_sem:
            try:
                data = await download_decrypted_bytes(
                    self._c.homeserver_url,
                    self._c.access_token,
                    file,
                    max_size=_MAX_MEDIA_BYTES,
                    session=self._session,
                )
            except HomeserverError as exc:
                if exc.status == 404:
                    raise ValidationError(f"its media is gone: {exc.message}") from None
                raise
        if len(data) != size:
            raise ValidationError(f"the media holds {len(data)} bytes, the event says {size}")
        return data

    # -- following and live subscribers --------------------------------------------------

    def follow(self, room_id: str) -> None:
        """Keep the room's index current in the background (starts the sync loop)."""
        if self.following(room_id):
            return
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch(), name="telemetry-watch")
        trigger = self._triggers.setdefault(room_id, asyncio.Event())
        trigger.set()
        self._followers[room_id] = asyncio.create_task(
            self._follow(room_id, trigger), name=f"telemetry-follow-{room_id}"
        )

    async def unfollow(self, room_id: str) -> None:
        task = self._followers.pop(room_id, None)
        self._triggers.pop(room_id, None)
        if task is not None:
            await cancel_and_wait([task])

    async def _watch(self) -> None:
        async for event in self._c.subscribe():
            trigger = self._triggers.get(event.room_id)
            if trigger is not None:
                trigger.set()

    async def _follow(self, room_id: str, trigger: asyncio.Event) -> None:
        delay = 1.0
        while True:
            trigger.clear()
            try:
                await self.catch_up(room_id)
                delay = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                why = (
                    exc.message
                    if isinstance(exc, DataroomsError)
                    else f"{type(exc).__name__}: {exc}"
                )
                log.warning(
                    "catching up with telemetry failed; retrying",
                    extra={"room_id": room_id, "error": why, "delay_s": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            # Events still waiting for their keys: look again soon (keys come by sync).
            recent = time.time() * 1000 - 60_000
            fresh = any(p.ts > recent for p in self.index.pending(room_id))
            wait = min(self.poll_s, 2.0) if fresh else self.poll_s
            await wait_event(trigger, wait)

    def _dispatch(self, batches: list[DecodedBatch]) -> int:
        total = 0
        for b in batches:
            total += b.n
            for sub in list(self._subscribers):
                if sub.room_id == b.room_id:
                    sub.offer(b)
        return total

    async def subscribe(
        self,
        room_id: str,
        *,
        metric: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> AsyncIterator[Sample]:
        """Samples as they arrive (from now on), batch by batch; follows the room."""
        sub = _Subscriber(room_id, metric, dict(tags or {}))
        self._subscribers.add(sub)
        self.follow(room_id)
        try:
            while True:
                batch = await sub.queue.get()
                if batch is None:
                    raise SubscriptionLagError(
                        f"the subscriber to {room_id} fell more than {sub.queue.maxsize} batches "
                        "behind and was stopped; the samples it missed are in the index "
                        "(query them), then subscribe again"
                    )
                for s in batch.samples(metric):
                    if sub.tags and any(s.tags.get(k) != v for k, v in sub.tags.items()):
                        continue
                    yield s
        finally:
            self._subscribers.discard(sub)


def _ignore_result(task: asyncio.Future[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.info("a sync round for room keys failed", extra={"error": str(task.exception())})


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError("data is not valid base64") from None
