"""The automation service: its own account and E2EE device, the webhook HTTP server,
and the deliverer that posts the outbox into rooms. ``datarooms up`` runs it.

:class:`AutomationBot` is the running service around an opened device (tests and
embedders use it directly); :class:`AutomationService` is the platform service.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from datarooms._db import SQLITE, StoreTarget
from datarooms._fs import ProcessLock
from datarooms.config import AutomationSettings, Settings
from datarooms.errors import DataroomsError, PlatformError
from datarooms.ids import server_of
from datarooms.sdk.automation import Deliverer, HookOutbox, HookRegistry, OutboxRow
from datarooms.sdk.automation.alerts import AlertWatcher
from datarooms.sdk.automation.forward import Notifier
from datarooms.sdk.automation.moderation import Moderator
from datarooms.sdk.automation.registry import hook_url, registry_path
from datarooms.sdk.client import DataroomsClient
from datarooms.sdk.hooks import MembershipChanged, Subscription
from datarooms.services import scaffold
from datarooms.services.automation.api import build_asgi
from datarooms.services.automation.metrics import Metrics
from datarooms.services.platform import PlatformContext
from datarooms.services.scaffold import BotService, EmbeddedServer, ServiceRun, bind, http_url

log = logging.getLogger(__name__)

NAME = "automation"


def outbox_path(settings: Settings) -> Path:
    return settings.automation_dir / "outbox.db"


class AutomationBot:
    """A running automation service around an opened device."""

    def __init__(
        self,
        client: DataroomsClient,
        registry: HookRegistry,
        outbox: HookOutbox,
        *,
        config: AutomationSettings | None = None,
        own_client: bool = False,
        forward_db: Path | None = None,
        stores: StoreTarget = SQLITE,
    ) -> None:
        self.client = client
        self.registry = registry
        self.outbox = outbox
        self.config = config or AutomationSettings()
        self.metrics = Metrics()
        self.metrics.watch(
            lambda: self.outbox.counts()["pending"], lambda: self.outbox.counts()["failed"]
        )
        self.deliverer = Deliverer(client, outbox, on_sent=self._sent)
        #: The alert rules of the rooms the bot is in, run on their telemetry.
        #: Notifications out of Matrix (docs/automation.md, "Notifications out").
        self.notifier = Notifier(
            client,
            forward_db or outbox.path.with_name("forward.db"),
            target=stores,
            max_attempts=self.config.notify_attempts,
        )
        self.alerts = AlertWatcher(client, on_alert=self.notifier.notify)
        #: Policy lists and flood control of the rooms that subscribe (docs/automation.md).
        self.moderator = Moderator(client)
        self.app: FastAPI
        self.app, self._asgi = build_asgi(
            registry,
            outbox,
            self.metrics,
            user_id=client.user_id,
            wake=self.deliverer.wake,
            max_body_bytes=self.config.max_body_bytes,
            rate_per_hook=self.config.rate_per_hook,
            burst=self.config.burst,
            replay_window=self.config.replay_window_seconds,
        )
        self._own_client = own_client
        self._http = EmbeddedServer(self._asgi, name="the automation service")
        self._invites: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._invite_hook: Subscription | None = None
        self._join_task: asyncio.Task[None] | None = None
        self._joins: set[asyncio.Task[None]] = set()
        self._watched: set[str] = set()
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise PlatformError("the automation service is not running")
        return http_url(self.config.host, self.port)

    def _sent(self, row: OutboxRow, seconds: float) -> None:
        self.metrics.delivered.labels(row.kind).inc()
        self.metrics.delivery_seconds.observe(seconds)

    async def start(self) -> str:
        sock = bind(
            self.config.host,
            self.config.port,
            service="the automation service",
            hint="Give it another port (DATAROOMS_AUTOMATION_PORT or [automation] port).",
        )
        try:
            self.port = int(sock.getsockname()[1])
            self.client.start_sync()
            self.deliverer.start()
            self.alerts.start()
            self.notifier.start()
            self.moderator.start()
            await self._http.start(sock)
        except BaseException:
            sock.close()
            await self.stop()
            raise
        for room_id in self.client.joined_rooms():
            self._watch(room_id)
        self._invite_hook = self.client.hooks.on(MembershipChanged, self._on_membership)
        if self.config.auto_join:
            self._join_task = asyncio.create_task(self._auto_join(), name="automation-join")
        log.info("automation service listening", extra={"url": self.url})
        return self.url

    async def stop(self) -> None:
        if self._invite_hook is not None:
            self._invite_hook.cancel()
            self._invite_hook = None
        tasks = [t for t in (self._join_task, *self._joins) if t is not None]
        self._join_task = None
        for t in tasks:
            t.cancel()
        if tasks:
            # A join under way may outlive its cancellation (it waits on sync and on
            # key sharing); it is not waited for past 5 s.
            await asyncio.wait(tasks, timeout=5)
        await self._http.stop()
        await self.alerts.stop()
        await self.moderator.stop()
        await self.notifier.stop()
        await self.deliverer.stop()
        if self._own_client:
            await self.client.close()
        else:
            await self.client.stop_sync()

    def _on_membership(self, change: MembershipChanged) -> None:
        if change.own and change.membership == "invite" and self.config.auto_join:
            self._invites.put_nowait((change.room_id, change.sender))
        elif change.own and change.membership == "join":
            self._watch(change.room_id)

    def _watch(self, room_id: str) -> None:
        """Run the room's alert rules (loaded in a task of its own)."""
        if room_id in self._watched:
            return
        self._watched.add(room_id)

        async def watch() -> None:
            try:
                await self.alerts.watch(room_id)
            except DataroomsError as exc:
                log.warning(
                    "could not load a room's alert rules",
                    extra={"room": room_id, "error": exc.message},
                )

        task = asyncio.create_task(watch(), name="automation-watch")
        self._joins.add(task)
        task.add_done_callback(self._joins.discard)

    async def _auto_join(self) -> None:
        """Join rooms a user of our own homeserver invites us to (hooks name rooms;
        the deliverer waits, with its error visible, until the bot is in)."""
        own_server = server_of(self.client.user_id)
        for room_id, inviter in self.client.invites().items():
            self._invites.put_nowait((room_id, inviter))
        tried: set[str] = set()
        while True:
            room_id, inviter = await self._invites.get()
            if room_id in tried or self.client.membership(room_id) != "invite":
                continue
            tried.add(room_id)
            if ":" not in inviter or server_of(inviter) != own_server:
                log.info("ignoring an invite from another server", extra={"room": room_id})
                continue
            join = asyncio.create_task(self._join(room_id, inviter), name="automation-join-one")
            self._joins.add(join)
            join.add_done_callback(self._joins.discard)

    async def _join(self, room_id: str, inviter: str) -> None:
        try:
            await self.client.rooms.join(room_id)
            log.info("joined a room on invite", extra={"room": room_id, "inviter": inviter})
            self.deliverer.wake()
        except DataroomsError as exc:
            log.warning(
                "could not join a room on invite", extra={"room": room_id, "error": exc.message}
            )


class AutomationService(BotService["AutomationBot"]):
    """The platform service ``automation``."""

    name = NAME

    def __init__(self, config: AutomationSettings | None = None, **overrides: Any) -> None:
        self._config = config
        self._overrides = overrides
        super().__init__()

    async def start(self, platform: PlatformContext) -> dict[str, Any]:
        config = self._config or platform.settings.automation
        if self._overrides:
            config = replace(config, **self._overrides)
            config.check()
        creds = await platform.ensure_account(config.localpart, displayname="datarooms automation")
        store = platform.device_store(creds.user_id)
        lock = ProcessLock(
            platform.settings.automation_dir / "service.lock",
            what=f"the automation service of {platform.settings.data_dir}",
            hint="Stop it first (`datarooms down`, or Ctrl-C).",
        )
        run = ServiceRun(platform.settings, self.name, lock).acquire()
        registry = outbox = None
        try:
            stores = platform.stores
            registry = HookRegistry(registry_path(platform.settings), stores)
            outbox = HookOutbox(outbox_path(platform.settings), stores)
            client = await DataroomsClient.open(creds, store, device_name="datarooms automation")
            try:
                bot = AutomationBot(
                    client, registry, outbox, config=config, own_client=True, stores=stores
                )
                url = await bot.start()
            except BaseException:
                await client.close()
                raise
        except BaseException:
            for db in (registry, outbox):
                if db is not None:
                    db.close()
            run.release()
            raise
        info = {"url": url, "user": creds.user_id, "hooks": f"{url}/hooks/<hook_id>"}
        run.publish(info)
        self.bot, self._run = bot, run
        return info

    async def stop(self) -> None:
        bot = self.bot
        try:
            await super().stop()
        finally:
            if bot is not None:
                bot.registry.close()
                bot.outbox.close()


def run_file(settings: Settings) -> Path:
    return scaffold.run_file(settings, NAME)


def running_url(settings: Settings) -> str | None:
    return settings.running_url(NAME)


__all__ = [
    "AutomationBot",
    "AutomationService",
    "hook_url",
    "outbox_path",
    "registry_path",
    "running_url",
]
