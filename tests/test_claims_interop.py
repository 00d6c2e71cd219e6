"""Interop: our claims verify with Digital Bazaar's eddsa-jcs-2022 Data Integrity suite
(jsonld-signatures, offline document loader), and our CIDs equal JS multiformats' CIDs.

Both are installed from the npm registry by the test (``tests/interop/vc``, lockfile)."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import subprocess
from pathlib import Path
from typing import Any

from datarooms.sdk import proofs
from datarooms.sdk.claims import claim_cid, record_bytes
from tests._rooms import shared_room
from tests.interop.jsclient import ensure_js_deps

VC_DIR = Path(__file__).resolve().parent / "interop" / "vc"


def _js(payload: dict[str, Any]) -> dict[str, Any]:
    ensure_js_deps(js_dir=VC_DIR, marker="@digitalbazaar/eddsa-jcs-2022-cryptosuite")
    proc = subprocess.run(
        ["node", str(VC_DIR / "verify.mjs")],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return dict(json.loads(proc.stdout))


async def test_digital_bazaar_verifies_our_claim_and_multiformats_agrees_on_cids(  # type: ignore[no-untyped-def]
    alice_bob,
) -> None:
    alice, bob = alice_bob
    room = await shared_room(alice, bob, "write", kind="verification")
    data = b"\x00\x01 evidence bytes \xff" * 100
    photo = await alice.files.put(room, data, filename="evidence.bin")
    rec = await alice.records.put(room, "reading", {"kwh": 12.25, "note": "ünïcode"})
    saved = await alice.claims.issue(
        room,
        "did:ixo:entity:interop",
        "MeterReadingVerified",
        {"reading": {"kwh": 12.25, "at": "2026-12-01T00:00:00Z"}, "pass": True},
        evidence=[photo, rec],
    )
    vc = saved.credential
    forged = copy.deepcopy(vc)
    forged["credentialSubject"]["pass"] = False
    other_key = copy.deepcopy(vc)
    other_key["issuer"] = other_key["proof"]["verificationMethod"] = (
        "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
    )
    other_key["proof"]["verificationMethod"] += "#z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"

    # A signature starting with a zero byte (base58 "1"): where encoders go wrong.
    n = 0
    while True:
        zero_lead = alice.claims.sign("did:ixo:entity:interop", "Probe", {"n": n})
        if proofs.from_multibase_b58(zero_lead["proof"]["proofValue"])[0] == 0:
            break
        n += 1

    out = await asyncio.to_thread(
        _js,
        {
            "credentials": [vc, forged, other_key, zero_lead],
            "cids": [
                {"base64": base64.b64encode(data).decode(), "codec": "raw"},
                {
                    "base64": base64.b64encode(record_bytes(rec.key, rec.value)).decode(),
                    "codec": "json",
                },
                {"base64": base64.b64encode(proofs.canonical(vc)).decode(), "codec": "json"},
                {"base64": "", "codec": "raw"},
            ],
        },
    )
    ok, bad, wrong, zero = out["credentials"]
    assert zero == {"verified": True, "error": ""}, zero
    assert ok == {"verified": True, "error": ""}, ok
    assert not bad["verified"] and "signature" in bad["error"].lower()
    assert not wrong["verified"]
    assert out["cids"] == [
        vc["evidence"][0]["cid"],
        vc["evidence"][1]["cid"],
        saved.cid,
        proofs.cid_of(b""),
    ]
    assert saved.cid == claim_cid(vc)
