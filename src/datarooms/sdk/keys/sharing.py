"""History sharing (MSC4268 key bundles) and withheld notices.

Sending (on a grant, when the room's current history visibility is ``shared`` or
``world_readable``): every session of the room this device may share (flagged
``m.shared_history`` when created or received, see ``index.shared_sessions``)
goes into ``room_keys`` (exported at its first known index, export format v1),
every other one into ``withheld`` as ``m.history_not_shared``. The JSON blob is
encrypted as an attachment (EncryptedFile v2), uploaded, and ``m.room_key_bundle``
``{room_id, file}`` is sent over Olm (with ``sender_device_keys``) to each device
of the invitee that the invitee cross-signed.

Receiving: a bundle is persisted when it arrives (``key_bundles``). It is used
only when we join a room after an invite from the bundle's sender, once, and
within 24 h of the join (as matrix-js-sdk): the sender's device must be
cross-signed by its owner, the blob must match its hash and be at most
:data:`MAX_BUNDLE_BYTES`, and only keys of that room are imported, never over a
copy that decrypts from an earlier index.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

from nio.crypto.sessions import InboundGroupSession

from datarooms.errors import DataroomsError
from datarooms.sdk.attachments import (
    EncryptedFile,
    download_decrypted_bytes,
    upload_encrypted,
)
from datarooms.sdk.keys.olm import (
    BUNDLE_TYPES,
    DataroomsOlm,
    KeyedGroupSessionStore,
    save_sessions,
)
from datarooms.sdk.keys.outbound import history_shareable

if TYPE_CHECKING:
    from datarooms.sdk.client import DataroomsClient

log = logging.getLogger(__name__)

MEGOLM = "m.megolm.v1.aes-sha2"
MAX_BUNDLE_BYTES = 16 * 1024 * 1024
BUNDLE_WINDOW_MS = 24 * 3600 * 1000
WITHHELD = "m.room_key.withheld"
#: Index meta: ``{room_id: {session_id: [user_id, ...]}}`` of sessions owed to members.
OWED_META = "owed_room_keys"
_REASONS = {
    "m.unverified": "The sender's trust policy excludes this device (not cross-signed or "
    "not verified).",
    "m.blacklisted": "The sender has blocked this device.",
    "m.unauthorised": "You are not authorised to read the message.",
    "m.history_not_shared": "The sender disabled sharing encrypted history.",
}


def _now_ms() -> int:
    return int(time.time() * 1000)


class HistorySharing:
    def __init__(self, client: DataroomsClient) -> None:
        self._c = client
        self._tasks: set[asyncio.Task[int]] = set()
        self._resumed = False
        self._paid_at = float("-inf")

    @property
    def _olm(self) -> DataroomsOlm:
        olm = self._c.nio.olm
        assert isinstance(olm, DataroomsOlm), "the SDK's nio client runs DataroomsOlm"
        return olm

    # -- withheld ---------------------------------------------------------------

    async def send_withheld(self, room_id: str, session_id: str) -> int:
        """Tell each device of the room's members that was refused this session why."""
        c, olm = self._c, self._olm
        room = c.nio.rooms.get(room_id)
        if room is None:
            return 0
        messages: dict[str, dict[str, Any]] = {}
        for user in room.users:
            for d in c.nio.device_store.active_user_devices(user):
                if (user, d.id) == (c.user_id, c.device_id) or not olm.is_device_blacklisted(d):
                    continue
                code = "m.unverified" if c.keys.trust != "all" else "m.blacklisted"
                messages.setdefault(user, {})[d.id] = self._withheld(room_id, session_id, code)
        if messages:
            await self._to_device(WITHHELD, messages)
            log.info(
                "sent withheld notices",
                extra={"room": room_id, "devices": sum(len(v) for v in messages.values())},
            )
        return sum(len(v) for v in messages.values())

    def _withheld(self, room_id: str, session_id: str, code: str, sender_key: str = "") -> Any:
        return {
            "algorithm": MEGOLM,
            "room_id": room_id,
            "session_id": session_id,
            "sender_key": sender_key or self._olm.account.identity_keys["curve25519"],
            "code": code,
            "reason": _REASONS[code],
            "from_device": self._c.device_id,
        }

    async def _to_device(self, event_type: str, messages: dict[str, dict[str, Any]]) -> None:
        async with self._c.http() as http:
            await http.request(
                "PUT",
                f"/_matrix/client/v3/sendToDevice/{event_type}/{secrets.token_hex(16)}",
                json={"messages": messages},
            )

    # -- keys owed to members whose homeserver could not be reached ---------------------

    def owe(self, room_id: str, session_id: str, users: set[str]) -> None:
        """Remember that ``users`` (members of ``room_id``) did not get ``session_id``:
        their homeserver was unreachable (another organisation's, down), so their device
        keys or one-time keys could not be fetched. Persisted: :meth:`pay_owed` sends the
        session (from its first index) once their devices can be reached again."""
        if not users:
            return
        owed = self._owed()
        entry = owed.setdefault(room_id, {})
        entry[session_id] = sorted(set(entry.get(session_id, [])) | users)
        self._c.index.set_meta(OWED_META, json.dumps(owed))
        log.warning(
            "members' homeservers are unreachable: the room key goes to them once they are back",
            extra={"room": room_id, "users": len(users)},
        )

    def _owed(self) -> dict[str, dict[str, list[str]]]:
        text = self._c.index.get_meta(OWED_META)
        return json.loads(text) if text else {}

    @property
    def owes(self) -> bool:
        return bool(self._c.index.get_meta(OWED_META) not in (None, "{}"))

    async def pay_owed(self, *, every_s: float = 5.0) -> int:
        """Send owed sessions to the devices (cross-signed by their owner) of members that
        can be reached now, as ``m.forwarded_room_key`` from this device, the sessions'
        creator (receivers accept that from the creator's own device only). At most once
        every ``every_s`` seconds; returns the devices sent to."""
        now = time.monotonic()
        if now - self._paid_at < every_s or not self.owes:
            return 0
        self._paid_at = now
        c, olm = self._c, self._olm
        owed = self._owed()
        own_key = olm.account.identity_keys["curve25519"]
        users = sorted({u for sessions in owed.values() for us in sessions.values() for u in us})
        try:
            res = await c.keys.query_keys(users)
        except DataroomsError as exc:
            log.info("owed room keys: cannot query devices yet", extra={"error": str(exc)})
            return 0
        failed = set(res.get("failures", {}))
        reachable = {u for u in users if u.split(":", 1)[1] not in failed}
        signed = {u: c.keys.cross_signed_devices(u, res) for u in reachable}
        olm.users_for_key_query.update(reachable)
        await c._check(await c.nio.keys_query(), "query device keys")
        devices = {
            u: [d for d in c.nio.device_store.active_user_devices(u) if d.id in signed[u]]
            for u in reachable
        }
        missing = {
            u: [d.id for d in ds if not olm.session_store.get(d.curve25519)]
            for u, ds in devices.items()
        }
        missing = {u: ids for u, ids in missing.items() if ids}
        if missing:
            claimed = await c.nio.keys_claim(missing)
            failed |= set(getattr(claimed, "failures", {}) or {})
        sent_to = 0
        paid: set[tuple[str, str, str]] = set()
        for room_id, sessions in owed.items():
            for session_id, members in sessions.items():
                # One to-device request per session: a request holds one message a device.
                messages: dict[str, dict[str, Any]] = {}
                group = olm.inbound_group_store.get(room_id, own_key, session_id)
                for user in members:
                    if user not in reachable or user.split(":", 1)[1] in failed:
                        continue
                    sent = False
                    for d in devices.get(user, []):
                        olm_session = olm.session_store.get(d.curve25519)
                        if olm_session is None or group is None:
                            continue
                        content = {
                            "algorithm": MEGOLM,
                            "forwarding_curve25519_key_chain": [],
                            "room_id": room_id,
                            "sender_claimed_ed25519_key": group.ed25519,
                            "sender_key": group.sender_key,
                            "session_id": group.id,
                            "session_key": group.export_session(group.first_known_index),
                        }
                        messages.setdefault(user, {})[d.id] = olm.olm_encrypt_payload(
                            olm_session, d, "m.forwarded_room_key", content
                        )
                        sent = True
                    if sent or group is None or not devices.get(user):
                        paid.add((room_id, session_id, user))
                if messages:
                    await self._to_device("m.room.encrypted", messages)
                    sent_to += sum(len(v) for v in messages.values())
        for room_id, session_id, user in paid:
            left = [u for u in owed[room_id][session_id] if u != user]
            if left:
                owed[room_id][session_id] = left
            else:
                del owed[room_id][session_id]
            if not owed[room_id]:
                del owed[room_id]
        c.index.set_meta(OWED_META, json.dumps(owed))
        n = sent_to
        if n:
            log.info("sent owed room keys", extra={"devices": n, "still_owed": len(owed)})
        return n

    # -- sending a bundle ----------------------------------------------------------

    def build_bundle(self, room_id: str) -> dict[str, Any]:
        """The bundle blob of ``room_id``: shareable sessions, and withheld entries."""
        olm = self._olm
        store = olm.inbound_group_store
        sessions = (
            store.room_sessions(room_id)
            if isinstance(store, KeyedGroupSessionStore)
            else [s for s in store if s.room_id == room_id]
        )
        shared = self._c.index.shared_sessions(room_id)
        room_keys: list[dict[str, Any]] = []
        withheld: list[dict[str, Any]] = []
        for s in sessions:
            if s.id in shared:
                room_keys.append(
                    {
                        "algorithm": MEGOLM,
                        "room_id": room_id,
                        "sender_key": s.sender_key,
                        "session_id": s.id,
                        "session_key": s.export_session(s.first_known_index),
                        "sender_claimed_keys": {"ed25519": s.ed25519},
                    }
                )
            else:
                withheld.append(self._withheld(room_id, s.id, "m.history_not_shared", s.sender_key))
        return {"room_keys": room_keys, "withheld": withheld}

    async def share_history(self, room_id: str, user_id: str) -> int:
        """Send ``user_id`` this room's shareable keys (a bundle); returns the devices sent
        to. Nothing when the current visibility is not shared/world_readable."""
        c = self._c
        if not history_shareable(c.index, room_id):
            log.info(
                "the room's history visibility shares no history: no key bundle",
                extra={"room": room_id},
            )
            return 0
        if c.keys.backup_enabled and c.index.pending_in_room(room_id):
            # History this device cannot decrypt: its sessions may be in the backup.
            try:
                await c.keys.restore_room(room_id)
            except DataroomsError as exc:  # share what this device has
                log.warning(
                    "could not read the key backup before sharing history",
                    extra={"room": room_id, "error": str(exc)},
                )
        bundle = self.build_bundle(room_id)
        res = await c.keys.query_keys([user_id])
        signed = c.keys.cross_signed_devices(user_id, res)
        if not signed:
            log.warning(
                "the invitee has no cross-signed device: no key bundle sent",
                extra={"user": user_id, "room": room_id},
            )
            return 0
        nio, olm = c.nio, self._olm
        olm.users_for_key_query.add(user_id)
        await c._check(await nio.keys_query(), "query device keys")
        devices = [d for d in nio.device_store.active_user_devices(user_id) if d.id in signed]
        missing = {user_id: [d.id for d in devices if not olm.session_store.get(d.curve25519)]}
        if missing[user_id]:
            await c._check(await nio.keys_claim(missing), "claim one-time keys")
        blob = json.dumps(bundle, separators=(",", ":")).encode()
        uploaded = await upload_encrypted(c.homeserver_url, c.access_token, blob)
        content = {"room_id": room_id, "file": uploaded.file.to_json()}
        messages: dict[str, dict[str, Any]] = {}
        for d in devices:
            session = olm.session_store.get(d.curve25519)
            if session is None:
                log.warning("no Olm session with a device: no bundle", extra={"device": d.id})
                continue
            encrypted = olm.olm_encrypt_payload(session, d, BUNDLE_TYPES[0], content)
            messages.setdefault(user_id, {})[d.id] = encrypted
        if messages:
            await self._to_device("m.room.encrypted", messages)
        n = len(messages.get(user_id, {}))
        log.info(
            "sent a room key bundle",
            extra={
                "room": room_id,
                "user": user_id,
                "devices": n,
                "keys": len(bundle["room_keys"]),
            },
        )
        return n

    # -- receiving -------------------------------------------------------------------

    def take_received(self) -> None:
        """Persist what the Olm machine received this round (bundles, shared flags)."""
        olm = self._c.nio.olm
        if not isinstance(olm, DataroomsOlm):
            return
        index = self._c.index
        if not self._resumed:
            # A join whose import did not finish (the process ended): resume it.
            self._resumed = True
            for room_id, (inviter, _) in index.pending_joins().items():
                if index.bundle(room_id, inviter) is not None:
                    self._spawn(room_id)
        if olm.received_shared:
            rows, olm.received_shared = olm.received_shared, []
            index.mark_shared(rows)
        bundles, olm.received_bundles = olm.received_bundles, []
        for payload in bundles:
            room_id = payload["content"]["room_id"]
            sender = str(payload.get("sender", ""))
            index.put_bundle(room_id, sender, json.dumps(payload), _now_ms())
            log.info("received a room key bundle", extra={"room": room_id, "sender": sender})
            pending = index.pending_joins().get(room_id)
            if pending is not None and pending[0] == sender:
                self._spawn(room_id)

    def _spawn(self, room_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self.accept(room_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def joined(self, room_id: str, inviter: str | None) -> None:
        if inviter:
            self._c.index.set_join(room_id, inviter, _now_ms())

    async def accept(self, room_id: str) -> int:
        """Import the pending bundle of a room we joined after an invite; once."""
        c = self._c
        index = c.index
        pending = index.pending_joins().get(room_id)
        if pending is None:
            return 0
        inviter, joined_ms = pending
        text = index.bundle(room_id, inviter)
        if text is None:
            if _now_ms() - joined_ms > BUNDLE_WINDOW_MS:
                index.drop_join(room_id)
            return 0  # it may still come
        try:
            if _now_ms() - joined_ms > BUNDLE_WINDOW_MS:
                raise DataroomsError("the bundle came more than 24 h after the join")
            return await self._import(room_id, inviter, json.loads(text))
        except Exception as exc:
            log.warning(
                "rejected a room key bundle; nothing imported",
                extra={"room": room_id, "sender": inviter, "error": str(exc)},
            )
            return 0
        finally:
            index.drop_join(room_id)
            index.drop_bundle(room_id, inviter)

    async def _import(self, room_id: str, inviter: str, payload: dict[str, Any]) -> int:
        c, olm = self._c, self._olm
        content = payload.get("content") or {}
        if payload.get("sender") != inviter or content.get("room_id") != room_id:
            raise DataroomsError("the bundle's sender or room does not match the invite")
        sender_key = str(payload.get("sender_key", ""))
        res = await c.keys.query_keys([inviter])
        signed = c.keys.cross_signed_devices(inviter, res)
        device = None
        for dev_id, keys in res.get("device_keys", {}).get(inviter, {}).items():
            if keys.get("keys", {}).get(f"curve25519:{dev_id}") == sender_key:
                device = (dev_id, keys.get("keys", {}).get(f"ed25519:{dev_id}"))
        if device is None or device[0] not in signed:
            raise DataroomsError("the bundle's sending device is not cross-signed by its owner")
        if (payload.get("keys") or {}).get("ed25519") != device[1]:
            raise DataroomsError("the bundle's signing key does not match the sending device")
        file = EncryptedFile.from_json(content.get("file"))
        blob = await download_decrypted_bytes(
            c.homeserver_url, c.access_token, file, max_size=MAX_BUNDLE_BYTES
        )
        data = json.loads(blob)
        keys = data.get("room_keys")
        if not isinstance(keys, list) or not isinstance(data.get("withheld"), list):
            raise DataroomsError("the bundle has no room_keys/withheld lists")
        store = olm.inbound_group_store
        nio_store = c.nio.store
        assert nio_store is not None
        to_save: list[InboundGroupSession] = []
        dropped = 0
        for k in keys:
            if not isinstance(k, dict) or k.get("room_id") != room_id:
                dropped += 1
                continue
            try:
                if k.get("algorithm") != MEGOLM:
                    continue
                s = InboundGroupSession.import_session(
                    k["session_key"],
                    k["sender_claimed_keys"]["ed25519"],
                    k["sender_key"],
                    room_id,
                    [sender_key],
                )
            except Exception as exc:
                log.warning("skipping a bad key in a bundle", extra={"error": str(exc)})
                continue
            if s.id != k.get("session_id"):
                log.warning("skipping a bundle key with a wrong session id", extra={})
                continue
            held = store.get(room_id, s.sender_key, s.id)
            if held is None or held.first_known_index > s.first_known_index:
                to_save.append(s)
        if dropped:
            log.warning(
                "dropped keys of other rooms from a bundle",
                extra={"room": room_id, "dropped": dropped},
            )
        save_sessions(nio_store, to_save)
        for s in to_save:
            store.add(s)
        c.index.mark_shared([(room_id, s.sender_key, s.id) for s in to_save], inviter)
        log.info(
            "imported a room key bundle (%d keys, %d withheld)",
            len(to_save),
            len(data["withheld"]),
            extra={"room": room_id, "sender": inviter, "keys": len(to_save)},
        )
        if c.keys.backup_enabled and to_save:
            await c.keys.backup_sessions(to_save)
        c._sync.retry_decryption(room_id, reload=False)  # the sessions are in memory
        return len(to_save)
