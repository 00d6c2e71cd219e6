"""The devchain and the rooms bot as platform services (what ``datarooms up`` runs).

Wiring, in the platform:

1. before Synapse starts: ``extra = appservice_synapse_config(settings)`` writes the rooms
   bot's appservice registration and returns ``{"app_service_config_files": [path]}``
   to merge into Synapse's config;
2. services, in this order: :class:`DevchainService` (``name = "devchain"``), then
   :class:`RoomsBotService` (``name = "roomsbot"``, which also runs the chain watcher).

Where they run is recorded in ``<data_dir>/run/devchain.json`` and
``<data_dir>/run/roomsbot.json`` (``{"url": ..., "pid": ...}``) for the CLI.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datarooms._fs import ProcessLock, atomic_write
from datarooms.config import Settings
from datarooms.services.platform import PlatformContext
from datarooms.services.roomsbot.registration import (
    Registration,
    load_registration,
    write_registration,
)
from datarooms.services.roomsbot.settings import (
    ChainSettings,
    RoomsBotSettings,
    devchain_dir,
    load_chain_settings,
    load_roomsbot_settings,
    roomsbot_dir,
)

if TYPE_CHECKING:
    # Imported when they start: `datarooms up` writes the registration (this module)
    # before Synapse starts, and must not wait for the bot's imports to do so.
    from datarooms.chain.devchain.rpc import DevChainServer
    from datarooms.services.roomsbot.bot import RoomsBot


def registration_path(settings: Settings) -> Path:
    return roomsbot_dir(settings.data_dir).absolute() / "registration.yaml"


def store_path(settings: Settings) -> Path:
    return roomsbot_dir(settings.data_dir) / "store.db"


def write_appservice_registration(
    settings: Settings, roomsbot: RoomsBotSettings | None = None
) -> Registration:
    """Write (or refresh, keeping its tokens) the rooms bot's registration file."""
    rb = roomsbot or load_roomsbot_settings()
    path = registration_path(settings)
    port = rb.port
    if port == 0:  # any free port: keep the last one while it stays free
        previous = _previous_port(path)
        port = previous if previous and _is_free(rb.host, previous) else _free_port(rb.host)
    return write_registration(
        path,
        server_name=settings.homeserver.server_name,
        url=f"http://{rb.host}:{port}",
        sender_localpart=rb.sender_localpart,
    )


def appservice_synapse_config(
    settings: Settings, roomsbot: RoomsBotSettings | None = None
) -> dict[str, Any]:
    """Write the rooms bot's appservice registration; return the Synapse settings that
    load it: ``{"app_service_config_files": [<absolute path>]}``. Call it before Synapse
    starts (Synapse reads registrations only at start)."""
    reg = write_appservice_registration(settings, roomsbot)
    return {"app_service_config_files": [str(reg.path)]}


def _previous_port(path: Path) -> int | None:
    try:
        return load_registration(path).port
    except Exception:
        return None


def _is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def run_file(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.json"


def running_url(settings: Settings, name: str) -> str | None:
    """The URL of the ``devchain`` or ``roomsbot`` running on this data dir, if one is."""
    try:
        info = json.loads(run_file(settings, name).read_text())
        pid, url = int(info["pid"]), str(info["url"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return url


def chain_url(settings: Settings, chain: ChainSettings) -> str:
    """The RPC to watch: the external node, else the devchain running on this data dir."""
    if chain.mode == "external":
        return chain.rpc_url.rstrip("/")
    return running_url(settings, "devchain") or f"http://{chain.host}:{chain.port}"


class DevchainService:
    """Runs the embedded devchain (chain.mode = devchain); nothing in external mode."""

    name = "devchain"

    def __init__(
        self, chain: ChainSettings | None = None, *, allow_raw_events: bool = False
    ) -> None:
        self._chain = chain
        self._allow_raw = allow_raw_events
        self.server: DevChainServer | None = None
        self._run_file: Path | None = None

    async def start(self, platform: PlatformContext) -> dict[str, Any]:
        cs = self._chain or load_chain_settings()
        if cs.mode != "devchain":
            return {"mode": "external", "rpc": cs.rpc_url}
        from datarooms.chain.devchain.node import DevChain
        from datarooms.chain.devchain.rpc import DevChainServer

        chain = DevChain(
            devchain_dir(platform.settings.data_dir),
            chain_id=cs.chain_id,
            block_interval=cs.block_interval,
            allow_raw_events=self._allow_raw,
        )
        server = DevChainServer(chain, host=cs.host, port=cs.port)
        await server.start()  # verifies the stored chain first
        self.server = server
        self._run_file = run_file(platform.settings, self.name)
        atomic_write(self._run_file, json.dumps({"url": server.url, "pid": os.getpid()}))
        return {"rpc": server.url, "chain_id": chain.chain_id, "height": chain.height}

    async def stop(self) -> None:
        server, self.server = self.server, None
        try:
            if server is not None:
                await server.stop()
        finally:
            if self._run_file is not None:
                self._run_file.unlink(missing_ok=True)
                self._run_file = None


class RoomsBotService:
    """Runs the rooms bot: the appservice, its REST API and the chain watcher."""

    name = "roomsbot"

    def __init__(
        self, roomsbot: RoomsBotSettings | None = None, chain: ChainSettings | None = None
    ) -> None:
        self._settings = roomsbot
        self._chain = chain
        self.bot: RoomsBot | None = None
        self._lock: ProcessLock | None = None
        self._run_file: Path | None = None

    async def start(self, platform: PlatformContext) -> dict[str, Any]:
        rb = self._settings or load_roomsbot_settings()
        cs = self._chain or load_chain_settings()
        settings = platform.settings
        reg = load_registration(registration_path(settings), platform.server_name)
        lock = ProcessLock(
            roomsbot_dir(settings.data_dir) / "roomsbot.lock",
            what=f"a rooms bot on {settings.data_dir}",
        )
        lock.acquire()
        try:
            from datarooms.services.roomsbot.bot import RoomsBot

            watch = chain_url(settings, cs) if cs.watch else None
            bot = RoomsBot(
                homeserver_url=platform.homeserver_url,
                registration=reg,
                store_path=store_path(settings),
                settings=rb,
                chain_url=watch,
                chain=cs,
            )
            await bot.start()
        except BaseException:
            lock.release()
            raise
        self.bot, self._lock = bot, lock
        self._run_file = run_file(settings, self.name)
        atomic_write(self._run_file, json.dumps({"url": bot.url, "pid": os.getpid()}))
        return {
            "url": bot.url,
            "user": reg.user_id,
            "chain": watch or "not watched",
            "entities": bot.store.count(),
        }

    async def stop(self) -> None:
        bot, self.bot = self.bot, None
        try:
            if bot is not None:
                await bot.stop()
        finally:
            if self._run_file is not None:
                self._run_file.unlink(missing_ok=True)
                self._run_file = None
            if self._lock is not None:
                self._lock.release()
                self._lock = None


__all__ = [
    "DevchainService",
    "RoomsBotService",
    "appservice_synapse_config",
    "chain_url",
    "registration_path",
    "running_url",
    "write_appservice_registration",
]
