"""Claims: signed, content-addressed verification results, kept encrypted in a room.

``client.claims.issue(room, subject_did, claim_type, data, evidence=[...])`` makes a
W3C Verifiable Credential (VC Data Model 2.0) about ``subject_did``, signs it with a
Data Integrity proof (``eddsa-jcs-2022``) by this account's issuer key (its
``did:key``; see :meth:`datarooms.sdk.keys.KeyManager.claims_key`), gives it a CID
(CIDv1, sha2-256, over its RFC 8785 canonical bytes) and saves it into a collection of
the room as an end-to-end encrypted ``io.datarooms.claim`` event.

Evidence is what the room already holds: encrypted files (:class:`FileRef`) and records
(:class:`Record`), each named in the credential by the CID of its plaintext (a file's
bytes; a record's canonical ``{"key", "value"}``) and the event that carries it. The
homeserver sees none of it in the clear.

:func:`check_claim` is the offline check (signature, the claim's CID, every evidence
CID against the bytes given); :meth:`Claims.verify` fetches the claim and its evidence
from the room and runs it. Each failure is a precise :class:`ClaimVerdict`, never a
crash and never a pass.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from datarooms import events as ev
from datarooms._store.index import Record
from datarooms.errors import NotFoundError, ValidationError
from datarooms.sdk import proofs
from datarooms.sdk.files import FileRef
from datarooms.sdk.hooks import Phase, RoomEventReceived

if TYPE_CHECKING:
    from datarooms.sdk.client import DataroomsClient

__all__ = [
    "VC_CONTEXT",
    "ClaimVerdict",
    "Claims",
    "SavedClaim",
    "check_claim",
    "claim_cid",
    "record_bytes",
]

VC_CONTEXT = "https://www.w3.org/ns/credentials/v2"
_COLLECTION = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,127}$")
_DID = re.compile(r"^did:[a-z0-9]+:[A-Za-z0-9._:%-]+$")
_SCAN = 100_000


@dataclass(frozen=True)
class SavedClaim:
    """A claim as saved in a room."""

    room_id: str
    event_id: str
    collection: str
    cid: str
    credential: dict[str, Any]
    sender: str = ""
    ts: int = 0


@dataclass(frozen=True)
class ClaimVerdict:
    """The outcome of checking a claim: ``ok``, or the first check that failed.

    ``reason`` is a short code (``bad_signature``, ``cid_mismatch``, ``evidence_changed``,
    ``evidence_missing``, ``malformed``, ``bad_did``, ``unsupported_proof``, ...),
    ``detail`` says what exactly, ``checked`` what passed before it.
    """

    ok: bool
    reason: str
    detail: str
    cid: str | None = None
    issuer: str | None = None
    checked: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "reason": self.reason,
            "detail": self.detail,
            "cid": self.cid,
            "issuer": self.issuer,
            "checked": list(self.checked),
        }


def record_bytes(key: str, value: Any) -> bytes:
    """The canonical bytes a record's evidence CID is computed over."""
    return proofs.canonical({"key": key, "value": value})


def claim_cid(credential: Mapping[str, Any]) -> str:
    """The CID of a signed credential (json codec over its JCS bytes, proof included)."""
    return proofs.cid_of(proofs.canonical(dict(credential)), "json")


def check_claim(
    credential: Any,
    *,
    expected_cid: str | None = None,
    evidence: Mapping[str, bytes] | None = None,
) -> ClaimVerdict:
    """Check a credential offline: its proof, its CID, and each evidence item's bytes.

    ``evidence`` maps an evidence CID to the plaintext bytes found for it; an evidence item
    whose bytes are not given fails as ``evidence_missing`` (pass ``evidence=None`` to check
    only the signature and the CID, which the verdict then says).
    """
    checked: list[str] = []
    if not isinstance(credential, dict):
        return ClaimVerdict(False, "malformed", "the claim is not a JSON object")
    try:
        cid = claim_cid(credential)
    except proofs.ProofError as exc:
        return ClaimVerdict(False, "malformed", str(exc))
    if expected_cid is not None:
        if cid != expected_cid:
            return ClaimVerdict(
                False,
                "cid_mismatch",
                f"the claim's bytes hash to {cid}, not to the CID {expected_cid} it is saved under",
                cid=expected_cid,
            )
        checked.append(f"cid {cid}")
    try:
        verified = proofs.verify(credential)
    except proofs.ProofError as exc:
        return ClaimVerdict(False, exc.reason, str(exc), cid=cid, checked=checked)
    issuer = credential.get("issuer")
    issuer_id = issuer.get("id") if isinstance(issuer, dict) else issuer
    if issuer_id != verified.signer:
        return ClaimVerdict(
            False,
            "issuer_mismatch",
            f"signed by {verified.signer}, but the claim names {issuer_id!r} as its issuer",
            cid=cid,
            checked=checked,
        )
    checked.append(f"signature by {verified.signer}")
    items = credential.get("evidence", [])
    if not isinstance(items, list):
        return ClaimVerdict(False, "malformed", "evidence is not a list", cid, issuer_id, checked)
    if evidence is None:
        checked.append(f"{len(items)} evidence item(s) not checked (no bytes given)")
        return ClaimVerdict(True, "ok", "signature and CID verified", cid, issuer_id, checked)
    for n, item in enumerate(items):
        want = item.get("cid") if isinstance(item, dict) else None
        if not isinstance(want, str):
            return ClaimVerdict(
                False, "malformed", f"evidence[{n}] names no cid", cid, issuer_id, checked
            )
        data = evidence.get(want)
        if data is None:
            return ClaimVerdict(
                False,
                "evidence_missing",
                f"evidence[{n}] ({want}) could not be found",
                cid,
                issuer_id,
                checked,
            )
        got = proofs.cid_of(data, "json" if item.get("record") else "raw")
        if got != want:
            return ClaimVerdict(
                False,
                "evidence_changed",
                f"evidence[{n}]: its bytes hash to {got}, the claim says {want}",
                cid,
                issuer_id,
                checked,
            )
        checked.append(f"evidence[{n}] {want}")
    return ClaimVerdict(True, "ok", "signature, CID and evidence verified", cid, issuer_id, checked)


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class Claims:
    """``client.claims``: issue, save, find, list and verify claims in a room."""

    def __init__(self, client: DataroomsClient) -> None:
        self._c = client
        # Claims this device syncs are remembered in its index, in the sync transaction.
        client.hooks.on(RoomEventReceived, self._on_event, phase=Phase.TRANSACTION)

    def _on_event(self, hook: RoomEventReceived) -> None:
        e = hook.event
        if e.type == ev.CLAIM and e.decrypted and e.encrypted:
            saved = _saved(e.room_id, e.event_id, e.sender, e.ts, e.content)
            if saved is not None:
                self._remember(saved)

    def _remember(self, saved: SavedClaim) -> None:
        self._c.index.put_claim(
            saved.room_id,
            saved.collection,
            saved.cid,
            saved.event_id,
            saved.sender,
            saved.ts,
            saved.credential,
        )

    @property
    def issuer(self) -> str:
        """This account's issuer DID (``did:key`` of its claims key)."""
        return proofs.did_key(self._private_key().public_key().public_bytes_raw())

    def _private_key(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self._c.keys.claims_key().seed)

    async def _evidence_item(self, room_id: str, item: Any) -> dict[str, Any]:
        if isinstance(item, FileRef):
            if item.room_id != room_id:
                raise ValidationError("evidence must be a file of the claim's room")
            data = await self._c.files.read(room_id, item.event_id)
            return {
                "type": ["Evidence", "DataroomsFile"],
                "cid": proofs.cid_of(data, "raw"),
                "name": item.name,
                "mediaType": item.mimetype,
                "size": len(data),
                "event": item.event_id,
            }
        if isinstance(item, Record):
            if item.room_id != room_id:
                raise ValidationError("evidence must be a record of the claim's room")
            return {
                "type": ["Evidence", "DataroomsRecord"],
                "cid": proofs.cid_of(record_bytes(item.key, item.value), "json"),
                "record": item.key,
                "event": item.event_id,
            }
        raise ValidationError(
            "evidence must be files (client.files.put) or records (client.records.put) of the room"
        )

    def sign(
        self,
        subject_did: str,
        claim_type: str,
        data: Mapping[str, Any],
        evidence: Sequence[dict[str, Any]] = (),
    ) -> dict[str, Any]:
        """A signed credential (no I/O): validate the input, build the VC, add the proof."""
        if not isinstance(subject_did, str) or not _DID.match(subject_did):
            raise ValidationError(f"the subject must be a DID (did:method:id), not {subject_did!r}")
        if not isinstance(claim_type, str) or not _TYPE.match(claim_type):
            raise ValidationError(
                "the claim type must be 1-128 letters, digits, '.', '_', '-', "
                "starting with a letter"
            )
        if claim_type == "VerifiableCredential":
            raise ValidationError("the claim type must name what is claimed")
        if not isinstance(data, Mapping) or "id" in data:
            raise ValidationError("the claim data must be a JSON object without an 'id'")
        credential: dict[str, Any] = {
            "@context": [VC_CONTEXT],
            "id": f"urn:uuid:{uuid.uuid4()}",
            "type": ["VerifiableCredential", claim_type],
            "issuer": self.issuer,
            "validFrom": _now(),
            "credentialSubject": {"id": subject_did, **dict(data)},
        }
        if evidence:
            credential["evidence"] = list(evidence)
        proofs.canonical(credential)  # raises on anything JCS cannot encode (NaN, ...)
        return proofs.sign(credential, self._private_key())

    async def issue(
        self,
        room_id: str,
        subject_did: str,
        claim_type: str,
        data: Mapping[str, Any],
        *,
        evidence: Sequence[FileRef | Record] = (),
        collection: str = "default",
    ) -> SavedClaim:
        """Issue a claim and save it, encrypted, into ``collection`` of the room."""
        items = [await self._evidence_item(room_id, e) for e in evidence]
        credential = self.sign(subject_did, claim_type, data, items)
        return await self.save(room_id, credential, collection=collection)

    async def save(
        self,
        room_id: str,
        credential: dict[str, Any],
        *,
        collection: str = "default",
        on_behalf_of: str | None = None,
    ) -> SavedClaim:
        """Save a signed credential (anyone's) into a collection; return it with its CID.

        The signature is checked first: a claim that does not verify is refused. Saving
        the same claim twice into a collection is one event (the txn id is its CID).
        """
        if not isinstance(collection, str) or not _COLLECTION.match(collection):
            raise ValidationError("a collection is 1-128 of letters, digits, '.', '_', ':', '-'")
        verdict = check_claim(credential)
        if not verdict.ok:
            raise ValidationError(f"the claim does not verify: {verdict.detail}")
        cid = claim_cid(credential)
        content: dict[str, Any] = {
            "v": 1,
            "collection": collection,
            "cid": cid,
            "credential": credential,
        }
        if on_behalf_of is not None:
            content["saved_by"] = on_behalf_of  # a service saving for a verified caller
        if len(proofs.canonical(content)) > ev.MAX_RECORD_BYTES:
            raise ValidationError(
                f"the claim is larger than {ev.MAX_RECORD_BYTES} bytes; "
                "put large evidence in files and reference them"
            )
        # The txn id reaches the server in the clear: derived from the CID, not the CID.
        txn = "claim-" + hashlib.sha256(f"{collection}\n{cid}".encode()).hexdigest()[:40]
        event_id = await self._c.send(room_id, ev.CLAIM, content, txn_id=txn)
        saved = SavedClaim(
            room_id, event_id, collection, cid, credential, self._c.user_id, int(time.time() * 1000)
        )
        self._remember(saved)  # read-your-writes
        return saved

    async def list(
        self, room_id: str, *, collection: str | None = None, limit: int = 1000
    ) -> list[SavedClaim]:
        """Claims saved in the room (newest first), of one collection or all."""
        await self._c.ensure_room(room_id)
        await self._c.sync_once()
        found: list[SavedClaim] = []
        seen: set[tuple[str, str]] = set()
        async for e in self._c.messages.backwards(room_id, max_scan=_SCAN):
            if e.type != ev.CLAIM or not e.decrypted:
                continue
            saved = _saved(room_id, e.event_id, e.sender, e.ts, e.content)
            if saved is None or (collection is not None and saved.collection != collection):
                continue
            if (saved.collection, saved.cid) in seen:
                continue
            seen.add((saved.collection, saved.cid))
            self._remember(saved)
            found.append(saved)
            if len(found) >= limit:
                break
        return found

    async def get(self, room_id: str, cid: str, *, collection: str | None = None) -> SavedClaim:
        """The claim saved under ``cid`` (in ``collection``, if given): from this device's
        index (claims it synced or saved), else found in the room's timeline."""
        known = self._c.index.claims_by_cid(room_id, cid, collection)
        if known:
            coll, event_id, sender, ts, credential = known[0]
            return SavedClaim(room_id, event_id, coll, cid, credential, sender, ts)
        for saved in await self.list(room_id, collection=collection, limit=_SCAN):
            if saved.cid == cid:
                return saved
        where = f"collection {collection!r} of " if collection else ""
        raise NotFoundError(f"no claim {cid} in {where}room {room_id} (readable by this device)")

    async def evidence_bytes(self, room_id: str, credential: Mapping[str, Any]) -> dict[str, bytes]:
        """The plaintext of each evidence item, fetched from the room and decrypted."""
        out: dict[str, bytes] = {}
        for item in credential.get("evidence", []) or []:
            if not isinstance(item, dict) or not isinstance(item.get("event"), str):
                continue
            try:
                if item.get("record"):
                    event = await self._c.messages.event(room_id, item["event"])
                    if event.type != ev.RECORD:
                        continue
                    c = event.content
                    out[str(item["cid"])] = record_bytes(str(c.get("key")), c.get("value"))
                else:
                    out[str(item["cid"])] = await self._c.files.read(room_id, item["event"])
            except NotFoundError:
                continue
        return out

    async def verify(
        self, room_id: str, cid: str, *, collection: str | None = None
    ) -> ClaimVerdict:
        """Fetch a claim and its evidence from the room and check them all."""
        try:
            saved = await self.get(room_id, cid, collection=collection)
        except NotFoundError as exc:
            return ClaimVerdict(False, "not_found", str(exc), cid=cid)
        return check_claim(
            saved.credential,
            expected_cid=cid,
            evidence=await self.evidence_bytes(room_id, saved.credential),
        )


def _saved(
    room_id: str, event_id: str, sender: str, ts: int, content: Mapping[str, Any]
) -> SavedClaim | None:
    collection, cid, credential = (
        content.get("collection"),
        content.get("cid"),
        content.get("credential"),
    )
    if not isinstance(collection, str) or not isinstance(cid, str):
        return None
    if not isinstance(credential, dict):
        return None
    return SavedClaim(room_id, event_id, collection, cid, credential, sender, ts)
