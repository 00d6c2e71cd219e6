"""Issue #4: key backup interop with matrix-js-sdk 43 (Rust crypto, wasm).

matrix-js-sdk restores our key backup with our recovery key, and our SDK
restores matrix-js-sdk's key backup with its recovery key. In both directions
the restoring device is a *new* device of the same user, logged in after the
events were written, so the only way it can read them is the backup.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from datarooms import Credentials, DataroomsClient
from datarooms.events import RECORD
from datarooms.testing import TestHomeserver
from tests.interop.jsclient import JsClient, ensure_js_deps


@pytest.fixture(scope="module")
def js_deps() -> None:
    ensure_js_deps()  # npm ci on first use; a missing Node.js is a failure, not a skip


async def test_matrix_js_sdk_restores_our_backup_with_our_recovery_key(  # type: ignore[no-untyped-def]
    js_deps, homeserver: TestHomeserver, open_client
) -> None:
    user = await homeserver.new_user("bkours")
    alice = await open_client(user)
    recovery_key = await alice.keys.setup_recovery()
    room = await alice.rooms.create("collaboration", name="backup interop (ours)")
    rid = room.room_id
    written = {}
    for i in range(3):
        rec = await alice.records.put(rid, f"early-{i}", {"n": i})
        written[f"early-{i}"] = rec.event_id
    assert (await alice.keys.status()).backed_up_sessions >= 1

    # A new device of the same user, on matrix-js-sdk: it did not exist when the
    # records were written, so only the backup can give it their room keys.
    async with JsClient(name="ours-to-js") as js:
        await js.login(homeserver.base_url, user.user_id, user.password)
        assert js.device_id != alice.device_id
        res = await js.restore_backup_with_recovery_key(recovery_key)
        assert res["algorithm"] == "m.megolm_backup.v1.curve25519-aes-sha2"
        assert res["version"] == alice.keys.backup_version
        assert res["restored"]["imported"] >= 1, res
        assert res["restored"]["total"] == res["restored"]["imported"], res
        # Once loaded from our secret storage, the backup key matches our backup's
        # public key (before loading, the device held no key to match).
        assert res["trust"]["matches_decryption_key"] is False, res
        check = res["check"]
        assert check is not None and check["version"] == res["version"], res
        assert check["matches_decryption_key"] is True, res
        # Not yet *trusted*: the backup is signed by our master key, which this fresh
        # device has no reason to trust until it holds the cross-signing keys.
        assert check["trusted"] is False, res
        # Our secret storage also gives it our cross-signing keys; with them it
        # signs itself, and then trusts the backup (by our master key's signature).
        xs = await js.cross_signing_from_secret_storage()
        assert xs["ready"] is True and xs["device_signed_by_owner"] is True, xs
        assert xs["status"]["privateKeysCachedLocally"] == {
            "masterKey": True,
            "selfSigningKey": True,
            "userSigningKey": True,
        }, xs
        assert xs["backup_trust"] == {"trusted": True, "matches_decryption_key": True}, xs
        for key, event_id in written.items():
            got = await js.wait_event(rid, RECORD, match={"key": key}, timeout=30)
            assert got["encrypted"] is True and got["event_id"] == event_id
            assert got["content"]["value"] == {"n": int(key.split("-")[1])}


async def test_we_restore_matrix_js_sdk_backup_with_its_recovery_key(  # type: ignore[no-untyped-def]
    js_deps, homeserver: TestHomeserver, open_client, tmp_path: Path
) -> None:
    owner = await open_client(await homeserver.new_user("bkowner"))
    js_user = await homeserver.new_user("bkjs")
    room = await owner.rooms.create("collaboration", name="backup interop (js)")
    rid = room.room_id
    await owner.rooms.grant(rid, js_user.user_id, "write")

    async with JsClient(name="js-to-ours") as js:
        await js.login(homeserver.base_url, js_user.user_id, js_user.password)
        assert (await js.bootstrap_cross_signing(js_user.password))["ready"] is True
        setup = await js.setup_key_backup()
        js_recovery_key, version = setup["recovery_key"], setup["version"]
        assert setup["ready"] is True, setup
        await js.join(rid)
        rec = await js.send_event(
            rid, RECORD, {"key": "from-js", "value": {"ok": True}, "txn": "js-bk-1"}
        )
        msg = await js.send_event(rid, "m.room.message", {"msgtype": "m.text", "body": "backed up"})
        assert rec["encrypted"] and msg["encrypted"]
        backed = await js.wait_backup_sessions(version, 1, timeout=30)
        assert backed["sessions"].get(rid), backed
    # The JS device is gone: nothing can forward its keys; only the backup has them.

    new = await DataroomsClient.open(
        Credentials(homeserver.base_url, js_user.user_id, password=js_user.password),
        tmp_path / "bkjs-new-device",
    )
    try:
        assert new.device_id != js.device_id
        restored = await new.keys.restore(js_recovery_key)
        assert restored >= 1
        assert new.keys.backup_version == version
        status = await new.keys.status()
        # The cross-signing keys matrix-js-sdk put in secret storage sign our device.
        assert status.holds_cross_signing_keys and status.device_cross_signed, status
        recent = await new.messages.recent(rid, limit=20)
        by_id = {e.event_id: e for e in recent}
        got = by_id[msg["event_id"]]
        assert got.encrypted and got.decrypted and got.body == "backed up"
        await new.records.backfill(rid)
        record = await new.records.get(rid, "from-js")
        assert record.value == {"ok": True} and record.event_id == rec["event_id"]
        assert record.sender == js_user.user_id
    finally:
        await new.close()
