"""What the dashboard's pages show, as plain JSON-ready data built from SDK objects:
a key's versions with the changes between them, a chart's points (raw samples for
short ranges, per-minute or coarser rollups for long ones), room files."""

from __future__ import annotations

import math
from typing import Any

from datarooms.errors import DataroomsError
from datarooms.sdk.claims import ClaimVerdict, SavedClaim
from datarooms.sdk.keys import Verification, VerificationState
from datarooms.sdk.records import Record
from datarooms.sdk.telemetry import Bucket, Sample

#: How many changes of one version the history lists at most.
MAX_CHANGES = 200
_MINUTE_MS = 60_000


def record_json(record: Record) -> dict[str, Any]:
    return {
        "key": record.key,
        "value": record.value,
        "ts": record.ts,
        "sender": record.sender,
        "event_id": record.event_id,
    }


def changes(old: Any, new: Any, path: str = "") -> list[dict[str, Any]]:
    """The changes from ``old`` to ``new`` as JSON Pointer paths: ``added``, ``removed``,
    ``changed`` (objects compared key by key, anything else as a whole)."""
    out: list[dict[str, Any]] = []
    _diff(old, new, path, out)
    return out[:MAX_CHANGES]


def _diff(old: Any, new: Any, path: str, out: list[dict[str, Any]]) -> None:
    if len(out) >= MAX_CHANGES:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            sub = f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"
            if key not in new:
                out.append({"path": sub, "op": "removed", "old": old[key]})
            elif key not in old:
                out.append({"path": sub, "op": "added", "new": new[key]})
            else:
                _diff(old[key], new[key], sub, out)
        return
    if old != new or type(old) is not type(new):
        out.append({"path": path or "/", "op": "changed", "old": old, "new": new})


def history_json(versions: list[Record]) -> list[dict[str, Any]]:
    """Versions newest first, each with its changes from the version before it."""
    out = []
    for i, record in enumerate(versions):
        item = record_json(record)
        older = versions[i + 1] if i + 1 < len(versions) else None
        item["changes"] = (
            changes(older.value, record.value)
            if older is not None
            else [{"path": "/", "op": "added", "new": record.value}]
        )
        out.append(item)
    return out


def bucket_step(span_ms: int, max_points: int, *, minimum: int) -> int:
    """The bucket width for ``span_ms`` in at most ``max_points`` buckets: at least
    ``minimum``, and a whole number of minutes from a minute up (so that full minutes
    come from the index's per-minute rollups)."""
    step = max(minimum, math.ceil(span_ms / max_points))
    if step >= _MINUTE_MS:
        step = math.ceil(step / _MINUTE_MS) * _MINUTE_MS
    return step


def raw_points(samples: list[Sample]) -> dict[str, Any]:
    return {
        "mode": "raw",
        "step": 0,
        "t": [s.ts / 1000 for s in samples],
        "v": [s.value for s in samples],
    }


def bucket_points(buckets: list[Bucket], step: int) -> dict[str, Any]:
    kept = [b for b in buckets if b.count]
    return {
        "mode": "rollup",
        "step": step,
        "t": [b.start / 1000 for b in kept],
        "v": [round(b.mean, 6) for b in kept],
        "min": [b.min for b in kept],
        "max": [b.max for b in kept],
        "n": [b.count for b in kept],
    }


def claim_json(saved: SavedClaim, verdict: ClaimVerdict) -> dict[str, Any]:
    """A claim and its verification: what each check said (signature, CID, evidence)."""
    cred = saved.credential
    types = [t for t in cred.get("type", []) if t != "VerifiableCredential"]
    subject = cred.get("credentialSubject")
    issuer = cred.get("issuer")
    evidence = [
        {
            "cid": item.get("cid"),
            "event": item.get("event"),
            "kind": "record" if item.get("record") else "file",
            "name": item.get("record") or item.get("name"),
            "ok": any(c == f"evidence[{n}] {item.get('cid')}" for c in verdict.checked),
        }
        for n, item in enumerate(cred.get("evidence", []) or [])
        if isinstance(item, dict)
    ]
    checks = " ".join(verdict.checked)
    return {
        "cid": saved.cid,
        "collection": saved.collection,
        "event_id": saved.event_id,
        "sender": saved.sender,
        "ts": saved.ts,
        "type": types[0] if types else "",
        "subject": subject.get("id") if isinstance(subject, dict) else None,
        "issuer": issuer.get("id") if isinstance(issuer, dict) else issuer,
        "data": {k: v for k, v in subject.items() if k != "id"}
        if isinstance(subject, dict)
        else None,
        "evidence": evidence,
        "verdict": verdict.to_json(),
        "signature_ok": "signature by " in checks,
        "cid_ok": f"cid {saved.cid}" in verdict.checked,
    }


def verification_json(flow: Verification) -> dict[str, Any]:
    """A verification flow as the page shows it: its state, and the 7 emoji (and the
    3 numbers) to compare once the keys are exchanged."""
    emojis: list[dict[str, Any]] = []
    decimals: list[int] = []
    shows = flow.state in (VerificationState.KEYS_EXCHANGED, VerificationState.CONFIRMED)
    if shows:
        try:
            emojis = [
                {"symbol": e.symbol, "description": e.description, "number": e.number}
                for e in flow.emojis()
            ]
            decimals = list(flow.decimals())
        except DataroomsError:
            emojis, decimals = [], []
    return {
        "flow_id": flow.flow_id,
        "state": flow.state.value,
        "other_user": flow.other_user,
        "other_device": flow.other_device,
        "emojis": emojis,
        "decimals": decimals,
        "verified": flow.verified,
        "cancel_code": flow.cancel_code,
        "cancel_reason": flow.cancel_reason,
        "cancelled_by_us": flow.cancelled_by_us,
    }


__all__ = [
    "bucket_points",
    "bucket_step",
    "changes",
    "claim_json",
    "history_json",
    "raw_points",
    "record_json",
    "verification_json",
]
