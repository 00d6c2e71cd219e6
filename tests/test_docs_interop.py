"""Collaborative documents with real Yjs (npm) driven by matrix-js-sdk 43 (Rust crypto):
the same encrypted document edited on both sides converges to byte-identical Yjs state;
matrix-js-sdk reads our media-backed snapshot; we catch up from a Yjs-written snapshot."""

from __future__ import annotations

import base64

import pytest

from datarooms.sdk.docs import SNAPSHOT_V2_EVENT
from datarooms.sdk.docs.wire import decode_state_vector
from datarooms.testing import TestHomeserver
from tests._wait import until
from tests.interop.jsclient import JsClient, ensure_js_deps


@pytest.fixture(scope="module")
def js_deps() -> None:
    ensure_js_deps()  # npm ci on first use (yjs and matrix-js-sdk, from the lockfile)


async def test_yjs_and_pycrdt_converge_on_one_encrypted_document(  # type: ignore[no-untyped-def]
    js_deps, homeserver: TestHomeserver, open_client
) -> None:
    alice = await open_client(await homeserver.new_user("doc-py"))
    js_user = await homeserver.new_user("doc-js")
    view = {"texts": ["body"], "maps": ["fields"]}
    async with JsClient() as js:
        await js.login(homeserver.base_url, js_user.user_id, js_user.password)
        assert (await js.bootstrap_cross_signing(js_user.password))["ready"] is True
        room = (await alice.rooms.create("collaboration", name="yjs interop")).room_id
        await alice.rooms.grant(room, js_user.user_id, "write")
        await js.join(room)
        await alice.sync_once()

        doc = await alice.docs.open(room, batch_ms=0, snapshot_every=0)
        doc.text("body").insert(0, "Hello from Python.")
        doc.map("fields")["status"] = "draft"
        await doc.flush()

        # Yjs catches up from our updates (encrypted), then edits; meanwhile we edit too.
        got = await js.ydoc_catch_up("j1", room, want=1, **view)
        assert got["texts"]["body"] == "Hello from Python."
        assert got["maps"]["fields"] == {"status": "draft"}
        edit = await js.ydoc_edit(
            "j1",
            room,
            [
                {"text": "body", "index": 0, "insert": "JS: "},
                {"map": "fields", "key": "by", "value": "js"},
            ],
            **view,
        )
        assert edit["encrypted"] is True
        doc.text("body").insert(len(str(doc.text("body"))), " Python again.")
        await doc.flush()
        await until(lambda: doc.map("fields").get("by") == "js", what="the Yjs edit arrives")

        # A fresh Yjs reader replays every update: byte-identical Yjs state on both sides.
        full = await js.ydoc_catch_up("j2", room, want=3, **view)
        assert full["snapshot_event_id"] is None and full["updates_applied"] == 3
        assert (
            full["texts"]["body"] == str(doc.text("body")) == "JS: Hello from Python. Python again."
        )
        assert base64.b64decode(full["state_b64"]) == doc.state()
        # State vectors are equal as maps (Yrs writes their entries in hash order).
        assert decode_state_vector(base64.b64decode(full["sv_b64"])) == decode_state_vector(
            doc.state_vector()
        )

        # Our media-backed snapshot (encrypted attachment), read by matrix-js-sdk + Yjs alone.
        snap = await doc.snapshot(media=True)
        assert snap is not None
        only = await js.ydoc_catch_up("j3", room, want=4, snapshot_only=True, **view)
        assert only["snapshot_event_id"] == snap and only["snapshot_type"] == SNAPSHOT_V2_EVENT
        assert base64.b64decode(only["state_b64"]) == doc.state()
        assert only["maps"]["fields"] == {"status": "draft", "by": "js"}

        # A Yjs-written inline snapshot after one more JS edit: our document, opened again,
        # starts from it, and converges with everyone.
        more = await js.ydoc_edit(
            "j3", room, [{"text": "body", "index": 0, "insert": "[final] "}], **view
        )
        await js.ydoc_snapshot("j3", room, more["event_id"])
        await until(lambda: str(doc.text("body")).startswith("[final] "), what="last JS edit")
        await doc.close()
        late = await alice.docs.open(room, live=False)
        assert late.caught_up_from is not None and late.replayed == 0
        assert late.state() == doc.state() == base64.b64decode(more["state_b64"])
