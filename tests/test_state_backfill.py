"""History never overwrites current room state (issue 11, item 1).

``/messages`` pages come newest to oldest. Applying each historical state event as it came
made the *oldest* power levels and ACLs win in the index: a user demoted to power 0 and
removed from a key's ACL was back at power 100 after any backfill, and the state bot (which
reads the index) let him write the locked key. The attack: promote, demote, write enough
that a new device's first sync is limited, then backfill on that device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datarooms import Credentials, DataroomsClient
from datarooms.testing import TestHomeserver

ACL = "ixo.room.state.acl"


async def test_backfill_keeps_current_power_and_acl(
    homeserver: TestHomeserver, open_client: Any, tmp_path: Path
) -> None:
    opened: list[DataroomsClient] = []
    try:
        await _attack(homeserver, open_client, tmp_path, opened)
    finally:
        for client in opened:
            await client.close()


async def _attack(
    homeserver: TestHomeserver, open_client: Any, tmp_path: Path, opened: list[DataroomsClient]
) -> None:
    owner = await homeserver.new_user("owner")
    mallory = await homeserver.new_user("mallory")
    alice = await open_client(owner, "owner-1")
    room = await alice.rooms.create("project", name="demotion")
    rid = room.room_id

    await alice.rooms.grant(rid, mallory.user_id, "admin")
    acl = {"read": [mallory.user_id], "write": [mallory.user_id]}
    resp = await alice.nio.room_put_state(rid, ACL, acl, state_key="secret")
    assert not hasattr(resp, "status_code") or resp.status_code is None, resp
    # Mallory is demoted and loses the key: the current state.
    await alice.rooms.grant(rid, mallory.user_id, "read")
    await alice.nio.room_put_state(rid, ACL, {"read": [], "write": []}, state_key="secret")
    for i in range(30):  # enough that a new device's first sync is limited: a gap
        await alice.records.put(rid, f"k{i}", {"i": i})

    # The owner's new device (a new login: its own device id), as the state bot's would be.
    fresh = await DataroomsClient.open(
        Credentials(homeserver.base_url, owner.user_id, password=owner.password),
        tmp_path / "owner-2",
    )
    opened.append(fresh)
    assert fresh.index.gaps(rid), "the test needs history the new device has not seen"

    def current() -> tuple[Any, Any]:
        power = fresh.index.state(rid, "m.room.power_levels") or {}
        return power.get("users", {}).get(mallory.user_id), fresh.index.state(rid, ACL, "secret")

    assert current() == (0, {"read": [], "write": []})
    read = await fresh.fill_gaps(rid)
    assert read > 30, "the backfill read the promotion and the old ACL"
    assert not fresh.index.gaps(rid)
    assert current() == (0, {"read": [], "write": []}), "history overwrote current state"
