"""The claims service as a long-running service: its account, device, sync loop, HTTP
server, and (when ``[claims] anchor_interval_seconds`` is set) the periodic anchoring
of the audit trail of every room it is in.

:class:`ClaimsService` is what ``datarooms up`` runs; :class:`ClaimsBot` is the running
bot around an already opened device (tests and embedders use it directly).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI

from datarooms._fs import ProcessLock
from datarooms.config import ClaimsSettings
from datarooms.errors import DataroomsError, PlatformError
from datarooms.ids import server_of
from datarooms.sdk.audit import AnchorChain
from datarooms.sdk.client import DataroomsClient
from datarooms.sdk.ucan import CLAIMS_BOT, RevocationStore
from datarooms.services.autojoin import AutoJoin
from datarooms.services.claims.api import build_asgi
from datarooms.services.claims.handler import ClaimsHandler
from datarooms.services.openid import (
    FederationTrust,
    bot_verifier,
    federation_trust,
    platform_revocations,
)
from datarooms.services.platform import PlatformContext
from datarooms.services.scaffold import BotService, EmbeddedServer, ServiceRun, bind, http_url

log = logging.getLogger(__name__)

ENV_PREFIX = "DATAROOMS_CLAIMS_"


class ClaimsBot:
    """A running claims bot around an opened device: sync loop, handler, HTTP server."""

    def __init__(
        self,
        client: DataroomsClient,
        *,
        config: ClaimsSettings | None = None,
        homeservers: Mapping[str, str] | None = None,
        own_client: bool = False,
        federation: FederationTrust | None = None,
        chain: AnchorChain | None = None,
        revocations: RevocationStore | None = None,
    ) -> None:
        self.client = client
        self.config = config or ClaimsSettings()
        self.server_name = server_of(client.user_id)
        self.verifier = bot_verifier(
            client,
            CLAIMS_BOT,
            homeservers={**self.config.homeservers, **(homeservers or {})},
            federation=federation,
            cache_seconds=self.config.token_cache_seconds,
            revocations=revocations,
        )
        self.handler = ClaimsHandler(client)
        self.app: FastAPI
        self.app, self._asgi = build_asgi(
            self.handler, self.verifier, max_body_bytes=self.config.max_body_bytes
        )
        self._own_client = own_client
        self._chain = chain
        self._http = EmbeddedServer(self._asgi, name="the claims service")
        self._tasks: list[asyncio.Task[None]] = []
        self._auto_join = AutoJoin(
            client,
            self.verifier.trusted,
            lambda room_id, _inviter: client.rooms.join(room_id),
            name="claims",
        )
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise PlatformError("the claims service is not running")
        return http_url(self.config.host, self.port)

    async def start(self) -> str:
        sock = bind(
            self.config.host,
            self.config.port,
            service="the claims service",
            hint=f"Give it another port ({ENV_PREFIX}PORT or [claims] port).",
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
        if self._chain is not None and self.config.anchor_interval_seconds > 0:
            self._tasks.append(asyncio.create_task(self._anchor_loop(), name="claims-anchor"))
        log.info(
            "claims service listening", extra={"url": self.url, "user_id": self.client.user_id}
        )
        return self.url

    async def stop(self) -> None:
        await self._auto_join.stop()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self._http.stop()
        await self.verifier.close()
        if self._own_client:
            await self.client.close()
        else:
            await self.client.stop_sync()

    async def _anchor_loop(self) -> None:
        assert self._chain is not None
        while True:
            await asyncio.sleep(self.config.anchor_interval_seconds)
            for room_id in self.client.joined_rooms():
                try:
                    await self.client.audit.anchor(room_id, self._chain)
                except DataroomsError as exc:
                    log.warning("anchoring failed", extra={"room": room_id, "error": exc.message})


class ClaimsService(BotService["ClaimsBot"]):
    """The platform service ``claims``."""

    name = "claims"

    def __init__(self, config: ClaimsSettings | None = None) -> None:
        self._config = config
        super().__init__()

    async def start(self, platform: PlatformContext) -> dict[str, Any]:
        from datarooms.chain.anchor import ChainAnchor
        from datarooms.services.devchain import chain_url

        config = self._config or platform.settings.claims
        creds = await platform.ensure_account(config.localpart, displayname="datarooms claims bot")
        store = platform.device_store(creds.user_id)
        lock = ProcessLock(
            store / "claims.lock",
            what=f"the claims service with the device in {store}",
            hint="Stop it first (`datarooms down`, or Ctrl-C).",
        )
        run = ServiceRun(platform.settings, self.name, lock).acquire()
        try:
            client = await DataroomsClient.open(creds, store, device_name="datarooms claims bot")
            try:
                bot = ClaimsBot(
                    client,
                    config=config,
                    homeservers={server_of(creds.user_id): platform.homeserver_url},
                    own_client=True,
                    federation=federation_trust(platform.settings),
                    revocations=platform_revocations(platform.settings),
                    chain=ChainAnchor(chain_url(platform.settings)),
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


__all__ = ["ClaimsBot", "ClaimsService"]
