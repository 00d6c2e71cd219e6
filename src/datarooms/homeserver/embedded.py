"""An embedded Synapse: config generation, start, health, stop, restart.

This is the only Synapse-specific part of datarooms on the client side of the
platform. Everything it writes lives in one directory::

    <dir>/homeserver.yaml   rendered on every start from settings + secrets
    <dir>/secrets.yaml      generated once (mode 0600): shared secret, macaroon key
    <dir>/signing.key       the server's ed25519 signing key, generated once
    <dir>/log.config        Python logging config for Synapse
    <dir>/homeserver.log    Synapse's log
    <dir>/homeserver.db     SQLite database
    <dir>/media_store/      uploaded media (ciphertext only, for encrypted rooms)

Files are written atomically (temp file + rename), so an interrupted first
start never leaves a half-written config behind.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import errno
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from datarooms._fs import PRIVATE_FILE, atomic_write, ensure_writable_dir, harden_tree, private_dir
from datarooms.errors import (
    MissingDependencyError,
    PortInUseError,
    SynapseStartError,
)

if TYPE_CHECKING:
    from datarooms._transport.http import JsonHttp

# aiohttp and cryptography are imported where used: `datarooms up` spawns Synapse
# first and imports the rest while it boots.

log = logging.getLogger(__name__)

#: Rate limits for a local, single-user platform. Synapse's defaults allow about
#: one room a minute and one message every five seconds after a small burst,
#: which is right for a public server and wrong for a laptop.
LOCAL_RATE_LIMITS: dict[str, Any] = {
    "rc_message": {"per_second": 1000, "burst_count": 10000},
    "rc_room_creation": {"per_second": 100, "burst_count": 1000},
    "rc_registration": {"per_second": 100, "burst_count": 1000},
    "rc_login": {
        "address": {"per_second": 100, "burst_count": 1000},
        "account": {"per_second": 100, "burst_count": 1000},
        "failed_attempts": {"per_second": 100, "burst_count": 1000},
    },
    "rc_joins": {
        "local": {"per_second": 100, "burst_count": 1000},
        "remote": {"per_second": 100, "burst_count": 1000},
    },
    "rc_joins_per_room": {"per_second": 100, "burst_count": 1000},
    "rc_invites": {
        "per_room": {"per_second": 100, "burst_count": 1000},
        "per_user": {"per_second": 100, "burst_count": 1000},
        "per_issuer": {"per_second": 100, "burst_count": 1000},
    },
    "rc_admin_redaction": {"per_second": 100, "burst_count": 1000},
    "rc_3pid_validation": {"per_second": 10, "burst_count": 100},
    "rc_media_create": {"per_second": 100, "burst_count": 1000},
    "rc_key_requests": {"per_second": 1000, "burst_count": 10000},
}

#: Synapse's DEFAULT_IP_RANGE_BLOCKLIST without loopback: organisations on one machine.
FEDERATION_BLOCKLIST_BUT_LOOPBACK = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "192.0.0.0/24",
    "169.254.0.0/16",
    "192.88.99.0/24",
    "198.18.0.0/15",
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "fe80::/10",
    "fc00::/7",
    "2001:db8::/32",
    "ff00::/8",
    "fec0::/10",
]


@dataclass(frozen=True)
class FederationListener:
    """Federation on an embedded Synapse: a TLS listener and who it may talk to.

    ``allow`` is Synapse's ``federation_domain_whitelist`` (``None``: any server).
    ``ca`` is a CA certificate file trusted *instead of* the system's (the local CA
    that peers on one machine share); ``None`` trusts the system's CAs.
    ``loopback_peers`` lets Synapse connect to peers on 127.0.0.0/8 and ::1, which it
    refuses by default (SSRF protection): on for organisations on one machine only.
    ``retry_interval`` is how long Synapse waits before retrying a peer it could not
    reach, doubling up to ``retry_max_interval`` (Synapse's defaults: 10 minutes and a
    week). A peer that comes back is also retried at once when it next contacts us.
    """

    port: int
    certificate: Path
    private_key: Path
    host: str = "127.0.0.1"
    ca: Path | None = None
    allow: tuple[str, ...] | None = None
    loopback_peers: bool = False
    retry_interval: str = "10m"
    retry_max_interval: str = "1h"

    def render(self) -> dict[str, Any]:
        config: dict[str, Any] = {
            "tls_certificate_path": str(self.certificate),
            "tls_private_key_path": str(self.private_key),
            "federation_verify_certificates": True,
            "federation": {
                "destination_min_retry_interval": self.retry_interval,
                "destination_max_retry_interval": self.retry_max_interval,
            },
        }
        if self.ca is not None:
            config["federation_custom_ca_list"] = [str(self.ca)]
        if self.allow is not None:
            config["federation_domain_whitelist"] = list(self.allow)
        if self.loopback_peers:
            # Synapse's default blocklist, but loopback, for federation only (IP-literal
            # server names bypass ip_range_whitelist); URL previews and pushers keep it.
            config["ip_range_whitelist"] = ["127.0.0.0/8", "::1/128"]
            config["federation_ip_range_blacklist"] = FEDERATION_BLOCKLIST_BUT_LOOPBACK
        return config

    def listener(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "bind_addresses": [self.host],
            "type": "http",
            "tls": True,
            "x_forwarded": False,
            # federation includes the key server (/_matrix/key/v2) and OpenID userinfo
            "resources": [{"names": ["federation"], "compress": False}],
        }


_HEALTH_POLL_S = 0.05
_LOG_TAIL_LINES = 40


class EmbeddedSynapse:
    """A Synapse homeserver run as a child process from a directory of its own."""

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
        federation: FederationListener | None = None,
    ) -> None:
        self.directory = Path(directory).absolute()
        self.federation = federation
        self.server_name = server_name
        self.host = host
        self.port = port
        self.max_upload_size = max_upload_size
        self.start_timeout = start_timeout
        self.extra_config = dict(extra_config or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._stdout: Any = None

    # -- paths ---------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.directory / "homeserver.yaml"

    @property
    def secrets_path(self) -> Path:
        return self.directory / "secrets.yaml"

    @property
    def log_path(self) -> Path:
        return self.directory / "homeserver.log"

    @property
    def stdout_path(self) -> Path:
        return self.directory / "stdout.log"

    @property
    def database_path(self) -> Path:
        return self.directory / "homeserver.db"

    @property
    def media_store_path(self) -> Path:
        return self.directory / "media_store"

    @property
    def pid_file(self) -> Path:
        return self.directory / "homeserver.pid"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def federation_url(self) -> str | None:
        """Where peers reach this server's federation API (TLS), if federation is on."""
        fed = self.federation
        if fed is None:
            return None
        from datarooms.homeserver.tls import host_of

        host = host_of(self.server_name)
        return f"https://[{host}]:{fed.port}" if ":" in host else f"https://{host}:{fed.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def registration_shared_secret(self) -> str:
        return str(self._load_secrets()["registration_shared_secret"])

    # -- preparation -----------------------------------------------------------

    def prepare(self) -> None:
        """Create the directory, secrets, signing key and config. Idempotent."""
        ensure_writable_dir(self.directory)
        harden_tree(self.directory)  # the config, secrets and database: owner only
        private_dir(self.media_store_path)
        self._load_secrets()
        signing_key = self.directory / "signing.key"
        if not signing_key.exists():
            atomic_write(signing_key, _new_signing_key(), mode=0o600)
        atomic_write(self.directory / "log.config", yaml.safe_dump(self._log_config()))
        atomic_write(self.config_path, yaml.safe_dump(self.render_config(), sort_keys=False))

    def render_config(self) -> dict[str, Any]:
        s = self._load_secrets()
        d = self.directory
        config: dict[str, Any] = {
            "server_name": self.server_name,
            "pid_file": str(self.pid_file),
            "report_stats": False,
            "listeners": [
                {
                    "port": self.port,
                    "bind_addresses": [self.host],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    # `openid` serves /_matrix/federation/v1/openid/userinfo,
                    # which our bots use to check who is calling them.
                    "resources": [{"names": ["client", "openid"], "compress": False}],
                }
            ],
            "database": {"name": "sqlite3", "args": {"database": str(self.database_path)}},
            "log_config": str(d / "log.config"),
            "media_store_path": str(self.media_store_path),
            "signing_key_path": str(d / "signing.key"),
            "registration_shared_secret": s["registration_shared_secret"],
            "macaroon_secret_key": s["macaroon_secret_key"],
            "form_secret": s["form_secret"],
            "enable_registration": False,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "presence": {"enabled": False},
            "url_preview_enabled": False,
            "enable_metrics": False,
            "max_upload_size": self.max_upload_size,
            **LOCAL_RATE_LIMITS,
        }
        if self.federation is None:
            # No federation listener and no outgoing federation: a local homeserver.
            config["federation_domain_whitelist"] = []
            # ... and no federation sender: with one, Synapse works out every new
            # event's destinations (none here), about a third of a room creation's
            # CPU (bench/roomsbot.py: ~150 -> ~100 ms of Synapse CPU per entity).
            config.setdefault("federation_sender_instances", [])
        else:
            config["listeners"].append(self.federation.listener())
            config.update(self.federation.render())
        config.update(self.extra_config)
        return config

    def _log_config(self) -> dict[str, Any]:
        return {
            "version": 1,
            "formatters": {
                "precise": {
                    "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - "
                    "%(request)s - %(message)s"
                }
            },
            "handlers": {
                "file": {
                    "class": "logging.handlers.RotatingFileHandler",
                    "formatter": "precise",
                    "filename": str(self.log_path),
                    "maxBytes": 20 * 1024 * 1024,
                    "backupCount": 3,
                    "filters": ["context"],
                    "encoding": "utf8",
                }
            },
            "filters": {"context": {"()": "synapse.logging.context.LoggingContextFilter"}},
            "loggers": {
                "synapse.storage.SQL": {"level": "WARNING"},
                "synapse.access.http": {"level": "WARNING"},
            },
            "root": {"level": "INFO", "handlers": ["file"]},
            "disable_existing_loggers": False,
        }

    def _load_secrets(self) -> dict[str, str]:
        if self.secrets_path.exists():
            data = yaml.safe_load(self.secrets_path.read_text())
            if isinstance(data, dict) and "registration_shared_secret" in data:
                return {str(k): str(v) for k, v in data.items()}
        ensure_writable_dir(self.directory)
        data = {
            "registration_shared_secret": secrets.token_urlsafe(32),
            "macaroon_secret_key": secrets.token_urlsafe(32),
            "form_secret": secrets.token_urlsafe(32),
        }
        atomic_write(self.secrets_path, yaml.safe_dump(data), mode=0o600)
        return data

    # -- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        """Start Synapse and wait until ``/health`` answers.

        Raises :class:`PortInUseError`, :class:`DataDirError` or
        :class:`SynapseStartError` (with the tail of Synapse's log).
        On any failure, including cancellation, the child is stopped.
        """
        if self.running:
            return
        _require_synapse()
        self.prepare()
        self._stop_stale()
        check_port_free(self.host, self.port)
        if self.federation is not None:
            check_port_free(self.federation.host, self.federation.port)

        fd = os.open(self.stdout_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE)
        self._stdout = os.fdopen(fd, "ab")
        started = time.monotonic()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            stdout=self._stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, not Synapse
            umask=0o077,  # its database holds access tokens; its media store, ciphertext
            preexec_fn=_die_with_parent,
        )
        log.info("starting synapse", extra={"pid": self._proc.pid, "port": self.port})
        try:
            await self._wait_healthy(started)
        except BaseException:
            await self.stop()
            raise
        log.info(
            "synapse healthy",
            extra={"pid": self._proc.pid, "seconds": round(time.monotonic() - started, 2)},
        )

    async def _wait_healthy(self, started: float) -> None:
        assert self._proc is not None
        deadline = started + self.start_timeout
        from datarooms._transport.http import NO_RETRY, JsonHttp

        async with JsonHttp(self.base_url, timeout=2, retry=NO_RETRY) as session:
            while True:
                code = self._proc.poll()
                if code is not None:
                    raise SynapseStartError(
                        f"Synapse exited with code {code} during start-up.\n"
                        f"Last lines of its log ({self.log_path}):\n{self.log_tail()}"
                    )
                if await _healthy(session):
                    return
                if time.monotonic() > deadline:
                    raise SynapseStartError(
                        f"Synapse did not become healthy within {self.start_timeout:.0f} s.\n"
                        f"Last lines of its log ({self.log_path}):\n{self.log_tail()}"
                    )
                await asyncio.sleep(_HEALTH_POLL_S)

    async def stop(self, timeout: float = 15.0) -> int | None:
        """Stop Synapse: SIGTERM, then SIGKILL after ``timeout`` seconds."""
        proc = self._proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + timeout
                while proc.poll() is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                if proc.poll() is None:
                    log.warning("synapse ignored SIGTERM; killing it", extra={"pid": proc.pid})
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    proc.wait()
            return proc.returncode
        finally:
            self._proc = None
            if self._stdout is not None:
                self._stdout.close()
                self._stdout = None
            with contextlib.suppress(FileNotFoundError):
                self.pid_file.unlink()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def health(self) -> bool:
        from datarooms._transport.http import NO_RETRY, JsonHttp

        async with JsonHttp(self.base_url, timeout=2, retry=NO_RETRY) as session:
            return await _healthy(session)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        parts = []
        for path in (self.log_path, self.stdout_path):
            if path.exists():
                text = _tail(path, lines)
                if text.strip():
                    parts.append(f"--- {path.name} ---\n{text}")
        return "\n".join(parts) or "(Synapse wrote no log)"

    def _stop_stale(self) -> None:
        """Stop a Synapse that a killed earlier run of ours left on this directory."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            cmdline = []
        if str(self.config_path).encode() not in cmdline:
            self.pid_file.unlink(missing_ok=True)
            return
        log.warning("stopping a stale synapse left by an earlier run", extra={"pid": pid})
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)


# -- module helpers --------------------------------------------------------------


async def _healthy(http: JsonHttp) -> bool:
    from datarooms._transport.http import Unreachable

    try:
        return (await http.send("GET", "/health")).status == 200
    except Unreachable:
        return False


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`PortInUseError` if something already listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    f"port {port} on {host} is already in use by another program. "
                    "Stop that program, or choose another port with --port or "
                    "DATAROOMS_HOMESERVER_PORT."
                ) from None
            raise PortInUseError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _new_signing_key() -> str:
    """A Synapse signing key file line: ``ed25519 <key id> <unpadded base64 seed>``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    seed = Ed25519PrivateKey.generate().private_bytes(
        Encoding.Raw, PrivateFormat.Raw, NoEncryption()
    )
    key_id = "a_" + secrets.token_urlsafe(3).replace("-", "x").replace("_", "y")[:4]
    return f"ed25519 {key_id} {base64.b64encode(seed).decode().rstrip('=')}\n"


def _tail(path: Path, lines: int) -> str:
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 64 * 1024))
        data = fh.read().decode("utf8", "replace")
    return "\n".join(data.splitlines()[-lines:])


def _require_synapse() -> None:
    import importlib.util

    if importlib.util.find_spec("synapse") is None:
        raise MissingDependencyError(
            "the embedded homeserver needs Synapse, which is not installed. "
            "Install it with: pip install 'datarooms[synapse]' "
            "(or set homeserver.mode = 'external' to use a homeserver you run)."
        )


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: have the kernel SIGTERM the child if the parent dies (even by SIGKILL)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
