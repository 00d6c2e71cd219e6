"""How big each room is: ``client.rooms.usage()``.

From this device's indexes (what it has decrypted): records (keys and versions),
files (count and bytes of the encrypted files), telemetry (samples and batches),
state events, and the bytes its index spends on the room (a measured estimate: the
payloads of its rows). From the homeserver, where the caller can give them
(``server``: per room, events or None and bytes, as
:mod:`datarooms.homeserver.stats` reads them): the events the server stores and
their bytes. Sorted biggest first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from datarooms import events as ev

if TYPE_CHECKING:
    from datarooms.sdk.client import DataroomsClient


@dataclass(frozen=True)
class RoomUsage:
    room_id: str
    name: str | None
    kind: str | None
    members: int
    keys: int
    versions: int
    files: int
    file_bytes: int
    telemetry_samples: int
    telemetry_batches: int
    state_events: int
    index_bytes: int
    #: The homeserver's view (None where it was not asked or does not say).
    server_events: int | None = None
    server_bytes: int | None = None

    @property
    def total_bytes(self) -> int:
        """What the room costs in storage: its files, the server's events (or this
        device's index where the server was not asked)."""
        return self.file_bytes + (
            self.server_bytes if self.server_bytes is not None else self.index_bytes
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "total_bytes": self.total_bytes}


def room_usage(
    client: DataroomsClient, server: Mapping[str, tuple[int | None, int]] | None = None
) -> list[RoomUsage]:
    index = client.index.usage()
    tel_dir = client.telemetry.directory
    telemetry = client.telemetry.index.usage() if (tel_dir / "index.db").exists() else {}
    rooms = set(client.joined_rooms()) | set(index) | set(telemetry)
    out = []
    for rid in rooms:
        u = index.get(rid)
        samples, batches, tel_bytes = telemetry.get(rid, (0, 0, 0))
        info = client.index.state(rid, ev.ROOM_INFO) or {}
        name = (client.index.state(rid, "m.room.name") or {}).get("name")
        members = client.index.state_of_type(rid, "m.room.member")
        s = (server or {}).get(rid)
        out.append(
            RoomUsage(
                rid,
                name if isinstance(name, str) else None,
                info.get("kind") if isinstance(info.get("kind"), str) else None,
                sum(1 for m in members.values() if m.get("membership") == "join"),
                u.keys if u else 0,
                u.versions if u else 0,
                u.files if u else 0,
                u.file_bytes if u else 0,
                samples,
                batches,
                u.state_events if u else 0,
                (u.index_bytes if u else 0) + tel_bytes,
                s[0] if s else None,
                s[1] if s else None,
            )
        )
    out.sort(key=lambda r: (-r.total_bytes, r.room_id))
    return out
