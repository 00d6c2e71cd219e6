"""The rooms bot as a platform service (what ``datarooms up`` runs).

Wiring, in the platform:

1. before Synapse starts: ``extra = appservice_synapse_config(settings)`` writes the rooms
   bot's appservice registration (its URL from ``[roomsbot] host`` and ``port``) and
   returns ``{"app_service_config_files": [path]}`` to merge into Synapse's config;
2. services, in this order: :class:`~datarooms.services.devchain.DevchainService`
   (``name = "devchain"``), then :class:`RoomsBotService` (``name = "roomsbot"``, which
   also runs the chain watcher).

Where the bot runs is recorded in ``<data_dir>/run/roomsbot.json``
(``{"url": ..., "pid": ...}``) for the CLI and the SDK (which asks it for entity rooms).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datarooms._fs import ProcessLock
from datarooms.config import ChainSettings, RoomsBotSettings, Settings
from datarooms.errors import PortInUseError
from datarooms.homeserver.embedded import check_port_free, free_port
from datarooms.services.devchain import DevchainService, chain_url
from datarooms.services.platform import PlatformContext
from datarooms.services.roomsbot.registration import (
    Registration,
    load_registration,
    write_registration,
)
from datarooms.services.roomsbot.settings import roomsbot_dir
from datarooms.services.scaffold import BotService, ServiceRun
from datarooms.services.scaffold import run_file as _run_file

NAME = "roomsbot"

if TYPE_CHECKING:
    # Imported when they start: `datarooms up` writes the registration (this module)
    # before Synapse starts, and must not wait for the bot's imports to do so.
    from datarooms.services.roomsbot.bot import RoomsBot  # noqa: F401 - in BotService["RoomsBot"]


def registration_path(settings: Settings) -> Path:
    return roomsbot_dir(settings.data_dir).absolute() / "registration.yaml"


def store_path(settings: Settings) -> Path:
    return roomsbot_dir(settings.data_dir) / "store.db"


def write_appservice_registration(
    settings: Settings, roomsbot: RoomsBotSettings | None = None
) -> Registration:
    """Write (or refresh, keeping its tokens) the rooms bot's registration file."""
    rb = roomsbot or settings.roomsbot
    path = registration_path(settings)
    port = rb.port
    if port == 0:  # any free port: keep the last one while it stays free
        previous = _previous_port(path)
        port = previous if previous and _is_free(rb.host, previous) else free_port(rb.host)
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
    try:
        check_port_free(host, port)
    except PortInUseError:
        return False
    return True


def run_file(settings: Settings, name: str = NAME) -> Path:
    return _run_file(settings, name)


def running_url(settings: Settings, name: str = NAME) -> str | None:
    """The URL of the ``roomsbot`` (or ``devchain``) running on this data dir, if one is."""
    return settings.running_url(name)


class RoomsBotService(BotService["RoomsBot"]):
    """Runs the rooms bot: the appservice, its REST API and the chain watcher."""

    name = "roomsbot"

    def __init__(
        self, roomsbot: RoomsBotSettings | None = None, chain: ChainSettings | None = None
    ) -> None:
        self._settings = roomsbot
        self._chain = chain
        super().__init__()

    async def start(self, platform: PlatformContext) -> dict[str, Any]:
        settings = platform.settings
        rb = self._settings or settings.roomsbot
        cs = self._chain or settings.chain
        # The platform's service account (the CLI's default account) administers the
        # platform: it may add members to entity rooms, as `rooms.create` asks.
        operators = rb.operator_ids | {platform.service_account.user_id}
        rb = replace(rb, operators=",".join(sorted(operators)))
        reg = load_registration(registration_path(settings), platform.server_name)
        lock = ProcessLock(
            roomsbot_dir(settings.data_dir) / "roomsbot.lock",
            what=f"a rooms bot on {settings.data_dir}",
        )
        run = ServiceRun(settings, self.name, lock).acquire()
        try:
            from datarooms.services.openid import federation_trust, platform_revocations
            from datarooms.services.roomsbot.bot import RoomsBot

            watch = chain_url(settings, cs) if cs.watch else None
            bot = RoomsBot(
                homeserver_url=platform.homeserver_url,
                registration=reg,
                store_path=store_path(settings),
                settings=rb,
                chain_url=watch,
                chain=cs,
                federation=federation_trust(settings),
                revocations=platform_revocations(settings),
                store_target=platform.stores,
            )
            await bot.start()
        except BaseException:
            run.release()
            raise
        run.publish({"url": bot.url})
        self.bot, self._run = bot, run
        return {
            "url": bot.url,
            "user": reg.user_id,
            "chain": watch or "not watched",
            "entities": bot.store.count(),
        }


__all__ = [
    "DevchainService",
    "RoomsBotService",
    "appservice_synapse_config",
    "chain_url",
    "registration_path",
    "running_url",
    "write_appservice_registration",
]
