"""How big each room is on the homeserver itself: events and their bytes.

- An embedded Synapse on SQLite: counted from its database, read-only
  (``events`` joined with ``event_json``: every event the server stores, with the
  bytes of its JSON; a measured figure, not an estimate of pages).
- Synapse on PostgreSQL: its admin API's room statistics
  (``/_synapse/admin/v1/statistics/database/rooms``, PostgreSQL only), which give
  an estimated size per room but no event count.

Media cannot be counted per room on the server: our files are encrypted
attachments, and the event naming a file is encrypted too. Their sizes come from
the devices' indexes.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from datarooms.errors import HomeserverError


@dataclass(frozen=True)
class ServerRoomStats:
    room_id: str
    #: Events the server stores for the room (None where it does not say).
    events: int | None
    #: Bytes of those events as the server stores them (ciphertext for encrypted ones).
    bytes: int


def sqlite_room_stats(db_path: Path) -> dict[str, ServerRoomStats]:
    """Per room, from an (embedded) Synapse's SQLite database, opened read-only."""
    if not db_path.is_file():
        raise HomeserverError(f"no homeserver database at {db_path}")
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute(
            "SELECT e.room_id, count(*), coalesce(sum(length(j.json)), 0) "
            "FROM events e JOIN event_json j ON j.event_id = e.event_id GROUP BY e.room_id"
        ).fetchall()
    except sqlite3.Error as exc:
        raise HomeserverError(f"cannot read room sizes from {db_path}: {exc}") from None
    finally:
        db.close()
    return {r: ServerRoomStats(r, int(n), int(b)) for r, n, b in rows}


async def admin_room_stats(homeserver_url: str, access_token: str) -> dict[str, ServerRoomStats]:
    """Per room, from Synapse's admin API (PostgreSQL only; an admin's token)."""
    from datarooms._transport.http import MatrixHttp

    async with MatrixHttp(homeserver_url, access_token) as http:
        res = await http.request("GET", "/_synapse/admin/v1/statistics/database/rooms")
    out: dict[str, ServerRoomStats] = {}
    for r in res.get("rooms", []):
        if isinstance(r, dict) and isinstance(r.get("room_id"), str):
            out[r["room_id"]] = ServerRoomStats(
                r["room_id"], None, int(r.get("estimated_size") or 0)
            )
    return out
