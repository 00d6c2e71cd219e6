"""The local platform: what ``datarooms up`` starts, and how other terminals see it.

One running platform per data directory, enforced by an advisory lock on
``<data_dir>/run/up.lock`` that holds the pid of the ``up`` process. The lock
dies with the process, so a crash never leaves a stale lock behind.
``<data_dir>/run/state.json`` says what is running and where, for
``datarooms status`` and ``datarooms down``.

Services (the bots, the devchain and the MCP server) plug in through
:class:`Service`. :class:`Platform` starts them concurrently, each as soon as
what it needs is up (the homeserver, another service), and stops them in the
reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from datarooms._fs import ProcessLock, atomic_write, ensure_writable_dir, harden_tree
from datarooms.account import Credentials, read_credentials, write_credentials
from datarooms.config import Settings
from datarooms.errors import (
    HomeserverError,
    NotRunningError,
    PlatformError,
)

if TYPE_CHECKING:
    # Imported where used: the CLI imports this module for the run files, and
    # must not pay for the HTTP client and the homeserver's dependencies.
    from datarooms._db import StoreTarget
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
    #: While the platform starts, the embedded homeserver's service account may still
    #: be being registered or checked when a service starts (so that, on a first
    #: start, the bots' accounts are registered alongside it): ``service_account``
    #: then holds only its user id, and this resolves to the checked account.
    service_account_ready: asyncio.Future[Credentials] | None = field(
        default=None, compare=False, repr=False
    )

    @property
    def server_name(self) -> str:
        return self.service_account.user_id.split(":", 1)[1]

    @property
    def stores(self) -> StoreTarget:
        """Where services keep their stores (SQLite files, or the scale profile's
        PostgreSQL: services/stores.py)."""
        from datarooms.services.stores import store_target

        return store_target(self.settings, self.homeserver)

    async def checked_service_account(self) -> Credentials:
        """The service account, once the platform has checked (or registered) it."""
        if self.service_account_ready is not None:
            return await asyncio.shield(self.service_account_ready)
        return self.service_account

    async def ensure_account(self, localpart: str, displayname: str | None = None) -> Credentials:
        """The account of a bot or agent: registered on first use, kept in
        ``<data_dir>/accounts/<localpart>.json`` (mode 0600), re-checked on later starts.

        Registration uses the embedded homeserver's shared secret, or
        ``homeserver.registration_shared_secret`` for an external Synapse.
        """
        from datarooms.homeserver.admin import override_ratelimit, register_user

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
                admin = await self.checked_service_account()
                await override_ratelimit(self.homeserver_url, admin.access_token, user.user_id)
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


def _federates_with(s: Settings) -> str:
    allowed = s.federation.allowed
    return "any server" if allowed is None else ", ".join(allowed)


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
    #: Where peers reach the federation API, when federation is on.
    federation_url: str | None = None
    #: The allow-list, as said to users: "any server" or the server names.
    federates_with: str | None = None
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: The scale profile: each process of the homeserver (PostgreSQL, Redis, Synapse's
    #: main and workers, nginx) with its role, pid and address.
    homeserver_processes: dict[str, dict[str, Any]] | None = None


class PlatformLock(ProcessLock):
    """One ``datarooms up`` per data directory."""

    def __init__(self, path: Path) -> None:
        data_dir = path.parent.parent
        super().__init__(
            path,
            what=f"datarooms on {data_dir}",
            hint="Stop it with `datarooms down` or use another --data-dir.",
        )


#: The name under which services name the homeserver (and the checked service
#: account) as something they need started first.
HOMESERVER = "homeserver"


class Platform:
    """Starts and stops everything ``datarooms up`` runs, for one data directory.

    Start-up is concurrent: the homeserver's process is spawned first; while it
    boots, the services are imported (``services`` may be a function that imports
    and builds them) and those that do not need the homeserver start; each other
    service starts as soon as what it ``requires`` is up. ``requires`` maps a
    service's name to the names it needs first (:data:`HOMESERVER` for the
    homeserver and the service account); a service it does not name needs only
    the homeserver. Services stop in the reverse of the order they finished starting.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        services: Sequence[Service] | Callable[[], Sequence[Service]] = (),
        synapse_extra_config: dict[str, Any] | Callable[[], dict[str, Any]] | None = None,
        requires: Mapping[str, Collection[str]] | None = None,
    ) -> None:
        self.settings = settings
        self._services_factory = services if callable(services) else None
        self.services: list[Service] = [] if callable(services) else list(services)
        self.homeserver: EmbeddedSynapse | None = None
        self.info: PlatformInfo | None = None
        self._lock = PlatformLock(settings.run_dir / "up.lock")
        self._started: list[Service] = []
        self._synapse_extra = synapse_extra_config or {}
        self._requires = dict(requires or {})
        #: Seconds each part took to start, for the log and for bench/startup.py.
        self.timings: dict[str, float] = {}
        self._waking: asyncio.Task[None] | None = None

    @property
    def state_file(self) -> Path:
        return self.settings.run_dir / "state.json"

    async def start(self, progress: Any = None) -> PlatformInfo:
        """Start everything. On failure or cancellation, stop what was started."""
        say = progress or (lambda _msg: None)
        s = self.settings
        began = time.monotonic()
        ensure_writable_dir(s.data_dir)
        harden_tree(s.data_dir)  # secrets, tokens and decrypted data: owner only
        self._lock.acquire()
        tasks: list[asyncio.Task[Any]] = []
        try:
            # A run killed before it could clean up leaves its state behind: while we
            # start, `datarooms status` must say "starting", not show the old run.
            with contextlib.suppress(FileNotFoundError):
                self.state_file.unlink()
            hs = s.homeserver
            url = hs.base_url
            if hs.mode == "embedded":
                say("starting the embedded homeserver (Synapse)")
                url = self._embedded_homeserver().base_url
            loop = asyncio.get_running_loop()
            healthy: asyncio.Future[None] = loop.create_future()
            account: asyncio.Future[Credentials] = loop.create_future()
            homeserver = asyncio.create_task(self._start_homeserver(url, say, healthy, account))
            tasks.append(homeserver)
            # Let it spawn Synapse before we spend CPU importing the services.
            await asyncio.sleep(0)
            if self._services_factory is not None:
                t = time.monotonic()
                self.services = list(self._services_factory())
                self.timings["import services"] = time.monotonic() - t
            # Before the service account is checked: its user id, and a future of it.
            stored = read_credentials(s.credentials_file) if hs.mode == "embedded" else None
            stand_in = Credentials(url, stored.user_id if stored else "")
            if hs.mode == "embedded" and not stand_in.user_id:
                stand_in = Credentials(url, f"@{SERVICE_ACCOUNT}:{hs.server_name}")
            early = PlatformContext(s, url, stand_in, self.homeserver, account)
            ready: dict[str, asyncio.Future[None]] = {
                svc.name: loop.create_future() for svc in self.services
            }
            results: dict[str, dict[str, Any]] = {}

            async def start_one(service: Service) -> None:
                needs = self._requires.get(service.name, (HOMESERVER,))
                ctx = early
                for name in needs:
                    if name == HOMESERVER and hs.mode == "embedded":
                        await healthy  # the account is checked meanwhile: ctx waits for it
                    elif name == HOMESERVER:
                        ctx = PlatformContext(s, url, await account, self.homeserver)
                    elif name in ready:
                        await ready[name]
                say(f"starting {service.name}")
                t = time.monotonic()
                results[service.name] = await service.start(ctx)
                self._started.append(service)
                took = self.timings[service.name] = time.monotonic() - t
                log.info(
                    "service started",
                    extra={
                        "service": service.name,
                        "seconds": round(took, 2),
                    },
                )
                ready[service.name].set_result(None)

            tasks += [asyncio.create_task(start_one(svc)) for svc in self.services]
            await _all_or_nothing(tasks)
            creds = account.result()
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
                federation_url=self.homeserver.federation_url if self.homeserver else None,
                federates_with=_federates_with(s) if s.federation.enabled else None,
                services={svc.name: results[svc.name] for svc in self.services},
                homeserver_processes=_processes(self.homeserver),
            )
            self.info = info
            self._write_state(info)
            self.timings["total"] = time.monotonic() - began
            log.info(
                "datarooms started",
                extra={k: round(v, 2) for k, v in self.timings.items()},
            )
            return info
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.stop()
            raise

    def _embedded_homeserver(self) -> EmbeddedSynapse:
        from datarooms.homeserver.embedded import EmbeddedSynapse
        from datarooms.homeserver.federation import listener_for

        s, hs = self.settings, self.settings.homeserver
        # Computed only now: it may write files (the rooms bot's registration)
        # into the data dir, which is known to be writable and ours here.
        extra = self._synapse_extra
        t = time.monotonic()
        extra_config = extra() if callable(extra) else extra
        self.timings["homeserver config"] = time.monotonic() - t
        common: dict[str, Any] = {
            "server_name": hs.server_name,
            "host": hs.host,
            "port": hs.port,
            "max_upload_size": hs.max_upload_size,
            "start_timeout": hs.start_timeout,
            "extra_config": extra_config,
        }
        if hs.profile == "scale":
            from datarooms.homeserver.scale import scale_homeserver

            self.homeserver = scale_homeserver(
                s,
                max_upload_size=hs.max_upload_size,
                start_timeout=hs.start_timeout,
                extra_config=extra_config,
            )
        else:
            self.homeserver = EmbeddedSynapse(s.synapse_dir, **common, federation=listener_for(s))
        return self.homeserver

    async def _start_homeserver(
        self,
        url: str,
        say: Callable[[str], None],
        healthy: asyncio.Future[None],
        account: asyncio.Future[Credentials],
    ) -> None:
        """Start (or check) the homeserver, then check the service account."""
        t = time.monotonic()
        try:
            if self.homeserver is not None:
                await self.homeserver.start()
            else:
                from datarooms.homeserver.api import MatrixApi

                say(f"checking the external homeserver at {url}")
                async with MatrixApi(url) as http:
                    await http.versions()
            self.timings[HOMESERVER] = time.monotonic() - t
            healthy.set_result(None)
            say("preparing the service account")
            t = time.monotonic()
            creds = await self._ensure_service_account(url)
            account.set_result(creds)
            self.timings["service account"] = time.monotonic() - t
            if self.homeserver is not None and self.homeserver.federation is not None:
                # Peers queued events for us while we were down: have them send now.
                self._waking = asyncio.create_task(self._wake_peers(creds))
        except Exception as exc:
            for fut in (healthy, account):
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()  # retrieved here: this task reports the error
            raise
        except BaseException:
            healthy.cancel()
            account.cancel()
            raise

    async def _wake_peers(self, creds: Credentials) -> None:
        from datarooms.homeserver.federation import wake_peers

        try:
            await wake_peers(
                creds.homeserver_url, creds.access_token, self.settings.homeserver.server_name
            )
        except Exception as exc:  # a courtesy to peers: never fails the platform
            log.warning("could not tell peers we are back", extra={"error": str(exc)})

    async def stop(self) -> None:
        """Stop services in reverse order, then the homeserver; release the lock."""
        if self._waking is not None:
            self._waking.cancel()
            await asyncio.gather(self._waking, return_exceptions=True)
            self._waking = None
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
        from datarooms.homeserver.admin import override_ratelimit, register_user

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
        from datarooms.services.prometheus import scrape_config

        # The scrape config first: state.json is what scripts wait on.
        atomic_write(self.settings.run_dir / "prometheus.yml", scrape_config(asdict(info)))
        atomic_write(self.state_file, json.dumps(asdict(info), indent=2))


def _processes(homeserver: EmbeddedSynapse | None) -> dict[str, dict[str, Any]] | None:
    processes = getattr(homeserver, "processes", None)
    return processes() if callable(processes) else None


async def _all_or_nothing(tasks: list[asyncio.Task[Any]]) -> None:
    """Wait for every task; on the first failure cancel the others and raise it."""
    pending = set(tasks)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                for other in pending:
                    other.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                raise task.exception()  # type: ignore[misc]


async def _check_or_login(creds: Credentials) -> Credentials:
    """Verify a stored token with whoami; log in again with the password if it expired."""
    from datarooms.homeserver.api import MatrixApi

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
    #: ``up`` holds the lock on this data dir (it may still be starting).
    running: bool
    pid: int | None
    #: What run/state.json says; None until the platform has finished starting.
    info: dict[str, Any] | None
    #: Whether the homeserver answers; None while starting or not running.
    homeserver_healthy: bool | None

    @property
    def starting(self) -> bool:
        """``up`` runs but has not finished starting (no state file yet)."""
        return self.running and self.info is None

    @property
    def healthy(self) -> bool:
        """Started, and the homeserver answers: what scripts wait for."""
        return self.running and self.info is not None and self.homeserver_healthy is True


def _read_state(settings: Settings, pid: int) -> dict[str, Any] | None:
    """run/state.json, if the ``up`` that holds the lock (``pid``) wrote it.

    A run killed before it could clean up leaves its state file behind, and the next
    ``up`` takes the lock a moment before it removes it: a state file that names
    another pid is that old run's, not this one's (the platform is still starting).
    """
    try:
        data = json.loads((settings.run_dir / "state.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    if pid > 0 and data.get("pid") != pid:
        return None
    return data


async def platform_status(settings: Settings) -> PlatformStatus:
    pid = PlatformLock.holder(settings.run_dir / "up.lock")
    if pid is None:
        return PlatformStatus(False, None, None, None)
    info = _read_state(settings, pid)
    healthy: bool | None = None
    if info and info.get("homeserver_url"):
        from datarooms.homeserver.api import MatrixApi

        async with MatrixApi(str(info["homeserver_url"]), timeout=3) as http:
            try:
                await http.versions()
                healthy = True
            except HomeserverError:
                healthy = False
    return PlatformStatus(True, pid, info, healthy)


def running_homeserver_url(settings: Settings) -> str | None:
    """The homeserver URL of the platform `datarooms up` runs on this data dir (from
    its run file), or None if none runs (or it is still starting)."""
    pid = PlatformLock.holder(settings.run_dir / "up.lock")
    if pid is None:
        return None
    url = (_read_state(settings, pid) or {}).get("homeserver_url")
    return str(url) if url else None


def live_homeserver_url(settings: Settings) -> str:
    """The homeserver URL of the platform running on this data dir, else the configured one."""
    return running_homeserver_url(settings) or settings.homeserver.base_url


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
    "HOMESERVER",
    "Platform",
    "PlatformContext",
    "PlatformInfo",
    "PlatformLock",
    "PlatformStatus",
    "Service",
    "live_homeserver_url",
    "platform_status",
    "request_stop",
    "running_homeserver_url",
]
