"""The dashboard as a platform service: HTTP server, sign-ins, devices, homeserver watch.

:class:`Dashboard` is the running dashboard (tests and embedders use it directly);
:class:`DashboardService` is what ``datarooms up`` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from datarooms._fs import ProcessLock, private_dir
from datarooms.config import DashboardSettings, Settings
from datarooms.errors import PlatformError
from datarooms.homeserver.api import NO_RETRY, MatrixApi
from datarooms.sdk.keys import TrustPolicy
from datarooms.services import scaffold
from datarooms.services.dashboard.api import build_asgi
from datarooms.services.dashboard.devices import Devices
from datarooms.services.dashboard.sessions import Sessions
from datarooms.services.platform import PlatformContext
from datarooms.services.scaffold import EmbeddedServer, ServiceRun, bind, http_url

log = logging.getLogger(__name__)

ENV_PREFIX = "DATAROOMS_DASHBOARD_"
#: How often the dashboard asks the homeserver whether it is up (seconds).
HEALTH_INTERVAL = 1.0


class Dashboard:
    """A running dashboard: its HTTP server, sessions, the users' devices."""

    def __init__(
        self,
        homeserver_url: str,
        server_name: str,
        data_dir: Path,
        *,
        config: DashboardSettings | None = None,
        trust: TrustPolicy = "cross-signed",
    ) -> None:
        self.config = config or DashboardSettings()
        self.homeserver_url = homeserver_url
        self.data_dir = data_dir
        self.sessions = Sessions(self.config.session_seconds)
        self.devices = Devices(
            homeserver_url, server_name, data_dir / "dashboard" / "devices", trust=trust
        )
        #: Whether the homeserver answered the last health check.
        self.homeserver_up = True
        self.stopping = asyncio.Event()
        self._asgi = build_asgi(self)
        self._http = EmbeddedServer(self._asgi, name="the dashboard")
        self._health: asyncio.Task[None] | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise PlatformError("the dashboard is not running")
        return http_url(self.config.host, self.port)

    def status(self) -> dict[str, Any]:
        return {"type": "status", "homeserver": "up" if self.homeserver_up else "down"}

    async def start(self) -> str:
        sock = bind(
            self.config.host,
            self.config.port,
            service="the dashboard",
            hint=f"Give it another port ({ENV_PREFIX}PORT or [dashboard] port).",
        )
        private_dir(self.data_dir / "dashboard")
        try:
            self.port = int(sock.getsockname()[1])
            await self._http.start(sock)
        except BaseException:
            sock.close()
            raise
        self._health = asyncio.create_task(self._watch(), name="dashboard-health")
        log.info("dashboard listening", extra={"url": self.url})
        return self.url

    async def stop(self) -> None:
        self.stopping.set()
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
            self._health = None
        await self._http.stop()
        await self.devices.close_all()

    async def end_user(self, user_id: str) -> None:
        """Close the user's device once none of their sessions is left."""
        if user_id not in self.sessions.users():
            await self.devices.close(user_id)

    async def _watch(self) -> None:
        """Tell every browser when the homeserver goes away and when it is back."""
        async with MatrixApi(self.homeserver_url, timeout=2.0, retry=NO_RETRY) as api:
            while True:
                try:
                    await api.versions()
                    up = True
                except Exception:
                    up = False
                if up != self.homeserver_up:
                    self.homeserver_up = up
                    log.warning("homeserver " + ("back" if up else "unreachable"))
                    for device in self.devices.all():
                        device.push(self.status())
                for user_id in {d.user_id for d in self.devices.all()} - self.sessions.users():
                    await self.devices.close(user_id)  # every session of it expired
                await asyncio.sleep(HEALTH_INTERVAL)


class DashboardService:
    """The platform service ``dashboard``."""

    name = "dashboard"

    def __init__(self, config: DashboardSettings | None = None, **overrides: Any) -> None:
        self._config = config
        self._overrides = overrides
        self.dashboard: Dashboard | None = None
        self._run: ServiceRun | None = None

    async def start(self, platform: PlatformContext) -> dict[str, Any]:
        config = self._config or platform.settings.dashboard
        if self._overrides:
            config = replace(config, **self._overrides)
            config.check()
        lock = ProcessLock(
            platform.settings.data_dir / "dashboard.lock",
            what=f"the dashboard of {platform.settings.data_dir}",
            hint="Stop it first (`datarooms down`, or Ctrl-C).",
        )
        run = ServiceRun(platform.settings, self.name, lock).acquire()
        try:
            dashboard = Dashboard(
                platform.homeserver_url,
                platform.server_name,
                platform.settings.data_dir,
                config=config,
                trust=platform.settings.trust_policy,  # type: ignore[arg-type]
            )
            url = await dashboard.start()
        except BaseException:
            run.release()
            raise
        info = {"url": url}
        run.publish(info)
        self.dashboard, self._run = dashboard, run
        return info

    async def stop(self) -> None:
        dashboard, self.dashboard = self.dashboard, None
        try:
            if dashboard is not None:
                await dashboard.stop()
        finally:
            run, self._run = self._run, None
            if run is not None:
                run.release()


def running_url(settings: Settings) -> str | None:
    """The URL of the dashboard running on this data dir, if one is."""
    return scaffold.running_url(settings, DashboardService.name)


__all__ = ["Dashboard", "DashboardService", "running_url"]
