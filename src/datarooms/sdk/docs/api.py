"""``client.docs``: open collaborative documents in rooms, catch up, follow the sync."""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING, Any

from datarooms.errors import DataroomsError, ValidationError
from datarooms.sdk.attachments import EncryptedFile, download_decrypted_bytes, upload_encrypted
from datarooms.sdk.docs import wire
from datarooms.sdk.docs.document import Document, Skipped
from datarooms.sdk.docs.outbox import DocOutbox
from datarooms.sdk.docs.wire import BadUpdateError, DocEvent
from datarooms.sdk.hooks import RoomEventReceived, Subscription, ToDeviceReceived
from datarooms.sdk.timeline import RoomEvent

if TYPE_CHECKING:
    from datarooms.sdk.client import DataroomsClient

log = logging.getLogger(__name__)

#: IXO's writer batching and snapshot interval.
BATCH_MS = 500
SNAPSHOT_EVERY = 30
#: Catch-up reads the whole timeline back to a readable snapshot (or the room's start).
_MAX_SCAN = 10**9
#: At most this many syncs to receive the room keys sent to this device before catch-up.
_MAX_KEY_SYNCS = 50


class Docs:
    """``client.docs``: ``doc = await client.docs.open(room_id, name="runbook")``."""

    def __init__(self, client: DataroomsClient) -> None:
        self._client = client
        self._box: DocOutbox | None = None
        self._stream: str | None = None
        self._open: dict[tuple[str, str], Document] = {}
        self._hook: Subscription | None = None

    @property
    def user_id(self) -> str:
        return str(self._client.user_id)

    async def open(
        self,
        room_id: str,
        name: str = wire.DEFAULT_NAME,
        *,
        live: bool = True,
        batch_ms: int = BATCH_MS,
        snapshot_every: int = SNAPSHOT_EVERY,
        from_snapshot: bool = True,
    ) -> Document:
        """The document ``name`` of the room, caught up with everything the room holds.

        Catch-up starts at the newest readable snapshot and replays the updates after it;
        an unreadable snapshot (malformed, tampered, mismatched) is skipped for an older
        one, and without any the room's updates are replayed from its start. This
        device's edits still in the outbox (made offline) are applied and sent.
        ``live`` keeps the document following the room (it starts the sync loop).
        ``from_snapshot=False`` ignores snapshots and replays every update of the room
        (to check snapshots against the updates, or to measure what they save).
        """
        wire.validate_name(name)
        if not isinstance(batch_ms, int) or not 0 <= batch_ms <= 60_000:
            raise ValidationError("batch_ms must be an integer between 0 and 60000")
        if not isinstance(snapshot_every, int) or snapshot_every < 0:
            raise ValidationError("snapshot_every must be a non-negative integer (0: never)")
        key = (room_id, name)
        if key in self._open:
            return self._open[key]
        await self._client.ensure_room(room_id)
        await self._client.rooms.require_encrypted(room_id)
        doc = Document(
            self,
            room_id,
            name,
            batch_ms=batch_ms,
            snapshot_every=snapshot_every,
            inline_max=wire.INLINE_MAX_BYTES_ENCRYPTED,
        )
        self._open[key] = doc
        if self._hook is None:
            self._hook = self._client.hooks.on(RoomEventReceived, self._on_event)
        try:
            await self._receive_keys()
            if live:
                self._client.start_sync()
            await self._catch_up(doc, from_snapshot=from_snapshot)
            pending = self._outbox().pending(room_id, name)
            doc._applying = True
            try:
                for _, update in pending:
                    doc.ydoc.apply_update(update)
            finally:
                doc._applying = False
            await doc._finish_catch_up()
        except BaseException:
            self._forget(doc)
            raise
        if pending:
            doc._schedule_flush(0)
        return doc

    async def read(self, room_id: str, name: str = wire.DEFAULT_NAME) -> dict[str, Any]:
        """The document as plain JSON (see :meth:`Document.to_json`), caught up once."""
        opened = (room_id, name) not in self._open
        doc = await self.open(room_id, name, live=False)
        try:
            return doc.to_json()
        finally:
            if opened and not self._client.syncing:
                await doc.close()

    async def edit(
        self, room_id: str, path: str, value: Any, name: str = wire.DEFAULT_NAME
    ) -> dict[str, Any]:
        """Set ``path`` (see :meth:`Document.set`) and send it; the document as JSON after."""
        opened = (room_id, name) not in self._open
        doc = await self.open(room_id, name, live=False)
        try:
            doc.set(path, value)
            await doc.flush()
            return doc.to_json()
        finally:
            if opened and not self._client.syncing:
                await doc.close()

    def pending_edits(self, room_id: str | None = None) -> int:
        """Local edits not yet acknowledged by the homeserver (offline edits)."""
        return self._outbox().count(room_id)

    async def close(self) -> None:
        for doc in list(self._open.values()):
            await doc.close()
        if self._hook is not None:
            self._hook.cancel()
            self._hook = None
        if self._box is not None:
            self._box.close()
            self._box = None

    # -- internals the documents use -------------------------------------------

    async def _receive_keys(self) -> None:
        """Sync until no more to-device messages come: the room keys sent to this device.

        A homeserver hands out a bounded number of to-device messages per sync (Synapse:
        100), and a long document spans many Megolm sessions (one per 100 events): one
        sync would leave the newest updates, and the snapshots, undecryptable.
        """
        received = 0

        def count(_: ToDeviceReceived) -> None:
            nonlocal received
            received += 1

        sub = self._client.hooks.on(ToDeviceReceived, count)
        try:
            for _ in range(_MAX_KEY_SYNCS):
                received = 0
                await self._client.sync_once()
                if not received:
                    return
        finally:
            sub.cancel()

    def _outbox(self) -> DocOutbox:
        if self._box is None:
            self._box = DocOutbox(self._client.store_dir / "docs" / "outbox.db")
        return self._box

    def _outbox_stream(self) -> str:
        if self._stream is None:
            self._stream = secrets.token_hex(6)
        return self._stream

    def _forget(self, doc: Document) -> None:
        if self._open.get((doc.room_id, doc.name)) is doc:
            del self._open[(doc.room_id, doc.name)]

    async def _upload(self, state: bytes) -> dict[str, Any]:
        uploaded = await upload_encrypted(
            self._client.homeserver_url, self._client.access_token, state
        )
        return uploaded.file.to_json()

    async def _anchor_event(self, room_id: str) -> str:
        async for event in self._client.messages.backwards(room_id, first_page=1, max_scan=1):
            return event.event_id
        raise DataroomsError(f"room {room_id} has no events to anchor a snapshot to")

    async def _read_snapshot(self, doc: Document, event: DocEvent) -> bytes | None:
        """The snapshot's document, checked; None (logged) if it is unreadable."""
        try:
            if event.type == wire.SNAPSHOT_EVENT:
                if event.update is None:
                    raise BadUpdateError("the inline snapshot carries no update")
                return wire.check_update(event.update)
            file = EncryptedFile.from_json(event.file)
            if file.url != event.mxc_url:
                raise BadUpdateError("mxc_url and file.url differ")
            if event.size is not None and event.size > wire.MAX_SNAPSHOT_BYTES:
                raise BadUpdateError(f"the snapshot is {event.size} bytes, over the limit")
            blob = await download_decrypted_bytes(
                self._client.homeserver_url,
                self._client.access_token,
                file,
                max_size=wire.MAX_SNAPSHOT_BYTES,
            )
            if event.size is not None and len(blob) != event.size:
                raise BadUpdateError(
                    f"the snapshot is {len(blob)} bytes, its event announced {event.size}"
                )
            return wire.check_snapshot_blob(blob, event.state_vector)
        except Exception as exc:
            log.warning(
                "a document snapshot is unreadable (falling back to an older one): %s",
                exc,
                extra={"event_id": event.event_id, "room_id": doc.room_id},
            )
            doc.unreadable_snapshots.append(Skipped(event.event_id, str(exc)))
            return None

    def _doc_event(self, doc: Document, event: RoomEvent) -> DocEvent | None:
        """A matrix-crdt event of ``doc``'s room, parsed; None (logged, recorded) if refused."""
        try:
            if not event.encrypted:
                raise BadUpdateError("sent in the clear in an encrypted room")
            return wire.parse_event(event.event_id, event.type, event.sender, event.content)
        except BadUpdateError as exc:
            doc._skip(event.event_id, str(exc))
            return None

    async def _on_event(self, hook: RoomEventReceived) -> None:
        event = hook.event
        if event.type not in wire.EVENT_TYPES:
            return
        name = wire.event_name(event.content)
        doc = self._open.get((event.room_id, name or ""))
        if doc is None:
            return
        parsed = self._doc_event(doc, event)
        if parsed is not None:
            await doc._on_live(parsed)

    async def _catch_up(self, doc: Document, *, from_snapshot: bool = True) -> None:
        """Page back to the newest readable snapshot, then apply it and what came after."""
        newer: list[DocEvent] = []  # updates newer than the base, newest first
        candidates: dict[str, list[DocEvent]] = {}
        base: tuple[DocEvent, bytes] | None = None
        async for event in self._client.messages.backwards(doc.room_id, max_scan=_MAX_SCAN):
            waiting = candidates.pop(event.event_id, None)
            if waiting:
                for snap in waiting:
                    blob = await self._read_snapshot(doc, snap)
                    if blob is not None:
                        base = (snap, blob)
                        break
                if base is not None:
                    break
            if event.type not in wire.EVENT_TYPES or wire.event_name(event.content) != doc.name:
                continue
            doc._seen.add(event.event_id)
            parsed = self._doc_event(doc, event)
            if parsed is None:
                continue
            if parsed.is_snapshot and parsed.last_event_id and from_snapshot:
                candidates.setdefault(parsed.last_event_id, []).append(parsed)
            elif parsed.type == wire.UPDATE_EVENT:
                newer.append(parsed)
        if base is None:
            # Snapshots whose last event this device cannot see (history visibility): the
            # newest readable one, plus every update seen (applying one twice is a no-op).
            for snaps in candidates.values():
                for snap in snaps:
                    blob = await self._read_snapshot(doc, snap)
                    if blob is not None:
                        base = (snap, blob)
                        break
                if base is not None:
                    break
        if base is not None:
            doc.apply_update(base[1], event_id=base[0].event_id, sender=base[0].sender)
            doc.caught_up_from = base[0].event_id
        for parsed in reversed(newer):
            if parsed.update is not None:
                doc.apply_update(parsed.update, event_id=parsed.event_id, sender=parsed.sender)
        doc.replayed = len(newer)
        doc._since_snapshot = len(newer)
        if newer:
            doc._last_event_id = newer[0].event_id
        elif base is not None:
            doc._last_event_id = base[0].last_event_id
