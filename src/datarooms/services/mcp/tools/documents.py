"""Tools for collaborative documents (CRDT, IXO matrix-crdt format): the SDK's ``client.docs``.

The document is end-to-end encrypted like every event of a data room; an agent reads it
as plain JSON and edits it by path, and its edits merge with everyone else's (CRDT).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from datarooms.sdk.docs import DEFAULT_NAME
from datarooms.services.mcp.tools._common import RoomArg, ToolBase

DocNameArg = Annotated[
    str,
    Field(
        description="Which document of the room ('default': the one IXO editors open)",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9._~-]+$",
    ),
]


class DocumentTools(ToolBase):
    """Collaborative documents."""

    async def read_document(self, room: RoomArg, name: DocNameArg = DEFAULT_NAME) -> dict[str, Any]:
        """Read a collaborative document of a room as JSON: each root by name, texts as
        strings, maps as objects, arrays as lists. End-to-end encrypted."""
        rid = await self.rt.room(room)
        content = await self._c.docs.read(rid, name)
        return {"room_id": rid, "name": name, "content": content}

    async def edit_document(
        self,
        room: RoomArg,
        path: Annotated[
            str,
            Field(
                description="ROOT to replace a root text (e.g. 'body'), or ROOT/KEY/... to set "
                "a key in a root map (e.g. 'fields/status')",
                min_length=1,
                max_length=1024,
            ),
        ],
        value: Annotated[
            Any,
            Field(description="A string for a root text; any JSON value for a map key"),
        ],
        name: DocNameArg = DEFAULT_NAME,
    ) -> dict[str, Any]:
        """Edit a collaborative document: set a map key or rewrite a root text. Only what
        changed is sent, so concurrent edits by others are merged, never overwritten."""
        rid = await self.rt.room(room)
        content = await self._c.docs.edit(rid, path, value, name)
        return {"room_id": rid, "name": name, "content": content}
