"""Collaborative documents between real devices on a real Synapse: live edits, catch-up
from snapshots, bad input, oversized edits, offline edits."""

from __future__ import annotations

import asyncio
import base64
import logging
from pathlib import Path

import pycrdt
import pytest

from datarooms import Credentials, DataroomsClient
from datarooms.sdk.attachments import upload_encrypted
from datarooms.sdk.docs import SNAPSHOT_EVENT, SNAPSHOT_V2_EVENT, UPDATE_EVENT
from tests._rooms import shared_room
from tests._wait import until


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_two_devices_edit_one_document_concurrently(alice_bob) -> None:  # type: ignore[no-untyped-def]
    alice, bob = alice_bob
    room = await shared_room(alice, bob, "write")
    a = await alice.docs.open(room, batch_ms=50)
    b = await bob.docs.open(room, batch_ms=50)
    seen: list[str] = []
    b.observe(lambda change: seen.append(change.sender))

    a.text("body").insert(0, "hello world")
    await a.flush()
    await until(lambda: str(b.text("body")) == "hello world", what="bob sees alice's text")
    assert alice.user_id in seen

    # Concurrent edits of the same text and a map, both before either sees the other.
    a.text("body").insert(0, "A:")
    b.text("body").insert(len(str(b.text("body"))), " :B")
    b.map("fields")["owner"] = "bob"
    a.array("items").append("one")
    await a.flush()
    await b.flush()
    await until(lambda: a.clocks() == b.clocks(), what="both converge")
    assert str(a.text("body")) == str(b.text("body")) == "A:hello world :B"
    assert (
        a.to_json()
        == b.to_json()
        == {
            "body": "A:hello world :B",
            "fields": {"owner": "bob"},
            "items": ["one"],
        }
    )
    # An edit made while a flush is sending is not stranded in the outbox.
    sending = asyncio.create_task(a.flush())
    a.text("body").insert(0, "1")
    for _ in range(5):
        await asyncio.sleep(0)
    a.text("body").insert(0, "2")
    await sending
    await until(lambda: str(b.text("body")).startswith("21"), what="both edits arrive")
    # ... and leaves it: bob can see both edits before alice's send of the second has
    # returned, so wait for her outbox to drain (a stranded edit never would).
    await until(lambda: alice.docs.pending_edits(room) == 0, what="alice's outbox drained")

    # A document of another name in the same room is separate.
    other = await alice.docs.open(room, "notes", batch_ms=0)
    assert other.to_json() == {}
    other.text("t").insert(0, "private notes")
    await other.flush()
    assert a.to_json()["body"] == "21A:hello world :B"
    assert "t" not in a.to_json()


async def test_catch_up_from_a_snapshot_and_fall_back_past_bad_ones(  # type: ignore[no-untyped-def]
    homeserver, open_client, caplog: pytest.LogCaptureFixture
) -> None:
    alice = await open_client(await homeserver.new_user("doc-writer"))
    bob = await open_client(await homeserver.new_user("doc-reader"))
    room = await shared_room(alice, bob, "write")
    a = await alice.docs.open(room, batch_ms=0, snapshot_every=5)
    for i in range(12):
        a.text("log").insert(len(str(a.text("log"))), f"line {i}\n")
        await a.flush()
    expected = str(a.text("log"))
    # Writer's election: after every 5th update it saw, it published a snapshot.
    await until(lambda: a._since_snapshot < 5, what="snapshots published")

    b = await bob.docs.open(room, live=False)
    assert str(b.text("log")) == expected
    assert b.caught_up_from is not None
    assert b.replayed < 5  # only the updates after the newest snapshot

    # Bad input after the good snapshot: every kind is skipped, logged, nothing lost.
    last = (await alice.messages.recent(room, 1))[-1].event_id
    good = a.state()
    caplog.set_level(logging.WARNING)
    await alice.send(room, UPDATE_EVENT, {"update": "not base64!!"})
    await alice.send(room, UPDATE_EVENT, {"update": _b64(b"\x01\x02garbage")})
    await alice.send(room, UPDATE_EVENT, {"update": _b64(good[: len(good) // 2])})  # truncated
    await alice.send(room, SNAPSHOT_EVENT, {"update": _b64(b"\xff" * 40), "last_event_id": last})
    # A media snapshot whose blob is another document (state vector mismatch) ...
    other = pycrdt.Doc()
    other.get("log", type=pycrdt.Text).insert(0, "forged")
    forged = bytes(other.get_update())
    up = await upload_encrypted(alice.homeserver_url, alice.access_token, forged)
    await alice.send(
        room,
        SNAPSHOT_V2_EVENT,
        {
            "v": 2,
            "mxc_url": up.file.url,
            "last_event_id": last,
            "state_vector": _b64(bytes(pycrdt.get_state(good))),
            "size": len(forged),
            "file": up.file.to_json(),
        },
    )
    # ... and a tampered one: the real document, but the ciphertext hash does not match.
    up2 = await upload_encrypted(alice.homeserver_url, alice.access_token, good)
    tampered = up2.file.to_json()
    tampered["hashes"] = {"sha256": _b64(b"\x00" * 32).rstrip("=")}
    await alice.send(
        room,
        SNAPSHOT_V2_EVENT,
        {
            "v": 2,
            "mxc_url": up2.file.url,
            "last_event_id": last,
            "state_vector": _b64(bytes(pycrdt.get_state(good))),
            "size": len(good),
            "file": tampered,
        },
    )
    c = await open_client(await homeserver.new_user("doc-late"), None)
    await alice.rooms.grant(room, c.user_id, "read")
    await c.sync_once()
    await c.rooms.join(room)
    doc = await c.docs.open(room, live=False)
    assert str(doc.text("log")) == expected  # never emptied, never the forged text
    assert doc.caught_up_from == b.caught_up_from  # fell back to the good snapshot
    reasons = " ".join(s.reason for s in doc.unreadable_snapshots)
    assert "state vector" in reasons
    assert "SHA-256" in reasons or "hash" in reasons.lower()
    assert len(doc.unreadable_snapshots) == 3  # inline garbage, mismatch, tampered
    assert len(doc.skipped) == 3, [s.reason for s in doc.skipped]  # bad base64, garbage, truncated
    await doc.close()

    # An edit too big for an update event goes out as a media-backed snapshot.
    a.text("big").insert(0, "x" * 40_000)
    await a.flush()
    doc = await c.docs.open(room, live=False)
    assert str(doc.text("big")) == "x" * 40_000
    assert str(doc.text("log")) == expected
    assert doc.caught_up_from is not None and doc.caught_up_from != b.caught_up_from
    assert not doc.unreadable_snapshots
    assert "skipping" in caplog.text and "unreadable" in caplog.text


async def test_offline_edits_survive_and_merge(  # type: ignore[no-untyped-def]
    homeserver, open_client, tmp_path: Path
) -> None:
    user = await homeserver.new_user("doc-offline")
    alice = await open_client(user)
    bob = await open_client(await homeserver.new_user("doc-online"))
    room = await shared_room(alice, bob, "write")
    a = await alice.docs.open(room, batch_ms=0, live=False)
    a.text("body").insert(0, "base.")
    await a.flush()
    b = await bob.docs.open(room, batch_ms=0)
    await until(lambda: str(b.text("body")) == "base.", what="bob has the base")

    # Alice's device goes offline: the homeserver is unreachable, edits stay local.
    real = alice.nio.homeserver
    alice.nio.homeserver = "http://127.0.0.1:9"
    a.text("body").insert(0, "offline-1 ")
    a.map("meta")["status"] = "draft"
    with pytest.raises(Exception):  # noqa: B017 - any transport error
        await a.flush()
    assert alice.docs.pending_edits(room) == 2
    # Meanwhile bob edits the same text.
    b.text("body").insert(len(str(b.text("body"))), " online-2")
    await b.flush()
    # Alice's device is closed while still offline (its edits are only on disk).
    await alice.close()
    assert alice.nio.homeserver != real

    creds = Credentials(homeserver.base_url, user.user_id, user.access_token)
    again = await DataroomsClient.open(creds, tmp_path / user.user_id)
    try:
        a2 = await again.docs.open(room, batch_ms=0)
        await a2.flush()
        assert again.docs.pending_edits(room) == 0
        await until(lambda: a2.clocks() == b.clocks(), what="converged")
        assert str(a2.text("body")) == str(b.text("body")) == "offline-1 base. online-2"
        assert b.to_json()["meta"] == {"status": "draft"}
    finally:
        await again.close()
