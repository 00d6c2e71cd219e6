"""Interop with a Matrix client no one here wrote: matrix-js-sdk 43 with Rust crypto (wasm).

Records, messages and files written by our SDK are decrypted by matrix-js-sdk;
what matrix-js-sdk writes is read by our SDK. Both directions, encrypted.
"""

from __future__ import annotations

import asyncio
import base64
import os

import pytest

from datarooms.events import RECORD
from datarooms.testing import TestHomeserver
from tests.interop.jsclient import JsClient, ensure_js_deps


@pytest.fixture(scope="module")
def js_deps() -> None:
    ensure_js_deps()  # npm ci on first use; a missing Node.js is a failure, not a skip


async def test_sdk_and_matrix_js_sdk_read_each_other(  # type: ignore[no-untyped-def]
    js_deps, homeserver: TestHomeserver, open_client
) -> None:
    alice = await open_client(await homeserver.new_user("alice"))
    js_user = await homeserver.new_user("jsbob")
    async with JsClient() as js:
        await js.login(homeserver.base_url, js_user.user_id, js_user.password)
        # Under our default trust policy, room keys go to cross-signed devices only:
        # matrix-js-sdk sets up its own cross-signing, as Element does.
        boot = await js.bootstrap_cross_signing(js_user.password)
        assert boot["ready"] is True
        room = await alice.rooms.create("collaboration", name="interop")
        await alice.rooms.grant(room.room_id, js_user.user_id, "write")
        await js.join(room.room_id)
        rid = room.room_id

        # SDK -> matrix-js-sdk: a record, a message, a file.
        rec = await alice.records.put(rid, "temperature", {"c": 21.5, "unit": "C"})
        got = await js.wait_event(rid, RECORD, match={"key": "temperature"}, timeout=60)
        assert got["encrypted"] is True
        assert got["content"]["value"] == {"c": 21.5, "unit": "C"}
        assert got["event_id"] == rec.event_id
        # matrix-js-sdk (Rust crypto) sees our device as cross-signed by its owner.
        seen = await js.device_status(alice.user_id, alice.device_id)
        assert seen["known"] and seen["signed_by_owner"] is True, seen

        msg_id = await alice.messages.send(rid, "hello from datarooms")
        got = await js.wait_event(rid, "m.room.message", match={"body": "hello from datarooms"})
        assert got["encrypted"] is True and got["event_id"] == msg_id

        data = os.urandom(200_000)
        ref = await alice.files.put(rid, data, filename="evidence.bin")
        got = await js.wait_event(rid, "m.room.message", match={"msgtype": "m.file"})
        assert got["event_id"] == ref.event_id
        dl = await js.download_decrypt(got["content"]["file"])
        assert dl["sha256_ok"] is True
        assert base64.b64decode(dl["plaintext_b64"]) == data

        # matrix-js-sdk -> SDK: a record, a message, a file.
        sent = await js.send_event(
            rid, RECORD, {"key": "from-js", "value": {"ok": True}, "txn": "js-txn-1"}
        )
        for _ in range(30):
            await alice.sync_once()
            if alice.index.latest(rid, "from-js") is not None:
                break
            await asyncio.sleep(0.2)
        record = await alice.records.get(rid, "from-js")
        assert record.value == {"ok": True} and record.event_id == sent["event_id"]
        assert record.sender == js_user.user_id

        sent = await js.send_event(rid, "m.room.message", {"msgtype": "m.text", "body": "hi sdk"})
        recent = await alice.messages.recent(rid, limit=5)
        mine = [e for e in recent if e.event_id == sent["event_id"]]
        assert mine and mine[0].body == "hi sdk" and mine[0].encrypted and mine[0].decrypted

        js_data = os.urandom(50_000)
        up = await js.upload_encrypted(rid, "from-js.bin", js_data)
        await alice.sync_once()
        assert await alice.files.read(rid, up["event_id"]) == js_data
