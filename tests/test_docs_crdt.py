"""The document's update path without a homeserver: dependencies that arrive late, bad
input, and convergence of three writers' concurrent edits applied in any order."""

from __future__ import annotations

import base64
from typing import Any

import pycrdt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datarooms.sdk.docs import BadUpdateError, Document, wire
from datarooms.sdk.docs.api import Docs


def _reader() -> Document:
    # Remote updates only: the reader never edits, so its Docs (client, outbox) is unused.
    return Document(
        Docs(None),  # type: ignore[arg-type]
        "!room:test",
        "default",
        batch_ms=0,
        snapshot_every=0,
        inline_max=wire.INLINE_MAX_BYTES_ENCRYPTED,
    )


def _recorded() -> tuple[pycrdt.Doc[Any], list[bytes]]:
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    updates: list[bytes] = []
    doc.observe(lambda e: updates.append(bytes(e.update)))
    return doc, updates


async def test_updates_before_their_dependencies_wait_and_block_snapshots() -> None:
    writer, updates = _recorded()
    text = writer.get("t", type=pycrdt.Text)
    text += "hello"
    text += " world"
    text.insert(0, ">> ")
    del text[0:3]
    reader = _reader()
    for update in reversed(updates[1:]):
        assert reader.apply_update(update, event_id=f"$e{len(update)}")
    assert str(reader.text("t")) == ""
    assert reader.waiting  # tracked: the doc does not show them yet
    # Yrs leaves pending structs out of its state: a snapshot now would lose them.
    assert await reader._send_snapshot(media=False, last_event_id="$x") is None
    assert reader.apply_update(updates[0], event_id="$first")
    assert str(reader.text("t")) == "hello world"
    assert reader.waiting == []
    assert reader.clocks() == wire.decode_state_vector(bytes(writer.get_state()))


def test_bad_updates_are_refused_and_change_nothing() -> None:
    writer, updates = _recorded()
    writer.get("t", type=pycrdt.Text).insert(0, "keep me")
    reader = _reader()
    reader.apply_update(updates[0], event_id="$good")
    before = reader.state()
    full = bytes(writer.get_update())
    for i, bad in enumerate([b"\x01\x02garbage", full[: len(full) // 2], b"\xff" * 10, b""]):
        assert not reader.apply_update(bad, event_id=f"$bad{i}")
    assert reader.state() == before
    assert str(reader.text("t")) == "keep me"
    assert [s.event_id for s in reader.skipped] == ["$bad0", "$bad1", "$bad2", "$bad3"]


def test_wire_format_parsing() -> None:
    update = b"\x00\x00"
    content = wire.update_content(update, "default")
    assert content == {"update": base64.b64encode(update).decode()}  # IXO's exact shape
    named = wire.update_content(update, "runbook")
    assert named["doc"] == "runbook"
    parsed = wire.parse_event("$e", wire.UPDATE_EVENT, "@a:x", {"update": "AAA"})  # unpadded
    assert parsed.update == b"\x00\x00"
    with pytest.raises(BadUpdateError, match="over the event limit"):
        big = base64.b64encode(b"\x00" * (wire.MAX_EVENT_UPDATE_BYTES + 1)).decode()
        wire.parse_event("$e", wire.UPDATE_EVENT, "@a:x", {"update": big})
    with pytest.raises(BadUpdateError, match="last_event_id"):
        wire.parse_event("$e", wire.SNAPSHOT_EVENT, "@a:x", {"update": "AAA="})
    with pytest.raises(BadUpdateError, match="mxc"):
        wire.parse_event("$e", wire.SNAPSHOT_V2_EVENT, "@a:x", {"v": 2, "last_event_id": "$a"})
    with pytest.raises(BadUpdateError, match="newer"):
        wire.parse_event(
            "$e",
            wire.SNAPSHOT_V2_EVENT,
            "@a:x",
            {"v": 3, "mxc_url": "mxc://s/m", "last_event_id": "$a", "file": {}},
        )
    with pytest.raises(BadUpdateError, match="name"):
        wire.parse_event("$e", wire.UPDATE_EVENT, "@a:x", {"update": "AAA=", "doc": "../x"})
    doc: pycrdt.Doc[Any] = pycrdt.Doc()
    doc.get("t", type=pycrdt.Text).insert(0, "abc")
    state = bytes(doc.get_update())
    assert wire.check_snapshot_blob(state, bytes(doc.get_state())) == state
    with pytest.raises(BadUpdateError, match="state vector"):
        wire.check_snapshot_blob(state, b"\x01\x05\x01")


# -- convergence (hypothesis) ---------------------------------------------------------

_edit = st.tuples(
    st.integers(0, 2),  # writer
    st.sampled_from(["insert", "delete", "set", "append", "sync"]),
    st.integers(0, 10_000),  # position seed
    st.text(alphabet="abcxyz ", min_size=1, max_size=4),
)


@settings(max_examples=80, deadline=None)
@given(edits=st.lists(_edit, min_size=1, max_size=40), orders=st.randoms(use_true_random=False))
def test_three_writers_converge_in_any_order(
    edits: list[tuple[int, str, int, str]], orders
) -> None:  # type: ignore[no-untyped-def]
    writers = [_recorded() for _ in range(3)]
    log: list[bytes] = []
    for who, op, seed, value in edits:
        doc, updates = writers[who]
        text = doc.get("body", type=pycrdt.Text)
        if op == "insert":
            text.insert(seed % (len(str(text)) + 1), value)
        elif op == "delete" and len(str(text)):
            length = len(str(text))
            start = seed % length
            del text[start : min(length, start + 1 + seed % 3)]
        elif op == "set":
            doc.get("fields", type=pycrdt.Map)[value.strip() or "k"] = seed
        elif op == "append":
            doc.get("items", type=pycrdt.Array).append(value)
        elif op == "sync":
            # A writer catches up with another (so later edits depend on remote ones).
            other = writers[seed % 3][0]
            doc.apply_update(bytes(other.get_update(bytes(doc.get_state()))))
        log.extend(updates)
        updates.clear()
    # Every writer gets everything: the reference state.
    for doc, _ in writers:
        for other, _ in writers:
            doc.apply_update(bytes(other.get_update(bytes(doc.get_state()))))
    reference = writers[0][0]
    expected = str(reference.get("body", type=pycrdt.Text))
    readers = []
    for _ in range(3):
        shuffled = list(log)
        orders.shuffle(shuffled)
        reader = _reader()
        for i, update in enumerate(shuffled):
            assert reader.apply_update(update, event_id=f"$u{i}")
        readers.append(reader)
    for reader in readers:
        assert reader.waiting == []
        assert wire.decode_state_vector(reader.state_vector()) == wire.decode_state_vector(
            bytes(reference.get_state())
        )
        assert str(reader.text("body")) == expected
        assert reader.to_json() == readers[0].to_json()
