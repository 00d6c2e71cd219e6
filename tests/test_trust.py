"""Cross-signing and the trust policy: an unsigned device receives no room keys."""

from __future__ import annotations

from pathlib import Path

import pytest
from nio import MegolmEvent
from nio.exceptions import EncryptionError

from datarooms import Credentials, DataroomsClient
from datarooms.testing import TestHomeserver
from tests._rooms import shared_room


async def _raw(client: DataroomsClient, room: str, event_id: str) -> dict:  # type: ignore[type-arg]
    async with client.http() as http:
        return dict(await http.request("GET", f"/_matrix/client/v3/rooms/{room}/event/{event_id}"))


async def test_every_device_cross_signs_itself(alice_bob) -> None:  # type: ignore[no-untyped-def]
    alice, bob = alice_bob
    for c in (alice, bob):
        st = await c.keys.status()
        assert st.cross_signing and st.device_cross_signed and st.holds_cross_signing_keys
    # Alice sees Bob's device as cross-signed (signature chain verified on her side).
    res = await alice.keys.query_keys([bob.user_id])
    assert bob.device_id in alice.keys.cross_signed_devices(bob.user_id, res)


async def test_unsigned_device_gets_no_room_keys(  # type: ignore[no-untyped-def]
    alice_bob, homeserver: TestHomeserver, tmp_path: Path
) -> None:
    alice, bob = alice_bob
    room = await shared_room(alice, bob)
    # An account whose device never cross-signs itself.
    second = await homeserver.new_user("solo")
    solo = await DataroomsClient.open(
        Credentials(homeserver.base_url, second.user_id, second.access_token),
        tmp_path / "solo",
        cross_sign=False,
    )
    try:
        await alice.rooms.grant(room, solo.user_id, "read")
        await solo.sync_once()
        await solo.rooms.join(room)
        await alice.sync_once()
        rec = await alice.records.put(room, "k", "for trusted devices only")
        await bob.sync_once()
        assert (await bob.records.get(room, "k")).value == "for trusted devices only"
        await solo.sync_once()
        raw = await _raw(alice, room, rec.event_id)
        megolm = MegolmEvent.from_dict(raw)
        megolm.room_id = room
        with pytest.raises(EncryptionError):
            solo.nio.decrypt_event(megolm)
        assert solo.index.latest(room, "k") is None

        # With the policy "all", the same device does get the next session.
        alice.keys.trust = "all"
        alice.nio.invalidate_outbound_session(room)
        await alice.records.put(room, "k2", "for everyone")
        await solo.sync_once()
        assert (await solo.records.get(room, "k2")).value == "for everyone"
    finally:
        await solo.close()
