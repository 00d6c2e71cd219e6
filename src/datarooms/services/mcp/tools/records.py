"""Tools for records: put, get, twin state, history."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from datarooms.services.mcp.reading import parse_time, record_json
from datarooms.services.mcp.tools._common import KeyArg, RoomArg, TimeArg, ToolBase


class RecordTools(ToolBase):
    """Records (end-to-end encrypted, versioned)."""

    async def put_record(
        self,
        room: RoomArg,
        key: KeyArg,
        value: Annotated[
            Any, Field(description="Any JSON value: object, array, string, number, boolean or null")
        ],
        schema: Annotated[
            str | None, Field(description="Validate against this JSON Schema the room publishes")
        ] = None,
        txn_id: Annotated[
            str | None,
            Field(
                description="Idempotency key: retrying with the same txn_id never makes a second "
                "version"
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Write a new version of a record (end-to-end encrypted; history is kept).
        Records are the data of a data room: a twin's current state is the latest version
        of every key."""
        rid = await self.rt.room(room, sends=True)
        return record_json(await self._c.records.put(rid, key, value, schema=schema, txn_id=txn_id))

    async def get_record(self, room: RoomArg, key: KeyArg) -> dict[str, Any]:
        """Read the latest version of a record: value, version number, writer and time."""
        rid = await self.rt.room(room)
        return record_json(await self._c.records.get(rid, key))

    async def get_twin(
        self,
        room: RoomArg,
        with_metadata: Annotated[
            bool, Field(description="Include version, writer and time of each key")
        ] = False,
    ) -> dict[str, Any]:
        """Read a room's twin state: the latest value of every record key."""
        rid = await self.rt.room(room)
        if with_metadata:
            latest = await self._c.records.latest(rid)
            return {"room_id": rid, "state": {k: record_json(r) for k, r in latest.items()}}
        return {"room_id": rid, "state": await self._c.records.twin(rid)}

    async def record_history(
        self,
        room: RoomArg,
        key: KeyArg,
        since: TimeArg = None,
        until: TimeArg = None,
        limit: Annotated[int, Field(description="At most this many versions", ge=1, le=1000)] = 100,
        newest_first: Annotated[bool, Field(description="Newest version first")] = False,
    ) -> dict[str, Any]:
        """Every version of a record key, optionally within a time range."""
        rid = await self.rt.room(room)
        versions = await self._c.records.history(
            rid,
            key,
            since=parse_time(since, "since"),
            until=parse_time(until, "until"),
            limit=limit,
            newest_first=newest_first,
        )
        return {"room_id": rid, "key": key, "versions": [record_json(r) for r in versions]}
