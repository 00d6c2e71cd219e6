"""The sync loop: fetch, let nio decrypt, index, run the hooks, persist the position.

One round (:meth:`SyncEngine.round`):

1. ``GET /sync`` from the position (nio's in memory, else the index's);
2. nio processes the response (``AsyncClient.receive_response``: room keys, Olm
   sessions, rooms, Megolm decryption). Key verification events of flows nio did
   not start itself are kept from it (nio 0.26's legacy SAS would answer them and
   break our flows); nio never sees a to-device event twice;
3. keys are maintained (upload, query, claim, send queued to-device messages);
4. the response becomes an index batch (records, state, our own membership,
   history gaps, events still waiting for their key) and the typed hook events;
   events whose keys came meanwhile are decrypted late and join the batch;
5. one index transaction writes the batch, runs the ``Phase.TRANSACTION`` hooks,
   then writes the sync position. A failing hook rolls everything back and the
   same batch is fetched again;
6. live subscribers and the ``Phase.AFTER`` hooks get the events (outside the lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from nio import (
    EncryptedToDeviceEvent,
    ForwardedRoomKeyEvent,
    KeyVerificationEvent,
    MegolmEvent,
    RoomKeyEvent,
    RoomMessagesError,
    SyncError,
    SyncResponse,
)
from nio.api import MessageDirection
from nio.exceptions import EncryptionError

from datarooms import events as ev
from datarooms._store.index import FileRow, PendingEvent, Record, SyncBatch
from datarooms._transport.http import MatrixHttp
from datarooms.errors import HomeserverError
from datarooms.sdk.hooks import (
    HookEvent,
    MembershipChanged,
    RoomEventReceived,
    StateChanged,
    ToDeviceReceived,
)
from datarooms.sdk.timeline import RoomEvent, from_nio_event, record_from_event, room_event

if TYPE_CHECKING:
    from datarooms.sdk.client import DataroomsClient

log = logging.getLogger(__name__)

SYNC_TIMEOUT_MS = 30_000
_GAP_PAGE = 100
_MEMBER = "m.room.member"
_INVITES = "own_invites"  # index meta: {room id: inviter}
#: To-device content fields never passed to hooks.
_SECRET_FIELDS = {"m.room_key": ("session_key",), "m.forwarded_room_key": ("session_key",)}


class SyncEngine:
    """The device's sync loop, gap filling and late decryption (``DataroomsClient`` facade)."""

    def __init__(self, client: DataroomsClient) -> None:
        self._c = client
        self.lock = asyncio.Lock()
        self._gap_locks: dict[str, asyncio.Lock] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._synced = asyncio.Condition()
        self._sync_count = 0
        self._subscribers: set[tuple[str | None, asyncio.Queue[RoomEvent]]] = set()
        self._http: MatrixHttp | None = None
        self._session: aiohttp.ClientSession | None = None
        #: Rooms this user is invited to, with the inviter (as of the last sync); kept in
        #: the index, in the sync transaction, so an invite outlives a restart (an
        #: incremental sync does not repeat it).
        self.invites: dict[str, str] = _load_invites(client.index.get_meta(_INVITES))
        #: To-device events of a batch that was rolled back: nio has consumed them
        #: (an Olm message decrypts once), so they are published from here on retry.
        self._carried: dict[str, ToDeviceReceived | None] = {}
        self._store_stamp: tuple[int, ...] | None = None
        self._background: set[asyncio.Task[None]] = set()

    # -- the loop ----------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    async def sync_once(self, timeout_ms: int, full_state: bool) -> None:
        if self.running and not full_state:
            with contextlib.suppress(TimeoutError):
                await self.wait_for_sync(timeout=2.0)
            return
        async with self.lock:
            events = await self.round(timeout_ms, full_state)
        await self._c.hooks.run_after(events)

    async def wait_for_sync(self, timeout: float) -> None:
        async with self._synced:
            start = self._sync_count
            await asyncio.wait_for(self._synced.wait_for(lambda: self._sync_count > start), timeout)

    def start(self) -> None:
        if not self.running:
            self._loop_task = asyncio.create_task(self._loop(), name="datarooms-sync")

    async def stop(self) -> None:
        task, self._loop_task = self._loop_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        await self.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None
            self._http = None

    async def _loop(self) -> None:
        delay = 1.0
        while True:
            try:
                async with self.lock:
                    events = await self.round(SYNC_TIMEOUT_MS, False)
                delay = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("sync failed; retrying", extra={"error": str(exc), "delay_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            await self._c.hooks.run_after(events)

    # -- one round -----------------------------------------------------------------

    async def round(self, timeout_ms: int, full_state: bool) -> list[HookEvent]:
        """Called under :attr:`lock`; returns the events for the after-commit hooks."""
        c = self._c
        nio, index = c.nio, c.index
        since = nio.next_batch or index.sync_token or None
        if since is None:
            # Synapse answers an identical /sync from its response cache for up to two
            # minutes (sync_response_cache_duration); a device re-doing its initial sync
            # (e.g. after losing its index) would get the stale answer. The timeout is
            # part of the cache key and means nothing for an initial sync: vary it.
            timeout_ms = 1 + secrets.randbelow(1000)
        resp = await self._fetch(since, timeout_ms, full_state)
        to_device: list[tuple[str, ToDeviceReceived | None]] = []
        try:
            to_device = await self._receive(resp)
            hook_events, room_events, invites = await self._process(resp, to_device)
        except BaseException:
            # Nothing of this batch is persisted (a key upload failed, a hook raised, we
            # were cancelled...): fetch it again next round. nio has moved its position
            # and consumed the to-device events; those are published from memory then.
            nio.next_batch = since
            if to_device:
                self._carried = dict(to_device)
            raise
        self._carried = {}
        self.invites = invites
        self._dispatch(room_events)
        async with self._synced:
            self._sync_count += 1
            self._synced.notify_all()
        return hook_events

    async def _process(
        self, resp: SyncResponse, to_device: list[tuple[str, ToDeviceReceived | None]]
    ) -> tuple[list[HookEvent], list[RoomEvent], dict[str, str]]:
        """Keys, the index batch, late decryption and the sync transaction of one round."""
        c = self._c
        index = c.index
        await self._maintain_keys()
        batch = self._batch_from_sync(resp)
        room_events = _events_from_sync(resp)
        hook_events: list[HookEvent] = [e for _, e in to_device if e is not None]
        hook_events += self._room_hooks(resp)
        got_keys = any(
            isinstance(e, (RoomKeyEvent, ForwardedRoomKeyEvent)) for e in resp.to_device_events
        )
        if got_keys and c.keys.backup_enabled:
            await c.keys.backup_pending()
        if batch.pending or got_keys:
            if batch.pending:
                # Another process on this same device (e.g. `datarooms send` beside
                # `datarooms tail`) may have created the session: look in the store.
                self.merge_sessions_from_store(batch.pending)
            late = self._decrypt_pending(extra=batch.pending)
            if late:
                batch.records += [r for r, _ in late if r]
                batch.files += [
                    row
                    for _, e in late
                    if e.type == "m.room.message"
                    and (
                        row := file_row(
                            e.room_id,
                            {
                                "event_id": e.event_id,
                                "sender": e.sender,
                                "origin_server_ts": e.ts,
                                "content": e.content,
                            },
                        )
                    )
                    is not None
                ]
                batch.resolved += [e.event_id for _, e in late]
                by_id = {e.event_id: e for _, e in late}
                now = {e.event_id for e in room_events}
                room_events = [by_id.get(e.event_id, e) for e in room_events]
                room_events += [e for e in by_id.values() if e.event_id not in now]
                hook_events = [_replace_late(h, by_id) for h in hook_events]
                hook_events += [
                    RoomEventReceived(e, late=True) for e in by_id.values() if e.event_id not in now
                ]
        invites = _next_invites(self.invites, resp, hook_events)

        def during() -> None:
            if invites != self.invites:
                index.set_meta(_INVITES, json.dumps(invites))
            c.hooks.run_transaction(hook_events)

        index.apply(batch, sync_token=resp.next_batch, during=during)
        return hook_events, room_events, invites

    async def _fetch(self, since: str | None, timeout_ms: int, full_state: bool) -> SyncResponse:
        if self._http is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=30, sock_read=SYNC_TIMEOUT_MS / 1000 + 60
                )
            )
            self._http = MatrixHttp(
                self._c.homeserver_url, self._c.access_token, session=self._session
            )
        params: dict[str, str] = {}
        if since:
            params["since"] = since
        if timeout_ms:
            params["timeout"] = str(timeout_ms)
        if full_state:
            params["full_state"] = "true"
        body = await self._http.request("GET", "/_matrix/client/v3/sync", params=params)
        resp = SyncResponse.from_dict(body if isinstance(body, dict) else {})
        if isinstance(resp, SyncError) or not isinstance(resp, SyncResponse):
            raise HomeserverError(
                f"sync failed: the homeserver's answer is not a sync response: {resp.message}",
                errcode=getattr(resp, "status_code", None),
            )
        return resp

    async def _receive(self, resp: SyncResponse) -> list[tuple[str, ToDeviceReceived | None]]:
        """Let nio process the response; return the to-device hook events, in order."""
        nio = self._c.nio
        olm = nio.olm
        raw = list(resp.to_device_events)
        keys = [_to_device_key(e) for e in raw]
        for_nio = [
            i
            for i, (e, k) in enumerate(zip(raw, keys, strict=True))
            if k not in self._carried
            and not (
                isinstance(e, KeyVerificationEvent)
                and (olm is None or getattr(e, "transaction_id", None) not in olm.key_verifications)
            )
        ]
        resp.to_device_events = [raw[i] for i in for_nio]
        await nio.receive_response(resp)
        # Key bundles and m.shared_history flags nio's Olm machine (ours) kept aside:
        # persisted now, an Olm message decrypts only once.
        self._c.keys.sharing.take_received()
        processed = dict(zip(for_nio, resp.to_device_events, strict=True))
        resp.to_device_events = [processed.get(i, e) for i, e in enumerate(raw)]
        out: list[tuple[str, ToDeviceReceived | None]] = []
        for i, (e, k) in enumerate(zip(raw, keys, strict=True)):
            if k in self._carried:
                out.append((k, self._carried[k]))
            else:
                out.append((k, _to_device_hook(processed.get(i, e), e)))
        seen = set(keys)
        out += [(k, h) for k, h in self._carried.items() if k not in seen]
        return out

    async def _maintain_keys(self) -> None:
        c = self._c
        nio = c.nio
        if nio.should_upload_keys:
            await c._check(await nio.keys_upload(), "upload one-time keys")
        if nio.should_query_keys:
            await c._check(await nio.keys_query(), "query device keys")
        if nio.should_claim_keys:
            await c._check(
                await nio.keys_claim(nio.get_users_for_key_claiming()), "claim one-time keys"
            )
        await nio.send_to_device_messages()
        await c.keys.sharing.pay_owed()

    # -- turning sync responses into index batches ------------------------------------

    def _batch_from_sync(self, resp: SyncResponse) -> SyncBatch:
        index, me = self._c.index, self._c.user_id
        batch = SyncBatch([], [], [], [], [], [])
        for room_id, info in resp.rooms.join.items():
            known = index.knows_room(room_id)
            newest = index.newest_ts(room_id)
            for e in info.state:
                _collect_state(batch, room_id, e.source)
            _collect_timeline(batch, room_id, info.timeline.events)
            prev = info.timeline.prev_batch
            if prev and (not known or info.timeline.limited):
                # History we have not seen: a room new to this device, or a gap.
                batch.gaps.append((room_id, prev, 0 if not known else (newest or 0)))
        for room_id, info in resp.rooms.leave.items():
            # Our own leave (or kick, or ban) of a room this device knows: the index
            # then tells which rooms we are still in.
            own = _own_member(info, me)
            if own is not None and index.knows_room(room_id):
                _collect_state(batch, room_id, own)
        return batch

    def _room_hooks(self, resp: SyncResponse) -> list[HookEvent]:
        me = self._c.user_id
        out: list[HookEvent] = []
        for room_id, invite in resp.rooms.invite.items():
            inviter, reason = "", None
            for e in invite.invite_state:
                # nio's stripped invite events keep their content out of ``source``.
                if getattr(e, "state_key", None) == me and getattr(e, "membership", None) == (
                    "invite"
                ):
                    inviter = str(getattr(e, "sender", ""))
                    content = getattr(e, "content", None)
                    if isinstance(content, dict) and isinstance(content.get("reason"), str):
                        reason = content["reason"]
            out.append(
                MembershipChanged(room_id, me, "invite", inviter, None, None, reason, own=True)
            )
        for room_id, info in resp.rooms.join.items():
            for e in info.state:
                out += _state_hooks(room_id, getattr(e, "source", None), me)
            for e in info.timeline.events:
                out += _state_hooks(room_id, getattr(e, "source", None), me)
                event = from_nio_event(room_id, e)
                if event is not None:
                    out.append(RoomEventReceived(event))
        for room_id, info in resp.rooms.leave.items():
            own = _own_member(info, me)
            if own is None:
                out.append(MembershipChanged(room_id, me, "leave", "", None, own=True))
            else:
                out += [
                    h for h in _state_hooks(room_id, own, me) if isinstance(h, MembershipChanged)
                ]
        return out

    # -- late decryption -------------------------------------------------------------

    def _decrypt_pending(
        self, room_id: str | None = None, extra: list[PendingEvent] | None = None
    ) -> list[tuple[Record | None, RoomEvent]]:
        """Try again to decrypt events that arrived before their keys."""
        out: list[tuple[Record | None, RoomEvent]] = []
        nio = self._c.nio
        seen: set[str] = set()
        for p in [*self._c.index.pending(), *(extra or [])]:
            if (room_id is not None and p.room_id != room_id) or p.event_id in seen:
                continue
            seen.add(p.event_id)
            try:
                megolm = MegolmEvent.from_dict(p.source)
                megolm.room_id = p.room_id
                decrypted = nio.decrypt_event(megolm)
            except EncryptionError:  # still no key
                continue
            source = getattr(decrypted, "source", None)
            if not isinstance(source, dict):
                continue
            record = (
                record_from_event(p.room_id, source, True)
                if source.get("type") == ev.RECORD
                else None
            )
            out.append((record, room_event(p.room_id, source, encrypted=True)))
        return out

    def merge_sessions_from_store(self, pending: list[PendingEvent]) -> None:
        """Load the Megolm sessions of these events from the crypto store if another
        process on this same device (e.g. `datarooms send` beside `datarooms tail`)
        created them since we loaded it. Through nio's public store API; the store
        is read again only when its file changed since the last look."""
        nio = self._c.nio
        olm, store = nio.olm, nio.store
        if olm is None or store is None or not pending:
            return
        missing = [
            p
            for p in pending
            if olm.inbound_group_store.get(
                p.room_id, str(p.source.get("content", {}).get("sender_key", "")), p.session_id
            )
            is None
        ]
        if not missing:
            return
        stamp = _file_stamp(str(store.database_path))
        if stamp == self._store_stamp:
            return
        self._store_stamp = stamp
        wanted = {p.session_id for p in missing}
        for session in store.load_inbound_group_sessions():
            if session.id in wanted and not olm.inbound_group_store.get(
                session.room_id, session.sender_key, session.id
            ):
                olm.inbound_group_store.add(session)

    def retry_decryption(self, room_id: str | None = None, *, reload: bool = True) -> int:
        """``reload=False``: the new keys are in memory already (an import by this
        process), so the crypto store is not read again."""
        if reload:
            self._store_stamp = None  # keys may have come by another way (another process)
            self.merge_sessions_from_store(self._c.index.pending())
        late = self._decrypt_pending(room_id)
        if late:
            hooks = self._c.hooks
            events: list[HookEvent] = [RoomEventReceived(e, late=True) for _, e in late]
            batch = SyncBatch(
                [r for r, _ in late if r], [], [e.event_id for _, e in late], [], [], []
            )
            self._c.index.apply(batch, during=lambda: hooks.run_transaction(events))
            self._dispatch([e for _, e in late])
            with contextlib.suppress(RuntimeError):  # no running loop: no after hooks
                task = asyncio.get_running_loop().create_task(hooks.run_after(events))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        return len(late)

    # -- gaps ------------------------------------------------------------------------

    async def fill_gaps(self, room_id: str, progress: Callable[[int], None] | None) -> int:
        nio, index = self._c.nio, self._c.index
        lock = self._gap_locks.setdefault(room_id, asyncio.Lock())
        total = 0
        async with lock:
            for gap_id, _room, token, stop_ts in index.gaps(room_id):
                while True:
                    resp = await nio.room_messages(
                        room_id, start=token, direction=MessageDirection.back, limit=_GAP_PAGE
                    )
                    if isinstance(resp, RoomMessagesError):
                        raise HomeserverError(
                            f"reading the history of {room_id} failed: {resp.message}",
                            errcode=resp.status_code,
                        )
                    batch = SyncBatch([], [], [], [], [], [])
                    _collect_timeline(batch, room_id, resp.chunk)
                    oldest = min((a[2] for a in batch.activity), default=None)
                    finished = (
                        not resp.chunk
                        or not resp.end
                        or (oldest is not None and stop_ts and oldest < stop_ts)
                    )
                    index.apply_gap_page(gap_id, batch, None if finished else resp.end)
                    total += len(resp.chunk)
                    if progress:
                        progress(total)
                    if finished:
                        break
                    token = resp.end
        return total

    # -- live subscribers ------------------------------------------------------------

    def _dispatch(self, room_events: list[RoomEvent]) -> None:
        for event in room_events:
            for room_filter, queue in list(self._subscribers):
                if room_filter is None or room_filter == event.room_id:
                    queue.put_nowait(event)

    async def subscribe(self, room_id: str | None) -> AsyncGenerator[RoomEvent, None]:
        queue: asyncio.Queue[RoomEvent] = asyncio.Queue()
        entry = (room_id, queue)
        self._subscribers.add(entry)
        self.start()
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.discard(entry)


# -- helpers -----------------------------------------------------------------------


def _collect_state(batch: SyncBatch, room_id: str, source: dict[str, Any]) -> None:
    if "state_key" in source and isinstance(source.get("content"), dict):
        batch.state.append(
            (
                room_id,
                source["type"],
                source["state_key"],
                source["content"],
                str(source.get("sender", "")),
            )
        )


def _collect_timeline(batch: SyncBatch, room_id: str, events: list[Any]) -> None:
    for e in events:
        source = getattr(e, "source", None)
        if not isinstance(source, dict) or "event_id" not in source:
            continue
        sender, ts = source.get("sender", ""), int(source.get("origin_server_ts", 0))
        batch.activity.append((room_id, sender, ts))
        if isinstance(e, MegolmEvent):
            batch.pending.append(PendingEvent(e.event_id, room_id, e.session_id, ts, e.source))
            continue
        _collect_state(batch, room_id, source)
        etype = source.get("type")
        if etype == "m.room.redaction":
            redacts = source.get("redacts") or source.get("content", {}).get("redacts")
            if isinstance(redacts, str):
                batch.redactions.append((room_id, redacts))
        elif etype == ev.RECORD:
            record = record_from_event(room_id, source, getattr(e, "decrypted", False))
            if record is not None:
                batch.records.append(record)
        elif etype == "m.room.message" and getattr(e, "decrypted", False):
            row = file_row(room_id, source)
            if row is not None:
                batch.files.append(row)


#: The message types that carry an encrypted file.
FILE_MSGTYPES = ("m.file", "m.image", "m.video", "m.audio")


def file_row(room_id: str, source: dict[str, Any]) -> FileRow | None:
    """The index row of a decrypted file event, or None if it carries no encrypted file."""
    content = source.get("content")
    if (
        not isinstance(content, dict)
        or content.get("msgtype") not in FILE_MSGTYPES
        or not isinstance(content.get("file"), dict)
        or not isinstance(source.get("event_id"), str)
    ):
        return None
    raw_info = content.get("info")
    info: dict[str, Any] = raw_info if isinstance(raw_info, dict) else {}
    size = info.get("size")
    return FileRow(
        source["event_id"],
        room_id,
        str(content.get("filename") or content.get("body") or "file")[:255],
        size if isinstance(size, int) and size >= 0 else 0,
        str(info.get("mimetype") or "application/octet-stream")[:255],
        str(source.get("sender", "")),
        int(source.get("origin_server_ts", 0) or 0),
        str(content["file"].get("url") or ""),
    )


def _events_from_sync(resp: SyncResponse) -> list[RoomEvent]:
    return [
        event
        for room_id, info in resp.rooms.join.items()
        for event in (from_nio_event(room_id, e) for e in info.timeline.events)
        if event is not None
    ]


def _own_member(info: Any, me: str) -> dict[str, Any] | None:
    """Our own last member event in a room's sync section (timeline, else state)."""
    found = None
    for e in [*info.state, *info.timeline.events]:
        src = getattr(e, "source", None)
        if isinstance(src, dict) and src.get("type") == _MEMBER and src.get("state_key") == me:
            found = src
    return found


def _state_hooks(room_id: str, source: Any, me: str) -> list[HookEvent]:
    if not isinstance(source, dict) or "state_key" not in source:
        return []
    content = source.get("content")
    if not isinstance(content, dict) or not isinstance(source.get("type"), str):
        return []
    event_id = source.get("event_id")
    sender = str(source.get("sender", ""))
    out: list[HookEvent] = []
    state_key = str(source["state_key"])
    if source["type"] == _MEMBER and isinstance(content.get("membership"), str):
        unsigned = source.get("unsigned")
        prev = unsigned.get("prev_content") if isinstance(unsigned, dict) else None
        prev_m = prev.get("membership") if isinstance(prev, dict) else None
        reason = content.get("reason")
        out.append(
            MembershipChanged(
                room_id,
                state_key,
                content["membership"],
                sender,
                event_id if isinstance(event_id, str) else None,
                prev_m if isinstance(prev_m, str) else None,
                reason if isinstance(reason, str) else None,
                own=state_key == me,
            )
        )
    out.append(
        StateChanged(
            room_id,
            source["type"],
            state_key,
            content,
            sender,
            event_id if isinstance(event_id, str) else None,
        )
    )
    return out


def _next_invites(
    invites: dict[str, str], resp: SyncResponse, hooks: list[HookEvent]
) -> dict[str, str]:
    out = dict(invites)
    for room_id in (*resp.rooms.join, *resp.rooms.leave):
        out.pop(room_id, None)
    # After the leaves: a kick then a new invite in one window puts the room in both
    # sections, and the invite is the current membership.
    for h in hooks:
        if isinstance(h, MembershipChanged) and h.own and h.room_id in resp.rooms.invite:
            out[h.room_id] = h.sender
    return out


def _load_invites(text: str | None) -> dict[str, str]:
    try:
        data = json.loads(text or "{}")
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items()}


def _replace_late(hook: HookEvent, by_id: dict[str, RoomEvent]) -> HookEvent:
    if isinstance(hook, RoomEventReceived) and hook.event.event_id in by_id:
        return RoomEventReceived(by_id[hook.event.event_id])
    return hook


def _to_device_key(event: Any) -> str:
    source = getattr(event, "source", None)
    text = json.dumps(source, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _to_device_hook(event: Any, original: Any) -> ToDeviceReceived | None:
    """The hook event of one to-device event as nio left it (decrypted where it could)."""
    source = getattr(event, "source", None)
    if not isinstance(source, dict):
        return None
    etype = source.get("type")
    if not isinstance(etype, str) or etype == "m.room.encrypted":
        return None  # not decrypted here: nothing readable to publish
    if isinstance(event, EncryptedToDeviceEvent):
        return None
    content = source.get("content")
    content = dict(content) if isinstance(content, dict) else {}
    for name in _SECRET_FIELDS.get(etype, ()):
        content.pop(name, None)
    sender = getattr(event, "sender", None) or source.get("sender", "")
    encrypted = event is not original
    return ToDeviceReceived(etype, str(sender), content, encrypted=encrypted)


def _file_stamp(path: str) -> tuple[int, ...]:
    out: list[int] = []
    for p in (path, path + "-wal", path + "-journal"):
        try:
            st = os.stat(p)
        except OSError:
            out += [0, 0]
            continue
        out += [st.st_mtime_ns, st.st_size]
    return tuple(out)
