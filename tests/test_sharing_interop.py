"""History sharing (MSC4268) with matrix-js-sdk 43 (Rust crypto), both directions.

(a) our SDK writes records, a message and a file, then grants a matrix-js-sdk user,
    who joins and decrypts all of them from our key bundle;
(b) a matrix-js-sdk user writes records and invites our user (js-sdk shares a key
    bundle on invite); our SDK joins and reads them;
(d) a matrix-js-sdk device that is not cross-signed gets a withheld notice, and
    says so (not a generic decryption failure).
"""

from __future__ import annotations

import asyncio
import base64
import os

import pytest

from datarooms.events import RECORD
from datarooms.testing import TestHomeserver
from tests.interop.jsclient import JsClient, ensure_js_deps

N = 30


@pytest.fixture(scope="module")
def js_deps() -> None:
    ensure_js_deps()


async def test_matrix_js_sdk_reads_history_we_shared_on_grant(  # type: ignore[no-untyped-def]
    js_deps, homeserver: TestHomeserver, open_client
) -> None:
    alice = await open_client(await homeserver.new_user("alice"))
    js_user = await homeserver.new_user("jscarol")
    room = (await alice.rooms.create("collaboration", name="history for js")).room_id
    for i in range(N):
        await alice.records.put(room, f"k{i}", {"i": i})
    msg_id = await alice.messages.send(room, "written before the grant")
    data = os.urandom(50_000)
    ref = await alice.files.put(room, data, filename="evidence.bin")
    async with JsClient(name="carol") as js:
        await js.login(homeserver.base_url, js_user.user_id, js_user.password)
        assert (await js.bootstrap_cross_signing(js_user.password))["ready"] is True
        await alice.rooms.grant(room, js_user.user_id, "read")
        await js.accept_invite(room)
        got = await js.history(room, RECORD, N, timeout=90)
        keys = {e["content"]["key"] for e in got["events"]}
        assert keys == {f"k{i}" for i in range(N)}, got["failures"][:3]
        assert all(e["encrypted"] for e in got["events"])
        msgs = await js.history(room, "m.room.message", 2, timeout=30)
        by_id = {e["event_id"]: e["content"] for e in msgs["events"]}
        assert by_id[msg_id]["body"] == "written before the grant"
        dl = await js.download_decrypt(by_id[ref.event_id]["file"])
        assert dl["sha256_ok"] is True and base64.b64decode(dl["plaintext_b64"]) == data


async def test_we_read_history_a_matrix_js_sdk_user_shared_on_invite(  # type: ignore[no-untyped-def]
    js_deps, homeserver: TestHomeserver, open_client
) -> None:
    bob = await open_client(await homeserver.new_user("bob"))
    js_user = await homeserver.new_user("jsdave")
    async with JsClient(name="dave") as js:
        await js.login(homeserver.base_url, js_user.user_id, js_user.password)
        assert (await js.bootstrap_cross_signing(js_user.password))["ready"] is True
        room = await js.create_room("js history", "shared")
        sent = [
            (await js.send_event(room, RECORD, {"key": f"j{i}", "value": i, "txn": f"t{i}"}))[
                "event_id"
            ]
            for i in range(N)
        ]
        await js.invite(room, bob.user_id)
        for _ in range(50):
            await bob.sync_once()
            if room in bob.invites():
                break
            await asyncio.sleep(0.2)
        await bob.rooms.join(room)
        await bob.fill_gaps(room)
        for _ in range(30):
            if all(bob.index.latest(room, f"j{i}") is not None for i in range(N)):
                break
            await bob.sync_once()
            await asyncio.sleep(0.2)
        for i in range(N):
            rec = await bob.records.get(room, f"j{i}")
            assert rec.value == i and rec.event_id == sent[i]
        hist = await bob.records.history(room, "j0")
        assert [r.value for r in hist] == [0]


async def test_uncross_signed_js_device_is_told_why(  # type: ignore[no-untyped-def]
    js_deps, homeserver: TestHomeserver, open_client
) -> None:
    alice = await open_client(await homeserver.new_user("alice"))
    js_user = await homeserver.new_user("jseve")
    room = (await alice.rooms.create("collaboration", name="withheld")).room_id
    async with JsClient(name="eve") as js:
        await js.login(homeserver.base_url, js_user.user_id, js_user.password)  # no cross-signing
        await alice.rooms.grant(room, js_user.user_id, "read")
        await js.accept_invite(room)
        await alice.sync_once()
        await alice.records.put(room, "after", "not for unsigned devices")
        got = await js.history(room, RECORD, 1, timeout=20)
        assert got["events"] == []
        reasons = {f["reason"] for f in got["failures"]}
        assert reasons & {"MEGOLM_KEY_WITHHELD_FOR_UNVERIFIED_DEVICE", "MEGOLM_KEY_WITHHELD"}, got
