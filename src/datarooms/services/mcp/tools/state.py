"""Tools for IXO keyed room state (``ixo.room.state``): the SDK's ``client.state``.

The rules are the SDK's, the same the state bot applies (datarooms.sdk.state): a
key with an ACL is read by its read and write lists only; it is written by its
write list or with the power the room asks for ``ixo.room.state``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from datarooms.errors import AccessDeniedError
from datarooms.sdk.state import StateAccessError, pointer
from datarooms.services.mcp.policy import CapabilityDenied
from datarooms.services.mcp.tools._common import RoomArg, ToolBase

StateKeyArg = Annotated[str, Field(description="State key", min_length=1, max_length=255)]


class StateTools(ToolBase):
    """Keyed room state (IXO state-bot semantics)."""

    async def get_state(
        self,
        room: RoomArg,
        key: StateKeyArg,
        path: Annotated[
            str | None,
            Field(
                description="Part of the value: a JSON Pointer such as '/config/threshold' "
                "(or a dot path, 'config.threshold')"
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Read a keyed room-state value (IXO `ixo.room.state`, state_key = key). Honours the
        key's `ixo.room.state.acl` read list. A secure value is read from its encrypted
        record; other room state is NOT end-to-end encrypted."""
        rid = await self.rt.room(room)
        try:
            got = await self._c.state.get(rid, key, pointer(path))
        except StateAccessError as exc:
            raise self._denied(exc) from None
        return {"room_id": rid, "key": key, "path": path, "value": got.value, "secure": got.secure}

    async def set_state(
        self,
        room: RoomArg,
        key: StateKeyArg,
        value: Annotated[
            Any, Field(description="A JSON object; with `path`, any JSON value for that part")
        ],
        path: Annotated[
            str | None,
            Field(
                description="Set only this part of the current value: a JSON Pointer such as "
                "'/config/threshold' (or a dot path)"
            ),
        ] = None,
        mode: Annotated[
            Literal["replace", "merge"],
            Field(description="replace: put the value as given; merge: JSON Merge Patch"),
        ] = "replace",
        secure: Annotated[
            bool | None,
            Field(
                description="true: keep the value in an end-to-end encrypted record (state "
                "holds a reference); false: in the clear; omit: as the key is now"
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Set a keyed room-state value (IXO `ixo.room.state`). Honours the key's
        `ixo.room.state.acl` write list (or the room's power for state). Room state is NOT
        end-to-end encrypted: the homeserver and every member can read it. Never store
        secrets in the clear; use secure=true or put_record."""
        rid = await self.rt.room(room)
        try:
            res = await self._c.state.set(
                rid, key, value, path=pointer(path), mode=mode, secure=secure
            )
        except StateAccessError as exc:
            raise self._denied(exc) from None
        return {"room_id": rid, "key": key, "event_id": res.event_id, "secure": res.secure}

    def _denied(self, exc: StateAccessError) -> AccessDeniedError:
        """A refusal by the key's ACL is a capability the agent lacks; the rest stays 403."""
        if exc.by_acl:
            return CapabilityDenied(self.rt.name, f"acl:{exc.action}:{exc.key}", exc.message)
        return AccessDeniedError(exc.message)
