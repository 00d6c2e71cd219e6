"""Settings of the rooms bot and of the chain it watches: ``[roomsbot]`` and ``[chain]``.

Both are typed sections of :mod:`datarooms.config` (``settings.roomsbot``,
``settings.chain``), read from the config file and ``DATAROOMS_ROOMSBOT_<FIELD>`` /
``DATAROOMS_CHAIN_<FIELD>`` by its one loader. The functions here are for code that
has no :class:`~datarooms.config.Settings` (the environment alone).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from datarooms.config import ChainSettings, RoomsBotSettings, load_section
from datarooms.services.devchain import devchain_dir

ENV_ROOMSBOT = "DATAROOMS_ROOMSBOT_"
ENV_CHAIN = "DATAROOMS_CHAIN_"


def load_chain_settings(env: Mapping[str, str] | None = None) -> ChainSettings:
    """``[chain]`` from the environment alone (else ``settings.chain``)."""
    return load_section(ChainSettings, "chain", env=env)


def load_roomsbot_settings(env: Mapping[str, str] | None = None) -> RoomsBotSettings:
    """``[roomsbot]`` from the environment alone (else ``settings.roomsbot``)."""
    return load_section(RoomsBotSettings, "roomsbot", env=env)


def roomsbot_dir(data_dir: Path) -> Path:
    return data_dir / "roomsbot"


__all__ = [
    "ChainSettings",
    "RoomsBotSettings",
    "devchain_dir",
    "load_chain_settings",
    "load_roomsbot_settings",
    "roomsbot_dir",
]
