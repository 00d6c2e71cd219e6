"""One collaborative document: a pycrdt ``Doc`` kept in step with a room's matrix-crdt events.

Local edits (any transaction on :attr:`Document.ydoc`) go to the durable outbox first,
then out in batches (``batch_ms``, IXO's 500 ms); remote updates are checked, applied in
timeline order, and the ones whose dependencies have not arrived yet are tracked
(:attr:`Document.waiting`) so the document never publishes a snapshot that drops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pycrdt

from datarooms.errors import DataroomsError, ValidationError
from datarooms.sdk.docs import wire
from datarooms.sdk.docs.wire import BadUpdateError, DocEvent

if TYPE_CHECKING:
    from datarooms.sdk.docs.api import Docs

log = logging.getLogger(__name__)

#: Seconds between retries of a failed flush while the homeserver is unreachable (capped).
_RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class DocChange:
    """What :meth:`Document.observe` callbacks receive."""

    room_id: str
    name: str
    #: The event that brought it (None for a local edit).
    event_id: str | None
    sender: str
    local: bool


@dataclass(frozen=True)
class Skipped:
    """An event the document refused (malformed, unreadable, oversized), and why."""

    event_id: str
    reason: str


class Document:
    """A CRDT document in a room. Get one with ``await client.docs.open(room, name=...)``.

    Read and edit it through pycrdt: :meth:`text`, :meth:`map`, :meth:`array` (or
    :attr:`ydoc` directly). Every local transaction is persisted before it returns and
    sent within ``batch_ms``; :meth:`flush` sends now and returns once the homeserver has it.
    """

    def __init__(
        self,
        docs: Docs,
        room_id: str,
        name: str,
        *,
        batch_ms: int,
        snapshot_every: int,
        inline_max: int,
    ) -> None:
        self._docs = docs
        self.room_id = room_id
        self.name = name
        self.batch_ms = batch_ms
        self.snapshot_every = snapshot_every
        self.inline_max = inline_max
        self.ydoc: pycrdt.Doc[Any] = pycrdt.Doc()
        self._applying = False
        self._sub = self.ydoc.observe(self._on_transaction)
        #: Remote updates applied whose dependencies are still missing: (event id, update).
        self.waiting: list[tuple[str, bytes]] = []
        #: Events refused, with why (also logged).
        self.skipped: list[Skipped] = []
        #: Snapshots found unreadable during catch-up (fell back to an older one).
        self.unreadable_snapshots: list[Skipped] = []
        #: Where catch-up started: the snapshot event used, or None (replayed from the start).
        self.caught_up_from: str | None = None
        #: Updates replayed on catch-up (after the snapshot, or all).
        self.replayed = 0
        self._seen: set[str] = set()
        self._own_sent: set[str] = set()
        self._since_snapshot = 0
        self._last_event_id: str | None = None
        self._observers: list[Callable[[DocChange], Any]] = []
        self._flush_task: asyncio.Task[None] | None = None
        self._sending = False
        self._dirty = False
        self._snapshot_task: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self._catching_up = True
        self._buffer: list[DocEvent] = []
        self._closed = False
        self.changed = asyncio.Event()

    # -- reading and editing -------------------------------------------------------

    def text(self, key: str) -> pycrdt.Text:
        """The root text ``key`` (created on first use)."""
        root: pycrdt.Text = self.ydoc.get(key, type=pycrdt.Text)
        return root

    def map(self, key: str) -> pycrdt.Map[Any]:
        """The root map ``key`` (created on first use)."""
        root: pycrdt.Map[Any] = self.ydoc.get(key, type=pycrdt.Map)
        return root

    def array(self, key: str) -> pycrdt.Array[Any]:
        """The root array ``key`` (created on first use)."""
        root: pycrdt.Array[Any] = self.ydoc.get(key, type=pycrdt.Array)
        return root

    def state(self) -> bytes:
        """The whole document as one Yjs update (``Y.encodeStateAsUpdate``)."""
        return bytes(self.ydoc.get_update())

    def state_vector(self) -> bytes:
        """``Y.encodeStateVector``; its entries' order is not stable: compare :meth:`clocks`."""
        return bytes(self.ydoc.get_state())

    def clocks(self) -> dict[int, int]:
        """The state vector as ``{client id: clock}``: what this document holds of each writer.
        Two documents with equal clocks (and no :attr:`waiting` updates) are equal."""
        return wire.decode_state_vector(self.state_vector())

    def to_json(self) -> dict[str, Any]:
        """Every root of the document as plain JSON: text as a string, maps as objects,
        arrays as lists. A root's type is not on the wire (Yjs types it on first use),
        so it is read from its content, on a copy: this document is not re-typed."""
        state = self.state()
        out: dict[str, Any] = {}
        for key in sorted(self.ydoc.keys()):
            out[key] = _root_json(state, key)
        return out

    def observe(self, callback: Callable[[DocChange], Any]) -> Callable[[], None]:
        """Call ``callback(change)`` after every remote update applied (and local edit).
        Returns a function that stops it."""
        self._observers.append(callback)
        return lambda: self._observers.remove(callback) if callback in self._observers else None

    def set(self, path: str, value: Any) -> None:
        """Set a value by path, in one local transaction.

        ``"body"`` (one segment): the root text ``body`` becomes ``value`` (a string; only
        the changed middle is replaced, so concurrent edits elsewhere in it survive).
        ``"fields/title"``: key ``title`` of the root map ``fields`` (maps on the way are
        created); ``value`` is any JSON value (objects become maps, lists arrays).
        """
        parts = _path(path)
        if len(parts) == 1:
            if not isinstance(value, str):
                raise ValidationError(
                    f"{path!r} names a root text: its value must be a string "
                    "(use ROOT/KEY to set a key of a map)"
                )
            self.replace_text(parts[0], value)
            return
        with self.ydoc.transaction():
            node: pycrdt.Map[Any] = self.map(parts[0])
            for part in parts[1:-1]:
                child = node.get(part)
                if not isinstance(child, pycrdt.Map):
                    child = pycrdt.Map()
                    node[part] = child
                node = child
            node[parts[-1]] = _crdt_value(value)

    def replace_text(self, key: str, new: str) -> None:
        """Make the root text ``key`` read ``new``, replacing only what changed."""
        text = self.text(key)
        old = str(text)
        if old == new:
            return
        start = 0
        limit = min(len(old), len(new))
        while start < limit and old[start] == new[start]:
            start += 1
        end_old, end_new = len(old), len(new)
        while end_old > start and end_new > start and old[end_old - 1] == new[end_new - 1]:
            end_old -= 1
            end_new -= 1
        with self.ydoc.transaction():
            if end_old > start:
                del text[start:end_old]
            if end_new > start:
                text.insert(start, new[start:end_new])

    # -- local edits -----------------------------------------------------------------

    def _on_transaction(self, event: pycrdt.TransactionEvent) -> None:
        if self._applying:
            return
        update = bytes(event.update)
        if update == b"\x00\x00":
            return
        self._docs._outbox().append(self.room_id, self.name, update)
        if self._closed:
            log.warning(
                "an edit of a closed document is kept in the outbox; it is sent when the "
                "document is opened again",
                extra={"room_id": self.room_id, "doc": self.name},
            )
            return
        self._notify(DocChange(self.room_id, self.name, None, self._docs.user_id, True))
        self._schedule_flush(self.batch_ms / 1000)

    def _schedule_flush(self, delay: float) -> None:
        self._dirty = True
        if self._flush_task is not None and not self._flush_task.done():
            return  # the running task sees _dirty and goes round again
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a synchronous caller): flush() or the next open sends it
        self._flush_task = loop.create_task(self._flush_later(delay))

    async def _flush_later(self, delay: float) -> None:
        """Send what is pending ``delay`` after an edit, again while edits come in (an
        edit made during a send goes in the next round), retrying while offline."""
        attempt = 0
        while self._dirty and not self._closed:
            await asyncio.sleep(delay)
            self._dirty = False
            try:
                self._sending = True
                try:
                    await self._send_pending()
                finally:
                    self._sending = False
                attempt = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._dirty = True
                wait = _RETRY_S[min(attempt, len(_RETRY_S) - 1)]
                attempt += 1
                log.warning(
                    "could not send document edits (kept in the outbox, retrying in %.0f s): %s",
                    wait,
                    exc,
                    extra={"room_id": self.room_id, "doc": self.name},
                )
                await asyncio.sleep(wait)

    async def flush(self) -> None:
        """Send every pending local edit now; returns once the homeserver acknowledged them.

        Raises if the homeserver cannot be reached: the edits stay in the outbox and go
        out on the next flush (or when the document is opened again).
        """
        task = self._flush_task
        if (
            task is not None
            and not task.done()
            and task is not asyncio.current_task()
            and not self._sending  # a send in flight is never cut in half: the lock waits
        ):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._dirty = False
        try:
            await self._send_pending()
        except Exception:
            if not self._closed:  # keep trying in the background (reconnect)
                self._schedule_flush(_RETRY_S[0])
            raise
        if self._dirty and not self._closed:  # edited while this flush was sending
            self._schedule_flush(self.batch_ms / 1000)

    async def _send_pending(self) -> None:
        async with self._send_lock:
            outbox = self._docs._outbox()
            rows = outbox.pending(self.room_id, self.name)
            for ids, update in _groups(rows, self.inline_max):
                if len(update) > self.inline_max:
                    # One transaction bigger than an event can carry: the whole document
                    # goes out as a media-backed snapshot instead (it contains the edit).
                    log.info(
                        "an edit of %d bytes is over the event limit: sent as a media snapshot",
                        len(update),
                        extra={"room_id": self.room_id, "doc": self.name},
                    )
                    sent = await self._send_snapshot(media=True, last_event_id=self._last_event_id)
                    if sent is None:
                        raise DataroomsError(
                            "an edit too big for an update event waits in the outbox: it goes "
                            "out as a snapshot once the updates received before it are complete"
                        )
                else:
                    txn = f"crdt.{self._docs._outbox_stream()}.{ids[0]}.{ids[-1]}"
                    event_id = await self._docs._client.send(
                        self.room_id,
                        wire.UPDATE_EVENT,
                        wire.update_content(update, self.name),
                        txn_id=txn,
                    )
                    self._own_sent.add(event_id)
                outbox.acknowledge(ids)

    # -- snapshots -------------------------------------------------------------------

    async def snapshot(self, *, media: bool | None = None) -> str | None:
        """Publish a snapshot now (inline if it fits, else media-backed); its event id.

        None when there is nothing to snapshot yet, or when remote updates still wait
        for their dependencies (a snapshot then would drop them).
        """
        await self.flush()
        async with self._send_lock:
            return await self._send_snapshot(media=media, last_event_id=self._last_event_id)

    async def _send_snapshot(self, *, media: bool | None, last_event_id: str | None) -> str | None:
        if self.waiting:
            log.info(
                "not snapshotting: %d updates wait for their dependencies",
                len(self.waiting),
                extra={"room_id": self.room_id, "doc": self.name},
            )
            return None
        state = self.state()
        if last_event_id is None:
            if state == b"\x00\x00":
                return None
            last_event_id = await self._docs._anchor_event(self.room_id)
        if media is None:
            media = len(state) > self.inline_max
        if not media:
            content = wire.snapshot_content(state, last_event_id, self.name)
            event_id = await self._docs._client.send(self.room_id, wire.SNAPSHOT_EVENT, content)
        else:
            file = await self._docs._upload(state)
            content = wire.snapshot_v2_content(
                file, last_event_id, wire.state_vector_of_update(state), len(state), self.name
            )
            event_id = await self._docs._client.send(self.room_id, wire.SNAPSHOT_V2_EVENT, content)
        self._own_sent.add(event_id)
        return event_id

    async def _snapshot_after(self, last_event_id: str) -> None:
        try:
            async with self._send_lock:
                await self._send_snapshot(media=None, last_event_id=last_event_id)
        except Exception as exc:  # a missed snapshot is a missed shortcut, not an error
            log.warning("could not publish a document snapshot: %s", exc)

    # -- remote updates -------------------------------------------------------------

    def apply_update(self, update: bytes, *, event_id: str = "", sender: str = "") -> bool:
        """Apply a remote Yjs update (checked first); False (and a log line) if refused."""
        try:
            wire.check_update(update)
        except BadUpdateError as exc:
            self._skip(event_id, str(exc))
            return False
        self._applying = True
        try:
            self.ydoc.apply_update(update)
        except Exception as exc:
            self._skip(event_id, f"the update could not be applied: {exc}")
            return False
        finally:
            self._applying = False
        if wire.missing_dependencies(self.ydoc, update):
            self.waiting.append((event_id, update))
            log.info(
                "an update waits for updates it depends on",
                extra={"event_id": event_id, "room_id": self.room_id},
            )
        if self.waiting:
            self._resolve_waiting()
        self.changed.set()
        self._notify(DocChange(self.room_id, self.name, event_id or None, sender, False))
        return True

    def _resolve_waiting(self) -> None:
        """Integrate waiting updates whose dependencies are now in, until nothing moves.

        Yrs is meant to keep pending structs and integrate them once their dependencies
        arrive, but it does not always do so (seen with three writers' updates applied
        in a shuffled order: the document stayed behind for good). Applying a waiting
        update again is idempotent and does integrate it, so every waiting update is
        re-applied, oldest first, in rounds, until a round integrates nothing more.
        """
        progress = True
        while self.waiting and progress:
            progress = False
            still: list[tuple[str, bytes]] = []
            for event_id, update in self.waiting:
                if wire.missing_dependencies(self.ydoc, update):
                    self._applying = True
                    try:
                        self.ydoc.apply_update(update)
                    finally:
                        self._applying = False
                if wire.missing_dependencies(self.ydoc, update):
                    still.append((event_id, update))
                else:
                    progress = True
            self.waiting = still

    def _skip(self, event_id: str, reason: str) -> None:
        if event_id and any(s.event_id == event_id for s in self.skipped):
            return  # seen by the live sync and by catch-up: one refusal
        log.warning(
            "skipping a document update: %s",
            reason,
            extra={"event_id": event_id, "room_id": self.room_id, "doc": self.name},
        )
        self.skipped.append(Skipped(event_id, reason))

    def _notify(self, change: DocChange) -> None:
        for callback in list(self._observers):
            try:
                callback(change)
            except Exception:
                log.exception("a document observer failed")

    async def _on_live(self, event: DocEvent) -> None:
        """A matrix-crdt event of this document from the sync, in timeline order."""
        if self._catching_up:
            self._buffer.append(event)
            return
        await self._process_live(event)

    async def _process_live(self, event: DocEvent) -> None:
        if event.event_id in self._seen:
            return
        self._seen.add(event.event_id)
        if event.type == wire.UPDATE_EVENT and event.update is not None:
            self.apply_update(event.update, event_id=event.event_id, sender=event.sender)
            self._last_event_id = event.event_id
            self._since_snapshot += 1
            if (
                self.snapshot_every > 0
                and self._since_snapshot % self.snapshot_every == 0
                and event.sender == self._docs.user_id
            ):
                # IXO's election: whoever sent the N-th update since the last snapshot
                # publishes the next one, once everything before it in the timeline is in
                # (the sync may deliver our own event before its send returned, so this
                # goes by the sender, as IXO does).
                self._snapshot_task = asyncio.get_running_loop().create_task(
                    self._snapshot_after(event.event_id)
                )
            return
        self._since_snapshot = 0
        if event.type == wire.SNAPSHOT_EVENT and event.update is not None:
            # It holds what we have, or more (an edit too big for an update event).
            self.apply_update(event.update, event_id=event.event_id, sender=event.sender)
        elif event.type == wire.SNAPSHOT_V2_EVENT and event.event_id not in self._own_sent:
            if event.state_vector is not None and _covers(self.state_vector(), event.state_vector):
                return  # nothing new in it (the usual case: we follow the updates)
            blob = await self._docs._read_snapshot(self, event)
            if blob is not None:
                self.apply_update(blob, event_id=event.event_id, sender=event.sender)

    async def _finish_catch_up(self) -> None:
        self._catching_up = False
        buffered, self._buffer = self._buffer, []
        for event in buffered:
            await self._process_live(event)

    async def close(self) -> None:
        """Send what is pending (best effort: what fails stays in the outbox) and stop."""
        if self._closed:
            return
        try:
            await self.flush()
        except Exception as exc:
            log.warning("document edits stay in the outbox (not sent): %s", exc)
        self._closed = True
        for task in (self._flush_task, self._snapshot_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._docs._forget(self)
        with contextlib.suppress(Exception):
            self.ydoc.unobserve(self._sub)

    async def __aenter__(self) -> Document:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _groups(rows: list[tuple[int, bytes]], limit: int) -> list[tuple[list[int], bytes]]:
    """Pending rows merged into as few updates as fit ``limit`` each (one row may not)."""
    out: list[tuple[list[int], bytes]] = []
    ids: list[int] = []
    parts: list[bytes] = []
    size = 0
    for row_id, update in rows:
        if parts and size + len(update) > limit:
            out.append((ids, _merge(parts)))
            ids, parts, size = [], [], 0
        ids.append(row_id)
        parts.append(update)
        size += len(update)
    if parts:
        out.append((ids, _merge(parts)))
    return out


def _merge(parts: list[bytes]) -> bytes:
    return parts[0] if len(parts) == 1 else bytes(pycrdt.merge_updates(*parts))


def _covers(have: bytes, wanted: bytes) -> bool:
    mine = wire.decode_state_vector(have)
    return all(mine.get(c, 0) >= clock for c, clock in wire.decode_state_vector(wanted).items())


def _path(path: str) -> list[str]:
    if not isinstance(path, str) or not path.strip("/"):
        raise ValidationError(
            "a document path must be ROOT or ROOT/KEY/..., e.g. body or fields/title"
        )
    parts = path.strip("/").split("/")
    if any(not p or len(p) > 256 for p in parts) or len(parts) > 32:
        raise ValidationError(f"invalid document path {path!r}: empty or overlong segment")
    return parts


def _crdt_value(value: Any) -> Any:
    if isinstance(value, dict):
        return pycrdt.Map({str(k): _crdt_value(v) for k, v in value.items()})
    if isinstance(value, list):
        return pycrdt.Array([_crdt_value(v) for v in value])
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValidationError(f"a document value must be JSON, not {type(value).__name__}")


def _root_json(state: bytes, key: str) -> Any:
    for kind in (pycrdt.Text, pycrdt.Map, pycrdt.Array, pycrdt.XmlFragment):
        copy: pycrdt.Doc[Any] = pycrdt.Doc()
        copy.apply_update(state)
        try:
            root = copy.get(key, type=kind)
            if kind is pycrdt.Text or kind is pycrdt.XmlFragment:
                value: Any = str(root)
                if value:
                    return value
            else:
                value = root.to_py()
                if value:
                    return value
        except Exception as exc:  # a root read as the wrong kind
            log.debug("root %r is not a %s: %s", key, kind.__name__, exc)
    return None
