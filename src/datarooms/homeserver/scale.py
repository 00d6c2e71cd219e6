"""The scale profile's homeserver: Synapse on PostgreSQL, with workers, Redis and nginx.

``[homeserver] profile = "scale"``. Everything lives in the Synapse directory
(``<data_dir>/synapse``) as for the embedded homeserver, plus::

    postgres/          the private PostgreSQL cluster (docs: homeserver/postgres.py)
    redis/             redis.conf, redis.log (no persistence)
    workers/<name>.yaml, <name>.log, <name>.log.config   one config file per worker
    nginx/nginx.conf, access.log, error.log              the reverse proxy

Start order: PostgreSQL and Redis, the main process (it migrates the schema), the
workers, then nginx; the platform's URL is nginx's. Any failure stops what was started,
in reverse order, and says which part failed with the tail of its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from datarooms._fs import atomic_write, private_dir
from datarooms.config import Settings
from datarooms.errors import PlatformError, PortInUseError, SynapseStartError
from datarooms.homeserver._proc import Child, require_program, tail
from datarooms.homeserver.embedded import EmbeddedSynapse, _require_synapse, check_port_free
from datarooms.homeserver.postgres import ExternalPostgres, PostgresCluster
from datarooms.homeserver.redis import ExternalRedis, RedisServer
from datarooms.homeserver.workers import Topology, Worker, render_nginx

log = logging.getLogger(__name__)

_NGINX_CANDIDATES = (Path("/usr/sbin/nginx"),)
_SUPERVISE_S = 0.5


async def http_ok(host: str, port: int, path: str = "/health", timeout: float = 2.0) -> bool:
    """Whether ``GET path`` on host:port answers 200 (a plain HTTP/1.0 request)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (TimeoutError, OSError):
        return False
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        return line.split(b" ")[1:2] == [b"200"]
    except (TimeoutError, OSError, IndexError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _all(*steps: Awaitable[None]) -> None:
    """Run the steps concurrently; on the first failure cancel the others, wait for them
    to end (so the stop that follows sees every process they spawned), and raise it."""
    tasks = [asyncio.ensure_future(step) for step in steps]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


def default_ports(base: int, count: int = 16) -> Iterator[int]:
    return iter(range(base, base + count))


class ScaleSynapse(EmbeddedSynapse):
    """Synapse main + workers on PostgreSQL and Redis behind nginx, at ``host:port``."""

    def __init__(
        self,
        directory: Path,
        *,
        server_name: str = "localhost",
        host: str = "127.0.0.1",
        port: int = 8008,
        max_upload_size: str = "2G",
        start_timeout: float = 90.0,
        extra_config: Mapping[str, Any] | None = None,
        persisters: int = 2,
        ports: Iterator[int] | None = None,
        postgres_url: str = "",
        redis_url: str = "",
    ) -> None:
        super().__init__(
            directory,
            server_name=server_name,
            host=host,
            port=port,
            max_upload_size=max_upload_size,
            start_timeout=start_timeout,
            extra_config=extra_config,
        )
        # Internal ports: by default the 16 after homeserver.port + 100 (8108.. for 8008).
        it = ports if ports is not None else default_ports(port + 100)
        self.topology = Topology.build(it, persisters=persisters)
        self.postgres: PostgresCluster | ExternalPostgres = (
            ExternalPostgres(postgres_url)
            if postgres_url
            else PostgresCluster(self.directory / "postgres", port=next(it))
        )
        self.redis: RedisServer | ExternalRedis = (
            ExternalRedis(redis_url)
            if redis_url
            else RedisServer(self.directory / "redis", port=next(it))
        )
        self._main: Child | None = None
        self._workers: dict[str, Child] = {}
        self._nginx: Child | None = None
        self._supervisor: threading.Thread | None = None
        self._stopping = threading.Event()
        #: How often each Synapse process was restarted after it died (by the supervisor).
        self.restarts: dict[str, int] = {}

    # -- paths -------------------------------------------------------------------

    @property
    def workers_dir(self) -> Path:
        return self.directory / "workers"

    @property
    def nginx_dir(self) -> Path:
        return self.directory / "nginx"

    @property
    def access_log(self) -> Path:
        return self.nginx_dir / "access.log"

    @property
    def main_url(self) -> str:
        return f"http://{self.topology.host}:{self.topology.main_port}"

    @property
    def pid(self) -> int | None:
        return self._main.pid if self._main else None

    @property
    def running(self) -> bool:
        return self._main is not None and self._main.running

    def synapse_pids(self) -> dict[str, int]:
        """The pid of every Synapse process that runs: main and each worker."""
        out = {"main": self._main.pid} if self._main and self._main.pid else {}
        out.update({n: c.pid for n, c in self._workers.items() if c.running and c.pid})
        return out

    def worker(self, name: str) -> Worker:
        for w in self.topology.workers:
            if w.name == name:
                return w
        raise KeyError(name)

    def processes(self) -> dict[str, dict[str, Any]]:
        """What ``datarooms status`` shows: each process of the homeserver."""
        out: dict[str, dict[str, Any]] = {
            "postgresql": {
                "role": "database",
                "pid": self.postgres.pid,
                "where": self.postgres.where,
                "external": isinstance(self.postgres, ExternalPostgres),
            },
            "redis": {
                "role": "replication bus",
                "pid": self.redis.pid,
                "where": f"{self.redis.host}:{self.redis.port}",
                "external": isinstance(self.redis, ExternalRedis),
            },
            "main": {"role": "main", "pid": self.pid, "where": self.main_url},
        }
        for w in self.topology.workers:
            child = self._workers.get(w.name)
            out[w.name] = {"role": w.role, "pid": child.pid if child else None, "where": w.url}
        out["nginx"] = {
            "role": "reverse proxy",
            "pid": self._nginx.pid if self._nginx else None,
            "where": self.base_url,
        }
        return out

    # -- config ------------------------------------------------------------------

    def _replication_secret(self) -> str:
        s = self._load_secrets()
        if "worker_replication_secret" not in s:
            import secrets as _secrets

            s["worker_replication_secret"] = _secrets.token_urlsafe(32)
            atomic_write(self.secrets_path, yaml.safe_dump(s), mode=0o600)
        return s["worker_replication_secret"]

    def render_config(self) -> dict[str, Any]:
        config = super().render_config()
        config["listeners"] = self.topology.main_listeners()
        config["database"] = self.postgres.database_config()
        config["redis"] = self.redis.synapse_config()
        config.update(self.topology.shared_config(self._replication_secret()))
        config.update(self.extra_config)
        return config

    def prepare(self) -> None:
        super().prepare()
        private_dir(self.workers_dir)
        for w in self.topology.workers:
            atomic_write(
                self.workers_dir / f"{w.name}.log.config",
                yaml.safe_dump(self._worker_log_config(w)),
            )
            atomic_write(
                self.workers_dir / f"{w.name}.yaml",
                yaml.safe_dump(w.render(self.workers_dir), sort_keys=False),
            )
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            private_dir(self.nginx_dir / "tmp" / sub)
        atomic_write(
            self.nginx_dir / "nginx.conf",
            render_nginx(
                self.topology,
                self.nginx_dir,
                listen_host=self.host,
                listen_port=self.port,
                max_body=self.max_upload_size,
                as_root=os.geteuid() == 0,
            ),
        )

    def _worker_log_config(self, w: Worker) -> dict[str, Any]:
        config = self._log_config()
        config["handlers"]["file"]["filename"] = str(self.workers_dir / f"{w.name}.log")
        return config

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Start PostgreSQL, Redis, Synapse main, the workers and nginx, in that order."""
        if self.running:
            return
        _require_synapse()
        nginx = require_program("nginx", "nginx", candidates=_NGINX_CANDIDATES)
        if isinstance(self.redis, RedisServer):
            require_program("redis-server", "redis-server")
        if isinstance(self.postgres, PostgresCluster):
            from datarooms.homeserver.postgres import postgres_bin_dir

            postgres_bin_dir()
        self._check_python_deps()
        self.prepare()
        ports = [(self.host, self.port), (self.topology.host, self.topology.main_port)]
        ports.append((self.topology.host, self.topology.replication_port))
        ports += [(w.host, w.port) for w in self.topology.workers]
        if isinstance(self.redis, RedisServer):
            ports.append((self.redis.host, self.redis.port))
        for i, (host, port) in enumerate(ports):
            try:
                check_port_free(host, port)
            except PortInUseError as exc:
                if i == 0:
                    raise
                raise PortInUseError(
                    f"port {port} on {host}, an internal port of the scale profile (Synapse's "
                    "processes), is already in use by another program: stop it, or move the "
                    "internal ports with homeserver.internal_port_base "
                    f"(DATAROOMS_HOMESERVER_INTERNAL_PORT_BASE) ({exc})"
                ) from None
        began = time.monotonic()
        try:
            await _all(self.postgres.start(), self.redis.start())
            self._main = self._synapse_child("main", None)
            self._main.spawn()
            log.info("starting synapse (main)", extra={"pid": self._main.pid})
            await self._wait_synapse(self._main, self.topology.main_port, began)
            await _all(*(self.start_worker(w.name) for w in self.topology.workers))
            self._nginx = Child(
                "nginx",
                [
                    nginx,
                    "-p",
                    str(self.nginx_dir),
                    "-e",
                    str(self.nginx_dir / "error.log"),
                    "-c",
                    str(self.nginx_dir / "nginx.conf"),
                ],
                self.nginx_dir / "nginx.stdout.log",
                stop_signal=15,
            )
            self._nginx.spawn()

            async def proxied() -> bool:
                return await http_ok(self.host, self.port)

            await self._nginx.wait_ready(proxied, 30, "nginx")
        except BaseException:
            await self.stop()
            raise
        # A thread of its own: the caller's event loop may end (tests start the
        # homeserver in one asyncio.run and stop it in another).
        self._stopping.clear()
        self._supervisor = threading.Thread(
            target=lambda: asyncio.run(self._supervise()), name="synapse-supervisor", daemon=True
        )
        self._supervisor.start()
        log.info(
            "synapse (scale profile) healthy",
            extra={"seconds": round(time.monotonic() - began, 2), "url": self.base_url},
        )

    def _check_python_deps(self) -> None:
        import importlib.util

        missing = [m for m in ("psycopg2", "txredisapi") if importlib.util.find_spec(m) is None]
        if missing:
            from datarooms.errors import MissingDependencyError

            raise MissingDependencyError(
                f"the scale profile needs Synapse's PostgreSQL and Redis support "
                f"({', '.join(missing)} missing): pip install 'datarooms[scale]'"
            )

    def _synapse_child(self, name: str, worker: Worker | None) -> Child:
        argv = [sys.executable, "-m"]
        if worker is None:
            argv += ["synapse.app.homeserver", "-c", str(self.config_path)]
            log_file = self.stdout_path
        else:
            argv += [
                "synapse.app.generic_worker",
                "-c",
                str(self.config_path),
                "-c",
                str(self.workers_dir / f"{worker.name}.yaml"),
            ]
            log_file = self.workers_dir / f"{worker.name}.stdout.log"
        return Child(name, argv, log_file, cwd=self.directory)

    async def _wait_synapse(self, child: Child, port: int, began: float) -> None:
        name = child.name
        log_path = self.log_path if name == "main" else self.workers_dir / f"{name}.log"

        async def ready() -> bool:
            return await http_ok(self.topology.host, port)

        remaining = max(5.0, self.start_timeout - (time.monotonic() - began))
        try:
            await child.wait_ready(ready, remaining, f"Synapse {name}")
        except PlatformError as exc:
            raise SynapseStartError(
                f"{exc}\nLast lines of its Synapse log ({log_path}):\n{tail(log_path)}"
            ) from None

    async def start_worker(self, name: str) -> None:
        """Start (or restart, after :meth:`kill_worker`) one worker and wait for its /health."""
        w = self.worker(name)
        old = self._workers.get(name)
        if old is not None and old.running:
            return
        child = self._workers[name] = self._synapse_child(name, w)
        child.spawn()
        await self._wait_synapse(child, w.port, time.monotonic())

    async def _supervise(self) -> None:
        """Restart a Synapse worker that died (a crash, the OOM killer): what it was doing
        is retried by the worker that sent it (replication) or by the client (its
        transaction id makes the retry idempotent). At most 5 restarts a worker in 10
        minutes; then it stays down, logged as an error, and `datarooms status` shows it."""
        recent: dict[str, list[float]] = {}
        given_up: set[str] = set()
        while not self._stopping.wait(_SUPERVISE_S):
            for name, child in list(self._workers.items()):
                if self._stopping.is_set() or child.running or name in given_up:
                    continue
                now = time.monotonic()
                times = recent[name] = [t for t in recent.get(name, []) if now - t < 600]
                code = child.proc.returncode if child.proc else None
                if len(times) >= 5:
                    given_up.add(name)
                    log.error(
                        "synapse worker keeps dying; left stopped",
                        extra={"worker": name, "code": code, "log": str(child.log_path)},
                    )
                    continue
                log.warning(
                    "synapse worker died; restarting it", extra={"worker": name, "code": code}
                )
                times.append(now)
                try:
                    await self.start_worker(name)
                    self.restarts[name] = self.restarts.get(name, 0) + 1
                except Exception as exc:
                    log.error(
                        "could not restart a synapse worker",
                        extra={"worker": name, "error": str(exc)},
                    )

    def kill_worker(self, name: str) -> None:
        """SIGKILL one worker (a crash), for fault tests and benchmarks."""
        self._workers[name].kill()

    async def stop(self, timeout: float = 15.0) -> int | None:
        """Stop nginx, the workers, main, Redis, PostgreSQL; whatever of them runs."""
        code = None
        if self._supervisor is not None:
            self._stopping.set()
            await asyncio.to_thread(self._supervisor.join)
            self._supervisor = None
        try:
            if self._nginx is not None:
                await self._nginx.stop(timeout)
                self._nginx = None
            await asyncio.gather(*(c.stop(timeout) for c in self._workers.values()))
            self._workers.clear()
            if self._main is not None:
                code = await self._main.stop(timeout)
                self._main = None
        finally:
            with contextlib.suppress(Exception):
                await self.redis.stop()
            await self.postgres.stop()
            with contextlib.suppress(FileNotFoundError):
                self.pid_file.unlink()
        return code

    async def health(self) -> bool:
        return await http_ok(self.host, self.port)


def scale_homeserver(settings: Settings, **options: Any) -> ScaleSynapse:
    """The scale profile's homeserver for ``settings``, as ``datarooms up`` builds it (its
    internal ports from ``internal_port_base``, or ``port + 100``); ``options``: the other
    :class:`ScaleSynapse` arguments. Nothing starts until :meth:`ScaleSynapse.start`."""
    hs = settings.homeserver
    base = hs.internal_port_base or hs.port + 100
    return ScaleSynapse(
        settings.synapse_dir,
        server_name=hs.server_name,
        host=hs.host,
        port=hs.port,
        persisters=hs.event_persisters,
        ports=iter(range(base, base + 32)),
        postgres_url=hs.postgres_url,
        redis_url=hs.redis_url,
        **options,
    )
