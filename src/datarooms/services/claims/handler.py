"""The claims service's logic: who may save and query claims in which room.

The rules are the state bot's: the caller is verified by OpenID first; a caller who is a
joined member of the room may query its claims, one with write access (power 50, or
what the room asks for ``io.datarooms.claim``) may save one. The bot's own device
saves and reads the claim (end-to-end encrypted) through ``client.claims``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from datarooms import events as ev
from datarooms.errors import AccessDeniedError, NotFoundError
from datarooms.ids import room_id as check_room_id
from datarooms.sdk.claims import ClaimVerdict, SavedClaim
from datarooms.sdk.client import DataroomsClient
from datarooms.sdk.rooms import POWER, RoomView
from datarooms.services.openid import Caller

log = logging.getLogger(__name__)


class UnknownRoomError(NotFoundError):
    """The claims bot is not in the room (or the room does not exist)."""

    errcode = "DR_UNKNOWN_ROOM"


@dataclass(frozen=True)
class QueriedClaim:
    claim: SavedClaim
    verdict: ClaimVerdict


class ClaimsHandler:
    """Everything the REST API can do, for a verified :class:`Caller`."""

    def __init__(self, client: DataroomsClient) -> None:
        self.client = client

    @property
    def bot_id(self) -> str:
        return self.client.user_id

    def _room(self, room_id: str) -> RoomView:
        room_id = check_room_id(room_id)
        if self.client.membership(room_id) != "join":
            raise UnknownRoomError(
                f"the claims bot ({self.bot_id}) is not in room {room_id}, or the room does "
                f"not exist: invite {self.bot_id} (with write access) to the room"
            )
        return self.client.rooms.view(room_id)

    def _member(self, caller: Caller, room_id: str) -> RoomView:
        view = self._room(room_id)
        if not view.is_joined(caller.user_id):
            raise AccessDeniedError(
                f"{caller.user_id} is not a joined member of {room_id}", errcode="M_FORBIDDEN"
            )
        return view

    async def save(
        self, caller: Caller, room_id: str, collection: str, credential: dict[str, Any]
    ) -> SavedClaim:
        """IXO ``saveClaim``: save a signed claim into a collection; its CID."""
        view = self._member(caller, room_id)
        need = max(POWER["write"], view.required(ev.CLAIM, state=False))
        have = view.power(caller.user_id)
        if have < need:
            raise AccessDeniedError(
                f"{caller.user_id} may not save claims in {room_id}: power {have}, needs {need} "
                "(write access)",
                errcode="M_FORBIDDEN",
            )
        saved = await self.client.claims.save(
            room_id, credential, collection=collection, on_behalf_of=caller.user_id
        )
        log.info(
            "claim saved",
            extra={
                "room": room_id,
                "collection": collection,
                "cid": saved.cid,
                "by": caller.user_id,
            },
        )
        return saved

    async def query(self, caller: Caller, room_id: str, collection: str, cid: str) -> QueriedClaim:
        """IXO ``queryClaim``: the claim saved under ``cid`` in the collection, checked."""
        self._member(caller, room_id)
        saved = await self.client.claims.get(room_id, cid, collection=collection)
        verdict = await self.client.claims.verify(room_id, cid, collection=collection)
        return QueriedClaim(saved, verdict)

    async def list(self, caller: Caller, room_id: str, collection: str) -> list[SavedClaim]:
        self._member(caller, room_id)
        return await self.client.claims.list(room_id, collection=collection)
