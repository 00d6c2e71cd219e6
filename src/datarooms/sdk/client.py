"""DataroomsClient: one Matrix device with end-to-end encryption and a local index.

It wraps matrix-nio's AsyncClient (Olm/Megolm through vodozemac) and adds what
a data store needs:

- a **persistent device**: the session (token, device id, pickle key) and the
  crypto store survive restarts, so every Megolm key is kept (``_session``);
- a **sync loop** that decrypts and indexes records and room state, and writes
  the sync position in the same transaction as what it covers; it fills **gaps**
  in history on demand, decrypts events **late** when their keys arrive, and
  publishes typed **hooks** (``client.hooks``, see :mod:`datarooms.sdk.hooks`)
  (``_sync``);
- a send path that **queries changed device keys before encrypting**, so a
  reader's new device gets the room key, and never sends in the clear (``_send``).

The capabilities hang off it: ``client.rooms``, ``client.records``,
``client.files``, ``client.messages``, ``client.state``, ``client.docs``,
``client.claims``, ``client.audit``, ``client.reviews``, ``client.retention``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from nio import AsyncClient

from datarooms._fs import DeviceLock, private_dir
from datarooms._store.index import LocalIndex
from datarooms._transport.http import MatrixHttp
from datarooms.account import Credentials
from datarooms.errors import DeviceBusyError, HomeserverError
from datarooms.ids import EventID, UserID
from datarooms.sdk._send import Sender
from datarooms.sdk._session import load_or_create_session, nio_client
from datarooms.sdk._sync import SyncEngine
from datarooms.sdk.audit import Audit
from datarooms.sdk.claims import Claims
from datarooms.sdk.docs import Docs
from datarooms.sdk.files import Files
from datarooms.sdk.hooks import Hooks
from datarooms.sdk.keys import KeyManager, TrustPolicy
from datarooms.sdk.messages import Messages
from datarooms.sdk.records import Records
from datarooms.sdk.retention import Retention
from datarooms.sdk.reviews import Reviews
from datarooms.sdk.rooms import Rooms
from datarooms.sdk.state import State
from datarooms.sdk.telemetry import Telemetry
from datarooms.sdk.timeline import RoomEvent, is_error

__all__ = ["DataroomsClient"]


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
        #: Typed events of the sync loop: ``client.hooks.on(MembershipChanged, fn)``.
        self.hooks = Hooks()
        self._sync = SyncEngine(self)
        self._sender = Sender(self)
        self.rooms = Rooms(self)
        self.records = Records(self)
        self.files = Files(self)
        self.messages = Messages(self)
        self.state = State(self)
        self.claims = Claims(self)
        self.audit = Audit(self)
        self.keys = KeyManager(self, trust)
        self.telemetry = Telemetry(self)  # lazy: opens nothing until used
        self.reviews = Reviews(self)
        self.retention = Retention(self)
        self.docs = Docs(self)  # lazy: opens nothing until used
        self._closed = False
        self._device_lock: DeviceLock | None = None

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
        share: Literal["shared", "exclusive"] | None = None,
        share_wait: float = 0.0,
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

        ``share`` says how this process has the store open, for processes that
        coordinate (the CLI and the platform's copy of its device): ``"shared"``
        opens it beside other shared users (waiting up to ``share_wait`` seconds
        while an exclusive user has it); ``"exclusive"`` only if nobody else has it
        open (else :class:`~datarooms.errors.DeviceBusyError` at once). A process that
        keeps a device open between requests opens it exclusively: its Olm and
        Megolm sessions live in its memory, and another process using the same
        device meanwhile would ratchet them apart.
        """
        import asyncio
        import time

        store = Path(store_dir)
        private_dir(store)
        lock: DeviceLock | None = None
        if share is not None:
            lock = DeviceLock(store / "device.lock")
            exclusive = share == "exclusive"
            deadline = time.monotonic() + (0.0 if exclusive else share_wait)
            while not lock.try_acquire(exclusive=exclusive):
                if time.monotonic() >= deadline:
                    raise DeviceBusyError(
                        f"the device in {store} is in use by another datarooms process"
                        + ("" if exclusive else f" (waited {share_wait:g} s)")
                    )
                await asyncio.sleep(0.05)
        try:
            session = await load_or_create_session(credentials, store, device_name)
            nio = nio_client(session, store)
            index = LocalIndex(store / "index.db")
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        client = cls(nio, index, store, trust)
        client._device_lock = lock
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
        try:
            await self.telemetry.close()
            await self.docs.close()
            await self.state.close()
            await self._sync.close()
            await self.nio.close()
            self.index.close()
        finally:
            if self._device_lock is not None:
                self._device_lock.release()
                self._device_lock = None

    @property
    def closed(self) -> bool:
        return self._closed

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
    def user_id(self) -> UserID:
        return UserID(str(self.nio.user_id))

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

    # -- sync (datarooms.sdk._sync) ---------------------------------------------------

    async def sync_once(self, *, timeout_ms: int = 0, full_state: bool = False) -> None:
        """One sync round: fetch, decrypt, index, run the hooks, persist the position.

        While the background loop runs, this waits (at most 2 s) for the loop's next
        round instead: the loop's long-poll returns within milliseconds of anything
        new on the server, so a quiet 2 s means there was nothing to catch up on.
        Raises :class:`~datarooms.sdk.hooks.HookError` if an in-transaction hook
        failed (nothing of the batch was persisted; the next round retries it).
        """
        await self._sync.sync_once(timeout_ms, full_state)

    async def wait_for_sync(self, timeout: float = 60.0) -> None:
        """Wait until the background loop completes its next round."""
        await self._sync.wait_for_sync(timeout)

    @property
    def syncing(self) -> bool:
        """Whether the background sync loop runs (the index then follows the server)."""
        return self._sync.running

    def start_sync(self) -> None:
        """Keep syncing in the background (long-poll) until :meth:`stop_sync` or close."""
        self._sync.start()

    async def stop_sync(self) -> None:
        await self._sync.stop()

    def retry_decryption(self, room_id: str | None = None) -> int:
        """Decrypt pending events now that keys may have arrived (e.g. a backup restore)."""
        return self._sync.retry_decryption(room_id)

    async def fill_gaps(self, room_id: str, progress: Callable[[int], None] | None = None) -> int:
        """Paginate in history this device has not seen yet; return events read."""
        return await self._sync.fill_gaps(room_id, progress)

    def subscribe(self, room_id: str | None = None) -> AsyncGenerator[RoomEvent, None]:
        """Live events (of one room, or all), as they arrive. Starts the sync loop."""
        return self._sync.subscribe(room_id)

    # -- membership of this device's user ----------------------------------------

    def joined_rooms(self) -> list[str]:
        """Rooms this user is joined to, as of the last sync (left and kicked ones not)."""
        return [r for r in self.index.rooms_with_member(self.user_id) if r in self.nio.rooms]

    def invites(self) -> dict[str, str]:
        """Rooms this user is invited to, with who invited (as of the last sync)."""
        return dict(self._sync.invites)

    def membership(self, room_id: str) -> str | None:
        """This user's membership of a room (``join``, ``invite``, ``leave``, ``ban``), if known."""
        room = self.nio.rooms.get(room_id)
        if room is not None:
            content = self.index.state(room_id, "m.room.member", self.user_id) or {}
            if content.get("membership") == "join":
                return "join"
            # nio applies a sync's state in order; the index may still hold the invite
            # that the same window's join replaced (seen under load: a joined bot refused).
            member = room.users.get(self.user_id)
            if content.get("membership") == "invite" and member is not None and not member.invited:
                return "join"
        if room_id in self._sync.invites:
            return "invite"
        content = self.index.state(room_id, "m.room.member", self.user_id) or {}
        found = content.get("membership")
        return found if isinstance(found, str) and found != "join" else None

    async def _check(self, resp: Any, what: str) -> Any:
        if is_error(resp):
            raise HomeserverError(f"could not {what}: {resp.message}", errcode=resp.status_code)
        return resp

    # -- sending (datarooms.sdk._send) -----------------------------------------------

    async def ensure_room(self, room_id: str) -> None:
        """Make sure nio knows the room (we are in it); sync once if needed."""
        await self._sender.ensure_room(room_id)

    async def send(
        self, room_id: str, event_type: str, content: dict[str, Any], *, txn_id: str | None = None
    ) -> EventID:
        """Send an event, encrypted if the room is (it always is for data rooms).

        In an encrypted room the Megolm session is prepared by us, never by nio:
        members are synced and changed device lists queried first (so every
        current device is known), the trust policy decides which devices get
        the key, the session is backed up when backup is on, and only then is
        the event encrypted, under the same lock, and sent. Returns the event id.
        Nothing is ever sent to a room that is not end-to-end encrypted.
        """
        return EventID(await self._sender.send(room_id, event_type, content, txn_id))
