"""Our Olm machine: nio's, subclassed (never patched) for history sharing.

What it adds to nio's ``Olm``:

- every Olm payload carries ``sender_device_keys`` (MSC4147: our signed device
  keys, exactly as uploaded), which MSC4268 bundles require;
- ``m.room_key`` carries ``"m.shared_history": true`` for rooms whose current
  history visibility is ``shared`` or ``world_readable`` (MSC3061, the stable
  name only: Rust rejects a payload with both names);
- received ``m.room_key`` events remember their ``m.shared_history`` flag, and
  received ``m.room_key_bundle`` events (nio drops event types it does not know)
  are kept for the SDK to persist;
- a keyed inbound group session store: ``add`` is O(1), and never replaces a copy
  that decrypts from an earlier message index.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from nio.api import Api
from nio.crypto import Olm
from nio.crypto.memorystores import GroupSessionStore
from nio.crypto.olm_machine import encode_base64
from nio.crypto.sessions import InboundGroupSession
from nio.events import ForwardedRoomKeyEvent
from nio.store import DefaultStore, MatrixStore, use_database
from nio.store.models import ForwardedChains, MegolmInboundSessions
from peewee import EXCLUDED, SqliteDatabase  # nio's ORM

log = logging.getLogger(__name__)

BUNDLE_TYPES = ("m.room_key_bundle", "io.element.msc4268.room_key_bundle")
SHARED_HISTORY = "m.shared_history"
_SHARED_ALIASES = (SHARED_HISTORY, "org.matrix.msc3061.shared_history")


class KeyedGroupSessionStore(GroupSessionStore):  # type: ignore[misc]
    """nio's store with an O(1) ``add`` that keeps the better of two copies."""

    def add(self, session: InboundGroupSession) -> bool:
        sessions = self._entries[session.room_id][session.sender_key]
        held = sessions.get(session.id)
        if held is session:
            return False
        if held is not None and held.first_known_index <= session.first_known_index:
            return False
        sessions[session.id] = session
        return True

    def count(self) -> int:
        return sum(len(s) for room in self._entries.values() for s in room.values())

    def room_sessions(self, room_id: str) -> list[InboundGroupSession]:
        return [s for by_id in self._entries.get(room_id, {}).values() for s in by_id.values()]


class KeyedStore(DefaultStore):  # type: ignore[misc]
    """nio's default crypto store, loading inbound sessions into a keyed store:
    nio's own load adds each session with an O(n) scan (1.5 s at 10k sessions).

    Opened so that several processes of one device can use it at once (``datarooms
    tail`` beside ``datarooms send``): write-ahead logging, so readers never block the
    writer, and a busy timeout instead of "database is locked"."""

    def _create_database(self) -> SqliteDatabase:
        return SqliteDatabase(
            self.database_path,
            timeout=30,
            pragmas={
                "foreign_keys": 1,
                "secure_delete": 1,
                "journal_mode": "wal",
                "busy_timeout": 30_000,
            },
        )

    @use_database  # type: ignore[untyped-decorator]
    def load_inbound_group_sessions(self) -> KeyedGroupSessionStore:
        store = KeyedGroupSessionStore()
        account = self._get_account()
        if not account:
            return store
        for s in account.inbound_group_sessions:
            session = InboundGroupSession.from_pickle(
                s.session,
                s.fp_key,
                s.sender_key,
                s.room_id,
                self.pickle_key,
                [chain.sender_key for chain in s.forwarded_chains],
            )
            store.add(session)
            if session.upgrade_pickle:
                session.upgrade_pickle = False
                self.save_inbound_group_session(session)
        return store

    @use_database  # type: ignore[untyped-decorator]
    def save_inbound_group_sessions(self, sessions: list[InboundGroupSession]) -> None:
        """nio's ``save_inbound_group_session`` for many sessions, in one transaction
        and a few statements (an import of 10k sessions: 4 queries each otherwise)."""
        account = self._get_account()
        assert account
        rows = [
            {
                "sender_key": s.sender_key,
                "account": account,
                "fp_key": s.ed25519,
                "room_id": s.room_id,
                "session": s.pickle(self.pickle_key),
                "session_id": s.id,
            }
            for s in sessions
        ]
        chains = [
            {"sender_key": key, "session": s.id} for s in sessions for key in s.forwarding_chain
        ]
        with self.database.atomic():
            for i in range(0, len(rows), _ROWS):
                MegolmInboundSessions.insert_many(rows[i : i + _ROWS]).on_conflict(
                    conflict_target=[MegolmInboundSessions.session_id],
                    update={MegolmInboundSessions.session: EXCLUDED.session},
                ).execute()
            for i in range(0, len(chains), _ROWS):
                ForwardedChains.insert_many(chains[i : i + _ROWS]).on_conflict_replace().execute()


_ROWS = 150  # rows per INSERT: 6 variables each, under SQLite's oldest 999 limit


def save_sessions(store: MatrixStore, sessions: list[InboundGroupSession]) -> None:
    """Save imported sessions to the crypto store in one transaction."""
    if isinstance(store, KeyedStore):
        store.save_inbound_group_sessions(sessions)
        return
    with store.database.bind_ctx(store.models), store.database.atomic():
        for session in sessions:
            store.save_inbound_group_session(session)


class DataroomsOlm(Olm):  # type: ignore[misc]
    """nio's Olm machine plus MSC4147 / MSC3061 / MSC4268 (see the module doc)."""

    def __init__(self, user_id: str, device_id: str, store: MatrixStore) -> None:
        #: Rooms whose outbound session is shared with ``m.shared_history: true``.
        self.shared_history_rooms: set[str] = set()
        #: (room_id, sender_key, session_id) of received keys flagged shared, to persist.
        self.received_shared: list[tuple[str, str, str]] = []
        #: Decrypted ``m.room_key_bundle`` payloads (with ``sender_key``), to persist.
        self.received_bundles: list[dict[str, Any]] = []
        super().__init__(user_id, device_id, store)

    def load(self) -> None:
        super().load()
        if isinstance(self.inbound_group_store, KeyedGroupSessionStore):  # type: ignore[has-type]
            return
        keyed = KeyedGroupSessionStore()
        loaded: GroupSessionStore = self.inbound_group_store  # type: ignore[has-type]
        for session in loaded:
            keyed.add(session)
        self.inbound_group_store = keyed

    def signed_device_keys(self) -> dict[str, Any]:
        """Our device keys as uploaded (ed25519 signatures are deterministic)."""
        keys: dict[str, Any] = {
            "algorithms": self._algorithms,
            "device_id": self.device_id,
            "user_id": self.user_id,
            "keys": {
                "curve25519:" + self.device_id: self.account.identity_keys["curve25519"],
                "ed25519:" + self.device_id: self.account.identity_keys["ed25519"],
            },
        }
        keys["signatures"] = {self.user_id: {"ed25519:" + self.device_id: self.sign_json(keys)}}
        return keys

    def _olm_encrypt(
        self, session: Any, recipient_device: Any, message_type: str, content: dict[str, Any]
    ) -> dict[str, Any]:
        if message_type == "m.room_key" and content.get("room_id") in self.shared_history_rooms:
            content = {**content, SHARED_HISTORY: True}
        return self.olm_encrypt_payload(session, recipient_device, message_type, content)

    def olm_encrypt_payload(
        self, session: Any, recipient_device: Any, message_type: str, content: dict[str, Any]
    ) -> dict[str, Any]:
        """nio's Olm payload, with ``sender_device_keys``, encrypted for one device."""
        payload = {
            "sender": self.user_id,
            "sender_device": self.device_id,
            "keys": {"ed25519": self.account.identity_keys["ed25519"]},
            "recipient": recipient_device.user_id,
            "recipient_keys": {"ed25519": recipient_device.ed25519},
            "sender_device_keys": self.signed_device_keys(),
            "type": message_type,
            "content": content,
        }
        message = session.encrypt(_to_json(payload))
        self.store.save_session(recipient_device.curve25519, session)
        mtype, ciphertext = message.to_parts()
        return {
            "algorithm": self._olm_algorithm,
            "sender_key": self.account.identity_keys["curve25519"],
            "ciphertext": {
                recipient_device.curve25519: {"type": mtype, "body": encode_base64(ciphertext)}
            },
        }

    def _own_forward(
        self, sender: str, sender_key: str, payload: dict[str, Any]
    ) -> ForwardedRoomKeyEvent | None:
        session = _forward_from_creator(self, sender, sender_key, payload["content"])
        if session is None:
            return None
        if self.inbound_group_store.add(session):
            self.save_inbound_group_session(session)
            log.info(
                "imported a room key its creator owed us",
                extra={"room": session.room_id, "sender": sender},
            )
        event = ForwardedRoomKeyEvent.from_dict(payload, sender, sender_key)
        return event if isinstance(event, ForwardedRoomKeyEvent) else None

    def _handle_olm_event(self, sender: str, sender_key: str, payload: dict[str, Any]) -> Any:
        etype = payload.get("type")
        content = payload.get("content")
        if etype in BUNDLE_TYPES and isinstance(content, dict):
            if isinstance(content.get("room_id"), str) and isinstance(content.get("file"), dict):
                self.received_bundles.append(
                    {**copy.deepcopy(payload), "sender_key": sender_key, "type": etype}
                )
            else:
                log.warning("ignoring a malformed room key bundle", extra={"sender": sender})
            return None
        if etype == "m.forwarded_room_key" and isinstance(content, dict):
            own = self._own_forward(sender, sender_key, payload)
            if own is not None:
                return own
        event = super()._handle_olm_event(sender, sender_key, payload)
        if etype == "m.room_key" and isinstance(content, dict):
            if any(content.get(k) is True for k in _SHARED_ALIASES):
                room_id, session_id = content.get("room_id"), content.get("session_id")
                if isinstance(room_id, str) and isinstance(session_id, str):
                    self.received_shared.append((room_id, sender_key, session_id))
        return event


def _forward_from_creator(
    olm: DataroomsOlm, sender: str, sender_key: str, content: dict[str, Any]
) -> InboundGroupSession | None:
    """A session its creator's device sent us itself (an owed key, see
    ``HistorySharing.pay_owed``): as trustworthy as the ``m.room_key`` that device would
    have sent, since the Olm channel proves the sending device is the session's creator
    (``sender_key``) and its device keys vouch for the signing key. Anything else (a
    forward of someone else's session, a chain, a mismatched key) is nio's to judge."""
    if (
        content.get("algorithm") != "m.megolm.v1.aes-sha2"
        or content.get("forwarding_curve25519_key_chain")
        or content.get("sender_key") != sender_key
    ):
        return None
    device = olm.device_store.device_from_sender_key(sender, sender_key)
    room_id, session_key = content.get("room_id"), content.get("session_key")
    if (
        device is None
        or device.user_id != sender
        or content.get("sender_claimed_ed25519_key") != device.ed25519
        or not isinstance(room_id, str)
        or not isinstance(session_key, str)
    ):
        return None
    session = Olm._import_group_session(session_key, device.ed25519, sender_key, room_id, [])
    if session is None or session.id != content.get("session_id"):
        return None
    return session


def _to_json(obj: Any) -> str:
    return str(Api.to_json(obj))
