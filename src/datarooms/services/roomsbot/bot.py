"""The rooms bot process: appservice + REST server, entity rooms, and the chain watcher."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from datarooms._db import SQLITE, StoreTarget
from datarooms.chain.entity import (
    ENTITY_CREATED_EVENT,
    ENTITY_CREATED_QUERY,
    ChainEntity,
    parse_tx_events,
)
from datarooms.chain.rpc import CometRpc
from datarooms.chain.watcher import ChainWatcher, EntityRejected
from datarooms.config import ChainSettings, RoomsBotSettings
from datarooms.errors import HomeserverError, PlatformError, ValidationError
from datarooms.homeserver.api import MatrixApi
from datarooms.sdk.ucan import ROOMS_BOT, RevocationStore, load_or_create_principal
from datarooms.services.openid import FederationTrust, OpenIdVerifier, UcanGate
from datarooms.services.roomsbot.api import answer_alias_query, build_asgi
from datarooms.services.roomsbot.entity_rooms import EntityRooms
from datarooms.services.roomsbot.metrics import Metrics
from datarooms.services.roomsbot.registration import Registration
from datarooms.services.roomsbot.store import EntityFacts, Store
from datarooms.services.scaffold import EmbeddedServer, TokenBucket, bind

log = logging.getLogger(__name__)


class RoomsBot:
    """Everything the rooms bot runs; :meth:`start` it, :meth:`stop` it."""

    def __init__(
        self,
        *,
        homeserver_url: str,
        registration: Registration,
        store_path: Path,
        settings: RoomsBotSettings | None = None,
        chain_url: str | None = None,
        chain: ChainSettings | None = None,
        federation: FederationTrust | None = None,
        revocations: RevocationStore | None = None,
        store_target: StoreTarget = SQLITE,
    ) -> None:
        self.homeserver_url = homeserver_url.rstrip("/")
        self.registration = registration
        self.settings = settings or RoomsBotSettings()
        self.chain_settings = chain or ChainSettings()
        self.chain_url = chain_url
        self.metrics = Metrics()
        self.store = Store(store_path, store_target)
        self.http = MatrixApi(self.homeserver_url, registration.as_token, timeout=120)
        self.rooms = EntityRooms(
            self.http,
            self.store,
            server_name=registration.server_name,
            bot_user_id=registration.user_id,
            kinds=self.settings.kinds,
            concurrency=self.settings.concurrency,
            metrics=self.metrics,
            controller_ok=registration.controller_in_namespace,
        )
        self.verifier = OpenIdVerifier(
            {
                registration.server_name: self.homeserver_url,
                **self.settings.trusted_homeserver_urls,
            },
            default_server=registration.server_name,
            federation=federation,
        )
        self.verifier.ucan = UcanGate(
            load_or_create_principal(Path(store_path).parent / "ucan-service.ed25519"),
            ROOMS_BOT,
            revocations=revocations
            or RevocationStore(Path(store_path).parent / "ucan-revocations.sqlite"),
        )
        self.rpc: CometRpc | None = None
        self.watcher: ChainWatcher | None = None
        #: Chain lookups of DIDs the bot does not know yet (alias queries).
        self._lookup_rpc: CometRpc | None = None
        #: Rooms made on demand for DIDs the bot did not know: anyone can ask (the
        #: homeserver's alias lookup needs no login), so the pace is bounded.
        self.on_demand_limit = TokenBucket(
            rate=self.settings.on_demand_per_minute / 60.0, burst=self.settings.on_demand_burst
        )
        self.app, asgi = build_asgi(self)
        self._http = EmbeddedServer(asgi, name="the rooms bot")
        self.metrics.watch(lambda: self.watcher.status if self.watcher else None, self.store.count)

    @property
    def url(self) -> str:
        return self.registration.url

    async def start(self) -> None:
        """Check the appservice token, serve HTTP, then start watching the chain."""
        try:
            await self._check_token()
            await self._check_controller_namespace()
            await self.rooms.prepare()
            await self._serve()
            if self.chain_url and self.chain_settings.watch:
                self.rpc = CometRpc(self.chain_url)
                self.watcher = ChainWatcher(
                    self.rpc,
                    self.store,
                    self._on_entity,
                    on_skip=self.store.record_skip,
                    concurrency=self.settings.concurrency,
                    start_height=self.chain_settings.start_height,
                )
                self.watcher.start()
        except BaseException:
            await self.stop()
            raise
        log.info(
            "rooms bot running",
            extra={"url": self.url, "user": self.registration.user_id, "chain": self.chain_url},
        )

    async def stop(self) -> None:
        if self.watcher is not None:
            await self.watcher.stop()
            self.watcher = None
        for rpc in (self.rpc, self._lookup_rpc):
            if rpc is not None:
                await rpc.close()
        self.rpc = self._lookup_rpc = None
        await self._http.stop()
        await self.verifier.close()
        await self.http.close()
        self.store.close()

    async def _check_token(self) -> None:
        try:
            who = await self.http.whoami()
        except HomeserverError as exc:
            if exc.errcode == "M_UNKNOWN_TOKEN":
                raise PlatformError(
                    "the homeserver does not know the rooms bot's appservice token: it has "
                    f"not loaded {self.registration.path}. Add that file to Synapse's "
                    "app_service_config_files and restart the homeserver."
                ) from None
            raise
        if who.get("user_id") != self.registration.user_id:
            raise PlatformError(
                f"the appservice token belongs to {who.get('user_id')}, not to "
                f"{self.registration.user_id}: the registration and the homeserver disagree"
            )

    async def _check_controller_namespace(self) -> None:
        """Does the homeserver hold ``@did-…`` for this appservice alone? If it would let
        anyone register such a name (it has not loaded the current registration), no
        controller is invited until it does: the name is the only binding of a
        controller DID to its account."""
        if not self.registration.controllers_exclusive:
            log.warning(
                "the appservice registration does not reserve @did- users; controllers "
                "will not be invited (restart the platform to rewrite it)",
                extra={"registration": str(self.registration.path)},
            )
            return
        probe = "did-ixo-datarooms-namespace-probe"
        try:
            res = await self.http.request(
                "GET",
                "/_matrix/client/v3/register/available",
                params={"username": probe},
                auth=False,
            )
        except HomeserverError as exc:
            if exc.errcode in ("M_EXCLUSIVE", "M_USER_IN_USE"):
                return  # reserved for an appservice (this one: its registration says so)
            if exc.status == 403:
                return  # registration is closed: no one can take the name that way
            log.warning(
                "could not check that the homeserver reserves @did- users",
                extra={"error": exc.errcode or str(exc)},
            )
            return
        if isinstance(res, dict) and res.get("available") is True:
            self.registration = replace(self.registration, controllers_exclusive=False)
            self.rooms.controller_ok = self.registration.controller_in_namespace
            log.warning(
                "the homeserver lets anyone register @did- users (it has not loaded the rooms "
                "bot's current registration); controllers will not be invited",
                extra={"registration": str(self.registration.path)},
            )

    async def _serve(self) -> None:
        sock = bind(
            self.settings.host,
            self.registration.port,
            service="the rooms bot",
            hint="It listens on the URL of its appservice registration. Stop the other "
            "program, or set [roomsbot] port (DATAROOMS_ROOMSBOT_PORT; 0 picks a free port) "
            "and restart the platform.",
        )
        await self._http.start(sock)

    # -- handlers ------------------------------------------------------------------

    async def chain_entity(self, did: str) -> ChainEntity | None:
        """The entity ``did`` as the chain registered it, or None if the chain has none
        (or the bot has no chain to ask). Network errors raise."""
        if not self.chain_url:
            return None
        if "'" in did or "\\" in did:  # not in a DID; never inside a query
            return None
        if self._lookup_rpc is None:
            self._lookup_rpc = CometRpc(self.chain_url)
        query = f"{ENTITY_CREATED_QUERY} AND {ENTITY_CREATED_EVENT}.entity CONTAINS '{did}'"
        txs, _ = await self._lookup_rpc.tx_search(query, per_page=20)
        for tx in txs:
            if tx.code != 0:
                continue
            for entity in parse_tx_events(tx.height, tx.hash, tx.events).entities:
                if entity.did == did:
                    return entity
        return None

    @staticmethod
    def facts_of(entity: ChainEntity) -> EntityFacts:
        return EntityFacts(
            entity.did,
            entity.type,
            entity.controllers,
            "chain",
            entity.chain_id,
            entity.height,
            entity.tx_hash,
        )

    async def _on_entity(self, entity: ChainEntity) -> None:
        facts = self.facts_of(entity)
        try:
            await self.rooms.ensure(facts)
        except ValidationError as exc:
            raise EntityRejected(exc.message) from None
        except HomeserverError as exc:
            if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
                raise EntityRejected(f"the homeserver refused its rooms: {exc.message}") from None
            raise

    async def alias_query(self, alias: str) -> dict[str, Any]:
        return await answer_alias_query(self, alias)

    def handle_events(self, events: list[dict[str, Any]]) -> None:
        """Events the homeserver pushed: the bot keeps no state from them (it learns
        what it needs from the chain and from createRoom), so it only counts them."""
        for event in events:
            if (
                event.get("type") == "m.room.member"
                and event.get("state_key") == self.registration.user_id
                and (event.get("content") or {}).get("membership") == "invite"
            ):
                log.info(
                    "the rooms bot was invited to a room it does not manage; ignoring it",
                    extra={"room": event.get("room_id"), "by": event.get("sender")},
                )
