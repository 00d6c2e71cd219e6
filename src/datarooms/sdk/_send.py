"""The send path: prepare the room's Megolm session, encrypt, never in the clear, PUT.

In an encrypted room the Megolm session is prepared by us, never by nio: members
are synced and changed device lists queried first (so every current device is
known), the trust policy decides which devices get the key, the session is backed
up when backup is on, and only then is the event encrypted, under the room's
lock, and sent.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import TYPE_CHECKING, Any

from datarooms.errors import AccessDeniedError, HomeserverError, NotFoundError
from datarooms.sdk.keys import outbound

if TYPE_CHECKING:
    from datarooms.sdk.client import DataroomsClient


class Sender:
    def __init__(self, client: DataroomsClient) -> None:
        self._c = client
        self._share_locks: dict[str, asyncio.Lock] = {}
        #: The outbound session id this process last held per room: nio's
        #: ``invalidate_outbound_session`` (a revoke, a trust change) drops it from
        #: memory, and then the persisted copy must not come back.
        self._held: dict[str, str] = {}

    async def ensure_room(self, room_id: str) -> None:
        c = self._c
        if room_id not in c.nio.rooms:
            await c.sync_once()
        if room_id not in c.nio.rooms:
            raise NotFoundError(
                f"room {room_id} is unknown to {c.user_id}: not a member, or it does not exist"
            )

    async def send(
        self, room_id: str, event_type: str, content: dict[str, Any], txn_id: str | None
    ) -> str:
        nio = self._c.nio
        await self.ensure_room(room_id)
        await self._c.rooms.require_encrypted(room_id)  # the SDK's one guard
        lock = self._share_locks.setdefault(room_id, asyncio.Lock())
        async with lock, outbound.room_file_lock(self._c.store_dir, room_id):
            await self._prepare_session(room_id)
            try:
                enc_type, enc_content = nio.encrypt(room_id, event_type, content)
            except Exception:  # the session was invalidated meanwhile: prepare a new one
                await self._prepare_session(room_id)
                enc_type, enc_content = nio.encrypt(room_id, event_type, content)
            self._persist_session(room_id)  # before the lock goes: the index moved on
        if event_type == "m.reaction":
            # The spec copies m.relates_to outside the ciphertext so servers can
            # aggregate; for an annotation that shows the server what was written
            # (its `key`), and Synapse refuses an annotation without one. So
            # reactions carry their relation only inside the ciphertext.
            enc_content.pop("m.relates_to", None)
        return await self.put_event(room_id, event_type, enc_type, enc_content, txn_id)

    async def put_event(
        self,
        room_id: str,
        event_type: str,
        wire_type: str,
        content: dict[str, Any],
        txn_id: str | None,
    ) -> str:
        c = self._c
        txn = txn_id or secrets.token_hex(16)
        path = f"/_matrix/client/v3/rooms/{room_id}/send/{wire_type}/{txn}"
        async with c.http() as http:
            try:
                res = await http.request("PUT", path, json=content)
            except HomeserverError as exc:
                if exc.errcode == "M_FORBIDDEN":
                    raise AccessDeniedError(
                        f"{c.user_id} may not send {event_type} to {room_id}"
                    ) from None
                raise
        return str(res["event_id"])

    async def _prepare_session(self, room_id: str) -> None:
        """Called under the room's share lock. See the module doc."""
        c = self._c
        nio = c.nio
        olm = nio.olm
        if olm is None:
            return
        room = nio.rooms[room_id]
        if not room.members_synced:
            await c._check(await nio.joined_members(room_id), "list room members")
        if nio.should_query_keys:
            await c._check(await nio.keys_query(), "query device keys")
        shareable = outbound.history_shareable(c.index, room_id)
        members = set(room.users)
        held = self._held.get(room_id)
        row = c.index.outbound(room_id)
        if (
            held is not None
            and room_id not in olm.outbound_group_sessions
            and row is not None
            and row["session_id"] == held
        ):
            c.index.drop_outbound(room_id)  # invalidated in this process: rotate
        # The index holds the newest state of this device's session (another process
        # of this device may have used or rotated it): it replaces ours in memory.
        persisted = outbound.load(c.index, room_id, self._pickle_key, members, shareable)
        current = olm.outbound_group_sessions.get(room_id)
        if (
            persisted is not None
            and current is not None
            and current.id == persisted.id
            and current.message_index > persisted.message_index
        ):
            # This process went further with the same session (nio encrypted without us,
            # e.g. ``nio.room_send``): never step a session back to an index it used.
            persisted = current
        if persisted is not None:
            devices = {u: [d.id for d in olm.device_store.active_user_devices(u)] for u in members}
            if outbound.unshared_devices(persisted, devices, (c.user_id, c.device_id)):
                persisted.shared = False  # share it with those devices too (nio skips the rest)
            olm.outbound_group_sessions[room_id] = persisted
        else:
            olm.outbound_group_sessions.pop(room_id, None)
        if shareable:
            olm.shared_history_rooms.add(room_id)
        else:
            olm.shared_history_rooms.discard(room_id)
        if olm.should_share_group_session(room_id):
            await c.keys.apply_trust(room_id)
            missing = nio.get_missing_sessions(room_id)
            if missing:
                await c._check(await nio.keys_claim(missing), "claim one-time keys")
            await nio.share_group_session(room_id, ignore_unverified_devices=True)
            session = olm.outbound_group_sessions[room_id]
            # Members whose homeserver could not be reached (no device keys, or no
            # one-time keys): the session is owed to them until it is back.
            unreachable = {
                u
                for u in members
                if u != c.user_id
                and (
                    u in olm.users_for_key_query
                    or any(
                        not olm.session_store.get(d.curve25519)
                        for d in olm.device_store.active_user_devices(u)
                    )
                )
            }
            c.keys.sharing.owe(room_id, session.id, unreachable)
            session.max_age, session.max_messages = outbound.rotation_rules(c.index, room_id)
            if shareable:  # our own inbound copy carries the flag too
                own_key = olm.account.identity_keys["curve25519"]
                c.index.mark_shared([(room_id, own_key, session.id)], c.user_id)
            await c.keys.sharing.send_withheld(room_id, session.id)
            self._persist_session(room_id)
        await c.keys.backup_outbound(room_id)

    @property
    def _pickle_key(self) -> str:
        return str(self._c.nio.config.pickle_key)

    def _persist_session(self, room_id: str) -> None:
        nio = self._c.nio
        olm = nio.olm
        session = olm.outbound_group_sessions.get(room_id) if olm is not None else None
        if session is None or not session.shared:
            return
        self._held[room_id] = session.id
        members = set(nio.rooms[room_id].users)
        shareable = room_id in olm.shared_history_rooms
        outbound.save(self._c.index, room_id, session, self._pickle_key, members, shareable)
