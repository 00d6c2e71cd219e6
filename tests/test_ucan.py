"""UCAN 1.0 in the SDK: a 3-hop chain works and is cut by revoking its middle link, and
every refusal the issue lists has its own errcode."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from pathlib import Path

import dag_cbor
import pytest

from datarooms.sdk.ucan import (
    ROOM_READ,
    ROOM_WRITE,
    STATE_BOT,
    Delegation,
    Principal,
    RevocationStore,
    UcanError,
    Validator,
    bearer,
    decode,
    delegate,
    encode_container,
    glob_match,
    holds,
    invoke,
    load_or_create_principal,
    looks_like_container,
)
from datarooms.sdk.ucan.tokens import VARSIG_ED25519

ROOM = "!room:example.org"
OTHER_ROOM = "!other:example.org"


class Chain:
    """bot (subject) -> alice (user) -> agent -> sub-agent."""

    def __init__(self, store: RevocationStore | None = None) -> None:
        self.now = int(time.time())
        self.bot, self.alice, self.agent, self.sub = (Principal.generate() for _ in range(4))
        self.root = delegate(
            self.bot,
            self.alice.did,
            "/datarooms",
            subject=self.bot.did,
            expires=self.now + 3600,
            meta={"matrix_user": "@alice:example.org"},
        )
        self.middle = delegate(
            self.alice,
            self.agent.did,
            "/datarooms/room",
            subject=self.bot.did,
            policy=[["==", ".room", ROOM]],
            expires=self.now + 1800,
        )
        self.leaf = delegate(
            self.agent, self.sub.did, ROOM_READ, subject=self.bot.did, expires=self.now + 600
        )
        self.validator = Validator(self.bot.did, revocations=store)

    @property
    def proofs(self) -> list[Delegation]:
        return [self.root, self.middle, self.leaf]

    def token(self, cmd: str = ROOM_READ, room: str = ROOM, **kw: object) -> str:
        proofs = kw.pop("proofs", self.proofs)
        signer = kw.pop("signer", self.sub)
        inv = invoke(signer, cmd, {"room": room, "with": STATE_BOT}, proofs, **kw)  # type: ignore[arg-type]
        return bearer(inv, proofs)  # type: ignore[arg-type]


def refused(call: Callable[[], object], errcode: str) -> UcanError:
    with pytest.raises(UcanError) as info:
        call()
    assert info.value.errcode == errcode, info.value.message
    return info.value


def test_three_hop_chain_works_and_revoking_the_middle_link_cuts_it(tmp_path: Path) -> None:
    store = RevocationStore(tmp_path / "revocations.sqlite")
    c = Chain(store)
    proven = c.validator.verify(c.token())
    assert proven.invoker == c.sub.did
    assert proven.root is not None and proven.root.meta["matrix_user"] == "@alice:example.org"
    assert [h.iss for h in proven.chain] == [c.bot.did, c.alice.did, c.agent.did]
    # Alice revokes her delegation to the agent, with a signed /ucan/revoke invocation.
    revocation = invoke(
        c.alice, "/ucan/revoke", {"ucan": c.middle.cid}, [], subject=c.bot.did, audience=c.bot.did
    )
    assert c.validator.revoke(bearer(revocation, [c.root, c.middle])) == str(c.middle.cid)
    err = refused(lambda: c.validator.verify(c.token()), "DR_UCAN_REVOKED")
    assert err.http_status == 403
    # Everyone sharing the store (another service of the platform) refuses it too, at once.
    elsewhere = Validator(c.bot.did, revocations=RevocationStore(tmp_path / "revocations.sqlite"))
    refused(lambda: elsewhere.verify(c.token()), "DR_UCAN_REVOKED")
    # The root link alone still works for alice.
    assert c.validator.verify(c.token(signer=c.alice, proofs=[c.root])).invoker == c.alice.did


def test_only_an_issuer_on_the_chain_may_revoke() -> None:
    c = Chain()
    stranger = Principal.generate()
    revocation = invoke(
        stranger, "/ucan/revoke", {"ucan": c.middle.cid}, [], subject=c.bot.did, audience=c.bot.did
    )
    refused(
        lambda: c.validator.revoke(bearer(revocation, [c.root, c.middle])), "DR_UCAN_NOT_ALLOWED"
    )
    # The sub-agent, below the middle link, may not revoke it either.
    revocation = invoke(
        c.sub, "/ucan/revoke", {"ucan": c.middle.cid}, [], subject=c.bot.did, audience=c.bot.did
    )
    refused(lambda: c.validator.revoke(bearer(revocation, c.proofs)), "DR_UCAN_NOT_ALLOWED")
    c.validator.verify(c.token())


def test_expired() -> None:
    c = Chain()
    old = int(time.time()) - 1000
    refused(lambda: c.validator.verify(c.token(now=old)), "DR_UCAN_EXPIRED")
    expired_leaf = delegate(c.agent, c.sub.did, ROOM_READ, subject=c.bot.did, expires=c.now - 5)
    token = c.token(proofs=[c.root, c.middle, expired_leaf])
    assert refused(lambda: c.validator.verify(token), "DR_UCAN_EXPIRED").http_status == 401


def test_not_yet_valid() -> None:
    c = Chain()
    later = delegate(
        c.agent,
        c.sub.did,
        ROOM_READ,
        subject=c.bot.did,
        expires=c.now + 600,
        not_before=c.now + 300,
    )
    refused(
        lambda: c.validator.verify(c.token(proofs=[c.root, c.middle, later])),
        "DR_UCAN_NOT_YET_VALID",
    )


def test_wrong_audience() -> None:
    c = Chain()
    other_bot = Validator(Principal.generate().did)
    token = c.token()
    assert refused(lambda: other_bot.verify(token), "DR_UCAN_WRONG_AUDIENCE").http_status == 403
    # An explicit aud naming another service is refused by this one too.
    refused(
        lambda: c.validator.verify(c.token(audience=Principal.generate().did)),
        "DR_UCAN_WRONG_AUDIENCE",
    )


def test_broken_chain() -> None:
    c = Chain()
    # The leaf is missing: the agent's delegation was to the agent, not to the sub-agent.
    refused(lambda: c.validator.verify(c.token(proofs=[c.root, c.middle])), "DR_UCAN_BROKEN_CHAIN")
    # A proof named in prf but not carried.
    inv = invoke(c.sub, ROOM_READ, {"room": ROOM}, c.proofs)
    refused(lambda: c.validator.verify(bearer(inv, [c.root, c.leaf])), "DR_UCAN_BROKEN_CHAIN")
    # A root not issued by the subject.
    fake_root = delegate(c.alice, c.agent.did, "/datarooms", subject=c.bot.did, expires=c.now + 60)
    refused(lambda: c.validator.verify(c.token(proofs=[fake_root, c.leaf])), "DR_UCAN_BROKEN_CHAIN")


def test_chain_that_widens() -> None:
    c = Chain()
    wider = delegate(c.agent, c.sub.did, "/datarooms", subject=c.bot.did, expires=c.now + 600)
    token = c.token(proofs=[c.root, c.middle, wider])
    assert refused(lambda: c.validator.verify(token), "DR_UCAN_WIDENS").http_status == 403
    longer = delegate(c.agent, c.sub.did, ROOM_READ, subject=c.bot.did, expires=c.now + 99999)
    refused(
        lambda: c.validator.verify(c.token(proofs=[c.root, c.middle, longer])), "DR_UCAN_WIDENS"
    )
    # Invoking more than the leaf grants (write, with a read-only leaf).
    refused(lambda: c.validator.verify(c.token(cmd=ROOM_WRITE)), "DR_UCAN_WIDENS")


def test_policy_narrows_to_one_room() -> None:
    c = Chain()
    assert refused(lambda: c.validator.verify(c.token(room=OTHER_ROOM)), "DR_UCAN_POLICY")


def test_replayed_nonce() -> None:
    c = Chain()
    token = c.token()
    c.validator.verify(token)
    assert refused(lambda: c.validator.verify(token), "DR_UCAN_REPLAYED").http_status == 401


def test_bad_signature() -> None:
    c = Chain()
    inv = invoke(c.sub, ROOM_READ, {"room": ROOM}, c.proofs)
    signature, payload = dag_cbor.decode(inv.envelope)
    payload["ucan/inv@1.0.0-rc.1"]["args"]["room"] = OTHER_ROOM  # tampered after signing
    forged = dag_cbor.encode([signature, payload])
    token = encode_container([forged, *(p.envelope for p in c.proofs)])
    refused(lambda: c.validator.verify(token), "DR_UCAN_BAD_SIGNATURE")
    # Signed by someone else than its iss.
    signature2 = Principal.generate().sign(dag_cbor.encode(payload))
    token = encode_container(
        [dag_cbor.encode([signature2, payload]), *(p.envelope for p in c.proofs)]
    )
    refused(lambda: c.validator.verify(token), "DR_UCAN_BAD_SIGNATURE")


def test_unknown_did_method() -> None:
    c = Chain()
    inv = invoke(c.sub, ROOM_READ, {"room": ROOM}, c.proofs)
    signature, payload = dag_cbor.decode(inv.envelope)
    payload["ucan/inv@1.0.0-rc.1"]["iss"] = "did:web:evil.example"
    token = encode_container(
        [dag_cbor.encode([signature, payload]), *(p.envelope for p in c.proofs)]
    )
    assert (
        refused(lambda: c.validator.verify(token), "DR_UCAN_UNKNOWN_DID_METHOD").http_status == 401
    )
    with pytest.raises(UcanError) as info:
        delegate(c.alice, "did:plc:abc", ROOM_READ, subject=c.bot.did, expires=None)
    assert info.value.errcode == "DR_UCAN_UNKNOWN_DID_METHOD"


def test_oversized_token() -> None:
    c = Chain()
    huge = c.token()[:1] + "A" * 9000
    refused(lambda: c.validator.verify(huge), "DR_UCAN_TOO_LARGE")
    many = encode_container([c.root.envelope] * 9)
    refused(lambda: c.validator.verify(many), "DR_UCAN_TOO_LARGE")


def test_malformed_and_lifetime() -> None:
    c = Chain()
    refused(lambda: c.validator.verify("Cnot-cbor"), "DR_UCAN_MALFORMED")
    refused(lambda: c.validator.verify(encode_container([c.root.envelope])), "DR_UCAN_MALFORMED")
    refused(lambda: c.validator.verify(c.token(lifetime=3600)), "DR_UCAN_LIFETIME")


def test_envelope_is_the_spec_shape() -> None:
    c = Chain()
    signature, sig_payload = dag_cbor.decode(c.root.envelope)
    assert len(signature) == 64
    assert sig_payload["h"] == VARSIG_ED25519
    assert base64.b64encode(VARSIG_ED25519).decode().rstrip("=") == "NAHtAe0BE3E"  # the spec's
    body = sig_payload["ucan/dlg@1.0.0-rc.1"]
    assert set(body) >= {"iss", "aud", "sub", "cmd", "pol", "nonce", "exp"}
    assert str(c.root.cid).startswith("zdpu")  # CIDv1, DAG-CBOR, SHA-256, base58btc
    assert isinstance(decode(c.root.envelope), Delegation)
    assert c.alice.did.startswith("did:key:z6Mk")
    assert looks_like_container(c.token()) and not looks_like_container("syt_abcdef")


def test_policy_language() -> None:
    args = {"room": ROOM, "n": 3, "tags": ["a", "b"], "path": "/docs/x", "m": {"k": 1}}
    assert holds([["==", ".room", ROOM], [">=", ".n", 3], ["<", ".n", 3.5]], args)
    assert not holds([["!=", ".room", ROOM]], args)
    assert holds([["like", ".path", "/docs/*"]], args)
    assert not holds([["like", ".path", "/other/*"]], args)
    assert holds([["any", ".tags", ["==", ".", "b"]], ["all", ".tags", ["like", ".", "*"]]], args)
    assert holds([["or", [["==", ".n", 1], ["==", ".m.k", 1]]], ["not", ["==", '.["n"]', 4]]], args)
    assert not holds([["==", ".missing", None]], args)
    assert holds([["==", ".missing?", None]], args)
    assert holds([["==", ".tags[0]", "a"]], args)
    assert glob_match("Alice\\*, Bob*, Carol.", "Alice*, Bob, Dan, Erin, Carol.")
    assert not glob_match("Alice\\*, Bob*, Carol.", "Alice Cooper, Bob, Carol.")


def test_service_key_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "ucan.ed25519"
    first = load_or_create_principal(path)
    assert path.stat().st_mode & 0o077 == 0
    assert load_or_create_principal(path).did == first.did
