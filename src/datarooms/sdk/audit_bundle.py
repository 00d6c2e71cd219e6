"""An auditor's offline check of an exported audit bundle (no homeserver involved).

:meth:`datarooms.sdk.audit.Audit.export` writes the bundle; :func:`verify_bundle` checks
it layer by layer and says exactly where a break is:

``format``   the bundle is one we know, of one room;
``events``   each entry's event is in the bundle and its content hashes to the entry's
             ``content`` (an event redacted later is checked by its metadata only);
``chain``    entries are numbered 1..n without a gap, each ``prev`` is the hash of the
             entry before, and each entry hashes to its ``hash``: an entry removed,
             reordered or altered breaks the chain at that entry;
``megolm``   each encrypted event decrypts and authenticates with the bundled Megolm
             session keys (vodozemac), for this room, each message index used once;
``senders``  each Megolm session's signing key is the ed25519 key of the sending device,
             whose keys are signed by itself and by its user's self-signing key, which the
             user's master key signs (the report lists each user's master key, to compare
             with what the auditor knows of that user);
``claims``   each decrypted claim's proof, its CID and its evidence bytes (files in the
             bundle, records decrypted from their events);
``anchors``  each anchor's transaction names this room and the Merkle root and head of
             exactly its entries, anchors follow each other without a gap, and the tx is
             in a committed block (``check_anchor``: headers in the bundle, or the RPC).

A bundle is verified only if every layer is; what could not be checked (an event without
a key, entries after the last anchor, a chain that could not be reached) is listed and
makes the verdict ``incomplete``, never ``ok``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from datarooms import events as ev
from datarooms.sdk.audit import (
    BUNDLE_FORMAT,
    GENESIS,
    act_of,
    entry_hash,
    event_digest,
    merkle_root,
    room_hash,
)
from datarooms.sdk.claims import check_claim, record_bytes

__all__ = ["LAYERS", "BundleReport", "check_trail", "verify_bundle"]

LAYERS = ("format", "events", "chain", "megolm", "senders", "claims", "anchors")

#: ``check_anchor(tx, anchor)`` raises with a message if the tx is not in a committed block.
AnchorCheck = Callable[[bytes, dict[str, Any]], Any]


@dataclass
class BundleReport:
    """What :func:`verify_bundle` found. ``verdict``: ``ok``, ``incomplete`` or ``broken``."""

    room: str = ""
    entries: int = 0
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    breaks: list[dict[str, Any]] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)
    #: What the entries did (record.put, file, claim, grant, revoke, schema, redaction, ...),
    #: counted from their decrypted content.
    acts: dict[str, int] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        if self.breaks:
            return "broken"
        return "incomplete" if self.unverified else "ok"

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"

    def fail(self, layer: str, detail: str, **where: Any) -> None:
        self.breaks.append({"layer": layer, "detail": detail, **where})
        self.layers.setdefault(layer, {"checked": 0})["ok"] = False

    def passed(self, layer: str, n: int = 1) -> None:
        info = self.layers.setdefault(layer, {"checked": 0})
        info["checked"] += n
        info.setdefault("ok", True)

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "room": self.room,
            "entries": self.entries,
            "layers": self.layers,
            "breaks": self.breaks,
            "unverified": self.unverified,
            "acts": dict(sorted(self.acts.items())),
        }


def verify_bundle(bundle: Any, *, check_anchor: AnchorCheck | None = None) -> BundleReport:
    """Check a bundle offline; never raises on bad input, the report says what is wrong."""
    report = BundleReport()
    if not isinstance(bundle, dict) or bundle.get("format") != BUNDLE_FORMAT:
        report.fail("format", f"not a {BUNDLE_FORMAT} bundle")
        return report
    room = bundle.get("room")
    entries = bundle.get("entries")
    events = bundle.get("events")
    if not isinstance(room, str) or not isinstance(entries, list) or not isinstance(events, list):
        report.fail("format", "the bundle lacks its room, entries or events")
        return report
    if len(events) != len(entries) or not all(isinstance(e, dict) for e in entries + events):
        report.fail("format", "entries and events do not pair up one to one")
        return report
    report.room, report.entries = room, len(entries)
    report.passed("format")
    _check_events(report, entries, events)
    _check_chain(report, room, entries)
    plain = _check_megolm(report, room, events, bundle.get("megolm_sessions"))
    _check_senders(report, events, bundle.get("megolm_sessions"), bundle.get("identities"))
    for raw in events:
        inner = plain.get(str(raw.get("event_id"))) or raw
        found = inner.get("content")
        content: dict[str, Any] = found if isinstance(found, dict) else {}
        act = act_of(
            str(inner.get("type", "")), content, str(raw.get("sender", "")), raw.get("state_key")
        )
        report.acts[act] = report.acts.get(act, 0) + 1
    _check_claims(report, entries, plain, bundle.get("files"))
    _check_anchors(report, room, entries, bundle.get("anchors"), check_anchor)
    for layer in LAYERS:
        report.layers.setdefault(layer, {"checked": 0, "ok": True})
    return report


def _check_events(report: BundleReport, entries: list[Any], events: list[Any]) -> None:
    for entry, raw in zip(entries, events, strict=True):
        seq = entry.get("seq")
        if raw.get("event_id") != entry.get("event_id"):
            report.fail("events", "the event is not the one the entry names", seq=seq)
            continue
        meta = (
            raw.get("type") == entry.get("type")
            and raw.get("sender") == entry.get("sender")
            and raw.get("origin_server_ts") == entry.get("ts")
        )
        if not meta:
            report.fail("events", "the event's type, sender or time is not the entry's", seq=seq)
            continue
        try:
            digest = event_digest(raw)
        except Exception:
            report.fail("events", "the event's content is not canonical JSON", seq=seq)
            continue
        if digest != entry.get("content"):
            if (raw.get("unsigned") or {}).get("redacted_because"):
                report.unverified.append(f"entry {seq}: content redacted since; metadata only")
            else:
                report.fail("events", "the event's content does not hash to the entry's", seq=seq)
                continue
        report.passed("events")


def check_trail(
    room: str, entries: list[dict[str, Any]], anchors: list[dict[str, Any]]
) -> dict[str, Any]:
    """A device's own trail, checked as an auditor checks a bundle's (no event bodies):
    the hash chain of ``entries`` (each with its ``hash``, from
    :meth:`~datarooms.sdk.audit.Audit.entries`) and, for each of this device's
    ``anchors`` (:meth:`~datarooms.sdk.audit.Anchor.to_json`), whether its Merkle root
    is that of its entries and whether its transaction is committed (``height``).

    ``{"chain": {"ok", "checked", "detail", "seq"}, "anchors": [{..., "status"}]}``,
    ``status`` one of ``committed``, ``pending`` (broadcast not confirmed yet),
    ``root_mismatch``, ``missing_entries``."""
    report = BundleReport(room=room, entries=len(entries))
    _check_chain(report, room, entries)
    broken = report.breaks[0] if report.breaks else None
    chain = {
        "ok": broken is None,
        "checked": report.layers.get("chain", {}).get("checked", 0),
        "detail": broken["detail"] if broken else f"{len(entries)} entries link up",
        "seq": broken.get("seq") if broken else None,
    }
    hashes = {int(e.get("seq", 0)): str(e.get("hash")) for e in entries}
    out = []
    for a in anchors:
        first, last = int(a["first_seq"]), int(a["last_seq"])
        span = [hashes.get(n) for n in range(first, last + 1)]
        if any(h is None for h in span):
            status = "missing_entries"
        elif merkle_root([h for h in span if h is not None]) != a.get("root"):
            status = "root_mismatch"
        else:
            status = "committed" if a.get("height") is not None else "pending"
        out.append({**a, "status": status})
    return {"chain": chain, "anchors": out}


def _check_chain(report: BundleReport, room: str, entries: list[Any]) -> None:
    prev = GENESIS
    for n, entry in enumerate(entries, start=1):
        body = {k: v for k, v in entry.items() if k != "hash"}
        if entry.get("seq") != n:
            report.fail(
                "chain",
                f"entry {n} is numbered {entry.get('seq')!r}: an entry was dropped or moved",
                seq=n,
            )
            return
        if entry.get("room") != room:
            report.fail("chain", "the entry is of another room", seq=n)
            return
        if entry.get("prev") != prev:
            report.fail(
                "chain",
                "the entry does not follow the one before it (dropped, reordered or altered)",
                seq=n,
            )
            return
        try:
            h = entry_hash(body)
        except Exception:
            report.fail("chain", "the entry is not canonical JSON", seq=n)
            return
        if h != entry.get("hash"):
            report.fail("chain", "the entry does not hash to its hash (altered)", seq=n)
            return
        prev = h
        report.passed("chain")


def _check_megolm(
    report: BundleReport, room: str, events: list[Any], sessions: Any
) -> dict[str, dict[str, Any]]:
    """Decrypt the encrypted events; return ``{event_id: decrypted {type, content}}``."""
    import vodozemac

    plain: dict[str, dict[str, Any]] = {}
    sessions = sessions if isinstance(sessions, dict) else {}
    opened: dict[str, Any] = {}
    used: set[tuple[str, int]] = set()
    for raw in events:
        if raw.get("type") != "m.room.encrypted":
            continue
        content = raw.get("content") or {}
        event_id = str(raw.get("event_id"))
        if not content.get("ciphertext"):
            continue  # redacted: the events layer reported it
        sid = content.get("session_id")
        key = sessions.get(sid) if isinstance(sid, str) else None
        if not isinstance(key, dict) or key.get("sender_key") != content.get("sender_key"):
            report.unverified.append(f"{event_id}: no Megolm key in the bundle")
            continue
        try:
            session = opened.get(sid)  # type: ignore[arg-type]
            if session is None:
                session = vodozemac.InboundGroupSession.import_session(
                    vodozemac.ExportedSessionKey(str(key["session_key"]))
                )
                opened[str(sid)] = session
            message = vodozemac.MegolmMessage.from_base64(str(content["ciphertext"]))
            decrypted = session.decrypt(message)
            inner = json.loads(decrypted.plaintext)
        except Exception:
            report.fail(
                "megolm", "the event does not decrypt (ciphertext or key altered)", event=event_id
            )
            continue
        if (str(sid), decrypted.message_index) in used:
            report.fail("megolm", "a Megolm message index is used twice (replay)", event=event_id)
            continue
        used.add((str(sid), decrypted.message_index))
        if not isinstance(inner, dict) or inner.get("room_id") != room:
            report.fail("megolm", "the decrypted event is for another room", event=event_id)
            continue
        plain[event_id] = inner
        report.passed("megolm")
    return plain


def _check_senders(report: BundleReport, events: list[Any], sessions: Any, identities: Any) -> None:
    """Bind each Megolm session to its sender's device and cross-signing identity."""
    from datarooms.sdk.keys.signing import verify_json

    sessions = sessions if isinstance(sessions, dict) else {}
    identities = identities if isinstance(identities, dict) else {}
    bound: dict[tuple[str, str, str], str | None] = {}  # (user, device, session) -> problem
    masters: dict[str, str] = {}
    for raw in events:
        content = raw.get("content") or {}
        if raw.get("type") != "m.room.encrypted" or not content.get("ciphertext"):
            continue
        user, device, sid = (
            str(raw.get("sender")),
            str(content.get("device_id")),
            str(content.get("session_id")),
        )
        if (user, device, sid) in bound:
            problem = bound[(user, device, sid)]
        else:
            problem = _bind(user, device, sessions.get(sid), identities.get(user), verify_json)
            bound[(user, device, sid)] = problem
        if problem is None:
            ident = identities[user]
            masters[user] = _only_key(ident["master_key"])
            report.passed("senders")
        elif problem.startswith("!"):
            report.fail("senders", problem[1:], event=raw.get("event_id"))
        else:
            report.unverified.append(f"{raw.get('event_id')}: sender not bound: {problem}")
    report.layers.setdefault("senders", {"checked": 0, "ok": True})["identities"] = masters


def _only_key(key_obj: Any) -> str:
    keys = key_obj.get("keys") if isinstance(key_obj, dict) else None
    if not isinstance(keys, dict) or len(keys) != 1:
        raise ValueError("not a single-key object")
    return str(next(iter(keys.values())))


def _bind(
    user: str, device: str, session: Any, ident: Any, verify_json: Callable[..., bool]
) -> str | None:
    """None if bound; a reason (``!reason`` for a forgery, else what is missing)."""
    if not isinstance(session, dict):
        return "no Megolm key"
    if not isinstance(ident, dict):
        return f"no keys of {user} in the bundle"
    dev = (ident.get("device_keys") or {}).get(device)
    if not isinstance(dev, dict):
        return f"device {device} of {user} is gone (no device keys)"
    try:
        dkey = str(dev["keys"][f"ed25519:{device}"])
        mpub = _only_key(ident.get("master_key"))
        spub = _only_key(ident.get("self_signing_key"))
    except (KeyError, TypeError, ValueError):
        return f"{user} has no cross-signing keys in the bundle"
    if session.get("signing_key") != dkey:
        return f"!the Megolm session is not signed by device {device} of {user}"
    if dev.get("user_id") != user or dev.get("device_id") != device:
        return f"!the device keys are not those of {user} / {device}"
    if not verify_json(dev, user, device, dkey):
        return f"!the device keys of {user} / {device} are not self-signed"
    if not verify_json(ident["self_signing_key"], user, mpub, mpub):
        return f"!the self-signing key of {user} is not signed by their master key"
    if not verify_json(dev, user, spub, spub):
        return f"device {device} of {user} is not cross-signed"
    return None


def _check_claims(
    report: BundleReport, entries: list[Any], plain: dict[str, dict[str, Any]], files: Any
) -> None:
    files = files if isinstance(files, dict) else {}
    records: dict[str, bytes] = {}
    for event_id, inner in plain.items():
        content = inner.get("content") or {}
        if inner.get("type") == ev.RECORD and isinstance(content.get("key"), str):
            records[event_id] = record_bytes(content["key"], content.get("value"))
    for entry in entries:
        claim = plain.get(str(entry.get("event_id")))
        if claim is None or claim.get("type") != ev.CLAIM:
            continue
        content = claim.get("content") or {}
        credential = content.get("credential")
        evidence: dict[str, bytes] = {}
        for item in (credential or {}).get("evidence", []) if isinstance(credential, dict) else []:
            if not isinstance(item, dict) or not isinstance(item.get("cid"), str):
                continue
            if item.get("record"):
                data = records.get(str(item.get("event")))
            else:
                text = files.get(item["cid"])
                try:
                    data = base64.b64decode(text, validate=True) if isinstance(text, str) else None
                except ValueError:
                    data = None
            if data is not None:
                evidence[item["cid"]] = data
        verdict = check_claim(credential, expected_cid=str(content.get("cid")), evidence=evidence)
        if verdict.ok:
            report.passed("claims")
        else:
            report.fail(
                "claims",
                f"claim {content.get('cid')}: {verdict.reason}: {verdict.detail}",
                seq=entry.get("seq"),
            )


def _check_anchors(
    report: BundleReport,
    room: str,
    entries: list[Any],
    anchors: Any,
    check_anchor: AnchorCheck | None,
) -> None:
    if not isinstance(anchors, list):
        report.fail("anchors", "the bundle's anchors are not a list")
        return
    expected_first = 1
    for n, anchor in enumerate(anchors):
        try:
            tx = base64.b64decode(anchor["tx"], validate=True)
            body = json.loads(tx)
            msg = body["body"]["messages"][0]
            first, last = int(msg["first_seq"]), int(msg["last_seq"])
        except (KeyError, IndexError, TypeError, ValueError):
            report.fail("anchors", "the anchor's transaction cannot be decoded", anchor=n)
            continue
        if msg.get("room") != room_hash(room):
            report.fail("anchors", "the anchor is for another room", anchor=n)
            continue
        if first != expected_first:
            report.fail(
                "anchors",
                f"the anchor covers entries {first}..{last}, but {expected_first} comes next "
                "(an anchor is missing or moved)",
                anchor=n,
            )
            continue
        if last > len(entries):
            report.fail(
                "anchors", f"the anchor covers up to entry {last}; the bundle has fewer", anchor=n
            )
            continue
        span = entries[first - 1 : last]
        hashes = [str(e.get("hash")) for e in span]
        if merkle_root(hashes) != msg.get("merkle_root") or span[-1].get("hash") != msg.get("head"):
            report.fail(
                "anchors",
                f"entries {first}..{last} do not give the anchored Merkle root "
                "(an entry was dropped, reordered or altered since it was anchored)",
                anchor=n,
            )
            continue
        expected_first = last + 1
        if check_anchor is None:
            report.unverified.append(f"anchor {n}: its block was not checked (no chain given)")
            continue
        try:
            check_anchor(tx, anchor)
        except Exception as exc:
            reason = getattr(exc, "reason", "")
            code = f" [{reason}]" if reason else ""
            if reason in ("unreachable", "unsupported_proof"):
                report.unverified.append(f"anchor {n}: {exc}{code}")
            else:
                report.fail(
                    "anchors", f"the anchor is not in a committed block: {exc}{code}", anchor=n
                )
            continue
        report.passed("anchors")
    if expected_first <= len(entries):
        report.unverified.append(f"entries {expected_first}..{len(entries)} are not anchored yet")
