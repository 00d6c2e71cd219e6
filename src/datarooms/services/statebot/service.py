"""The state bot as a long-running service: its account, device, sync loop and HTTP server.

:class:`StateBotService` is what ``datarooms up`` (and ``datarooms statebot``)
runs: it gets the bot's account from the platform, opens the bot's E2EE device
(a :class:`DataroomsClient` with its own store), starts its sync loop and serves
the REST API with uvicorn inside the same event loop.

:class:`StateBot` is the running bot around an already opened device; tests and
embedders use it directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from datarooms._fs import ProcessLock
from datarooms.config import Settings, StateBotSettings, load_section
from datarooms.errors import (
    DataroomsError,
    PlatformError,
)
from datarooms.ids import server_of
from datarooms.sdk.client import DataroomsClient
from datarooms.sdk.ucan import STATE_BOT, RevocationStore
from datarooms.services import scaffold
from datarooms.services.autojoin import AutoJoin
from datarooms.services.openid import (
    Caller,
    FederationTrust,
    bot_verifier,
    federation_trust,
    platform_revocations,
)
from datarooms.services.platform import PlatformContext
from datarooms.services.scaffold import BotService, EmbeddedServer, ServiceRun, bind, http_url
from datarooms.services.statebot.api import build_asgi
from datarooms.services.statebot.handler import StateHandler
from datarooms.services.statebot.metrics import Metrics

log = logging.getLogger(__name__)

ENV_PREFIX = "DATAROOMS_STATEBOT_"
DEFAULT_PORT = 8010


#: The settings of the state bot: the ``[statebot]`` section of the platform's settings
#: (``settings.statebot``), read from the config file and ``DATAROOMS_STATEBOT_<FIELD>``
#: by :mod:`datarooms.config`. ``homeservers`` is a table in the file and a JSON object in
#: the environment, e.g. ``DATAROOMS_STATEBOT_HOMESERVERS='{"other.org": "https://..."}'``.
StateBotConfig = StateBotSettings


def load_config(
    settings: Settings | None = None, env: Mapping[str, str] | None = None
) -> StateBotSettings:
    """``settings.statebot``; without settings, ``[statebot]`` from the environment alone."""
    if settings is not None:
        return settings.statebot
    return load_section(StateBotSettings, "statebot", env=env)


class StateBot:
    """A running state bot around an opened device: sync loop, handler, HTTP server."""

    def __init__(
        self,
        client: DataroomsClient,
        *,
        config: StateBotConfig | None = None,
        homeservers: Mapping[str, str] | None = None,
        own_client: bool = False,
        federation: FederationTrust | None = None,
        revocations: RevocationStore | None = None,
    ) -> None:
        self.client = client
        self.config = config or StateBotConfig()
        self.server_name = server_of(client.user_id)
        self.metrics = Metrics()
        self.verifier = bot_verifier(
            client,
            STATE_BOT,
            homeservers={**self.config.homeservers, **(homeservers or {})},
            federation=federation,
            cache_seconds=self.config.token_cache_seconds,
            revocations=revocations,
            on_result=lambda result: self.metrics.auth.labels(result).inc(),
        )
        self.handler = StateHandler(client, trusted_servers=self.verifier.trusted)
        self.metrics.watch(
            lambda: len(self.handler.joined_rooms()),
            lambda: self.verifier.cache_size,
            lambda: self.client.rooms.usage(),
        )
        self.app: FastAPI
        self.app, self._asgi = build_asgi(
            self.handler,
            self.verifier,
            self.metrics,
            synced=lambda: client.index.sync_token is not None,
            max_body_bytes=self.config.max_body_bytes,
        )
        self._own_client = own_client
        self._http = EmbeddedServer(self._asgi, name="the state bot")
        self._auto_join = AutoJoin(
            client,
            self.verifier.trusted,
            lambda room_id, inviter: self.handler.join(Caller(inviter), room_id),
            name="statebot",
        )
        self._review_task: asyncio.Task[None] | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise PlatformError("the state bot is not running")
        return http_url(self.config.host, self.port)

    async def start(self) -> str:
        """Start the sync loop and the HTTP server; return the bot's base URL."""
        sock = bind(
            self.config.host,
            self.config.port,
            service="the state bot",
            hint=f"Give it another port ({ENV_PREFIX}PORT, [statebot] port, or --port "
            "for `datarooms statebot`).",
        )
        try:
            self.port = int(sock.getsockname()[1])
            self.client.start_sync()
            await self._http.start(sock)
        except BaseException:
            sock.close()
            await self.stop()
            raise
        if self.config.auto_join:
            self._auto_join.start()
        if self.config.review_check_seconds > 0:
            self._review_task = asyncio.create_task(self._reviews(), name="statebot-reviews")
        log.info("state bot listening", extra={"url": self.url, "user_id": self.client.user_id})
        return self.url

    async def stop(self) -> None:
        if self._review_task is not None:
            self._review_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._review_task
            self._review_task = None
        await self._auto_join.stop()
        await self._http.stop()
        await self.verifier.close()
        await self.handler.close()
        if self._own_client:
            await self.client.close()
        else:
            await self.client.stop_sync()

    async def _reviews(self) -> None:
        """Post the access review of each room it is in whose schedule says one is due."""
        while True:
            try:
                for room_id in await self.client.reviews.run_due():
                    log.info("posted an access review", extra={"room": room_id})
            except DataroomsError as exc:
                log.warning("access reviews failed", extra={"error": exc.message})
            await asyncio.sleep(self.config.review_check_seconds)


class StateBotService(BotService["StateBot"]):
    """The platform service ``statebot``: start with :meth:`start`, stop with :meth:`stop`."""

    name = "statebot"

    def __init__(self, config: StateBotConfig | None = None, **overrides: Any) -> None:
        self._config = config
        self._overrides = overrides
        super().__init__()

    async def start(self, platform: PlatformContext) -> dict[str, Any]:
        config = self._config or platform.settings.statebot
        if self._overrides:
            config = replace(config, **self._overrides)
            config.check()
        creds = await platform.ensure_account(config.localpart, displayname="datarooms state bot")
        store = platform.device_store(creds.user_id)
        lock = ProcessLock(
            store / "statebot.lock",
            what=f"the state bot with the device in {store}",
            hint="Stop it first (`datarooms down`, or Ctrl-C).",
        )
        run = ServiceRun(platform.settings, self.name, lock).acquire()
        try:
            client = await DataroomsClient.open(creds, store, device_name="datarooms state bot")
            try:
                homeservers = {server_of(creds.user_id): platform.homeserver_url}
                bot = StateBot(
                    client,
                    config=config,
                    homeservers=homeservers,
                    own_client=True,
                    federation=federation_trust(platform.settings),
                    revocations=platform_revocations(platform.settings),
                )
                url = await bot.start()
            except BaseException:
                await client.close()
                raise
        except BaseException:
            run.release()
            raise
        info = {"url": url, "user": creds.user_id, "docs": f"{url}/docs"}
        run.publish(info)
        self.bot, self._run = bot, run
        return info


def run_file(settings: Settings) -> Path:
    """``<data_dir>/run/statebot.json``: where the running state bot listens (and its pid)."""
    return scaffold.run_file(settings, StateBotService.name)


def running_url(settings: Settings) -> str | None:
    """The URL of the state bot running on this data dir, if one is."""
    return settings.running_url(StateBotService.name)


__all__ = ["StateBot", "StateBotConfig", "StateBotService", "load_config", "running_url"]
