"""The homeserver never sees a document's text: updates, both kinds of snapshot, the
document's name and its map keys reach it only as ciphertext."""

from __future__ import annotations

import uuid

from datarooms.testing import TestHomeserver
from tests._rooms import shared_room
from tests.test_server_blind import _scan


async def test_no_document_text_on_the_homeserver(  # type: ignore[no-untyped-def]
    alice_bob, homeserver: TestHomeserver
) -> None:
    alice, bob = alice_bob
    room = await shared_room(alice, bob, "write", kind="collaboration")
    tag = uuid.uuid4().hex[:12]
    markers = {k: f"MARKER-{k}-{tag}" for k in ("text", "key", "value", "big")}
    name = f"doc-{tag}"
    doc = await alice.docs.open(room, name, batch_ms=0, snapshot_every=0)
    doc.text("body").insert(0, markers["text"])
    doc.map("fields")[markers["key"]] = markers["value"]
    await doc.flush()
    assert await doc.snapshot(media=False)  # inline snapshot
    doc.text("big").insert(0, (markers["big"] + "\n") * 2000)  # over an event: media
    await doc.flush()
    assert await doc.snapshot(media=True)
    # Sanity: another member reads all of it.
    got = await bob.docs.read(room, name)
    assert got["body"] == markers["text"] and got["fields"] == {markers["key"]: markers["value"]}
    assert markers["big"] in got["big"]

    hits = _scan(homeserver, [*markers.values(), name])
    assert hits == [], hits
