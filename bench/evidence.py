"""Verification evidence: record put with the audit trail on vs off, claim issue + verify,
and the offline `audit verify` of a 10,000-entry bundle with 100 anchors.

Run from the repo root: python bench/evidence.py [--quick | --smoke]

Everything runs against a real embedded Synapse and a real devchain:

1. put with the audit trail off vs on, interleaved on the same client and room (two
   rooms, one each). "On" is how the platform runs it: the trail is brought up to date
   (``audit.update``, paging ``/messages`` from its cursor) by a background task every
   ``--audit-interval`` seconds (default 1 s) while the puts run, and anchored at the
   end; put_p50_ms_audit_on / put_p50_ms_audit_off is audit_overhead_ratio. Also
   reported: audit_update_p50_ms (one incremental update after a put).
2. claims: ``claims.issue`` with one file and one record as evidence (sign, CID, save
   E2EE) and ``claims.verify`` (find the claim, download + decrypt the evidence, check
   signature, CIDs and bytes), vs the baselines ``records.put`` of the same data and
   ``records.get``.
3. audit verify: a bundle of N entries (full and quick 10,000; smoke 500), every event a
   real Megolm-encrypted record (vodozemac), 1 in 100 a signed claim citing a record,
   anchored in 100 ranges on the devchain (CometBFT light-client evidence in the bundle);
   ``verify_bundle`` offline: verify_s and verify_entries_per_s, vs the baseline of the
   hash chain alone (chain_only_entries_per_s). Per anchor: the light-client check
   (anchor_check_ms_light_p50) side by side with the old devchain check's work
   (anchor_check_ms_old_devchain_p50), and fetching its evidence over RPC
   (anchor_proof_fetch_ms_p50). A real room's exported bundle is verified too
   (bundle_real_entries).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from _common import bench_args, emit, machine, median, percentile, with_homeserver
from datarooms import Credentials, DataroomsClient
from datarooms import events as ev
from datarooms.chain.anchor import ChainAnchor, bundle_anchor_check
from datarooms.chain.devchain import DevChain, DevChainServer
from datarooms.sdk import audit as au
from datarooms.sdk.audit_bundle import verify_bundle
from datarooms.sdk.claims import claim_cid, record_bytes
from datarooms.sdk.proofs import cid_of
from datarooms.testing import TestHomeserver


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


async def _open(hs: TestHomeserver, prefix: str, tmp: Path) -> DataroomsClient:
    user = await hs.new_user(prefix)
    creds = Credentials(hs.base_url, user.user_id, user.access_token)
    return await DataroomsClient.open(creds, tmp / prefix)


# -- 1. put with the audit trail on / off ------------------------------------------


async def bench_put(
    client: DataroomsClient, chain: ChainAnchor, n: int, interval: float
) -> dict[str, Any]:
    off = (await client.rooms.create("device", name="audit off")).room_id
    on = (await client.rooms.create("device", name="audit on")).room_id
    await client.audit.update(on)

    async def keep_trail() -> None:
        while True:
            await asyncio.sleep(interval)
            await client.audit.update(on)

    for i in range(5):  # warm-up: sessions shared, caches filled
        await client.records.put(off, "k", {"i": i})
        await client.records.put(on, "k", {"i": i})
    task = asyncio.create_task(keep_trail())
    t_off: list[float] = []
    t_on: list[float] = []
    try:
        for i in range(n):
            pairs = [(off, t_off), (on, t_on)]
            for room, out in pairs if i % 2 == 0 else reversed(pairs):
                t0 = time.perf_counter()
                await client.records.put(room, f"sensor-{i % 10}", {"c": 20 + i % 7, "seq": i})
                out.append(_ms(t0))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    updates: list[float] = []
    for i in range(min(20, n)):
        await client.records.put(on, "k", {"i": i})
        t0 = time.perf_counter()
        await client.audit.update(on)
        updates.append(_ms(t0))
    t0 = time.perf_counter()
    anchor = await client.audit.anchor(on, chain)
    anchor_ms = _ms(t0)
    p_on, p_off = median(t_on), median(t_off)
    return {
        "put_n": n,
        "put_p50_ms_audit_on": p_on,
        "put_p50_ms_audit_off": p_off,
        "put_p99_ms_audit_on": percentile(t_on, 99),
        "put_p99_ms_audit_off": percentile(t_off, 99),
        "audit_overhead_ratio": p_on / p_off,
        "audit_update_p50_ms": median(updates),
        "audit_anchor_ms": anchor_ms,
        "audit_entries_anchored": anchor.last_seq if anchor else 0,
    }


# -- 2. claims ----------------------------------------------------------------------


async def bench_claims(client: DataroomsClient, n: int) -> dict[str, Any]:
    room = (await client.rooms.create("verification", name="claims bench")).room_id
    photo = await client.files.put(room, b"\x89PNG" + bytes(range(256)) * 16, filename="p.png")
    reading = await client.records.put(room, "meter", {"kwh": 12.5})
    issue: list[float] = []
    put: list[float] = []
    cids: list[str] = []
    data = {"capacityKw": 5.5, "verdict": "pass", "inspector": "bench"}
    for i in range(n):
        t0 = time.perf_counter()
        saved = await client.claims.issue(
            room, "did:ixo:entity:bench", "Inspected", {**data, "n": i}, evidence=[photo, reading]
        )
        issue.append(_ms(t0))
        cids.append(saved.cid)
        t0 = time.perf_counter()
        await client.records.put(room, f"plain-{i}", {**data, "n": i})
        put.append(_ms(t0))
    verify: list[float] = []
    get: list[float] = []
    for i, cid in enumerate(cids):
        t0 = time.perf_counter()
        verdict = await client.claims.verify(room, cid)
        verify.append(_ms(t0))
        assert verdict.ok, verdict
        t0 = time.perf_counter()
        await client.records.get(room, f"plain-{i}")
        get.append(_ms(t0))
    return {
        "claims_n": n,
        "claim_issue_p50_ms": median(issue),
        "claim_verify_p50_ms": median(verify),
        "baseline_record_put_p50_ms": median(put),
        "baseline_record_get_p50_ms": median(get),
        "claim_issue_vs_put_ratio": median(issue) / median(put),
    }


# -- 3. audit verify of a big bundle ------------------------------------------------


def synthetic_bundle(
    entries_n: int, anchors_n: int, issuer: Any
) -> tuple[dict[str, Any], list[tuple[int, int, str, str]]]:
    """A bundle of ``entries_n`` Megolm-encrypted events (1 in 100 a claim), its entries
    chained, and the ``anchors_n`` ranges to anchor (first, last, root, head)."""
    import vodozemac

    room = "!bench:localhost"
    session = vodozemac.GroupSession()
    inbound = vodozemac.InboundGroupSession(session.session_key)
    sender_key = base64.b64encode(b"k" * 32).decode().rstrip("=")
    events: list[dict[str, Any]] = []
    entries: list[dict[str, Any]] = []
    prev = au.GENESIS
    last_record: tuple[str, str, Any] | None = None
    for seq in range(1, entries_n + 1):
        event_id = f"$bench-{seq}"
        if seq % 100 == 0 and last_record is not None:
            rec_event, key, value = last_record
            item = {
                "type": ["Evidence", "DataroomsRecord"],
                "cid": cid_of(record_bytes(key, value), "json"),
                "record": key,
                "event": rec_event,
            }
            vc = issuer.sign("did:ixo:entity:bench", "Inspected", {"n": seq}, [item])
            inner = {
                "type": ev.CLAIM,
                "content": {"v": 1, "collection": "c", "cid": claim_cid(vc), "credential": vc},
                "room_id": room,
            }
        else:
            key, value = f"sensor-{seq % 50}", {"c": seq % 30, "seq": seq}
            inner = {
                "type": ev.RECORD,
                "content": {"key": key, "value": value, "txn": f"t{seq}"},
                "room_id": room,
            }
            last_record = (event_id, key, value)
        ciphertext = session.encrypt(json.dumps(inner).encode()).to_base64()
        raw = {
            "event_id": event_id,
            "type": "m.room.encrypted",
            "sender": "@bench:localhost",
            "origin_server_ts": 1_700_000_000_000 + seq,
            "room_id": room,
            "content": {
                "algorithm": "m.megolm.v1.aes-sha2",
                "ciphertext": ciphertext,
                "session_id": session.session_id,
                "sender_key": sender_key,
                "device_id": "BENCH",
            },
        }
        entry = au.entry_for(room, seq, prev, raw)
        prev = au.entry_hash(entry)
        events.append(raw)
        entries.append({**entry, "hash": prev})
    step = max(1, entries_n // anchors_n)
    ranges = []
    for first in range(1, entries_n + 1, step):
        last = min(entries_n, first + step - 1)
        hashes = [e["hash"] for e in entries[first - 1 : last]]
        ranges.append((first, last, au.merkle_root(hashes), hashes[-1]))
    # The sender's identity, cross-signed as a real account's is: master -> self-signing
    # -> device; the Megolm session's signing key is the device's.
    from datarooms.sdk.keys.signing import SigningKey

    user, device = "@bench:localhost", "BENCH"
    master, ssk, dev = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()

    def key_obj(k: SigningKey, usage: str) -> dict[str, Any]:
        return {"user_id": user, "usage": [usage], "keys": {f"ed25519:{k.public}": k.public}}

    device_keys = {
        "user_id": user,
        "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {f"ed25519:{device}": dev.public, f"curve25519:{device}": sender_key},
    }
    device_keys = ssk.sign_json(dev.sign_json(device_keys, user, device), user)
    identities = {
        user: {
            "master_key": key_obj(master, "master"),
            "self_signing_key": master.sign_json(key_obj(ssk, "self_signing"), user),
            "device_keys": {device: device_keys},
        }
    }
    bundle = {
        "format": au.BUNDLE_FORMAT,
        "room": room,
        "room_hash": au.room_hash(room),
        "entries": entries,
        "events": events,
        "megolm_sessions": {
            session.session_id: {
                "sender_key": sender_key,
                "signing_key": dev.public,
                "session_key": inbound.export_at(0).to_base64(),  # type: ignore[union-attr]
            }
        },
        "identities": identities,
        "files": {},
        "anchors": [],
        "chain": {},
    }
    return bundle, ranges


async def bench_verify(
    client: DataroomsClient, chain: ChainAnchor, entries_n: int, anchors_n: int
) -> dict[str, Any]:
    t0 = time.perf_counter()
    bundle, ranges = synthetic_bundle(entries_n, anchors_n, client.claims)
    build_s = time.perf_counter() - t0
    room_hash = bundle["room_hash"]
    fetch_ms: list[float] = []
    for first, last, root, head in ranges:
        tx = chain.anchor_tx(room_hash, first, last, root, head)
        height = await chain.broadcast(tx)
        t0 = time.perf_counter()
        proof = await chain.inclusion_proof(tx, height)
        fetch_ms.append(_ms(t0))
        bundle["anchors"].append(
            {
                "first_seq": first,
                "last_seq": last,
                "root": root,
                "height": height,
                "tx": base64.b64encode(tx).decode(),
                "proof": proof,
            }
        )
    bundle["chain"] = await chain.identity()
    size_mb = len(json.dumps(bundle)) / 1e6
    check = bundle_anchor_check(bundle["chain"])
    light_ms, old_ms = _anchor_check_costs(bundle, check)
    runs: list[float] = []
    for _ in range(3):
        t0 = time.perf_counter()
        report = verify_bundle(bundle, check_anchor=check)
        runs.append(time.perf_counter() - t0)
        assert report.verdict == "ok", report.to_json()
    t0 = time.perf_counter()
    chain_only = _chain_only(bundle)
    chain_s = time.perf_counter() - t0
    assert chain_only
    verify_s = median(runs)
    return {
        "bundle_entries": entries_n,
        "bundle_anchors": len(bundle["anchors"]),
        "bundle_claims": report.layers["claims"]["checked"],
        "bundle_mb": size_mb,
        "bundle_build_s": build_s,
        "verify_s": verify_s,
        "verify_entries_per_s": entries_n / verify_s,
        "chain_only_entries_per_s": entries_n / chain_s,
        # Per anchor: the CometBFT light-client check vs the old devchain check's work
        # (SHA-256 of a JSON header + one ed25519 verify), and fetching the evidence.
        "anchor_check_ms_light_p50": median(light_ms),
        "anchor_check_ms_old_devchain_p50": median(old_ms),
        "anchor_check_light_vs_old_ratio": median(light_ms) / median(old_ms),
        "anchor_proof_fetch_ms_p50": median(fetch_ms),
    }


def _anchor_check_costs(bundle: dict[str, Any], check: Any) -> tuple[list[float], list[float]]:
    """Each anchor's light-client check (ms), and the old devchain check's work (ms)."""
    key = Ed25519PrivateKey.generate()
    light_ms, old_ms = [], []
    for a in bundle["anchors"]:
        tx = base64.b64decode(a["tx"])
        t0 = time.perf_counter()
        check(tx, a)
        light_ms.append(_ms(t0))
        header = a["proof"]["signed_header"]["header"]
        sig = key.sign(b"x" * 32)
        t0 = time.perf_counter()
        digest = hashlib.sha256(hashlib.sha256(tx).digest()).hexdigest()
        bhash = hashlib.sha256(json.dumps(header, sort_keys=True).encode()).digest()
        with contextlib.suppress(InvalidSignature):
            key.public_key().verify(sig, bhash)
        old_ms.append(_ms(t0))
        assert digest
    return light_ms, old_ms


def _chain_only(bundle: dict[str, Any]) -> bool:
    """The baseline: the hash chain alone (no events, Megolm, claims or anchors)."""
    prev = au.GENESIS
    for e in bundle["entries"]:
        body = {k: v for k, v in e.items() if k != "hash"}
        if body["prev"] != prev or au.entry_hash(body) != e["hash"]:
            return False
        prev = e["hash"]
    return True


async def bench_real_bundle(client: DataroomsClient, chain: ChainAnchor) -> dict[str, Any]:
    room = (await client.rooms.create("verification", name="real bundle")).room_id
    photo = await client.files.put(room, b"evidence" * 100, filename="e.bin")
    for i in range(20):
        await client.records.put(room, "k", {"i": i})
    await client.claims.issue(room, "did:ixo:entity:real", "Checked", {}, evidence=[photo])
    await client.audit.anchor(room, chain)
    t0 = time.perf_counter()
    bundle = await client.audit.export(
        room, anchor_proof=chain.inclusion_proof, chain=await chain.identity()
    )
    export_ms = _ms(t0)
    report = verify_bundle(bundle, check_anchor=bundle_anchor_check(bundle["chain"]))
    assert report.verdict == "ok", report.to_json()
    return {"bundle_real_entries": len(bundle["entries"]), "bundle_real_export_ms": export_ms}


async def run(
    hs: TestHomeserver, tmp: Path, quick: bool, smoke: bool, interval: float
) -> dict[str, Any]:
    puts = 20 if smoke else (150 if quick else 500)
    claims = 3 if smoke else (15 if quick else 50)
    entries = 500 if smoke else 10_000
    anchors = 10 if smoke else 100
    client = await _open(hs, f"evidence-{uuid.uuid4().hex[:6]}", tmp)
    async with DevChainServer(DevChain(tmp / "chain", block_interval=0.02), port=0) as srv:
        chain = ChainAnchor(srv.url)
        try:
            out: dict[str, Any] = {"bench": "evidence", **machine()}
            out.update(await bench_put(client, chain, puts, interval))
            out.update(await bench_claims(client, claims))
            out.update(await bench_verify(client, chain, entries, anchors))
            out.update(await bench_real_bundle(client, chain))
        finally:
            await client.close()
    return out


def main() -> None:
    ap = bench_args(__doc__, "fewer puts and claims (the bundle keeps 10,000 entries)")
    ap.add_argument("--audit-interval", type=float, default=1.0, help="seconds between updates")
    args = ap.parse_args()
    r = with_homeserver(
        "evidence", lambda hs, tmp: run(hs, tmp, args.quick, args.smoke, args.audit_interval)
    )
    print(
        f"put p50: audit on {r['put_p50_ms_audit_on']:.2f} ms vs off "
        f"{r['put_p50_ms_audit_off']:.2f} ms (ratio {r['audit_overhead_ratio']:.3f}, "
        f"{r['put_n']} each); one incremental trail update p50 {r['audit_update_p50_ms']:.2f} ms"
    )
    print(
        f"claim issue p50 {r['claim_issue_p50_ms']:.2f} ms (record put "
        f"{r['baseline_record_put_p50_ms']:.2f} ms); verify p50 {r['claim_verify_p50_ms']:.2f} "
        f"ms (record get {r['baseline_record_get_p50_ms']:.2f} ms)"
    )
    print(
        f"audit verify: {r['bundle_entries']:,} entries, {r['bundle_anchors']} anchors, "
        f"{r['bundle_claims']} claims ({r['bundle_mb']:.1f} MB): {r['verify_s']:.2f} s, "
        f"{r['verify_entries_per_s']:,.0f} entries/s (hash chain alone "
        f"{r['chain_only_entries_per_s']:,.0f}/s)"
    )
    print(
        f"anchor check p50: light client {r['anchor_check_ms_light_p50']:.3f} ms vs old "
        f"devchain check {r['anchor_check_ms_old_devchain_p50']:.3f} ms "
        f"(x{r['anchor_check_light_vs_old_ratio']:.2f}); evidence fetch "
        f"{r['anchor_proof_fetch_ms_p50']:.1f} ms"
    )
    emit(r)


if __name__ == "__main__":
    main()
