"""Who may do what with a key: membership, power levels and IXO's ACLs.

The rules are the SDK's, one set for every interface (:mod:`datarooms.sdk.state`
documents them; docs/statebot.md has the table). This module keeps the names the
state bot has always exported: :class:`RoomView` is the SDK's
:class:`~datarooms.sdk.state.StateView`.
"""

from __future__ import annotations

from datarooms.sdk.rooms import CREATOR_POWER
from datarooms.sdk.state import Acl, StateView, dedupe

RoomView = StateView

__all__ = ["CREATOR_POWER", "Acl", "RoomView", "dedupe"]
