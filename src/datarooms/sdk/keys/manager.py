"""``client.keys``: cross-signing, secret storage, key backup, recovery, trust.

Keys are data: losing a Megolm session loses what it encrypted. So:

- every device of ours **cross-signs itself** when it opens (a new account gets
  master, self-signing and user-signing keys; a device of an account that has
  them is signed once it holds the self-signing key, e.g. after ``unlock``);
- :meth:`KeyManager.setup_recovery` puts the cross-signing keys and a new
  **backup key** into secret storage under a recovery key, shown once;
- with backup on, every Megolm session this device creates is backed up
  **before** the first event it encrypts is sent, and every session it
  receives is backed up after the sync that brought it;
- :meth:`KeyManager.restore` brings all of an account's history to a new
  device with only the recovery key;
- the **trust policy** decides which devices receive room keys: ``all``,
  ``cross-signed`` (the spec's recommendation, the default) or ``verified``;
- a user's identity (master key) is trusted on first use; a change is recorded
  and surfaced, and that user's devices get no keys until it is accepted;
- ``keys.verification`` verifies another device interactively (SAS, emoji or
  decimal; to-device or in a room), see :mod:`datarooms.sdk.keys.verification`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from nio.crypto.sessions import InboundGroupSession

from datarooms._fs import atomic_write
from datarooms.errors import DataroomsError, HomeserverError, NotFoundError, ValidationError
from datarooms.sdk.keys import ssss
from datarooms.sdk.keys.backup import ALGORITHM as BACKUP_ALGORITHM
from datarooms.sdk.keys.backup import MEGOLM, BackupKey, encrypt_session, session_payload
from datarooms.sdk.keys.olm import SHARED_HISTORY, save_sessions
from datarooms.sdk.keys.recovery import decode_recovery_key, encode_recovery_key, new_key
from datarooms.sdk.keys.sharing import HistorySharing
from datarooms.sdk.keys.signing import SigningKey, canonical_json, decode_b64, verify_json
from datarooms.sdk.keys.verification import Verifier

if TYPE_CHECKING:
    from datarooms.sdk.client import DataroomsClient
    from datarooms.sdk.ucan.did import Principal

log = logging.getLogger(__name__)

TrustPolicy = Literal["all", "cross-signed", "verified"]
TRUST_POLICIES: tuple[str, ...] = ("all", "cross-signed", "verified")

SECRET_NAMES = {
    "master": "m.cross_signing.master",
    "self_signing": "m.cross_signing.self_signing",
    "user_signing": "m.cross_signing.user_signing",
    "backup": "m.megolm_backup.v1",
    # The issuer key of this account's claims (its did:key), see datarooms.sdk.claims.
    "claims": "io.datarooms.claims.signing",
    #: The device's UCAN signing key (did:key, Ed25519), docs/auth.md.
    "ucan": "io.datarooms.ucan.ed25519",
}
_UPLOAD_CHUNK = 250


class IdentityChangedError(DataroomsError):
    errcode = "DR_IDENTITY_CHANGED"
    http_status = 409


@dataclass
class KeyStatus:
    user_id: str
    device_id: str
    cross_signing: bool
    master_key: str | None
    device_cross_signed: bool
    holds_cross_signing_keys: bool
    secret_storage: bool
    backup_version: str | None
    backup_enabled: bool
    backed_up_sessions: int
    local_sessions: int
    trust_policy: str
    changed_identities: list[str] = field(default_factory=list)
    #: Devices (of any user) this device has verified interactively (SAS).
    verified_devices: int = 0


@dataclass
class DeviceTrust:
    """How this device sees one device of a user."""

    user_id: str
    device_id: str
    display_name: str
    ed25519: str
    #: Verified here by SAS (``keys verify``).
    verified: bool
    #: Signed by its owner's self-signing key, under the identity trusted here.
    cross_signed: bool
    #: Gets room keys under the current trust policy.
    trusted: bool


class KeyManager:
    def __init__(self, client: DataroomsClient, trust: TrustPolicy = "cross-signed") -> None:
        if trust not in TRUST_POLICIES:
            raise ValidationError(f"trust policy must be one of {', '.join(TRUST_POLICIES)}")
        self._c = client
        self.trust: TrustPolicy = trust
        self._secrets_path = client.store_dir / "secrets.json"
        self._secrets: dict[str, str] = self._load_secrets()
        self._backup_lock = asyncio.Lock()
        self._backed: tuple[str, set[str]] | None = None  # (version, session ids), cached
        #: Interactive verification (SAS); hooked into the client's sync from here on.
        self.verification = Verifier(client)
        #: History sharing on grant (MSC4268 key bundles) and withheld notices.
        self.sharing = HistorySharing(client)

    # -- local secrets (mode 0600, beside the crypto store) ----------------------

    def _load_secrets(self) -> dict[str, str]:
        try:
            data = json.loads(self._secrets_path.read_text())
            return {str(k): str(v) for k, v in data.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise DataroomsError(f"the key file {self._secrets_path} is damaged: {exc}") from exc

    def _save_secrets(self) -> None:
        atomic_write(self._secrets_path, json.dumps(self._secrets), mode=0o600)

    def _key(self, name: str) -> SigningKey | None:
        seed = self._secrets.get(name)
        return SigningKey.from_seed(decode_b64(seed)) if seed else None

    def _claims_seed(self) -> bytes:
        seed = self._secrets.get("claims")
        if not seed:
            seed = _b64(SigningKey.generate().seed)
            self._secrets["claims"] = seed
            self._save_secrets()  # a key is data: persisted before anything is signed
        return decode_b64(seed)

    def claims_key(self) -> SigningKey:
        """This account's claims issuer key (Ed25519, its did:key names the issuer).

        Kept with the device (``secrets.json``, 0600) and stored in secret storage by
        :meth:`setup_recovery`, so :meth:`unlock` on a new device brings the same issuer
        back; created on first use when neither has one.
        """
        return SigningKey.from_seed(self._claims_seed())

    @property
    def backup_key(self) -> BackupKey | None:
        raw = self._secrets.get("backup")
        return BackupKey.from_bytes(decode_b64(raw)) if raw else None

    @property
    def backup_version(self) -> str | None:
        return self._secrets.get("backup_version")

    # -- homeserver calls ------------------------------------------------------

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        async with self._c.http() as http:
            return await http.request(method, path, json=body)

    async def query_keys(self, user_ids: Iterable[str]) -> dict[str, Any]:
        users = sorted(set(user_ids))
        if not users:
            return {}
        result: dict[str, Any] = await self._request(
            "POST", "/_matrix/client/v3/keys/query", {"device_keys": {u: [] for u in users}}
        )
        return result

    async def _account_data(self, event_type: str) -> dict[str, Any] | None:
        me = quote(self._c.user_id)
        try:
            data: dict[str, Any] = await self._request(
                "GET", f"/_matrix/client/v3/user/{me}/account_data/{event_type}"
            )
            return data
        except HomeserverError as exc:
            if exc.errcode == "M_NOT_FOUND":
                return None
            raise

    async def _set_account_data(self, event_type: str, content: dict[str, Any]) -> None:
        me = quote(self._c.user_id)
        await self._request(
            "PUT", f"/_matrix/client/v3/user/{me}/account_data/{event_type}", content
        )

    # -- cross-signing -----------------------------------------------------------

    async def bootstrap(self) -> None:
        """Make sure the account has cross-signing keys and this device is signed by them."""
        me = self._c.user_id
        res = await self.query_keys([me])
        master = res.get("master_keys", {}).get(me)
        if master is None:
            await self._create_cross_signing()
            res = await self.query_keys([me])
            master = res["master_keys"][me]
        mpub = _only_key(master)
        known = self._c.index.identity(me)
        if known is None:
            self._c.index.set_identity(me, mpub)
        elif known[0] != mpub and known[1] != mpub:
            self._c.index.set_identity(me, known[0], mpub)
            log.warning("this account's cross-signing identity changed", extra={"user": me})
        held = self._key("master")
        if held is not None and held.public == mpub:
            await self._sign_own_device(res)

    async def _create_cross_signing(self) -> None:
        me = self._c.user_id
        msk, ssk, usk = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()

        def key_obj(key: SigningKey, usage: str) -> dict[str, Any]:
            return {"user_id": me, "usage": [usage], "keys": {f"ed25519:{key.public}": key.public}}

        body = {
            "master_key": key_obj(msk, "master"),
            "self_signing_key": msk.sign_json(key_obj(ssk, "self_signing"), me),
            "user_signing_key": msk.sign_json(key_obj(usk, "user_signing"), me),
        }
        # Persist the private keys before publishing the public ones.
        self._secrets.update(
            master=_b64(msk.seed), self_signing=_b64(ssk.seed), user_signing=_b64(usk.seed)
        )
        self._save_secrets()
        try:
            await self._request("POST", "/_matrix/client/v3/keys/device_signing/upload", body)
        except HomeserverError as exc:
            if exc.status == 401:
                raise DataroomsError(
                    "the homeserver wants interactive authentication to set up cross-signing "
                    "for this account (it already had keys, or it requires it); reset them "
                    "from a client that can authenticate, or unlock with the recovery key"
                ) from None
            raise
        log.info("created cross-signing keys", extra={"user": me})

    async def _sign_own_device(self, res: dict[str, Any]) -> None:
        me, dev = self._c.user_id, self._c.device_id
        ssk = self._key("self_signing")
        device = res.get("device_keys", {}).get(me, {}).get(dev)
        if ssk is None or device is None:
            return
        if verify_json(device, me, ssk.public, ssk.public):
            return
        signed = ssk.sign_json(device, me)
        resp = await self._request(
            "POST", "/_matrix/client/v3/keys/signatures/upload", {me: {dev: signed}}
        )
        if resp.get("failures"):
            raise HomeserverError(f"signing this device was refused: {resp['failures']}")
        log.info("cross-signed this device", extra={"device": dev})

    def cross_signed_devices(self, user_id: str, res: dict[str, Any]) -> set[str]:
        """Device ids of ``user_id`` validly signed by their (trusted) self-signing key."""
        master = res.get("master_keys", {}).get(user_id)
        ssk = res.get("self_signing_keys", {}).get(user_id)
        if not master or not ssk:
            return set()
        mpub = _only_key(master)
        known = self._c.index.identity(user_id)
        if known is None:
            self._c.index.set_identity(user_id, mpub)  # trust on first use
        elif known[0] != mpub:
            if known[1] != mpub:
                self._c.index.set_identity(user_id, known[0], mpub)
                log.warning(
                    "a user's cross-signing identity changed; their devices get no "
                    "keys until it is accepted",
                    extra={"user": user_id},
                )
            return set()
        if not verify_json(ssk, user_id, mpub, mpub):
            return set()
        spub = _only_key(ssk)
        return {
            dev
            for dev, keys in res.get("device_keys", {}).get(user_id, {}).items()
            if verify_json(keys, user_id, spub, spub)
        }

    async def devices(self, user_id: str) -> list[DeviceTrust]:
        """Every device of ``user_id`` with valid keys, and whether it is verified/trusted."""
        nio = self._c.nio
        olm = nio.olm
        if olm is None:
            return []
        await self.verification._query(user_id)  # nio's device store, fresh
        res = await self.query_keys([user_id])
        signed = self.cross_signed_devices(user_id, res)
        out = []
        for d in sorted(nio.device_store.active_user_devices(user_id), key=lambda d: d.id):
            if (user_id, d.id) == (self._c.user_id, self._c.device_id):
                continue
            verified = bool(olm.is_device_verified(d))
            cross = d.id in signed
            trusted = self.trust == "all" or verified or (self.trust == "cross-signed" and cross)
            out.append(
                DeviceTrust(
                    user_id, d.id, d.display_name or "", d.ed25519, verified, cross, trusted
                )
            )
        return out

    async def sign_own_device(self, device_id: str) -> bool:
        """Cross-sign another device of our account (after verifying it interactively).

        Needs the self-signing key on this device. Returns whether a signature was
        published (False: no key here, or the device is signed already).
        """
        me = self._c.user_id
        ssk = self._key("self_signing")
        if ssk is None:
            return False
        res = await self.query_keys([me])
        device = res.get("device_keys", {}).get(me, {}).get(device_id)
        if device is None:
            raise NotFoundError(f"this account has no device {device_id}")
        if verify_json(device, me, ssk.public, ssk.public):
            return False
        signed = ssk.sign_json(device, me)
        resp = await self._request(
            "POST", "/_matrix/client/v3/keys/signatures/upload", {me: {device_id: signed}}
        )
        if resp.get("failures"):
            raise HomeserverError(f"signing device {device_id} was refused: {resp['failures']}")
        log.info("cross-signed another device of this account", extra={"device": device_id})
        return True

    async def verified_identity(
        self, user_id: str, master_key: str, master_obj: dict[str, Any]
    ) -> None:
        """A user's master key was verified interactively (its MAC checked in a SAS flow).

        That is the out-of-band check :meth:`accept_identity` asks for: a pending
        change to this key is accepted, a first sight is recorded. When this device
        holds our user-signing key, the master key is signed with it and the
        signature published, as other clients do (they then show the user as verified).
        """
        known = self._c.index.identity(user_id)
        if known is None or known[0] != master_key:
            self._c.index.set_identity(user_id, master_key)
        usk = self._key("user_signing")
        if usk is None or user_id == self._c.user_id:
            return
        signed = usk.sign_json(
            {k: v for k, v in master_obj.items() if k != "unsigned"}, self._c.user_id
        )
        try:
            resp = await self._request(
                "POST", "/_matrix/client/v3/keys/signatures/upload", {user_id: {master_key: signed}}
            )
        except HomeserverError as exc:
            log.warning("could not publish a user-signing signature", extra={"error": str(exc)})
            return
        if resp.get("failures"):
            log.warning("a user-signing signature was refused", extra={"user": user_id})

    def accept_identity(self, user_id: str) -> None:
        """Trust a user's new cross-signing identity (after checking it out of band)."""
        known = self._c.index.identity(user_id)
        if known is None or known[1] is None:
            raise NotFoundError(f"no identity change is pending for {user_id}")
        self._c.index.set_identity(user_id, known[1])

    async def apply_trust(self, room_id: str) -> None:
        """Before a new Megolm session is shared: withhold it from untrusted devices."""
        nio = self._c.nio
        olm = nio.olm
        if olm is None:
            return
        room = nio.rooms[room_id]
        users = list(room.users)
        if self.trust == "all":
            for u in users:
                for d in nio.device_store.active_user_devices(u):
                    if olm.is_device_blacklisted(d):
                        olm.unblacklist_device(d)
            return
        trusted: set[tuple[str, str]] = set()
        if self.trust == "cross-signed":
            res = await self.query_keys(users)
            for u in users:
                trusted |= {(u, d) for d in self.cross_signed_devices(u, res)}
        for u in users:
            for d in nio.device_store.active_user_devices(u):
                ok = (u, d.id) in trusted or olm.is_device_verified(d)
                if ok and olm.is_device_blacklisted(d):
                    olm.unblacklist_device(d)
                elif not ok and not olm.is_device_blacklisted(d):
                    olm.blacklist_device(d)
                    log.info(
                        "withholding room keys from an untrusted device",
                        extra={"user": u, "device": d.id, "policy": self.trust},
                    )

    # -- the UCAN identity ------------------------------------------------------------

    def ucan_principal(self) -> Principal:
        """This account's UCAN key (``did:key``, Ed25519): kept with the device's other
        secrets (written before it is returned), backed up in secret storage by
        :meth:`setup_recovery` and brought back by :meth:`unlock` on a new device."""
        from datarooms.sdk.ucan.did import Principal  # not every device needs UCANs: lazily

        seed = self._secrets.get("ucan")
        if seed is None:
            seed = _b64(Principal.generate().seed)
            self._secrets["ucan"] = seed
            self._save_secrets()
        return Principal.from_seed(decode_b64(seed))

    # -- secret storage and recovery ------------------------------------------------

    async def setup_recovery(self) -> str:
        """Create secret storage + key backup; return the recovery key (show it once)."""
        if self._key("master") is None:
            raise DataroomsError(
                "this device does not hold the account's cross-signing keys; "
                "unlock it with the existing recovery key (keys restore) first"
            )
        key = new_key()
        desc = ssss.new_key_description(key)
        await self._set_account_data(f"m.secret_storage.key.{desc.key_id}", desc.content)
        backup = BackupKey.generate()
        self._secrets["backup"] = _b64(backup.to_bytes())
        self._claims_seed()  # the claims issuer key is backed up with the others
        if "ucan" not in self._secrets:
            self.ucan_principal()
        for name, secret_name in SECRET_NAMES.items():
            encrypted = ssss.encrypt_secret(key, secret_name, self._secrets[name].encode())
            await self._set_account_data(secret_name, {"encrypted": {desc.key_id: encrypted}})
        await self._set_account_data("m.secret_storage.default_key", {"key": desc.key_id})
        version = await self._create_backup_version(backup)
        self._secrets["backup_version"] = version
        self._save_secrets()
        await self.backup_pending()
        return encode_recovery_key(key)

    async def _create_backup_version(self, backup: BackupKey) -> str:
        auth_data: dict[str, Any] = {"public_key": backup.public_key}
        msk = self._key("master")
        me = self._c.user_id
        signatures: dict[str, Any] = {}
        if msk is not None:
            signatures = msk.sign_json(auth_data, me)["signatures"]
        olm = self._c.nio.olm
        if olm is not None:
            dev_sig = olm.account.sign(canonical_json(auth_data).decode())
            signatures.setdefault(me, {})[f"ed25519:{self._c.device_id}"] = dev_sig
        auth_data["signatures"] = signatures
        res = await self._request(
            "POST",
            "/_matrix/client/v3/room_keys/version",
            {"algorithm": BACKUP_ALGORITHM, "auth_data": auth_data},
        )
        return str(res["version"])

    async def unlock(self, recovery_key: str) -> None:
        """Load the cross-signing and backup keys from secret storage; sign this device."""
        key = decode_recovery_key(recovery_key)
        default = await self._account_data("m.secret_storage.default_key")
        if not default or "key" not in default:
            raise NotFoundError("this account has no secret storage; run keys recovery-key first")
        key_id = str(default["key"])
        content = await self._account_data(f"m.secret_storage.key.{key_id}") or {}
        if not ssss.KeyDescription(key_id, content).check(key):
            raise ValidationError("this recovery key does not belong to this account's storage")
        found: dict[str, str] = {}
        for name, secret_name in SECRET_NAMES.items():
            stored = await self._account_data(secret_name)
            enc = (stored or {}).get("encrypted", {}).get(key_id)
            if enc is not None:
                found[name] = ssss.decrypt_secret(key, secret_name, enc).decode()
        me = self._c.user_id
        res = await self.query_keys([me])
        master = res.get("master_keys", {}).get(me)
        if "master" in found and master is not None:
            if SigningKey.from_seed(decode_b64(found["master"])).public != _only_key(master):
                raise ValidationError(
                    "the cross-signing keys in secret storage are not the account's current ones"
                )
        self._secrets.update(found)
        version = await self._current_backup_version()
        if version and "backup" in found:
            info = await self._request(
                "GET", f"/_matrix/client/v3/room_keys/version/{quote(version)}"
            )
            if (
                info.get("auth_data", {}).get("public_key")
                == BackupKey.from_bytes(decode_b64(found["backup"])).public_key
            ):
                self._secrets["backup_version"] = version
        self._save_secrets()
        if master is not None:
            self._c.index.set_identity(me, _only_key(master))
            await self._sign_own_device(res)

    async def _current_backup_version(self) -> str | None:
        try:
            res = await self._request("GET", "/_matrix/client/v3/room_keys/version")
        except HomeserverError as exc:
            if exc.errcode == "M_NOT_FOUND":
                return None
            raise
        return str(res["version"]) if res.get("algorithm") == BACKUP_ALGORITHM else None

    # -- backup ----------------------------------------------------------------

    @property
    def backup_enabled(self) -> bool:
        return self.backup_key is not None and self.backup_version is not None

    def _own_sessions(self) -> list[InboundGroupSession]:
        olm = self._c.nio.olm
        return list(olm.inbound_group_store) if olm is not None else []

    async def backup_sessions(self, sessions: list[InboundGroupSession]) -> int:
        """Upload these sessions to the backup (those not there yet). Returns how many."""
        key, version = self.backup_key, self.backup_version
        if key is None or version is None:
            return 0
        async with self._backup_lock:
            if self._backed is None or self._backed[0] != version:
                self._backed = (version, self._c.index.backed_up(version))
            done = self._backed[1]
            todo = [s for s in sessions if s.id not in done]
            shared: dict[str, set[str]] = {}
            for i in range(0, len(todo), _UPLOAD_CHUNK):
                chunk = todo[i : i + _UPLOAD_CHUNK]
                rooms: dict[str, Any] = {}
                for s in chunk:
                    if s.room_id not in shared:
                        shared[s.room_id] = self._c.index.shared_sessions(s.room_id)
                    payload = session_payload(s)
                    if s.id in shared[s.room_id]:
                        payload[SHARED_HISTORY] = True
                    rooms.setdefault(s.room_id, {"sessions": {}})["sessions"][s.id] = {
                        "first_message_index": s.first_known_index,
                        "forwarded_count": len(s.forwarding_chain),
                        "is_verified": False,
                        "session_data": encrypt_session(key.public_key, payload),
                    }
                try:
                    await self._request(
                        "PUT",
                        f"/_matrix/client/v3/room_keys/keys?version={quote(version)}",
                        {"rooms": rooms},
                    )
                except HomeserverError as exc:
                    if exc.errcode == "M_WRONG_ROOM_KEYS_VERSION":
                        raise DataroomsError(
                            "the key backup was replaced by another device; unlock with the "
                            "current recovery key (keys restore) to back up to it"
                        ) from None
                    raise
                self._c.index.mark_backed_up(version, (s.id for s in chunk))
                done.update(s.id for s in chunk)
            return len(todo)

    async def backup_pending(self) -> int:
        """Back up every session this device holds that is not backed up yet."""
        return await self.backup_sessions(self._own_sessions())

    async def backup_outbound(self, room_id: str) -> None:
        """Back up the session this device is about to encrypt with in ``room_id``."""
        olm = self._c.nio.olm
        if not self.backup_enabled or olm is None:
            return
        outbound = olm.outbound_group_sessions.get(room_id)
        if outbound is None:
            return
        own_key = olm.account.identity_keys["curve25519"]
        inbound = olm.inbound_group_store.get(room_id, own_key, outbound.id)
        if inbound is not None:
            await self.backup_sessions([inbound])

    async def restore_room(self, room_id: str) -> int:
        """Import the backed-up sessions of one room (e.g. before sharing its history)."""
        return await self.restore(room_id=room_id)

    async def restore(
        self,
        recovery_key: str | None = None,
        progress: Callable[[int, int], None] | None = None,
        *,
        room_id: str | None = None,
    ) -> int:
        """Import every session in the backup (unlocking with ``recovery_key`` first)."""
        if recovery_key is not None:
            await self.unlock(recovery_key)
        key, version = self.backup_key, self.backup_version
        if key is None or version is None:
            raise NotFoundError("no key backup is unlocked on this device; give the recovery key")
        if room_id is None:
            data = await self._request(
                "GET", f"/_matrix/client/v3/room_keys/keys?version={quote(version)}"
            )
        else:
            try:
                room_data = await self._request(
                    "GET",
                    f"/_matrix/client/v3/room_keys/keys/{quote(room_id)}?version={quote(version)}",
                )
            except HomeserverError as exc:
                if exc.errcode != "M_NOT_FOUND":
                    raise
                room_data = {}
            data = {"rooms": {room_id: room_data}}
        entries = [
            (room_id, sid, entry)
            for room_id, room in data.get("rooms", {}).items()
            for sid, entry in room.get("sessions", {}).items()
        ]
        olm, store = self._c.nio.olm, self._c.nio.store
        assert olm is not None and store is not None
        imported: list[str] = []
        to_save: list[InboundGroupSession] = []
        shared: list[tuple[str, str, str]] = []
        for i, (room_id, sid, entry) in enumerate(entries, 1):
            try:
                payload = key.decrypt(entry["session_data"])
                if payload.get("algorithm") != MEGOLM:
                    continue
                session = InboundGroupSession.import_session(
                    payload["session_key"],
                    payload["sender_claimed_keys"]["ed25519"],
                    payload["sender_key"],
                    room_id,
                    payload.get("forwarding_curve25519_key_chain", []),
                )
            except Exception as exc:  # one bad entry must not stop the restore
                log.warning(
                    "skipping a backed-up session", extra={"session": sid, "error": str(exc)}
                )
                continue
            if session.id != sid:
                log.warning("skipping a backed-up session with a wrong id", extra={"session": sid})
                continue
            imported.append(sid)
            if payload.get(SHARED_HISTORY) is True:
                shared.append((room_id, session.sender_key, sid))
            held = olm.inbound_group_store.get(room_id, session.sender_key, sid)
            # Never replace a copy that can decrypt from an earlier message.
            if held is None or held.first_known_index > session.first_known_index:
                to_save.append(session)
            if progress and (i % 100 == 0 or i == len(entries)):
                progress(i, len(entries))
        # One transaction, a few statements, for the whole import.
        save_sessions(store, to_save)
        for session in to_save:
            olm.inbound_group_store.add(session)
        self._c.index.mark_backed_up(version, imported)
        self._c.index.mark_shared(shared)
        self._backed = None
        self._c._sync.retry_decryption(reload=False)  # the sessions are in memory
        return len(imported)

    # -- status ----------------------------------------------------------------

    async def status(self) -> KeyStatus:
        me, dev = self._c.user_id, self._c.device_id
        res = await self.query_keys([me])
        master = res.get("master_keys", {}).get(me)
        mpub = _only_key(master) if master else None
        default = await self._account_data("m.secret_storage.default_key")
        version = self.backup_version
        return KeyStatus(
            user_id=me,
            device_id=dev,
            cross_signing=master is not None,
            master_key=mpub,
            device_cross_signed=dev in self.cross_signed_devices(me, res),
            holds_cross_signing_keys=self._key("self_signing") is not None,
            secret_storage=bool(default and default.get("key")),
            backup_version=version,
            backup_enabled=self.backup_enabled,
            backed_up_sessions=len(self._c.index.backed_up(version)) if version else 0,
            local_sessions=len(self._own_sessions()),
            trust_policy=self.trust,
            changed_identities=sorted(self._c.index.changed_identities()),
            verified_devices=self._verified_count(),
        )

    def _verified_count(self) -> int:
        olm = self._c.nio.olm
        if olm is None:
            return 0
        return sum(1 for d in self._c.nio.device_store if olm.is_device_verified(d))


def _only_key(key_obj: dict[str, Any]) -> str:
    keys = list((key_obj.get("keys") or {}).values())
    if len(keys) != 1 or not isinstance(keys[0], str):
        raise ValidationError("a cross-signing key object must hold exactly one key")
    return keys[0]


def _b64(data: bytes) -> str:
    from datarooms.sdk.keys.signing import unpadded_b64

    return unpadded_b64(data)
