"""Settings of the rooms bot and of the chain it watches.

They follow the rest of datarooms' configuration: environment variables
``DATAROOMS_ROOMSBOT_<FIELD>`` and ``DATAROOMS_CHAIN_<FIELD>`` (for example
``DATAROOMS_CHAIN_RPC_URL=https://rpc.example.org``), else the defaults below. The
dataclasses are frozen and typed like :mod:`datarooms.config`'s sections, so a
``[roomsbot]`` and a ``[chain]`` table in ``datarooms.toml`` can map onto them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from datarooms.config import _build
from datarooms.errors import ConfigError

ENV_ROOMSBOT = "DATAROOMS_ROOMSBOT_"
ENV_CHAIN = "DATAROOMS_CHAIN_"


@dataclass(frozen=True)
class ChainSettings:
    #: ``devchain``: run the embedded devchain (``datarooms up``) and watch it.
    #: ``external``: watch the node at ``rpc_url`` (a real IXO node).
    mode: Literal["devchain", "external"] = "devchain"
    #: CometBFT RPC of the node to watch, e.g. ``https://rpc.example.org``. Required in
    #: external mode; in devchain mode derived from ``host`` and ``port``.
    rpc_url: str = ""
    #: Where the devchain's RPC listens. Port 0 picks a free port at each start.
    host: str = "127.0.0.1"
    port: int = 26657
    chain_id: str = "datarooms-devchain"
    #: Seconds the devchain waits to batch transactions into a block.
    block_interval: float = 0.2
    #: Where the watcher starts when it has no saved height yet: 0 = the first block,
    #: -1 = the node's current height (only entities registered from now on), N = height N.
    start_height: int = 0
    #: Whether the rooms bot watches the chain at all (off: rooms on demand only).
    watch: bool = True


@dataclass(frozen=True)
class RoomsBotSettings:
    #: Where the appservice and REST API listen; the homeserver must reach this.
    host: str = "127.0.0.1"
    #: 0 picks a free port when the registration is first written, then keeps it.
    port: int = 8011
    #: The bot's Matrix user: ``@<sender_localpart>:<server>``.
    sender_localpart: str = "roomsbot"
    #: The data rooms every entity gets, comma-separated (``entity`` always comes first).
    room_kinds: str = "entity"
    #: Rooms created at once; the homeserver's CPU is the limit, not this.
    concurrency: int = 12
    #: Create an entity's rooms when someone asks for an alias that does not exist yet.
    on_demand: bool = True
    #: Matrix ids (comma-separated) allowed to invite anyone to any entity's rooms.
    operators: str = ""
    #: Other homeservers whose OpenID tokens the REST API accepts: ``name=url,...``.
    trusted_homeservers: str = ""

    @property
    def kinds(self) -> tuple[str, ...]:
        from datarooms.events import ROOM_KINDS

        kinds = ["entity"]
        for raw in self.room_kinds.split(","):
            k = raw.strip()
            if not k or k in kinds:
                continue
            if k not in ROOM_KINDS:
                raise ConfigError(
                    f"roomsbot.room_kinds: unknown room kind {k!r}; choose from "
                    + ", ".join(ROOM_KINDS)
                )
            kinds.append(k)
        return tuple(kinds)

    @property
    def operator_ids(self) -> frozenset[str]:
        return frozenset(u.strip() for u in self.operators.split(",") if u.strip())

    @property
    def trusted_homeserver_urls(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self.trusted_homeservers.split(","):
            name, sep, url = item.strip().partition("=")
            if not item.strip():
                continue
            if not sep or not name or not url.startswith(("http://", "https://")):
                raise ConfigError(
                    "roomsbot.trusted_homeservers must look like "
                    f"'example.org=https://matrix.example.org,...', got {item.strip()!r}"
                )
            out[name.strip()] = url.strip().rstrip("/")
        return out


def _from_env(cls: type[Any], prefix: str, env: Mapping[str, str] | None) -> Any:
    env = os.environ if env is None else env
    known = {f.name for f in fields(cls)}
    values = {
        k[len(prefix) :].lower(): v
        for k, v in env.items()
        if k.startswith(prefix) and k[len(prefix) :].lower() in known
    }
    return _build(cls, values, f"[{prefix[len('DATAROOMS_') : -1].lower()}]")


def load_chain_settings(env: Mapping[str, str] | None = None) -> ChainSettings:
    s: ChainSettings = _from_env(ChainSettings, ENV_CHAIN, env)
    if s.mode == "external" and not s.rpc_url:
        raise ConfigError(
            "chain.mode is 'external' but chain.rpc_url is not set (DATAROOMS_CHAIN_RPC_URL)"
        )
    if s.rpc_url and not s.rpc_url.startswith(("http://", "https://")):
        raise ConfigError(f"chain.rpc_url must start with http:// or https://, got {s.rpc_url!r}")
    if not 0 <= s.port < 65536:
        raise ConfigError(f"chain.port must be between 0 and 65535, got {s.port}")
    return s


def load_roomsbot_settings(env: Mapping[str, str] | None = None) -> RoomsBotSettings:
    s: RoomsBotSettings = _from_env(RoomsBotSettings, ENV_ROOMSBOT, env)
    if not 0 <= s.port < 65536:
        raise ConfigError(f"roomsbot.port must be between 0 and 65535, got {s.port}")
    if s.concurrency < 1:
        raise ConfigError("roomsbot.concurrency must be at least 1")
    s.kinds  # noqa: B018 - validates room_kinds
    s.trusted_homeserver_urls  # noqa: B018 - validates trusted_homeservers
    return s


def devchain_dir(data_dir: Path) -> Path:
    return data_dir / "devchain"


def roomsbot_dir(data_dir: Path) -> Path:
    return data_dir / "roomsbot"
