"""Keys are the data: back up, lose every local store, recover everything on a new device."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives import hashes, padding
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from datarooms import Credentials, DataroomsClient, ValidationError
from datarooms.sdk.keys.backup import BackupKey, encrypt_session
from datarooms.sdk.keys.recovery import decode_recovery_key, encode_recovery_key
from datarooms.sdk.keys.signing import decode_b64
from datarooms.testing import TestHomeserver
from tests._rooms import shared_room


async def test_device_loss_recovers_all_history(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, tmp_path: Path, open_client
) -> None:
    user = await homeserver.new_user("owner")
    alice = await open_client(user, "alice-laptop")
    bob = await open_client(await homeserver.new_user("peer"))
    recovery_key = await alice.keys.setup_recovery()
    assert len(recovery_key.split()) == 12

    room = await shared_room(alice, bob, "write", kind="collaboration")
    for i in range(30):
        await alice.records.put(room, f"a{i % 5}", i)
    for i in range(10):
        await bob.records.put(room, f"b{i % 3}", i)  # sessions Alice only *receives*
    alice.nio.invalidate_outbound_session(room)  # a second session of Alice's
    for i in range(5):
        await alice.records.put(room, "late", i)
    data = os.urandom(100_000)
    ref = await alice.files.put(room, data, filename="evidence.bin")
    await alice.sync_once()  # receives Bob's sessions, backs them up
    await alice.records.backfill(room)
    written = alice.index.count(room)
    assert written == 45
    status = await alice.keys.status()
    assert status.backup_enabled and status.backed_up_sessions >= 3

    # Every local store is gone: session, crypto store, index, keys.
    await alice.close()
    shutil.rmtree(tmp_path / "alice-laptop")

    new = await DataroomsClient.open(
        Credentials(homeserver.base_url, user.user_id, password=user.password),
        tmp_path / "alice-new-laptop",
    )
    try:
        assert new.device_id != alice.device_id
        before = await new.keys.status()
        assert before.cross_signing and not before.device_cross_signed
        restored = await new.keys.restore(recovery_key)
        assert restored >= 3
        after = await new.keys.status()
        assert after.device_cross_signed and after.holds_cross_signing_keys
        # 100% of the history decrypts on the new device: count it.
        await new.records.backfill(room)
        assert new.index.count(room) == written
        assert new.index.pending() == []
        assert await new.records.twin(room) == {
            "a0": 25,
            "a1": 26,
            "a2": 27,
            "a3": 28,
            "a4": 29,
            "b0": 9,
            "b1": 7,
            "b2": 8,
            "late": 4,
        }
        assert await new.files.read(room, ref.event_id) == data
        # The new device writes, and Bob (cross-signed peer) reads it.
        await new.records.put(room, "from-new-device", True)
        await bob.sync_once()
        assert (await bob.records.get(room, "from-new-device")).value is True
    finally:
        await new.close()


async def test_put_is_acknowledged_after_backup(alice_bob) -> None:  # type: ignore[no-untyped-def]
    alice, bob = alice_bob
    await alice.keys.setup_recovery()
    room = await shared_room(alice, bob)
    rec = await alice.records.put(room, "k", 1)
    async with alice.http() as http:
        raw = await http.request("GET", f"/_matrix/client/v3/rooms/{room}/event/{rec.event_id}")
        sid = raw["content"]["session_id"]
        version = alice.keys.backup_version
        backed = await http.request(
            "GET",
            f"/_matrix/client/v3/room_keys/keys/{room}/{quote(sid, safe='')}?version={version}",
        )
    assert backed["first_message_index"] == 0
    payload = alice.keys.backup_key.decrypt(backed["session_data"])  # type: ignore[union-attr]
    assert payload["algorithm"] == "m.megolm.v1.aes-sha2" and payload["session_key"]


async def test_wrong_recovery_keys_are_refused(alice_bob) -> None:  # type: ignore[no-untyped-def]
    alice, _ = alice_bob
    key = await alice.keys.setup_recovery()
    other = encode_recovery_key(os.urandom(32))
    with pytest.raises(ValidationError, match="does not belong"):
        await alice.keys.unlock(other)
    typo = key[:-1] + ("a" if key[-1] != "a" else "b")
    with pytest.raises(ValidationError, match=r"typo|not a recovery key"):
        await alice.keys.unlock(typo)
    with pytest.raises(ValidationError, match="invalid character"):
        await alice.keys.unlock("0OIl " * 12)
    await alice.keys.unlock(key)  # the right one works


def test_recovery_key_format_roundtrip() -> None:
    raw = bytes(range(32))
    text = encode_recovery_key(raw)
    groups = text.split(" ")
    assert all(len(g) == 4 for g in groups[:-1])
    assert decode_recovery_key(text) == raw
    assert decode_recovery_key(text.replace(" ", "")) == raw


def test_backup_encryption_matches_the_spec_independently() -> None:
    """Decrypt vodozemac's backup ciphertext with a from-the-spec implementation."""
    key = BackupKey.generate()
    payload = {"algorithm": "m.megolm.v1.aes-sha2", "session_key": "abc", "sender_key": "x"}
    enc = encrypt_session(key.public_key, payload)
    private = X25519PrivateKey.from_private_bytes(key.to_bytes())
    shared = private.exchange(X25519PublicKey.from_public_bytes(decode_b64(enc["ephemeral"])))
    okm = HKDF(hashes.SHA256(), 80, salt=b"\0" * 32, info=b"").derive(shared)
    aes_key, mac_key, iv = okm[:32], okm[32:64], okm[64:]
    ciphertext = decode_b64(enc["ciphertext"])
    # MSC4048: the legacy MAC is over the empty string, truncated to 8 bytes.
    assert decode_b64(enc["mac"]) == hmac.new(mac_key, b"", hashlib.sha256).digest()[:8]
    dec = Cipher(algorithms.AES(aes_key), modes.CBC(iv)).decryptor()
    padded = dec.update(ciphertext) + dec.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    plain = unpadder.update(padded) + unpadder.finalize()
    assert json.loads(plain) == payload
    assert base64.b64decode(enc["ephemeral"] + "=")  # standard base64, unpadded
