"""Shared test steps for rooms between SDK clients."""

from __future__ import annotations

from datarooms import DataroomsClient


async def shared_room(
    owner: DataroomsClient, other: DataroomsClient, access: str = "read", kind: str = "device"
) -> str:
    """``owner`` creates a data room and grants ``other`` access; both are in sync."""
    room = await owner.rooms.create(kind, name=f"test {kind} room")
    await owner.rooms.grant(room.room_id, other.user_id, access)  # type: ignore[arg-type]
    await other.sync_once()
    await other.rooms.join(room.room_id)
    await owner.sync_once()
    return room.room_id
