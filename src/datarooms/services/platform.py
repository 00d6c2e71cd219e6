"""The local platform: what ``datarooms up`` starts, and how other terminals see it.

One running platform per data directory, enforced by an advisory lock on
``<data_dir>/run/up.lock`` that holds the pid of the ``up`` process. The lock
dies with the process, so a crash never leaves a stale lock behind.
``<data_dir>/run/state.json`` says what is running and where, for
``datarooms status`` and ``datarooms down``.

Services (the bots and the MCP server, added by later work) plug in through
:class:`Service`; the platform starts them in order after the homeserver and
stops them in reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from datarooms._fs import ProcessLock, atomic_write, ensure_writable_dir, harden_tree
from datarooms.account import Credentials, read_credentials, write_credentials
from datarooms.config import Settings
from datarooms.errors import (
    HomeserverError,
    NotRunningError,
    PlatformError,
)
from datarooms.homeserver.admin import override_ratelimit, register_user
from datarooms.homeserver.api import MatrixApi
from datarooms.homeserver.embedded import EmbeddedSynapse

log = logging.getLogger(__name__)

SERVICE_ACCOUNT = "datarooms"


class Service(Protocol):
    """A long-running part of the platform (a bot, the MCP server)."""

    name: str

    async def start(self, platform: PlatformContext) -> dict[str, Any]:
        """Start; return what to show the user (for example ``{"url": ...}``)."""

    async def stop(self) -> None: ...


@dataclass(frozen=True)
class PlatformContext:
    """What a service gets to work with once the homeserver is up."""

    settings: Settings
    homeserver_url: str
    service_account: Credentials
    homeserver: EmbeddedSynapse | None

    @property
    def server_name(self) -> str:
        return self.service_account.user_id.split(":", 1)[1]

    async def ensure_account(self, localpart: str, displayname: str | None = None) -> Credentials:
        """The account of a bot or agent: registered on first use, kept in
        ``<data_dir>/accounts/<localpart>.json`` (mode 0600), re-checked on later starts.

        Registration uses the embedded homeserver's shared secret, or
        ``homeserver.registration_shared_secret`` for an external Synapse.
        """
        path = self.settings.data_dir / "accounts" / f"{localpart}.json"
        stored = read_credentials(path)
        if stored is not None:
            stored = Credentials(
                self.homeserver_url,
                stored.user_id,
                stored.access_token,
                stored.device_id,
                stored.password,
            )
            creds = await _check_or_login(stored)
        else:
            secret = self.settings.homeserver.registration_shared_secret or (
                self.homeserver.registration_shared_secret if self.homeserver else ""
            )
            if not secret:
                raise PlatformError(
                    f"cannot create the account {localpart!r} on the external homeserver: "
                    "set homeserver.registration_shared_secret"
                )
            user = await register_user(
                self.homeserver_url, secret, localpart, displayname=displayname
            )
            creds = Credentials(
                self.homeserver_url, user.user_id, user.access_token, user.device_id, user.password
            )
            try:
                await override_ratelimit(
                    self.homeserver_url, self.service_account.access_token, user.user_id
                )
            except HomeserverError as exc:  # not a server admin on an external homeserver
                log.warning(
                    "could not lift rate limits for a bot account; it will be throttled",
                    extra={"user": user.user_id, "error": exc.message},
                )
        write_credentials(path, creds)
        return creds

    def device_store(self, user_id: str) -> Path:
        """Where a bot's or agent's device (session, crypto store, index) lives."""
        return device_store_dir(self.settings, user_id)


def device_store_dir(settings: Settings, user_id: str) -> Path:
    """``<data_dir>/devices/<user_id>``: one E2EE device per account on this machine."""
    return settings.data_dir / "devices" / user_id


@dataclass
class PlatformInfo:
    pid: int
    mode: str
    data_dir: str
    homeserver_url: str
    server_name: str
    service_user: str
    credentials_file: str
    started_at: float
    synapse_pid: int | None = None
    homeserver_log: str | None = None
    services: dict[str, dict[str, Any]] = field(default_factory=dict)


class PlatformLock(ProcessLock):
    """One ``datarooms up`` per data directory."""

    def __init__(self, path: Path) -> None:
        data_dir = path.parent.parent
        super().__init__(
            path,
            what=f"datarooms on {data_dir}",
            hint="Stop it with `datarooms down` or use another --data-dir.",
        )


class Platform:
    """Starts and stops everything ``datarooms up`` runs, for one data directory."""

    def __init__(
        self,
        settings: Settings,
        *,
        services: Sequence[Service] = (),
        synapse_extra_config: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.services = list(services)
        self.homeserver: EmbeddedSynapse | None = None
        self.info: PlatformInfo | None = None
        self._lock = PlatformLock(settings.run_dir / "up.lock")
        self._started: list[Service] = []
        self._synapse_extra = synapse_extra_config or {}

    @property
    def state_file(self) -> Path:
        return self.settings.run_dir / "state.json"

    async def start(self, progress: Any = None) -> PlatformInfo:
        """Start everything. On failure or cancellation, stop what was started."""
        say = progress or (lambda _msg: None)
        s = self.settings
        ensure_writable_dir(s.data_dir)
        harden_tree(s.data_dir)  # secrets, tokens and decrypted data: owner only
        self._lock.acquire()
        try:
            hs = s.homeserver
            if hs.mode == "embedded":
                say("starting the embedded homeserver (Synapse)")
                # Computed only now: it may write files (the rooms bot's registration)
                # into the data dir, which is known to be writable and ours here.
                extra = self._synapse_extra
                extra_config = extra() if callable(extra) else extra
                self.homeserver = EmbeddedSynapse(
                    s.synapse_dir,
                    server_name=hs.server_name,
                    host=hs.host,
                    port=hs.port,
                    max_upload_size=hs.max_upload_size,
                    start_timeout=hs.start_timeout,
                    extra_config=extra_config,
                )
                await self.homeserver.start()
                url = self.homeserver.base_url
            else:
                url = hs.base_url
                say(f"checking the external homeserver at {url}")
                async with MatrixApi(url) as http:
                    await http.versions()
            say("preparing the service account")
            creds = await self._ensure_service_account(url)
            ctx = PlatformContext(s, url, creds, self.homeserver)
            info = PlatformInfo(
                pid=os.getpid(),
                mode=hs.mode,
                data_dir=str(s.data_dir.absolute()),
                homeserver_url=url,
                server_name=hs.server_name,
                service_user=creds.user_id,
                credentials_file=str(s.credentials_file.absolute()),
                started_at=time.time(),
                synapse_pid=self.homeserver.pid if self.homeserver else None,
                homeserver_log=str(self.homeserver.log_path) if self.homeserver else None,
            )
            for service in self.services:
                say(f"starting {service.name}")
                info.services[service.name] = await service.start(ctx)
                self._started.append(service)
            self.info = info
            self._write_state(info)
            return info
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop services in reverse order, then the homeserver; release the lock."""
        for service in reversed(self._started):
            try:
                await service.stop()
            except Exception:
                log.exception("service failed to stop cleanly", extra={"service": service.name})
        self._started.clear()
        if self.homeserver is not None:
            await self.homeserver.stop()
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        self._lock.release()

    async def _ensure_service_account(self, url: str) -> Credentials:
        s = self.settings
        if s.homeserver.mode == "external":
            from datarooms.account import resolve_credentials

            creds = resolve_credentials(s)
            return await _check_or_login(creds)
        stored = read_credentials(s.credentials_file)
        if stored is not None and stored.homeserver_url != url:
            stored = Credentials(
                homeserver_url=url,
                user_id=stored.user_id,
                access_token=stored.access_token,
                device_id=stored.device_id,
                password=stored.password,
            )
        if stored is None:
            assert self.homeserver is not None
            user = await register_user(
                url,
                self.homeserver.registration_shared_secret,
                SERVICE_ACCOUNT,
                admin=True,
                displayname="datarooms service",
            )
            stored = Credentials(
                url, user.user_id, user.access_token, user.device_id, user.password
            )
            await override_ratelimit(url, user.access_token, user.user_id)
        else:
            stored = await _check_or_login(stored)
        write_credentials(s.credentials_file, stored)
        return stored

    def _write_state(self, info: PlatformInfo) -> None:
        atomic_write(self.state_file, json.dumps(asdict(info), indent=2))


async def _check_or_login(creds: Credentials) -> Credentials:
    """Verify a stored token with whoami; log in again with the password if it expired."""
    if creds.access_token:
        try:
            async with MatrixApi(creds.homeserver_url, creds.access_token) as http:
                who = await http.whoami()
            return Credentials(
                creds.homeserver_url,
                who["user_id"],
                creds.access_token,
                who.get("device_id", creds.device_id),
                creds.password,
            )
        except HomeserverError as exc:
            if exc.errcode != "M_UNKNOWN_TOKEN" or not creds.password:
                raise
    if not creds.password:
        raise PlatformError(f"no usable access token or password for {creds.user_id}")
    async with MatrixApi(creds.homeserver_url) as http:
        res = await http.login_password(creds.user_id, creds.password, device_id=creds.device_id)
    return Credentials(
        creds.homeserver_url, res["user_id"], res["access_token"], res["device_id"], creds.password
    )


@dataclass
class PlatformStatus:
    running: bool
    pid: int | None
    info: dict[str, Any] | None
    homeserver_healthy: bool | None


async def platform_status(settings: Settings) -> PlatformStatus:
    lock = settings.run_dir / "up.lock"
    pid = PlatformLock.holder(lock)
    info: dict[str, Any] | None = None
    with contextlib.suppress(OSError, ValueError):
        info = json.loads((settings.run_dir / "state.json").read_text())
    if pid is None:
        return PlatformStatus(False, None, None, None)
    healthy: bool | None = None
    if info:
        async with MatrixApi(info["homeserver_url"], timeout=3) as http:
            try:
                await http.versions()
                healthy = True
            except HomeserverError:
                healthy = False
    return PlatformStatus(True, pid, info, healthy)


def live_homeserver_url(settings: Settings) -> str:
    """The homeserver URL of the platform running on this data dir, else the configured one."""
    if PlatformLock.holder(settings.run_dir / "up.lock") is not None:
        with contextlib.suppress(OSError, ValueError, KeyError):
            return str(json.loads((settings.run_dir / "state.json").read_text())["homeserver_url"])
    return settings.homeserver.base_url


async def request_stop(settings: Settings, timeout: float = 30.0) -> int:
    """Ask the ``up`` process for this data dir to stop, and wait until it has."""
    lock = settings.run_dir / "up.lock"
    pid = PlatformLock.holder(lock)
    if pid is None:
        raise NotRunningError(f"datarooms is not running on {settings.data_dir}")
    if pid <= 0:
        raise PlatformError(f"datarooms is running on {settings.data_dir} but its pid is unknown")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        raise NotRunningError(f"datarooms (pid {pid}) is no longer running") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if PlatformLock.holder(lock) is None:
            return pid
        await asyncio.sleep(0.1)
    raise PlatformError(f"datarooms (pid {pid}) did not stop within {timeout:.0f} s")


__all__ = [
    "Platform",
    "PlatformContext",
    "PlatformInfo",
    "PlatformLock",
    "PlatformStatus",
    "Service",
    "live_homeserver_url",
    "platform_status",
    "request_stop",
]
