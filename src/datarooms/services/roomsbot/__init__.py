"""The rooms bot: a room and a space for every entity, on demand and from the chain.

A Matrix application service. It creates an entity's rooms when the chain watcher sees
the entity registered, when someone asks the homeserver for the entity's alias, or when
its REST API is asked to; exactly once per entity, even across crashes. See
docs/roomsbot.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datarooms.events import ENTITY as ENTITY_EVENT
    from datarooms.events import ENTITY_SCHEMA as ENTITY_EVENT_SCHEMA
    from datarooms.services.roomsbot.bot import RoomsBot
    from datarooms.services.roomsbot.entity_rooms import (
        EntityRooms,
        alias_localpart,
        did_from_localpart,
    )
    from datarooms.services.roomsbot.registration import (
        Registration,
        load_registration,
        write_registration,
    )
    from datarooms.services.roomsbot.service import (
        DevchainService,
        RoomsBotService,
        appservice_synapse_config,
        write_appservice_registration,
    )
    from datarooms.services.roomsbot.settings import (
        ChainSettings,
        RoomsBotSettings,
        load_chain_settings,
        load_roomsbot_settings,
    )
    from datarooms.services.roomsbot.store import EntityFacts, EntityRecord, RoomRef, Store

# Imported on first use, so that `datarooms up` can write the appservice
# registration (service, registration, settings) before Synapse starts without
# first importing the bot itself.
_LAZY = {
    "ENTITY_EVENT": ("datarooms.events", "ENTITY"),
    "ENTITY_EVENT_SCHEMA": ("datarooms.events", "ENTITY_SCHEMA"),
    "RoomsBot": ("datarooms.services.roomsbot.bot", "RoomsBot"),
    **{
        n: ("datarooms.services.roomsbot.entity_rooms", n)
        for n in ("EntityRooms", "alias_localpart", "did_from_localpart")
    },
    **{
        n: ("datarooms.services.roomsbot.registration", n)
        for n in ("Registration", "load_registration", "write_registration")
    },
    **{
        n: ("datarooms.services.roomsbot.service", n)
        for n in (
            "DevchainService",
            "RoomsBotService",
            "appservice_synapse_config",
            "write_appservice_registration",
        )
    },
    **{
        n: ("datarooms.services.roomsbot.settings", n)
        for n in (
            "ChainSettings",
            "RoomsBotSettings",
            "load_chain_settings",
            "load_roomsbot_settings",
        )
    },
    **{
        n: ("datarooms.services.roomsbot.store", n)
        for n in ("EntityFacts", "EntityRecord", "RoomRef", "Store")
    },
}


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(where[0]), where[1])
    globals()[name] = value
    return value


__all__ = [
    "ENTITY_EVENT",
    "ENTITY_EVENT_SCHEMA",
    "ChainSettings",
    "DevchainService",
    "EntityFacts",
    "EntityRecord",
    "EntityRooms",
    "Registration",
    "RoomRef",
    "RoomsBot",
    "RoomsBotService",
    "RoomsBotSettings",
    "Store",
    "alias_localpart",
    "appservice_synapse_config",
    "did_from_localpart",
    "load_chain_settings",
    "load_registration",
    "load_roomsbot_settings",
    "write_appservice_registration",
    "write_registration",
]
