"""Tools for claims: list and verify (read); issue (write, granted by name only)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from datarooms.sdk.claims import SavedClaim
from datarooms.services.mcp.tools._common import EventArg, RoomArg, ToolBase

CidArg = Annotated[
    str, Field(description="The claim's CID (bagaaiera...), as list_claims shows", max_length=128)
]
CollectionArg = Annotated[
    str | None,
    Field(description="The claim collection (default: every collection)", max_length=128),
]


def _claim_json(saved: SavedClaim) -> dict[str, Any]:
    vc = saved.credential
    return {
        "cid": saved.cid,
        "collection": saved.collection,
        "event_id": saved.event_id,
        "type": vc.get("type"),
        "issuer": vc.get("issuer"),
        "subject": vc.get("credentialSubject"),
        "valid_from": vc.get("validFrom"),
        "evidence": vc.get("evidence", []),
    }


class ClaimTools(ToolBase):
    """Claims: signed W3C Verifiable Credentials with content ids, E2EE in the room."""

    async def list_claims(
        self,
        room: RoomArg,
        collection: CollectionArg = None,
        limit: Annotated[int, Field(description="At most this many", ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """List the claims saved in a room (newest first): type, issuer, subject, evidence.
        A listed claim is not checked yet: verify_claim checks it."""
        rid = await self.rt.room(room)
        claims = await self.rt.client.claims.list(rid, collection=collection, limit=limit)
        return {"room_id": rid, "claims": [_claim_json(c) for c in claims]}

    async def verify_claim(
        self, room: RoomArg, cid: CidArg, collection: CollectionArg = None
    ) -> dict[str, Any]:
        """Verify a claim: its signature (eddsa-jcs-2022, issuer's did:key), its CID and
        the bytes of each evidence file or record. ok is true only if every check passed;
        otherwise reason and detail say which failed."""
        rid = await self.rt.room(room)
        verdict = await self.rt.client.claims.verify(rid, cid, collection=collection)
        return {"room_id": rid, **verdict.to_json()}

    async def issue_claim(
        self,
        room: RoomArg,
        subject_did: Annotated[str, Field(description="The DID the claim is about")],
        claim_type: Annotated[
            str, Field(description="What is claimed, e.g. SolarInstallationVerified")
        ],
        data: Annotated[dict[str, Any], Field(description="The claim's fields (JSON object)")],
        evidence_files: Annotated[
            list[EventArg] | None, Field(description="Event ids of files in the room to cite")
        ] = None,
        evidence_records: Annotated[
            list[str] | None, Field(description="Keys of records in the room to cite")
        ] = None,
        collection: Annotated[
            str, Field(description="The collection to save it into", max_length=128)
        ] = "default",
    ) -> dict[str, Any]:
        """Issue a claim signed with this account's issuer key and save it, encrypted, in
        the room. Evidence is cited by the content id of its bytes."""
        rid = await self.rt.room(room, sends=True)
        c = self.rt.client
        evidence: list[Any] = [await c.files.ref(rid, e) for e in evidence_files or []]
        evidence += [await c.records.get(rid, k) for k in evidence_records or []]
        saved = await c.claims.issue(
            rid, subject_did, claim_type, data, evidence=evidence, collection=collection
        )
        return {"room_id": rid, **_claim_json(saved), "issuer_did": c.claims.issuer}
