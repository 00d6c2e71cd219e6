"""DataroomsClient: one Matrix device with end-to-end encryption and a local index.

It wraps matrix-nio's AsyncClient (Olm/Megolm through vodozemac) and adds what
a data store needs:

- a **persistent device**: the session (token, device id, pickle key) and the
  crypto store survive restarts, so every Megolm key is kept;
- a **sync loop** that decrypts and indexes records and room state, and writes
  the sync position in the same transaction as what it covers;
- **gap filling**: history this device has not seen (a new device, a newly
  joined room, a limited sync) is recorded as a gap and paginated in on demand;
- **late decryption**: events whose keys arrive later are kept and decrypted
  when they do;
- a send path that **queries changed device keys before encrypting**, so a
  reader's new device gets the room key.

The capabilities hang off it: ``client.rooms``, ``client.records``,
``client.files``, ``client.messages``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from nio import (
    AsyncClient,
    AsyncClientConfig,
    ForwardedRoomKeyEvent,
    MegolmEvent,
    RoomKeyEvent,
    RoomMessagesError,
    SyncError,
    SyncResponse,
)
from nio.api import MessageDirection
from nio.exceptions import EncryptionError

from datarooms import events as ev
from datarooms._fs import atomic_write
from datarooms._store.index import LocalIndex, PendingEvent, Record, SyncBatch
from datarooms._transport.http import MatrixHttp
from datarooms.account import Credentials
from datarooms.errors import (
    AccessDeniedError,
    ConfigError,
    HomeserverError,
    NotFoundError,
)
from datarooms.sdk.files import Files
from datarooms.sdk.keys import KeyManager, TrustPolicy
from datarooms.sdk.messages import Messages
from datarooms.sdk.records import Records
from datarooms.sdk.rooms import Rooms
from datarooms.sdk.telemetry import Telemetry
from datarooms.sdk.timeline import (
    RoomEvent,
    from_nio_event,
    is_error,
    record_from_event,
    room_event,
)

log = logging.getLogger(__name__)

_SYNC_TIMEOUT_MS = 30_000
_GAP_PAGE = 100


@dataclass
class _Session:
    homeserver_url: str
    user_id: str
    device_id: str
    access_token: str
    pickle_key: str

    def __repr__(self) -> str:
        return f"_Session(user_id={self.user_id!r}, device_id={self.device_id!r})"


class DataroomsClient:
    """A device of one Matrix account, with a local index. Use :meth:`open`."""

    def __init__(
        self,
        nio: AsyncClient,
        index: LocalIndex,
        store_dir: Path,
        trust: TrustPolicy = "cross-signed",
    ) -> None:
        self.nio = nio
        self.index = index
        self.store_dir = store_dir
        self.rooms = Rooms(self)
        self.records = Records(self)
        self.files = Files(self)
        self.messages = Messages(self)
        self.keys = KeyManager(self, trust)
        self.telemetry = Telemetry(self)  # lazy: opens nothing until used
        self._share_locks: dict[str, asyncio.Lock] = {}
        self._sync_lock = asyncio.Lock()
        self._gap_locks: dict[str, asyncio.Lock] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._synced = asyncio.Condition()
        self._sync_count = 0
        self._subscribers: set[tuple[str | None, asyncio.Queue[RoomEvent]]] = set()
        self._closed = False

    # -- opening and closing ---------------------------------------------------

    @classmethod
    async def open(
        cls,
        credentials: Credentials,
        store_dir: Path | str,
        *,
        device_name: str = "datarooms",
        initial_sync: bool = True,
        trust: TrustPolicy = "cross-signed",
        cross_sign: bool = True,
        rooms_from_index: bool = False,
    ) -> DataroomsClient:
        """Open (or create) this device's session and stores, then catch up with the server.

        ``store_dir`` holds the session, the crypto store and the index: keep it
        private. With key backup on (``keys.setup_recovery()``), a lost store is
        recovered on a new device with the recovery key.

        ``trust`` decides which devices receive room keys (see datarooms.sdk.keys);
        ``cross_sign`` makes sure the account has cross-signing keys and signs
        this device with them when it can.

        ``rooms_from_index``: when the index holds a sync position, catch up with an
        incremental sync from it instead of a full-state one, taking each room's
        members and encryption from the index (they were written with that
        position). Sending stays as safe: a room is encrypted if the index, nio's
        store or the server says so; before a session is shared the members are
        re-read from the server and their device keys queried (a reader's new
        device gets the key); the sync brings new events, keys sent to this device
        and device-list changes. Enough for records, messages and files; room
        listings and access reviews want the full state.
        """
        store = Path(store_dir)
        store.mkdir(parents=True, exist_ok=True, mode=0o700)
        session = await _load_or_create_session(credentials, store, device_name)
        config = AsyncClientConfig(
            encryption_enabled=True,
            store_sync_tokens=False,  # the index stores the position, after processing
            pickle_key=session.pickle_key,
            request_timeout=60,
            max_timeouts=5,
        )
        crypto_dir = store / "crypto"
        crypto_dir.mkdir(exist_ok=True, mode=0o700)
        nio = AsyncClient(
            session.homeserver_url,
            session.user_id,
            device_id=session.device_id,
            store_path=str(crypto_dir),
            config=config,
        )
        nio.restore_login(session.user_id, session.device_id, session.access_token)
        index = LocalIndex(store / "index.db")
        client = cls(nio, index, store, trust)
        try:
            if nio.should_upload_keys:
                await client._check(await nio.keys_upload(), "upload device keys")
            if cross_sign:
                await client.keys.bootstrap()
            if initial_sync and rooms_from_index and client.index.sync_token:
                client._rooms_from_index()
                await client.sync_once()
            elif initial_sync:
                await client.sync_once(full_state=True)
            if client.keys.backup_enabled:
                await client.keys.backup_pending()
        except BaseException:
            await client.close()
            raise
        return client

    def _rooms_from_index(self) -> None:
        """Give nio the rooms the index knows we joined, with their members and
        encryption, as of the index's sync position (see ``open(rooms_from_index=...)``)."""
        from nio.rooms import MatrixRoom

        me = self.user_id
        for room_id in self.index.rooms_with_state("m.room.create"):
            members = self.index.state_of_type(room_id, "m.room.member")
            if (members.get(me) or {}).get("membership") != "join" or room_id in self.nio.rooms:
                continue
            encryption = self.index.state(room_id, "m.room.encryption")
            encrypted = room_id in self.nio.encrypted_rooms or bool(encryption)
            room = MatrixRoom(room_id, me, encrypted)
            for user_id, content in members.items():
                membership = content.get("membership")
                if membership in ("join", "invite"):
                    room.add_member(
                        user_id,
                        content.get("displayname"),
                        content.get("avatar_url"),
                        invited=membership == "invite",
                    )
            self.nio.rooms[room_id] = room
            if encrypted:
                self.nio.encrypted_rooms.add(room_id)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.telemetry.close()
        await self.stop_sync()
        await self.nio.close()
        self.index.close()

    async def __aenter__(self) -> DataroomsClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def user_id(self) -> str:
        return str(self.nio.user_id)

    @property
    def device_id(self) -> str:
        return str(self.nio.device_id)

    @property
    def homeserver_url(self) -> str:
        return str(self.nio.homeserver)

    @property
    def access_token(self) -> str:
        return str(self.nio.access_token)

    def http(self) -> MatrixHttp:
        """Raw Matrix HTTP for endpoints nio lacks, authenticated as this device."""
        return MatrixHttp(self.homeserver_url, self.access_token)

    # -- sync ----------------------------------------------------------------

    async def sync_once(self, *, timeout_ms: int = 0, full_state: bool = False) -> None:
        """One sync round: fetch, decrypt, index, persist the position, notify.

        While the background loop runs, this waits (at most 2 s) for the loop's next
        round instead: the loop's long-poll returns within milliseconds of anything
        new on the server, so a quiet 2 s means there was nothing to catch up on.
        """
        if self._loop_task is not None and not self._loop_task.done() and not full_state:
            with contextlib.suppress(TimeoutError):
                await self.wait_for_sync(timeout=2.0)
            return
        async with self._sync_lock:
            await self._sync_round(timeout_ms, full_state)

    async def _sync_round(self, timeout_ms: int, full_state: bool) -> None:
        since = self.nio.next_batch or self.index.sync_token or None
        if since is None:
            # Synapse answers an identical /sync from its response cache for up to two
            # minutes (sync_response_cache_duration); a device re-doing its initial sync
            # (e.g. after losing its index) would get the stale answer. The timeout is
            # part of the cache key and means nothing for an initial sync: vary it.
            timeout_ms = 1 + secrets.randbelow(1000)
        resp = await self.nio.sync(timeout=timeout_ms, since=since, full_state=full_state)
        if isinstance(resp, SyncError):
            raise HomeserverError(
                f"sync failed: {resp.status_code or ''} {resp.message}", errcode=resp.status_code
            )
        await self._maintain_keys()
        batch = self._batch_from_sync(resp)
        self.index.apply(batch, sync_token=resp.next_batch)
        events = self._events_from_sync(resp)
        got_keys = any(
            isinstance(e, (RoomKeyEvent, ForwardedRoomKeyEvent)) for e in resp.to_device_events
        )
        if got_keys and self.keys.backup_enabled:
            await self.keys.backup_pending()
        if batch.pending or got_keys:
            if batch.pending:
                # Another process on this same device (e.g. `datarooms send` beside
                # `datarooms tail`) may have created the session: look in the store.
                self._merge_sessions_from_store({p.session_id for p in batch.pending})
            late = self._decrypt_pending()
            if late:
                self.index.apply(
                    SyncBatch(
                        [r for r, _ in late if r], [], [e.event_id for _, e in late], [], [], []
                    )
                )
                by_id = {e.event_id: e for _, e in late}
                events = [by_id.pop(e.event_id, e) for e in events] + list(by_id.values())
        self._dispatch(events)
        async with self._synced:
            self._sync_count += 1
            self._synced.notify_all()

    async def wait_for_sync(self, timeout: float = 60.0) -> None:
        """Wait until the background loop completes its next round."""
        async with self._synced:
            start = self._sync_count
            await asyncio.wait_for(self._synced.wait_for(lambda: self._sync_count > start), timeout)

    def start_sync(self) -> None:
        """Keep syncing in the background (long-poll) until :meth:`stop_sync` or close."""
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(self._sync_loop(), name="datarooms-sync")

    async def stop_sync(self) -> None:
        task, self._loop_task = self._loop_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _sync_loop(self) -> None:
        delay = 1.0
        while True:
            try:
                async with self._sync_lock:
                    await self._sync_round(_SYNC_TIMEOUT_MS, False)
                delay = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("sync failed; retrying", extra={"error": str(exc), "delay_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def _maintain_keys(self) -> None:
        nio = self.nio
        if nio.should_upload_keys:
            await self._check(await nio.keys_upload(), "upload one-time keys")
        if nio.should_query_keys:
            await self._check(await nio.keys_query(), "query device keys")
        if nio.should_claim_keys:
            await self._check(
                await nio.keys_claim(nio.get_users_for_key_claiming()), "claim one-time keys"
            )
        await nio.send_to_device_messages()

    async def _check(self, resp: Any, what: str) -> Any:
        if is_error(resp):
            raise HomeserverError(f"could not {what}: {resp.message}", errcode=resp.status_code)
        return resp

    # -- turning sync responses into index batches ------------------------------

    def _batch_from_sync(self, resp: SyncResponse) -> SyncBatch:
        batch = SyncBatch([], [], [], [], [], [])
        for room_id, info in resp.rooms.join.items():
            known = self.index.knows_room(room_id)
            newest = self.index.newest_ts(room_id)
            for e in info.state:
                self._collect_state(batch, room_id, e.source)
            self._collect_timeline(batch, room_id, info.timeline.events)
            prev = info.timeline.prev_batch
            if prev and (not known or info.timeline.limited):
                # History we have not seen: a room new to this device, or a gap.
                batch.gaps.append((room_id, prev, 0 if not known else (newest or 0)))
        return batch

    def _collect_state(self, batch: SyncBatch, room_id: str, source: dict[str, Any]) -> None:
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

    def _collect_timeline(self, batch: SyncBatch, room_id: str, events: list[Any]) -> None:
        for e in events:
            source = getattr(e, "source", None)
            if not isinstance(source, dict) or "event_id" not in source:
                continue
            sender, ts = source.get("sender", ""), int(source.get("origin_server_ts", 0))
            batch.activity.append((room_id, sender, ts))
            if isinstance(e, MegolmEvent):
                batch.pending.append(PendingEvent(e.event_id, room_id, e.session_id, ts, e.source))
                continue
            self._collect_state(batch, room_id, source)
            etype = source.get("type")
            if etype == "m.room.redaction":
                redacts = source.get("redacts") or source.get("content", {}).get("redacts")
                if isinstance(redacts, str):
                    batch.redactions.append((room_id, redacts))
            elif etype == ev.RECORD:
                record = record_from_event(room_id, source, getattr(e, "decrypted", False))
                if record is not None:
                    batch.records.append(record)

    def _decrypt_pending(self, room_id: str | None = None) -> list[tuple[Record | None, RoomEvent]]:
        """Try again to decrypt events that arrived before their keys."""
        out: list[tuple[Record | None, RoomEvent]] = []
        for p in self.index.pending():
            if room_id is not None and p.room_id != room_id:
                continue
            try:
                megolm = MegolmEvent.from_dict(p.source)
                megolm.room_id = p.room_id
                decrypted = self.nio.decrypt_event(megolm)
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

    def _merge_sessions_from_store(self, session_ids: set[str]) -> None:
        """Load these Megolm sessions from the crypto store if another process on this
        same device (e.g. `datarooms send` beside `datarooms tail`) created them."""
        olm, store = self.nio.olm, self.nio.store
        if olm is None or store is None or not session_ids:
            return
        from nio.crypto.sessions import InboundGroupSession
        from nio.store.models import MegolmInboundSessions

        with store.database.bind_ctx(store.models):
            rows = list(
                MegolmInboundSessions.select().where(
                    MegolmInboundSessions.session_id.in_(sorted(session_ids))
                )
            )
            for row in rows:
                if olm.inbound_group_store.get(row.room_id, row.sender_key, row.session_id):
                    continue
                session = InboundGroupSession.from_pickle(
                    row.session,
                    row.fp_key,
                    row.sender_key,
                    row.room_id,
                    store.pickle_key,
                    [chain.sender_key for chain in row.forwarded_chains],
                )
                olm.inbound_group_store.add(session)

    def retry_decryption(self, room_id: str | None = None) -> int:
        """Decrypt pending events now that keys may have arrived (e.g. a backup restore)."""
        self._merge_sessions_from_store({p.session_id for p in self.index.pending()})
        late = self._decrypt_pending(room_id)
        if late:
            batch = SyncBatch(
                [r for r, _ in late if r], [], [e.event_id for _, e in late], [], [], []
            )
            self.index.apply(batch)
        return len(late)

    async def fill_gaps(self, room_id: str, progress: Callable[[int], None] | None = None) -> int:
        """Paginate in history this device has not seen yet; return events read."""
        lock = self._gap_locks.setdefault(room_id, asyncio.Lock())
        total = 0
        async with lock:
            for gap_id, _room, token, stop_ts in self.index.gaps(room_id):
                while True:
                    resp = await self.nio.room_messages(
                        room_id, start=token, direction=MessageDirection.back, limit=_GAP_PAGE
                    )
                    if isinstance(resp, RoomMessagesError):
                        raise HomeserverError(
                            f"reading the history of {room_id} failed: {resp.message}",
                            errcode=resp.status_code,
                        )
                    batch = SyncBatch([], [], [], [], [], [])
                    self._collect_timeline(batch, room_id, resp.chunk)
                    oldest = min((a[2] for a in batch.activity), default=None)
                    finished = (
                        not resp.chunk
                        or not resp.end
                        or (oldest is not None and stop_ts and oldest < stop_ts)
                    )
                    self.index.apply_gap_page(gap_id, batch, None if finished else resp.end)
                    total += len(resp.chunk)
                    if progress:
                        progress(total)
                    if finished:
                        break
                    token = resp.end
        return total

    # -- events to subscribers -------------------------------------------------

    def _events_from_sync(self, resp: SyncResponse) -> list[RoomEvent]:
        return [
            ev
            for room_id, info in resp.rooms.join.items()
            for ev in (from_nio_event(room_id, e) for e in info.timeline.events)
            if ev is not None
        ]

    def _dispatch(self, room_events: list[RoomEvent]) -> None:
        for event in room_events:
            for room_filter, queue in list(self._subscribers):
                if room_filter is None or room_filter == event.room_id:
                    queue.put_nowait(event)

    async def subscribe(self, room_id: str | None = None) -> AsyncIterator[RoomEvent]:
        """Live events (of one room, or all), as they arrive. Starts the sync loop."""
        queue: asyncio.Queue[RoomEvent] = asyncio.Queue()
        entry = (room_id, queue)
        self._subscribers.add(entry)
        self.start_sync()
        try:
            while True:
                yield await queue.get()
        finally:
            self._subscribers.discard(entry)

    # -- sending -------------------------------------------------------------

    async def ensure_room(self, room_id: str) -> None:
        """Make sure nio knows the room (we are in it); sync once if needed."""
        if room_id not in self.nio.rooms:
            await self.sync_once()
        if room_id not in self.nio.rooms:
            raise NotFoundError(
                f"room {room_id} is unknown to {self.user_id}: not a member, or it does not exist"
            )

    async def send(
        self, room_id: str, event_type: str, content: dict[str, Any], *, txn_id: str | None = None
    ) -> str:
        """Send an event, encrypted if the room is (it always is for data rooms).

        In an encrypted room the Megolm session is prepared by us, never by nio:
        members are synced and changed device lists queried first (so every
        current device is known), the trust policy decides which devices get
        the key, the session is backed up when backup is on, and only then is
        the event encrypted, under the same lock, and sent. Returns the event id.
        """
        await self.ensure_room(room_id)
        await self._require_encrypted(room_id)
        lock = self._share_locks.setdefault(room_id, asyncio.Lock())
        async with lock:
            await self._prepare_session(room_id)
            try:
                enc_type, enc_content = self.nio.encrypt(room_id, event_type, content)
            except Exception:  # the session was invalidated meanwhile: prepare a new one
                await self._prepare_session(room_id)
                enc_type, enc_content = self.nio.encrypt(room_id, event_type, content)
        if event_type == "m.reaction":
            # The spec copies m.relates_to outside the ciphertext so servers can
            # aggregate; for an annotation that shows the server what was written
            # (its `key`), and Synapse refuses an annotation without one. So
            # reactions carry their relation only inside the ciphertext.
            enc_content.pop("m.relates_to", None)
        return await self._put_event(room_id, event_type, enc_type, enc_content, txn_id)

    async def _require_encrypted(self, room_id: str) -> None:
        """Never send in the clear. nio learns a room is encrypted from sync, which may
        not have delivered ``m.room.encryption`` yet: ask the server before trusting
        a "not encrypted"."""
        room = self.nio.rooms[room_id]
        if room.encrypted:
            return
        async with self.http() as http:
            try:
                content = await http.request(
                    "GET", f"/_matrix/client/v3/rooms/{room_id}/state/m.room.encryption/"
                )
            except HomeserverError as exc:
                if exc.errcode != "M_NOT_FOUND":
                    raise
                content = None
        if not content or content.get("algorithm") != "m.megolm.v1.aes-sha2":
            raise AccessDeniedError(
                f"room {room_id} is not end-to-end encrypted; datarooms does not send "
                "anything to a room in the clear"
            )
        room.encrypted = True
        self.nio.encrypted_rooms.add(room_id)

    async def _put_event(
        self,
        room_id: str,
        event_type: str,
        wire_type: str,
        content: dict[str, Any],
        txn_id: str | None,
    ) -> str:
        txn = txn_id or secrets.token_hex(16)
        path = f"/_matrix/client/v3/rooms/{room_id}/send/{wire_type}/{txn}"
        async with self.http() as http:
            try:
                res = await http.request("PUT", path, json=content)
            except HomeserverError as exc:
                if exc.errcode == "M_FORBIDDEN":
                    raise AccessDeniedError(
                        f"{self.user_id} may not send {event_type} to {room_id}"
                    ) from None
                raise
        return str(res["event_id"])

    async def _prepare_session(self, room_id: str) -> None:
        """Called under the room's share lock. See :meth:`send`."""
        nio = self.nio
        olm = nio.olm
        if olm is None:
            return
        room = nio.rooms[room_id]
        if not room.members_synced:
            await self._check(await nio.joined_members(room_id), "list room members")
        if nio.should_query_keys:
            await self._check(await nio.keys_query(), "query device keys")
        if olm.should_share_group_session(room_id):
            await self.keys.apply_trust(room_id)
            missing = nio.get_missing_sessions(room_id)
            if missing:
                await self._check(await nio.keys_claim(missing), "claim one-time keys")
            await nio.share_group_session(room_id, ignore_unverified_devices=True)
        await self.keys.backup_outbound(room_id)


# -- sessions -------------------------------------------------------------------


async def _load_or_create_session(creds: Credentials, store: Path, device_name: str) -> _Session:
    path = store / "session.json"
    session: _Session | None = None
    if path.exists():
        try:
            session = _Session(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"the session file {path} is damaged: {exc}") from exc
        if creds.user_id and session.user_id != creds.user_id:
            raise ConfigError(
                f"the store {store} belongs to {session.user_id}, not {creds.user_id}; "
                "use another store directory for another account"
            )
        session.homeserver_url = creds.homeserver_url or session.homeserver_url
        try:
            async with MatrixHttp(session.homeserver_url, session.access_token) as http:
                await http.whoami()
            return session
        except HomeserverError as exc:
            if exc.errcode != "M_UNKNOWN_TOKEN":
                raise
            if not creds.password:
                raise ConfigError(
                    f"the access token of device {session.device_id} is no longer valid and "
                    "no password is configured to log in again"
                ) from None
            # Log in again on the SAME device, so its crypto store stays valid.
            async with MatrixHttp(session.homeserver_url) as http:
                res = await http.login_password(
                    session.user_id, creds.password, device_id=session.device_id
                )
            session.access_token = res["access_token"]
    else:
        pickle_key = secrets.token_urlsafe(32)
        if creds.access_token:
            async with MatrixHttp(creds.homeserver_url, creds.access_token) as http:
                who = await http.whoami()
            if not who.get("device_id"):
                raise ConfigError("the access token is not bound to a device; log in instead")
            session = _Session(
                creds.homeserver_url,
                who["user_id"],
                who["device_id"],
                creds.access_token,
                pickle_key,
            )
        elif creds.password and creds.user_id:
            async with MatrixHttp(creds.homeserver_url) as http:
                res = await http.login_password(
                    creds.user_id, creds.password, device_name=device_name
                )
            session = _Session(
                creds.homeserver_url,
                res["user_id"],
                res["device_id"],
                res["access_token"],
                pickle_key,
            )
        else:
            raise ConfigError("credentials need an access token, or a user id and password")
    atomic_write(path, json.dumps(vars(session)), mode=0o600)
    return session
