"""Redis for the scale profile: Synapse's replication pub/sub between its processes.

A private ``redis-server`` (Debian package ``redis-server``) on loopback, with no
persistence: no RDB snapshots, no AOF (Synapse keeps nothing in Redis it cannot rebuild;
it is a message bus and a cache). Its config and log live in ``<synapse dir>/redis``.
Or an external one: ``homeserver.redis_url = "redis://[:password@]host:port"``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from datarooms._fs import atomic_write, private_dir
from datarooms.errors import ConfigError
from datarooms.homeserver._proc import Child, port_open, require_program


class RedisServer:
    """A private redis-server, started and stopped with the platform."""

    def __init__(
        self,
        directory: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 6379,
        start_timeout: float = 30,
    ) -> None:
        self.directory = Path(directory).absolute()
        self.host = host
        self.port = port
        self.start_timeout = start_timeout
        self._child: Child | None = None

    @property
    def config_path(self) -> Path:
        return self.directory / "redis.conf"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child else None

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.running

    def synapse_config(self) -> dict[str, Any]:
        return {"enabled": True, "host": self.host, "port": self.port}

    def render(self) -> str:
        return "\n".join(
            [
                f"bind {self.host}",
                f"port {self.port}",
                "protected-mode yes",
                "daemonize no",
                'save ""',  # no RDB snapshots
                "appendonly no",  # no AOF
                f"dir {self.directory}",
                "logfile ''",  # stdout, which is our log file
                "databases 1",
                "",
            ]
        )

    async def start(self) -> None:
        if self.running:
            return
        from datarooms.homeserver.embedded import check_port_free

        program = require_program("redis-server", "redis-server")
        private_dir(self.directory)
        atomic_write(self.config_path, self.render())
        check_port_free(self.host, self.port)
        self._child = Child("redis", [program, str(self.config_path)], self.log_path)
        self._child.spawn()

        async def ready() -> bool:
            return port_open(self.host, self.port)

        try:
            await self._child.wait_ready(ready, self.start_timeout, "Redis")
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._child is not None:
            await self._child.stop()
            self._child = None


class ExternalRedis:
    """A Redis someone else runs: ``redis://[:password@]host[:port]``."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "redis" or not parts.hostname:
            raise ConfigError(f"homeserver.redis_url must be redis://host:port, got {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 6379
        self.password = unquote(parts.password) if parts.password else None

    pid = None
    running = True

    def synapse_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"enabled": True, "host": self.host, "port": self.port}
        if self.password:
            config["password"] = self.password
        return config

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None
