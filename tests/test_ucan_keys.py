"""A device's UCAN key lives with the device and is backed up in secret storage: a new
device unlocked with the recovery key has the same did:key; the homeserver sees only
ciphertext."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from datarooms import Credentials, DataroomsClient
from datarooms.testing import TestHomeserver


async def test_ucan_key_is_kept_and_recovered_from_secret_storage(  # type: ignore[no-untyped-def]
    homeserver: TestHomeserver, tmp_path: Path, open_client
) -> None:
    user = await homeserver.new_user("owner")
    alice = await open_client(user, "alice-laptop")
    me = alice.keys.ucan_principal()
    assert me.did.startswith("did:key:z6Mk")
    assert alice.keys.ucan_principal().did == me.did  # kept with the device
    recovery_key = await alice.keys.setup_recovery()
    # What the homeserver holds is encrypted: the seed appears nowhere in it.
    async with alice.http() as http:
        stored = await http.request(
            "GET",
            f"/_matrix/client/v3/user/{user.user_id}/account_data/io.datarooms.ucan.ed25519",
        )
    text = json.dumps(stored)
    assert "encrypted" in stored
    for form in (base64.b64encode(me.seed).decode().rstrip("="), me.seed.hex()):
        assert form not in text
    await alice.close()

    new = await DataroomsClient.open(
        Credentials(homeserver.base_url, user.user_id, password=user.password),
        tmp_path / "alice-new-laptop",
    )
    try:
        fresh = new.keys.ucan_principal().did  # before unlocking: a key of its own
        assert fresh != me.did
        await new.keys.restore(recovery_key)
        assert new.keys.ucan_principal().did == me.did
    finally:
        await new.close()
