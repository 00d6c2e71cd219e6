"""The audit trail: a hash chain any member reproduces from the room, anchored on the devchain."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest

from datarooms.chain.anchor import ChainAnchor, decode_anchor_tx
from datarooms.chain.rpc import CometRpc
from datarooms.sdk.audit import GENESIS, entry_hash, merkle_root, room_hash
from tests._cli import cli
from tests._rooms import shared_room
from tests._roomsbot import running_devchain


def test_merkle_root_matches_rfc6962_split() -> None:
    import hashlib

    def mth(leaves: list[bytes]) -> bytes:
        if len(leaves) == 1:
            return hashlib.sha256(b"\0" + leaves[0]).digest()
        k = 1
        while k * 2 < len(leaves):
            k *= 2
        return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()

    for n in (1, 2, 3, 5, 7, 8, 13, 100):
        leaves = [hashlib.sha256(bytes([i])).digest() for i in range(n)]
        assert merkle_root([x.hex() for x in leaves]) == mth(leaves).hex()


async def _anchors_on_chain(url: str) -> int:
    async with CometRpc(url) as rpc:
        found = await rpc.tx_search("message.action='/datarooms.audit.v1.MsgAnchorAudit'")
    return found[1]


class _CrashAfterBroadcast:
    """The real chain; the process 'dies' right after the broadcast committed."""

    def __init__(self, chain: ChainAnchor) -> None:
        self.chain = chain

    def anchor_tx(self, *args: Any) -> bytes:
        return self.chain.anchor_tx(*args)

    async def committed_height(self, tx: bytes) -> int | None:
        return await self.chain.committed_height(tx)

    async def broadcast(self, tx: bytes) -> int:
        await self.chain.broadcast(tx)
        raise KeyboardInterrupt  # as a kill: nothing after this line of the caller runs


async def test_trail_reproducible_and_anchored(alice_bob, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    alice, bob = alice_bob
    room = await shared_room(alice, bob, "write", kind="verification")
    await alice.records.publish_schema(room, "meter", {"type": "object"})
    rec = await alice.records.put(room, "meter/1", {"kwh": 1})
    await alice.files.put(room, b"evidence", filename="e.bin")
    await alice.claims.issue(room, "did:ixo:entity:x", "Checked", {"ok": True}, evidence=[rec])
    await alice.messages.redact(room, rec.event_id)
    await alice.rooms.revoke(room, bob.user_id)

    added = await alice.audit.update(room)
    assert added >= 10  # create, members, power levels, schema, record, file, claim, ...
    assert await alice.audit.update(room) == 0  # nothing new: nothing appended
    entries = alice.audit.entries(room)
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    prev = GENESIS
    for e in entries:
        assert e.entry["prev"] == prev and entry_hash(e.entry) == e.hash
        prev = e.hash
    types = [e.entry["type"] for e in entries]
    assert "m.room.create" in types and "m.room.redaction" in types
    assert types.count("m.room.encrypted") >= 3  # record, file, claim (ciphertext only)
    assert "m.room.power_levels" in types and "io.datarooms.schema" in types

    # Bob, a (former) member, rebuilds the same chain from the room himself.
    await bob.sync_once()
    assert await bob.audit.update(room) >= len(entries) - 2
    bob_entries = bob.audit.entries(room)
    common = min(len(bob_entries), len(entries))
    assert [e.hash for e in bob_entries[:common]] == [e.hash for e in entries[:common]]

    async with running_devchain(tmp_path / "chain") as srv:
        chain = ChainAnchor(srv.url)
        first = await alice.audit.anchor(room, chain)
        assert first is not None and first.height and first.last_seq == len(entries)
        msg = decode_anchor_tx(first.tx)
        assert msg["merkle_root"] == merkle_root([e.hash for e in entries])
        assert msg["room"] == room_hash(room) and room not in first.tx.decode()
        again = await alice.audit.anchor(room, chain)
        assert again is None, (
            again,
            first,
            [e.entry for e in alice.audit.entries(room, after=first.last_seq)],
        )  # nothing new: no anchor
        assert await _anchors_on_chain(srv.url) == 1

        # A crash between the commit and persisting its height: the next run finds the tx
        # on chain and records it; it anchors neither twice nor loses the range.
        await alice.records.put(room, "meter/1", {"kwh": 2})
        with pytest.raises(KeyboardInterrupt):
            await alice.audit.anchor(room, _CrashAfterBroadcast(chain))  # type: ignore[arg-type]
        pending = alice.audit.anchors(room)[-1]
        assert pending.height is None
        assert await _anchors_on_chain(srv.url) == 2
        assert await alice.audit.anchor(room, chain) is None
        anchors = alice.audit.anchors(room)
        assert len(anchors) == 2 and anchors[-1].height is not None
        assert anchors[-1].first_seq == anchors[0].last_seq + 1
        assert await _anchors_on_chain(srv.url) == 2

        # A crash before the broadcast reached the chain: broadcast on the next run, once.
        await alice.records.put(room, "meter/1", {"kwh": 3})

        class _CrashBeforeBroadcast(_CrashAfterBroadcast):
            async def broadcast(self, tx: bytes) -> int:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            await alice.audit.anchor(room, _CrashBeforeBroadcast(chain))  # type: ignore[arg-type]
        assert await _anchors_on_chain(srv.url) == 2
        assert await alice.audit.anchor(room, chain) is None
        assert await _anchors_on_chain(srv.url) == 3
        assert all(a.height for a in alice.audit.anchors(room))
        # The chain refuses anything but hashes.
        bad = json.loads(first.tx)
        bad["body"]["messages"][0]["room"] = room
        async with CometRpc(srv.url) as rpc:
            res = await rpc.broadcast_tx_commit(json.dumps(bad).encode())
        assert res["check_tx"]["code"] != 0


def _flip(text: str, at: int | None = None) -> str:
    """``text`` with one character changed (one byte of the bundle)."""
    i = len(text) // 2 if at is None else at
    c = text[i]
    return text[:i] + ("b" if c == "a" else "a") + text[i + 1 :]


async def test_bundle_verifies_offline_and_each_tamper_fails_at_its_layer(  # type: ignore[no-untyped-def]
    alice_bob, tmp_path: Path
) -> None:
    import copy

    from datarooms.chain.anchor import bundle_anchor_check
    from datarooms.sdk.audit_bundle import verify_bundle

    alice, bob = alice_bob
    room = await shared_room(alice, bob, "write", kind="verification")
    photo = await alice.files.put(room, b"photo of the meter", filename="m.jpg")
    rec = await alice.records.put(room, "meter/1", {"kwh": 7})
    saved = await alice.claims.issue(
        room, "did:ixo:entity:y", "Read", {"kwh": 7}, evidence=[photo, rec]
    )
    async with running_devchain(tmp_path / "chain") as srv:
        chain = ChainAnchor(srv.url)
        await alice.audit.anchor(room, chain)
        await alice.records.put(room, "meter/1", {"kwh": 8})
        await alice.audit.anchor(room, chain)
        bundle = await alice.audit.export(
            room, anchor_proof=chain.inclusion_proof, chain=await chain.identity()
        )
        # (The CLI against the chain's RPC: tests/test_cli_evidence.py.)
        path = tmp_path / "bundle.json"
        path.write_text(json.dumps(bundle))
        identity = await chain.identity()
        key = identity["validators"][0]["pub_key"]["value"]
    # The chain is gone, so is the homeserver as far as this check goes: offline.
    pinned = cli("audit", "verify", str(path), "--validator-key", key)
    assert pinned.returncode == 0, pinned.stdout + pinned.stderr
    assert pinned.stderr.startswith("VERIFIED: ")
    by_hash = cli("audit", "verify", str(path), "--validators-hash", identity["validators_hash"])
    assert by_hash.returncode == 0, by_hash.stdout + by_hash.stderr
    other_set = cli("audit", "verify", str(path), "--validators-hash", "AB" * 32)
    assert other_set.returncode == 1 and "unknown_validator_set" in other_set.stdout
    forged_key = base64.b64encode(bytes(32)).decode()
    forged = cli("audit", "verify", str(path), "--validator-key", forged_key)
    assert forged.returncode == 1 and "validator" in forged.stdout
    assert forged.stderr.startswith("BROKEN: layer anchors at anchor 0")
    gone = cli("audit", "verify", str(path), "--rpc", "http://127.0.0.1:9")
    assert gone.returncode == 2 and "unreachable" in gone.stdout
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    bad = cli("audit", "verify", str(garbage))
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    # The chain is gone: everything below is offline.
    check = bundle_anchor_check(bundle["chain"])
    good = verify_bundle(json.loads(json.dumps(bundle)), check_anchor=check)
    assert good.verdict == "ok", good.to_json()
    assert good.layers["claims"]["checked"] == 1 and good.layers["anchors"]["checked"] == 2
    assert good.layers["megolm"]["checked"] >= 4  # file, record x2, claim
    acts = good.to_json()["acts"]
    assert acts["record.put"] == 2 and acts["file"] == 1 and acts["claim"] == 1
    assert acts["grant"] == 1 and acts["access"] >= 1
    no_chain = verify_bundle(bundle)
    assert no_chain.verdict == "incomplete" and any("not checked" in u for u in no_chain.unverified)

    entries = bundle["entries"]
    claim_seq = next(e["seq"] for e in entries if e["event_id"] == saved.event_id)
    n = len(entries)

    def tampered(mutate) -> dict:  # type: ignore[no-untyped-def, type-arg]
        b = copy.deepcopy(bundle)
        mutate(b)
        report = verify_bundle(b, check_anchor=bundle_anchor_check(b["chain"]))
        assert report.verdict == "broken"
        return report.breaks[0]

    # An entry altered: the chain breaks at that entry.
    first = tampered(
        lambda b: b["entries"][3].__setitem__("sender", _flip(b["entries"][3]["sender"]))
    )
    assert first["layer"] == "events" and first["seq"] == 4
    brk = tampered(lambda b: b["entries"][3].__setitem__("hash", _flip(b["entries"][3]["hash"])))
    assert brk["layer"] == "chain" and brk["seq"] == 4

    # An entry (with its event) dropped from the middle, or two swapped.
    def drop(b: dict) -> None:  # type: ignore[type-arg]
        del b["entries"][5]
        del b["events"][5]

    brk = tampered(drop)
    assert brk["layer"] == "chain" and brk["seq"] == 6

    def swap(b: dict) -> None:  # type: ignore[type-arg]
        for key in ("entries", "events"):
            b[key][4], b[key][5] = b[key][5], b[key][4]

    brk = tampered(swap)
    assert brk["layer"] == "chain" and brk["seq"] == 5

    # An event's ciphertext changed: its content no longer hashes to the entry.
    def cipher(b: dict) -> None:  # type: ignore[type-arg]
        ev_ = b["events"][claim_seq - 1]["content"]
        ev_["ciphertext"] = _flip(ev_["ciphertext"])

    brk = tampered(cipher)
    assert brk["layer"] == "events" and brk["seq"] == claim_seq

    # A Megolm key changed: the event does not decrypt.
    def key(b: dict) -> None:  # type: ignore[type-arg]
        sid = b["events"][claim_seq - 1]["content"]["session_id"]
        s = b["megolm_sessions"][sid]
        s["session_key"] = _flip(s["session_key"], 40)

    assert tampered(key)["layer"] == "megolm"

    # A Megolm session claimed for another key, or the device's keys re-signed: senders.
    def signing_key(b: dict) -> None:  # type: ignore[type-arg]
        sid = b["events"][claim_seq - 1]["content"]["session_id"]
        b["megolm_sessions"][sid]["signing_key"] = _flip(
            b["megolm_sessions"][sid]["signing_key"], 5
        )

    brk = tampered(signing_key)
    assert brk["layer"] == "senders" and "not signed by device" in brk["detail"]

    def device_sig(b: dict) -> None:  # type: ignore[type-arg]
        dev = b["entries"][claim_seq - 1]
        keys = b["identities"][dev["sender"]]["device_keys"]
        for obj in keys.values():
            for sigs in obj["signatures"].values():
                for k in sigs:
                    sigs[k] = _flip(sigs[k], 3)

    assert tampered(device_sig)["layer"] == "senders"
    without = copy.deepcopy(bundle)
    without["identities"] = {}
    unbound = verify_bundle(without, check_anchor=check)
    assert unbound.verdict == "incomplete"
    assert any("sender not bound" in u for u in unbound.unverified)
    master = (await alice.keys.status()).master_key
    assert master and good.layers["senders"]["identities"] == {alice.user_id: master}

    # Evidence bytes changed: the claim fails on its evidence.
    def evidence(b: dict) -> None:  # type: ignore[type-arg]
        cid = next(iter(b["files"]))
        b["files"][cid] = base64.b64encode(b"photo of the meteR").decode()

    brk = tampered(evidence)
    assert brk["layer"] == "claims" and "evidence_changed" in brk["detail"]

    # A forged anchor: its Merkle root, its block header, its block signature, its height.
    def anchor_tx(b: dict) -> None:  # type: ignore[type-arg]
        tx = json.loads(base64.b64decode(b["anchors"][0]["tx"]))
        tx["body"]["messages"][0]["merkle_root"] = _flip(tx["body"]["messages"][0]["merkle_root"])
        b["anchors"][0]["tx"] = base64.b64encode(json.dumps(tx).encode()).decode()

    brk = tampered(anchor_tx)
    assert brk["layer"] == "anchors" and "Merkle root" in brk["detail"]

    def header(b: dict) -> None:  # type: ignore[type-arg]
        h = b["anchors"][1]["proof"]["signed_header"]["header"]
        h["app_hash"] = "00" * 32

    brk = tampered(header)
    assert brk["layer"] == "anchors" and "[bad_header_hash]" in brk["detail"]

    def signature(b: dict) -> None:  # type: ignore[type-arg]
        c = b["anchors"][0]["proof"]["signed_header"]["commit"]
        c["signatures"][0]["signature"] = base64.b64encode(bytes(64)).decode()

    brk = tampered(signature)
    assert brk["layer"] == "anchors" and "[forged_signature]" in brk["detail"]

    def dropped_anchor(b: dict) -> None:  # type: ignore[type-arg]
        del b["anchors"][0]

    brk = tampered(dropped_anchor)
    assert brk["layer"] == "anchors" and "missing" in brk["detail"]

    # A bundle exported before the light-client check (the devchain's own header proof).
    old = copy.deepcopy(bundle)
    old["anchors"][0]["proof"] = {
        "height": old["anchors"][0]["height"],
        "tx_hashes": [],
        "header": {},
        "block_hash": "",
        "signature": "",
    }
    stale = verify_bundle(old, check_anchor=bundle_anchor_check(old["chain"]))
    assert stale.verdict == "incomplete", stale.to_json()
    assert any("not supported" in u and "re-export" in u for u in stale.unverified)

    # Not a bundle at all, or cut short: a verdict, never a crash.
    assert verify_bundle({"format": "x"}).breaks[0]["layer"] == "format"
    assert verify_bundle([1, 2]).verdict == "broken"
    cut = copy.deepcopy(bundle)
    del cut["events"][-1]
    assert verify_bundle(cut).breaks[0]["layer"] == "format"
    assert n == len(bundle["entries"])


async def test_anchoring_survives_sigkill_at_both_points(  # type: ignore[no-untyped-def]
    homeserver, open_client, tmp_path: Path
) -> None:
    """A real process, killed right after its anchor committed and right before it was
    sent: the next run anchors each range exactly once and loses none."""
    import signal
    import subprocess
    import sys

    alice = await open_client(await homeserver.new_user("owner"))
    auditor = await homeserver.new_user("auditor")
    room = (await alice.rooms.create("verification", name="crash")).room_id
    await alice.rooms.grant(room, auditor.user_id, "read")
    await alice.records.put(room, "k", {"v": 1})
    script = Path(__file__).resolve().parent / "audit_crash_anchor.py"

    async with running_devchain(tmp_path / "chain") as srv:
        config = tmp_path / "auditor.json"
        config.write_text(
            json.dumps(
                {
                    "homeserver": homeserver.base_url,
                    "user_id": auditor.user_id,
                    "access_token": auditor.access_token,
                    "store": str(tmp_path / "auditor"),
                    "room": room,
                    "rpc": srv.url,
                }
            )
        )

        def child(mode: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, str(script), str(config), mode],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )

        killed = await asyncio.to_thread(child, "after-commit")
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        assert await _anchors_on_chain(srv.url) == 1  # it reached the chain ...
        done = await asyncio.to_thread(child, "none")
        assert done.returncode == 0, done.stderr[-2000:]
        result = json.loads(done.stdout.splitlines()[-1])
        assert result["new"] is None  # ... and is found there, not anchored again
        assert len(result["anchors"]) == 1 and result["anchors"][0]["height"] >= 1
        assert await _anchors_on_chain(srv.url) == 1

        await alice.records.put(room, "k", {"v": 2})
        killed = await asyncio.to_thread(child, "before-broadcast")
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        assert await _anchors_on_chain(srv.url) == 1
        done = await asyncio.to_thread(child, "none")
        assert done.returncode == 0, done.stderr[-2000:]
        result = json.loads(done.stdout.splitlines()[-1])
        assert result["new"] is None and len(result["anchors"]) == 2  # sent once, by the resume
        assert all(a["height"] for a in result["anchors"])
        assert result["anchors"][1]["first_seq"] == result["anchors"][0]["last_seq"] + 1
        assert await _anchors_on_chain(srv.url) == 2


async def test_concurrent_updates_number_each_event_once(alice_bob) -> None:  # type: ignore[no-untyped-def]
    alice, _bob = alice_bob
    room = (await alice.rooms.create("verification", name="concurrent")).room_id
    for i in range(5):
        await alice.records.put(room, "k", {"i": i})
    added = await asyncio.gather(*(alice.audit.update(room) for _ in range(4)))
    entries = alice.audit.entries(room)
    assert sum(added) == len(entries) and len({e.entry["event_id"] for e in entries}) == len(
        entries
    )


async def test_unreachable_chain_is_a_clear_error_and_the_anchor_waits(  # type: ignore[no-untyped-def]
    alice_bob, tmp_path: Path
) -> None:
    from datarooms.chain.errors import ChainError

    alice, _bob = alice_bob
    room = (await alice.rooms.create("verification", name="offline chain")).room_id
    with pytest.raises(ChainError) as err:
        await alice.audit.anchor(room, ChainAnchor("http://127.0.0.1:9"))
    assert "127.0.0.1:9" in str(err.value)
    assert [a.height for a in alice.audit.anchors(room)] == [None]  # remembered, not lost
    async with running_devchain(tmp_path / "chain") as srv:
        assert await alice.audit.anchor(room, ChainAnchor(srv.url)) is None  # the pending one
        assert all(a.height for a in alice.audit.anchors(room))
        assert await _anchors_on_chain(srv.url) == 1
