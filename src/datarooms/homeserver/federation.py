"""Federation: the embedded homeserver's TLS listener and policy, and finding other
organisations' homeservers.

- :func:`listener_for` turns ``[federation]`` settings into the embedded Synapse's
  federation listener: the certificate (from the local CA, or the operator's own),
  the CA peers are verified against, and the allow-list
  (``federation_domain_whitelist``).
- :class:`ServerResolver` finds where a server name's federation API is, by the
  spec's server discovery rules (Server-Server API, "Resolving server names"), so
  our bots can ask another organisation's homeserver who an OpenID token belongs
  to without anyone typing its URL into a config file.
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from datarooms.errors import ConfigError, HomeserverError
from datarooms.homeserver.embedded import FederationListener
from datarooms.homeserver.tls import ensure_server_certificate, host_of
from datarooms.ids import is_ip_literal

if TYPE_CHECKING:
    from datarooms.config import Settings

log = logging.getLogger(__name__)

DEFAULT_FEDERATION_PORT = 8448
#: Names a local certificate always covers, besides the server name's host.
_LOCAL_NAMES = ("localhost", "127.0.0.1")


def listener_for(settings: Settings) -> FederationListener | None:
    """The embedded homeserver's federation listener, or ``None`` when federation is off."""
    fed = settings.federation
    if not fed.enabled:
        return None
    server_name = settings.homeserver.server_name
    allow = fed.allowed
    if allow is not None and server_name not in allow:
        allow = (server_name, *allow)
    if fed.local_ca:
        host = host_of(server_name)
        cert = ensure_server_certificate(
            settings.synapse_dir / "tls", settings.ca_dir, [host, *_LOCAL_NAMES]
        )
        return FederationListener(
            port=fed.port,
            host=fed.listen_host(server_name),
            certificate=cert.cert,
            private_key=cert.key,
            ca=cert.ca,
            allow=allow,
            loopback_peers=True,
            retry_interval=fed.retry_interval or "5s",
            retry_max_interval=fed.retry_max_interval or "30s",
        )
    cert_file, key_file = Path(fed.tls_cert_file).expanduser(), Path(fed.tls_key_file).expanduser()
    for path in (cert_file, key_file):
        if not path.is_file():
            raise ConfigError(f"federation: {path} does not exist")
    return FederationListener(
        port=fed.port,
        host=fed.listen_host(server_name),
        certificate=cert_file.absolute(),
        private_key=key_file.absolute(),
        allow=allow,
        retry_interval=fed.retry_interval or "10m",
        retry_max_interval=fed.retry_max_interval or "1h",
    )


def ssl_context_for(settings: Settings) -> ssl.SSLContext:
    """How our services verify other homeservers: the local CA when the platform uses one
    (and only it, as Synapse does), else the system's CAs."""
    ctx = ssl.create_default_context()
    fed = settings.federation
    if fed.enabled and fed.local_ca:
        ca = settings.ca_dir / "ca.pem"
        if ca.is_file():
            ctx = ssl.create_default_context(cafile=str(ca))
    return ctx


@dataclass(frozen=True)
class Resolved:
    """Where a server name's federation API is: the URL to connect to, and the host the
    TLS certificate must be valid for (also the ``Host`` header)."""

    server_name: str
    base_url: str
    tls_host: str


def _split(name: str) -> tuple[str, int | None]:
    if name.startswith("["):
        end = name.index("]")
        host, rest = name[1:end], name[end + 1 :]
        return host, int(rest[1:]) if rest.startswith(":") else None
    if ":" in name:
        host, _, port = name.rpartition(":")
        return host, int(port)
    return name, None


def _url(host: str, port: int) -> str:
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


class ServerResolver:
    """Server discovery (Server-Server API §2.1, "Resolving server names"), cached.

    1. An IP literal: that address, the given port or 8448.
    2. A hostname with an explicit port: that host and port.
    3. Else ``GET https://<hostname>/.well-known/matrix/server``; a valid
       ``m.server`` delegates to another name, resolved by 1., 2. and 4.
       (its certificate must be valid for the delegated host).
    4. Else SRV ``_matrix-fed._tcp.<hostname>`` (then the deprecated
       ``_matrix._tcp``), if a DNS resolver (dnspython) is installed; else port 8448.
    """

    def __init__(
        self, *, ssl_context: ssl.SSLContext | None = None, cache_seconds: float = 3600.0
    ) -> None:
        self._ssl = ssl_context or ssl.create_default_context()
        self._cache: dict[str, tuple[float, Resolved]] = {}
        self._cache_seconds = cache_seconds

    async def resolve(self, server_name: str) -> Resolved:
        now = time.monotonic()
        hit = self._cache.get(server_name)
        if hit is not None and hit[0] > now:
            return hit[1]
        resolved = await self._resolve(server_name)
        self._cache[server_name] = (now + self._cache_seconds, resolved)
        return resolved

    async def _resolve(self, server_name: str) -> Resolved:
        try:
            host, port = _split(server_name)
        except ValueError:
            raise HomeserverError(f"{server_name!r} is not a server name") from None
        if is_ip_literal(host) or port is not None:
            return Resolved(server_name, _url(host, port or DEFAULT_FEDERATION_PORT), host)
        delegated = await self._well_known(host)
        if delegated is not None:
            d_host, d_port = _split(delegated)
            if is_ip_literal(d_host) or d_port is not None:
                return Resolved(
                    server_name, _url(d_host, d_port or DEFAULT_FEDERATION_PORT), d_host
                )
            target = self._srv(d_host)
            return Resolved(server_name, target or _url(d_host, DEFAULT_FEDERATION_PORT), d_host)
        target = self._srv(host)
        return Resolved(server_name, target or _url(host, DEFAULT_FEDERATION_PORT), host)

    async def _well_known(self, host: str) -> str | None:
        import aiohttp

        url = f"https://{host}/.well-known/matrix/server"
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
                session.get(url, ssl=self._ssl, allow_redirects=True, max_redirects=5) as resp,
            ):
                if resp.status != 200:
                    return None
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.info("no .well-known/matrix/server", extra={"host": host, "error": str(exc)})
            return None
        server = body.get("m.server") if isinstance(body, dict) else None
        if not isinstance(server, str) or not server:
            return None
        try:
            _split(server)
        except ValueError:
            return None
        return server

    def _srv(self, host: str) -> str | None:
        try:
            import dns.resolver  # type: ignore[import-not-found]
        except ImportError:
            return None
        for service in ("_matrix-fed._tcp", "_matrix._tcp"):
            try:
                answers = dns.resolver.resolve(f"{service}.{host}", "SRV", lifetime=5)
            except Exception as exc:  # NXDOMAIN, no answer, timeout: try the next
                log.debug("no SRV record", extra={"name": f"{service}.{host}", "error": str(exc)})
                continue
            best = sorted(answers, key=lambda r: (r.priority, -r.weight))
            if best:
                target = str(best[0].target).rstrip(".")
                return _url(target, int(best[0].port))
        return None


async def wake_peers(base_url: str, admin_token: str, own_server: str) -> list[str]:
    """Tell the homeservers ours federates with that it is back, so they send what they
    queued for it now rather than after their backoff (Synapse retries a peer it could
    not reach only every few minutes, doubling up to an hour or more).

    For each destination the homeserver knows (admin API), its own backoff is reset and
    one signed federation request is sent (a display-name query, which ignores backoff);
    receiving a request from us makes the peer mark us up and flush its queue for us.
    Returns the peers that answered. Never raises for an unreachable peer.
    """
    from urllib.parse import quote

    from datarooms.homeserver.api import MatrixApi

    async with MatrixApi(base_url, admin_token, timeout=15) as api:
        destinations: list[str] = []
        start = "0"
        while True:
            page = await api.request(
                "GET",
                "/_synapse/admin/v1/federation/destinations",
                params={"from": start, "limit": "500"},
            )
            destinations += [
                str(d["destination"]) for d in page.get("destinations", []) if "destination" in d
            ]
            if not page.get("next_token"):
                break
            start = str(page["next_token"])
        peers = [d for d in dict.fromkeys(destinations) if d != own_server]

        async def wake(peer: str) -> str | None:
            dest = quote(peer, safe="")
            try:
                await api.answer(
                    "POST", f"/_synapse/admin/v1/federation/destinations/{dest}/reset_connection"
                )
                answer = await api.answer(
                    "GET",
                    f"/_matrix/client/v3/profile/{quote('@datarooms-wake:' + peer, safe='')}"
                    "/displayname",
                    timeout=10,
                )
            except HomeserverError as exc:
                log.info("could not wake a peer", extra={"peer": peer, "error": exc.message})
                return None
            return peer if answer.status in (200, 404) else None

        import asyncio

        woken = await asyncio.gather(*(wake(p) for p in peers))
    answered = [p for p in woken if p]
    log.info("told peers we are back", extra={"peers": len(peers), "answered": len(answered)})
    return answered
