"""Claims: signed (eddsa-jcs-2022), content-addressed, evidence checked, E2EE in the room."""

from __future__ import annotations

import copy

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from datarooms import Credentials, DataroomsClient, ValidationError
from datarooms.sdk import proofs
from datarooms.sdk.claims import check_claim, claim_cid
from tests._rooms import shared_room

SUBJECT = "did:ixo:entity:abc123"


def test_cid_and_did_key_known_values() -> None:
    # The CID of b"hello" (raw, sha2-256) every multiformats implementation gives.
    assert proofs.cid_of(b"hello") == "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    did = proofs.did_key(key.public_key().public_bytes_raw())
    assert did.startswith("did:key:z6Mk")
    assert (
        proofs.public_key_of(proofs.verification_method(did)) == key.public_key().public_bytes_raw()
    )
    with pytest.raises(proofs.ProofError):
        proofs.public_key_of("did:key:zNotAKey")


def test_base58btc_keeps_leading_zero_bytes() -> None:
    # One Ed25519 signature in 256 starts with a zero byte: it must round-trip.
    for data in (b"\x00" + bytes(range(1, 64)), b"\x00\x00\xff", bytes(64)):
        assert proofs.from_multibase_b58(proofs.multibase_b58(data)) == data
    key = Ed25519PrivateKey.generate()
    doc = {"@context": ["https://www.w3.org/ns/credentials/v2"], "n": 0}
    for n in range(600):  # ~90% chance of meeting a signature with a leading zero byte
        doc["n"] = n
        proofs.verify(proofs.sign(doc, key))


def test_proof_tamper_cases() -> None:
    key = Ed25519PrivateKey.generate()
    doc = proofs.sign({"@context": ["https://www.w3.org/ns/credentials/v2"], "x": 1}, key)
    assert proofs.verify(doc).signer.startswith("did:key:")
    for mutate, reason in [
        (lambda d: d.__setitem__("x", 2), "bad_signature"),
        (lambda d: d["proof"].__setitem__("created", "2020-01-01T00:00:00Z"), "bad_signature"),
        (lambda d: d["proof"].__setitem__("cryptosuite", "eddsa-rdfc-2022"), "unsupported_proof"),
        (lambda d: d.pop("proof"), "no_proof"),
        (lambda d: d["proof"].__setitem__("verificationMethod", "did:web:x#k"), "bad_did"),
    ]:
        bad = copy.deepcopy(doc)
        mutate(bad)
        with pytest.raises(proofs.ProofError) as err:
            proofs.verify(bad)
        assert err.value.reason == reason
    # Another key's signature under this key's name.
    other = proofs.sign({"@context": doc["@context"], "x": 1}, Ed25519PrivateKey.generate())
    other["proof"]["verificationMethod"] = doc["proof"]["verificationMethod"]
    with pytest.raises(proofs.ProofError, match="does not verify"):
        proofs.verify(other)


async def test_issue_verify_and_tamper(alice_bob) -> None:  # type: ignore[no-untyped-def]
    alice, bob = alice_bob
    room = await shared_room(alice, bob, "write", kind="verification")
    photo = await alice.files.put(room, b"\x89PNG site photo bytes", filename="site.png")
    reading = await alice.records.put(room, "meter/1", {"kwh": 42.5})
    saved = await alice.claims.issue(
        room,
        SUBJECT,
        "SolarInstallationVerified",
        {"capacityKw": 5.5, "verdict": "pass"},
        evidence=[photo, reading],
        collection="solar-2026",
    )
    vc = saved.credential
    assert vc["issuer"] == alice.claims.issuer and vc["issuer"].startswith("did:key:z6Mk")
    assert vc["type"] == ["VerifiableCredential", "SolarInstallationVerified"]
    assert vc["credentialSubject"]["id"] == SUBJECT
    assert vc["proof"]["cryptosuite"] == "eddsa-jcs-2022"
    assert saved.cid == claim_cid(vc) and saved.cid.startswith("bagaaiera")
    assert vc["evidence"][0]["cid"] == proofs.cid_of(b"\x89PNG site photo bytes")

    # Bob, another member, finds and verifies it from the room, evidence included.
    await bob.sync_once()
    listed = await bob.claims.list(room, collection="solar-2026")
    assert [c.cid for c in listed] == [saved.cid]
    verdict = await bob.claims.verify(room, saved.cid, collection="solar-2026")
    assert verdict.ok, verdict
    assert verdict.issuer == alice.claims.issuer and len(verdict.checked) == 4
    missing = await bob.claims.verify(room, "bagaaieranothere", collection="solar-2026")
    assert not missing.ok and missing.reason == "not_found"

    # Offline: each tamper gives its own verdict.
    evidence = await bob.claims.evidence_bytes(room, vc)
    assert check_claim(vc, expected_cid=saved.cid, evidence=evidence).ok
    changed = dict(evidence)
    changed[vc["evidence"][0]["cid"]] = b"\x89PNG another photo"
    assert check_claim(vc, expected_cid=saved.cid, evidence=changed).reason == "evidence_changed"
    assert check_claim(vc, expected_cid=saved.cid, evidence={}).reason == "evidence_missing"
    forged = copy.deepcopy(vc)
    forged["credentialSubject"]["verdict"] = "fail"
    assert check_claim(forged).reason == "bad_signature"
    assert check_claim(forged, expected_cid=saved.cid).reason == "cid_mismatch"
    assert check_claim("not a claim").reason == "malformed"

    # Saving the same claim again is idempotent (one event); a forged one is refused.
    again = await alice.claims.save(room, vc, collection="solar-2026")
    assert again.event_id == saved.event_id
    with pytest.raises(ValidationError, match="does not verify"):
        await alice.claims.save(room, forged)
    with pytest.raises(ValidationError, match="DID"):
        await alice.claims.issue(room, "not-a-did", "X", {})
    with pytest.raises(ValidationError, match="collection"):
        await alice.claims.save(room, vc, collection="bad collection!")

    # A redacted claim is gone, from the index of a member who had synced it too.
    assert bob.index.claims_by_cid(room, saved.cid)
    await alice.messages.redact(room, saved.event_id)
    await bob.sync_once()
    assert not bob.index.claims_by_cid(room, saved.cid)
    gone = await bob.claims.verify(room, saved.cid)
    assert not gone.ok and gone.reason == "not_found"


async def test_issuer_key_is_backed_up_in_secret_storage(  # type: ignore[no-untyped-def]
    homeserver, open_client, tmp_path
) -> None:
    user = await homeserver.new_user("issuer")
    first = await open_client(user, "first")
    issuer = first.claims.issuer
    recovery_key = await first.keys.setup_recovery()
    creds = Credentials(homeserver.base_url, user.user_id, password=user.password)
    async with await DataroomsClient.open(creds, tmp_path / "second") as second:
        assert second.device_id != first.device_id
        assert second.claims.issuer != issuer  # a fresh device alone has no issuer key yet
        await second.keys.unlock(recovery_key)
        assert second.claims.issuer == issuer
