"""Settings: one TOML file plus environment overrides, frozen and typed.

Where settings come from, highest precedence first:

1. explicit arguments (the CLI's ``--data-dir``, ``--config``, ``--port``);
2. environment variables ``DATAROOMS_<SECTION>_<FIELD>``, for example
   ``DATAROOMS_HOMESERVER_PORT=8448`` or ``DATAROOMS_ACCOUNT_ACCESS_TOKEN=...``;
   top-level fields are ``DATAROOMS_<FIELD>`` (``DATAROOMS_DATA_DIR``,
   ``DATAROOMS_LOG_LEVEL``);
3. the config file: ``--config`` / ``DATAROOMS_CONFIG``, else
   ``<data_dir>/datarooms.toml`` if it exists;
4. the defaults below.

See docs/configuration.md for every field.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from datarooms.errors import ConfigError
from datarooms.ids import SERVER_NAME

_T = TypeVar("_T")

DEFAULT_DATA_DIR = Path(".datarooms")
CONFIG_FILE_NAME = "datarooms.toml"
ENV_PREFIX = "DATAROOMS_"

#: Field names whose values are never printed or logged.
SECRET_FIELDS = frozenset({"password", "access_token", "registration_shared_secret"})


@dataclass(frozen=True)
class HomeserverSettings:
    #: ``embedded``: datarooms starts and manages a Synapse in ``data_dir``.
    #: ``external``: use a homeserver you run, at ``url``.
    mode: Literal["embedded", "external"] = "embedded"
    #: The Matrix server name of the embedded homeserver (the part after ``:`` in ids).
    server_name: str = "localhost"
    #: Where the embedded homeserver listens. Always loopback unless you change it.
    host: str = "127.0.0.1"
    port: int = 8008
    #: Base URL of the homeserver's client API. Required in external mode;
    #: derived from host and port in embedded mode.
    url: str = ""
    #: For ``datarooms user add`` against an external Synapse (its admin
    #: register API); the embedded one generates its own.
    registration_shared_secret: str = ""
    #: Largest upload the embedded homeserver accepts (encrypted files).
    max_upload_size: str = "2G"
    #: Seconds to wait for the embedded homeserver to become healthy.
    start_timeout: float = 90.0
    #: ``embedded``: one Synapse process on SQLite (the default). ``scale``: Synapse on
    #: PostgreSQL with workers, Redis and nginx in front (docs/scaling.md).
    profile: Literal["embedded", "scale"] = "embedded"
    #: Scale profile: event persister workers (the ``events`` stream, sharded by room).
    event_persisters: int = 2
    #: Scale profile: a PostgreSQL server you run (``postgresql://user:pw@host:5432/db``)
    #: instead of the private cluster in the data dir.
    postgres_url: str = ""
    #: Scale profile: the PostgreSQL of our services' stores (the rooms bot's, the
    #: automation service's hooks and outbox, the MCP audit log), each in its own schema;
    #: empty: the database ``datarooms`` of the private cluster, or ``postgres_url``'s.
    services_postgres_url: str = ""
    #: Scale profile: a Redis you run (``redis://host:6379``) instead of a private one.
    redis_url: str = ""
    #: Scale profile: the first of the internal TCP ports (Synapse's processes,
    #: PostgreSQL's socket, Redis); 0: ``port + 100``.
    internal_port_base: int = 0

    @property
    def base_url(self) -> str:
        if self.url:
            return self.url.rstrip("/")
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class AccountSettings:
    """The Matrix account the CLI and SDK act as.

    Empty in embedded mode means: the platform's service account, whose
    credentials ``datarooms up`` writes to ``<data_dir>/credentials.json``.
    """

    user_id: str = ""
    password: str = ""
    access_token: str = ""
    device_id: str = ""


@dataclass(frozen=True)
class FederationSettings:
    """``[federation]``: the embedded homeserver federates with other organisations'
    homeservers (docs/federation.md). Off by default."""

    #: Turn federation on: a TLS federation listener, and talking to the servers of ``allow``.
    enabled: bool = False
    #: Where the federation listener (TLS) listens. Peers reach it at the server name's
    #: host: with ``homeserver.server_name = "127.0.0.2:8448"``, port 8448 of 127.0.0.2.
    #: Empty: the server name's address if it is a loopback one, else 127.0.0.1.
    host: str = ""
    port: int = 8448
    #: The organisations (server names) this platform federates with, comma-separated;
    #: ``*`` for any server. Required when federation is on: who we federate with is a
    #: choice, not an accident. The platform's own server name is always allowed.
    allow: str = ""
    #: The local CA that organisations on one machine share (docs/federation.md); the
    #: platform creates it if missing and issues its server a certificate. Default:
    #: ``<data_dir>/ca``. Ignored when ``tls_cert_file`` is set.
    ca_dir: str = ""
    #: Production: your federation certificate (full chain, PEM) and its key. Peers are
    #: then verified against the system's CAs.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    #: How long the homeserver waits before retrying a peer it could not reach (a
    #: duration: ``5s``, ``10m``). Empty: 5 s with the local CA, Synapse's 10 minutes
    #: otherwise.
    retry_interval: str = ""
    #: The longest wait between such retries (it doubles up to this). Empty: 30 s with the
    #: local CA, 1 hour otherwise. Catch-up after a peer's outage takes up to this long,
    #: unless the peer contacts us first.
    retry_max_interval: str = ""

    @property
    def allowed(self) -> tuple[str, ...] | None:
        """The allowed server names; ``None`` for any server (``*``)."""
        names = tuple(dict.fromkeys(x.strip() for x in self.allow.split(",") if x.strip()))
        return None if "*" in names else names

    @property
    def local_ca(self) -> bool:
        return not self.tls_cert_file

    def check(self, server_name: str) -> None:
        _check_port("federation.port", self.port, zero=False)
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("federation.tls_cert_file and federation.tls_key_file go together")
        for name in ("retry_interval", "retry_max_interval"):
            value = getattr(self, name)
            if value and not re.fullmatch(r"[0-9]+(ms|s|m|h|d)?", value):
                raise ConfigError(
                    f"federation.{name} must be a duration such as 5s or 10m, got {value!r}"
                )
        names = [x.strip() for x in self.allow.split(",") if x.strip()]
        for name in names:
            if name != "*" and not SERVER_NAME.match(name):
                raise ConfigError(f"federation.allow: {name!r} is not a Matrix server name")
        if not self.enabled:
            return
        if not names:
            raise ConfigError(
                "federation is on but federation.allow names no organisation: list the "
                "server names you federate with (comma-separated), or '*' for any server"
            )
        host, _, port = server_name.rpartition(":") if ":" in server_name else (server_name, "", "")
        local = host == "localhost" or host.startswith("127.")
        if host == "localhost" or (local and not port):
            raise ConfigError(
                "federation needs a server name other servers can reach. For organisations "
                "on one machine give each a loopback address of its own and name the server "
                f"by it: homeserver.server_name = '127.0.0.2:{self.port}' "
                "(DATAROOMS_HOMESERVER_SERVER_NAME); 'localhost' cannot tell organisations "
                "apart in server ACLs, which match hosts, not ports"
            )
        if local and int(port) != self.port:
            raise ConfigError(
                f"homeserver.server_name {server_name!r} sends peers to port {port}, but the "
                f"federation listener is on port {self.port} (federation.port)"
            )

    def listen_host(self, server_name: str) -> str:
        """Where the listener binds: ``host``, else a loopback server name's own address."""
        if self.host:
            return self.host
        host = server_name.rpartition(":")[0] if ":" in server_name else server_name
        return host if host.startswith("127.") else "127.0.0.1"


def _check_port(where: str, port: int, *, zero: bool = True) -> None:
    low = 0 if zero else 1
    if not low <= port < 65536:
        raise ConfigError(f"{where} must be between {low} and 65535, got {port}")


def _check_homeservers(where: str, homeservers: Mapping[str, str]) -> None:
    for name, url in homeservers.items():
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(
                f"{where}: the URL of {name!r} must start with http:// or https://, got {url!r}"
            )


#: The largest request body the state bot accepts: a state event is at most 65,536
#: bytes, and JSON escaping can double what a value takes in the request.
STATEBOT_MAX_BODY_BYTES = 256 * 1024


@dataclass(frozen=True)
class StateBotSettings:
    """``[statebot]``: the state bot (docs/statebot.md)."""

    #: Listen address; loopback unless you put the bot behind a proxy.
    host: str = "127.0.0.1"
    #: Listen port; 0 picks a free one.
    port: int = 8010
    #: Extra homeservers whose users may call the bot: ``{server_name: base_url}``.
    #: The bot's own homeserver is always trusted.
    homeservers: Mapping[str, str] = field(default_factory=dict)
    #: How long a verified OpenID token is trusted without asking its homeserver again.
    token_cache_seconds: float = 300.0
    #: Accept invites from users of trusted homeservers by itself.
    auto_join: bool = True
    #: The bot account's localpart.
    localpart: str = "statebot"
    #: The largest request body accepted.
    max_body_bytes: int = STATEBOT_MAX_BODY_BYTES
    #: How often the bot looks for rooms whose access review is due (their
    #: ``io.datarooms.review`` schedule, docs/operations.md); 0: never.
    review_check_seconds: float = 300.0

    def check(self) -> None:
        _check_port("statebot.port", self.port)
        if self.review_check_seconds < 0:
            raise ConfigError(
                f"statebot.review_check_seconds must be 0 (off) or more, got "
                f"{self.review_check_seconds}"
            )
        if self.token_cache_seconds < 0 or self.token_cache_seconds > 3600:
            raise ConfigError(
                "statebot.token_cache_seconds must be between 0 and 3600 "
                "(OpenID tokens live one hour)"
            )
        if self.max_body_bytes < 1024:
            raise ConfigError(
                f"statebot.max_body_bytes must be at least 1024, got {self.max_body_bytes}"
            )
        _check_homeservers("statebot.homeservers", self.homeservers)


#: The largest request body of the claims service: a claim is at most 44 KiB of JSON.
CLAIMS_MAX_BODY_BYTES = 128 * 1024


@dataclass(frozen=True)
class ClaimsSettings:
    """``[claims]``: the claims service and the audit trail's anchoring (docs/evidence.md)."""

    #: Listen address; loopback unless you put the service behind a proxy.
    host: str = "127.0.0.1"
    #: Listen port; 0 picks a free one.
    port: int = 8013
    #: Extra homeservers whose users may call the service: ``{server_name: base_url}``.
    homeservers: Mapping[str, str] = field(default_factory=dict)
    #: How long a verified OpenID token is trusted without asking its homeserver again.
    token_cache_seconds: float = 300.0
    #: Accept invites from users of trusted homeservers by itself.
    auto_join: bool = True
    #: The bot account's localpart.
    localpart: str = "claimsbot"
    #: The largest request body accepted.
    max_body_bytes: int = CLAIMS_MAX_BODY_BYTES
    #: Anchor the audit trail of every room the bot is in this often (seconds; 0: only
    #: on demand, ``datarooms audit anchor``).
    anchor_interval_seconds: float = 0.0

    def check(self) -> None:
        _check_port("claims.port", self.port)
        if self.token_cache_seconds < 0 or self.token_cache_seconds > 3600:
            raise ConfigError(
                "claims.token_cache_seconds must be between 0 and 3600 "
                "(OpenID tokens live one hour)"
            )
        if self.max_body_bytes < 1024:
            raise ConfigError(
                f"claims.max_body_bytes must be at least 1024, got {self.max_body_bytes}"
            )
        if self.anchor_interval_seconds < 0 or (0 < self.anchor_interval_seconds < 1):
            raise ConfigError(
                "claims.anchor_interval_seconds must be 0 (on demand) or at least 1, got "
                f"{self.anchor_interval_seconds}"
            )
        _check_homeservers("claims.homeservers", self.homeservers)


@dataclass(frozen=True)
class RoomsBotSettings:
    """``[roomsbot]``: the rooms bot (docs/roomsbot.md)."""

    #: Where the appservice and REST API listen; the homeserver must reach this.
    host: str = "127.0.0.1"
    #: 0 picks a free port when the registration is first written, then keeps it.
    port: int = 8011
    #: The bot's Matrix user: ``@<sender_localpart>:<server>``.
    sender_localpart: str = "roomsbot"
    #: The data rooms every entity gets, comma-separated (``entity`` always comes first).
    room_kinds: str = "entity"
    #: Rooms created at once; the homeserver's CPU is the limit, not this.
    concurrency: int = 12
    #: Create an entity's rooms when someone asks for an alias that does not exist yet
    #: (only for a DID the bot knows, or finds on the chain).
    on_demand: bool = True
    #: Such creations for DIDs the bot did not know yet: at most this many a minute ...
    on_demand_per_minute: int = 60
    #: ... after a burst of this many.
    on_demand_burst: int = 10
    #: Matrix ids (comma-separated) allowed to invite anyone to any entity's rooms.
    operators: str = ""
    #: Other homeservers whose OpenID tokens the REST API accepts: ``{server_name: url}``
    #: (the same format as ``statebot.homeservers``).
    homeservers: Mapping[str, str] = field(default_factory=dict)
    #: Deprecated: ``name=url,...``; use ``homeservers``. Still read, with a warning.
    trusted_homeservers: str = ""
    #: Where clients (the SDK, for entity rooms) reach a rooms bot that this data dir
    #: does not run, e.g. ``https://rooms.example.org``. Empty: the running platform's.
    url: str = ""
    #: Other organisations' homeservers (comma-separated server names) whose ``@did-...``
    #: users are the DIDs' holders: their platforms reserve that namespace for their own
    #: rooms bot, as ours does. A controller DID's user there (``@did-ixo-X:<server>``),
    #: verified by its own homeserver, may ask for admin access to the entity's rooms.
    #: They must also be allowed by ``[federation] allow``.
    controller_servers: str = ""

    @property
    def controller_server_names(self) -> frozenset[str]:
        return frozenset(x.strip() for x in self.controller_servers.split(",") if x.strip())

    @property
    def kinds(self) -> tuple[str, ...]:
        from datarooms.events import ROOM_KINDS

        kinds = ["entity"]
        for raw in self.room_kinds.split(","):
            k = raw.strip()
            if not k or k in kinds:
                continue
            if k not in ROOM_KINDS:
                raise ConfigError(
                    f"roomsbot.room_kinds: unknown room kind {k!r}; choose from "
                    + ", ".join(ROOM_KINDS)
                )
            kinds.append(k)
        return tuple(kinds)

    @property
    def operator_ids(self) -> frozenset[str]:
        return frozenset(u.strip() for u in self.operators.split(",") if u.strip())

    @property
    def trusted_homeserver_urls(self) -> dict[str, str]:
        """``homeservers``, plus what the deprecated ``trusted_homeservers`` names."""
        out = _pairs("roomsbot.trusted_homeservers", self.trusted_homeservers)
        out.update({k: v.rstrip("/") for k, v in self.homeservers.items()})
        return out

    def check(self) -> None:
        _check_port("roomsbot.port", self.port)
        if self.concurrency < 1:
            raise ConfigError("roomsbot.concurrency must be at least 1")
        if self.on_demand_per_minute < 1 or self.on_demand_burst < 1:
            raise ConfigError(
                "roomsbot.on_demand_per_minute and roomsbot.on_demand_burst must be at least 1 "
                "(set roomsbot.on_demand = false to create no rooms on alias queries)"
            )
        if self.url and not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"roomsbot.url must start with http:// or https://, got {self.url!r}")
        _check_homeservers("roomsbot.homeservers", self.homeservers)
        self.kinds  # noqa: B018 - validates room_kinds
        self.trusted_homeserver_urls  # noqa: B018 - validates trusted_homeservers
        if self.trusted_homeservers:
            warnings.warn(
                "roomsbot.trusted_homeservers ('name=url,...') is deprecated: use "
                'roomsbot.homeservers, a table ({"name" = "url"}) or, in the environment, '
                "a JSON object, as for the state bot",
                FutureWarning,
                stacklevel=2,
            )


@dataclass(frozen=True)
class ChainSettings:
    """``[chain]``: the chain the rooms bot watches, and the embedded devchain (docs/chain.md)."""

    #: ``devchain``: run the embedded devchain (``datarooms up``) and watch it.
    #: ``external``: watch the node at ``rpc_url`` (a real IXO node).
    mode: Literal["devchain", "external"] = "devchain"
    #: CometBFT RPC of the node to watch, e.g. ``https://rpc.example.org``. Required in
    #: external mode; in devchain mode derived from ``host`` and ``port``.
    rpc_url: str = ""
    #: Where the devchain's RPC listens. Port 0 picks a free port at each start.
    host: str = "127.0.0.1"
    port: int = 26657
    chain_id: str = "datarooms-devchain"
    #: Seconds the devchain waits to batch transactions into a block.
    block_interval: float = 0.2
    #: Where the watcher starts when it has no saved height yet: 0 = the first block,
    #: -1 = the node's current height (only entities registered from now on), N = height N.
    start_height: int = 0
    #: Whether the rooms bot watches the chain at all (off: rooms on demand only).
    watch: bool = True

    def check(self) -> None:
        if self.mode == "external" and not self.rpc_url:
            raise ConfigError(
                "chain.mode is 'external' but chain.rpc_url is not set (DATAROOMS_CHAIN_RPC_URL)"
            )
        if self.rpc_url and not self.rpc_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"chain.rpc_url must start with http:// or https://, got {self.rpc_url!r}"
            )
        _check_port("chain.port", self.port)
        if self.block_interval <= 0:
            raise ConfigError(f"chain.block_interval must be positive, got {self.block_interval}")


#: The largest webhook body the automation service accepts by default.
AUTOMATION_MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class AutomationSettings:
    """``[automation]``: the automation service, inbound webhooks (docs/automation.md)."""

    #: Listen address; loopback unless senders reach it through a proxy.
    host: str = "127.0.0.1"
    #: Listen port; 0 picks a free one.
    port: int = 8014
    #: The bot account's localpart (its own E2EE device posts into the rooms).
    localpart: str = "automation"
    #: The largest request body accepted (413 above it).
    max_body_bytes: int = AUTOMATION_MAX_BODY_BYTES
    #: Requests per second a hook may send, after a burst of ``burst`` (429 above it).
    rate_per_hook: float = 20.0
    burst: float = 100.0
    #: How far a signed timestamp (the ``hmac`` method) may be from now, in seconds.
    replay_window_seconds: float = 300.0
    #: Accept room invites from users of this homeserver by itself.
    auto_join: bool = True
    #: Attempts at an outbound notification (backoff 0.5 s doubling) before it is
    #: reported failed.
    notify_attempts: int = 6

    def check(self) -> None:
        _check_port("automation.port", self.port)
        if not 1 <= self.notify_attempts <= 100:
            raise ConfigError("automation.notify_attempts must be between 1 and 100")
        if self.max_body_bytes < 1024 or self.max_body_bytes > 64 * 1024 * 1024:
            raise ConfigError(
                "automation.max_body_bytes must be between 1024 and 67108864, "
                f"got {self.max_body_bytes}"
            )
        if self.rate_per_hook <= 0 or self.burst < 1:
            raise ConfigError("automation.rate_per_hook must be > 0 and automation.burst >= 1")
        if not 1 <= self.replay_window_seconds <= 86400:
            raise ConfigError("automation.replay_window_seconds must be between 1 and 86400")


@dataclass(frozen=True)
class McpPlatformSettings:
    """``[mcp]`` of datarooms.toml: where ``datarooms up`` serves MCP (agents and the rest
    of the MCP settings live in ``<data_dir>/agents.toml``, docs/mcp.md)."""

    #: Overrides ``[mcp] port`` of agents.toml (0: any free port); unset: agents.toml's.
    port: int | None = None

    def check(self) -> None:
        if self.port is not None:
            _check_port("mcp.port", self.port)


#: The largest file the dashboard accepts in one upload.
DASHBOARD_MAX_UPLOAD_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class DashboardSettings:
    """``[dashboard]``: the web dashboard (docs/dashboard.md)."""

    #: Listen address; loopback unless you put the dashboard behind a TLS proxy.
    host: str = "127.0.0.1"
    #: Listen port; 0 picks a free one.
    port: int = 8015
    #: How long a sign-in lasts without use, in seconds.
    session_seconds: float = 8 * 3600.0
    #: The largest file accepted in one upload, in bytes.
    max_upload_bytes: int = DASHBOARD_MAX_UPLOAD_BYTES
    #: Ranges of telemetry longer than this (seconds) are charted from per-minute rollups.
    raw_range_seconds: float = 2 * 3600.0
    #: Points a chart gets at most (longer ranges are bucketed to fit).
    max_points: int = 2000

    def check(self) -> None:
        _check_port("dashboard.port", self.port)
        if not 60 <= self.session_seconds <= 30 * 86400:
            raise ConfigError(
                "dashboard.session_seconds must be between 60 and 2592000 (30 days), "
                f"got {self.session_seconds:g}"
            )
        if self.max_upload_bytes < 1024:
            raise ConfigError(
                f"dashboard.max_upload_bytes must be at least 1024, got {self.max_upload_bytes}"
            )
        if not 10 <= self.max_points <= 100_000:
            raise ConfigError(
                f"dashboard.max_points must be between 10 and 100000, got {self.max_points}"
            )
        if self.raw_range_seconds < 60:
            raise ConfigError(
                f"dashboard.raw_range_seconds must be at least 60, got {self.raw_range_seconds:g}"
            )


def _pairs(where: str, text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split(","):
        name, sep, url = item.strip().partition("=")
        if not item.strip():
            continue
        if not sep or not name or not url.startswith(("http://", "https://")):
            raise ConfigError(
                f"{where} must look like 'example.org=https://matrix.example.org,...', "
                f"got {item.strip()!r}"
            )
        out[name.strip()] = url.strip().rstrip("/")
    return out


@dataclass(frozen=True)
class Settings:
    data_dir: Path = DEFAULT_DATA_DIR
    log_level: str = "INFO"
    #: Which devices receive room keys: all, cross-signed (the spec's advice) or verified.
    trust_policy: str = "cross-signed"
    #: Which services `datarooms up` starts: "all", "none", or a comma-separated list of
    #: devchain, roomsbot, statebot, claims, mcp, automation, dashboard.
    services: str = "all"
    homeserver: HomeserverSettings = field(default_factory=HomeserverSettings)
    account: AccountSettings = field(default_factory=AccountSettings)
    statebot: StateBotSettings = field(default_factory=StateBotSettings)
    claims: ClaimsSettings = field(default_factory=ClaimsSettings)
    roomsbot: RoomsBotSettings = field(default_factory=RoomsBotSettings)
    chain: ChainSettings = field(default_factory=ChainSettings)
    mcp: McpPlatformSettings = field(default_factory=McpPlatformSettings)
    automation: AutomationSettings = field(default_factory=AutomationSettings)
    dashboard: DashboardSettings = field(default_factory=DashboardSettings)
    federation: FederationSettings = field(default_factory=FederationSettings)
    #: The file these settings were read from, if any.
    config_file: Path | None = None
    #: Raw tables of sections datarooms itself does not type (``[devchain]``,
    #: ``[telemetry]``): see :data:`RAW_SECTIONS`.
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def section(self, name: str) -> Mapping[str, Any]:
        """The raw ``[name]`` table (file values, then env overrides); for a typed section
        (``statebot``, ``roomsbot``, ``chain``, ``mcp``), its values as a mapping."""
        if name in _SECTIONS:
            return {f.name: getattr(getattr(self, name), f.name) for f in fields(_SECTIONS[name])}
        return self.sections.get(name, {})

    @property
    def credentials_file(self) -> Path:
        return self.data_dir / "credentials.json"

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def automation_dir(self) -> Path:
        """``<data_dir>/automation``: the hooks registry and the webhook outbox."""
        return self.data_dir / "automation"

    @property
    def synapse_dir(self) -> Path:
        return self.data_dir / "synapse"

    @property
    def ca_dir(self) -> Path:
        """The local federation CA (``federation.ca_dir``, default ``<data_dir>/ca``)."""
        ca = self.federation.ca_dir
        return Path(ca).expanduser() if ca else self.data_dir / "ca"

    def running_url(self, service: str) -> str | None:
        """Where the ``service`` of the platform on this data dir listens, if it runs: the
        ``url`` of ``<data_dir>/run/<service>.json``, while the process that wrote it lives."""
        try:
            info = json.loads((self.run_dir / f"{service}.json").read_text())
            pid, url = int(info["pid"]), str(info["url"])
            os.kill(pid, 0)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return url

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain data, with secrets masked."""
        masked: dict[str, Any] = _to_masked_dict(self)
        return masked


_SECTIONS: dict[str, type[Any]] = {
    "homeserver": HomeserverSettings,
    "account": AccountSettings,
    "statebot": StateBotSettings,
    "claims": ClaimsSettings,
    "roomsbot": RoomsBotSettings,
    "chain": ChainSettings,
    "mcp": McpPlatformSettings,
    "automation": AutomationSettings,
    "dashboard": DashboardSettings,
    "federation": FederationSettings,
}
#: Typed sections whose ``DATAROOMS_<SECTION>_*`` namespace other tools share (the CLI's
#: ``DATAROOMS_STATEBOT_URL``): there, an unknown variable is not an error.
_SHARED_ENV = frozenset({"statebot", "claims", "roomsbot", "chain", "mcp", "dashboard"})
_TOP_LEVEL = {"data_dir", "log_level", "trust_policy", "services"}
#: The services `datarooms up` can run, in start order.
PLATFORM_SERVICES = ("devchain", "roomsbot", "statebot", "claims", "mcp", "automation", "dashboard")
#: Tables accepted as they are, for the code that reads them.
RAW_SECTIONS = ("devchain", "telemetry")
#: Every section of the config file that belongs to a service, typed or not.
SERVICE_SECTIONS = (
    "statebot",
    "claims",
    "mcp",
    "roomsbot",
    "chain",
    "automation",
    "dashboard",
    *RAW_SECTIONS,
)


def load_settings(
    *,
    data_dir: Path | str | None = None,
    config_file: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Build the effective settings. Raises :class:`ConfigError` with a clear message."""
    env = os.environ if env is None else env

    explicit_cfg = config_file or env.get(ENV_PREFIX + "CONFIG") or None
    file_data: dict[str, Any] = {}
    cfg_path: Path | None = None
    if explicit_cfg:
        cfg_path = Path(explicit_cfg).expanduser()
        if not cfg_path.is_file():
            raise ConfigError(f"config file {cfg_path} does not exist")
        file_data = _read_toml(cfg_path)

    # The data dir decides where the default config file lives.
    dd: Path | str | None = data_dir or env.get(ENV_PREFIX + "DATA_DIR") or None
    if dd is None and "data_dir" in file_data:
        dd = file_data["data_dir"]
        if cfg_path is not None and not Path(dd).expanduser().is_absolute():
            dd = cfg_path.parent / dd
    resolved_dd = Path(dd).expanduser() if dd else DEFAULT_DATA_DIR
    if cfg_path is None and (resolved_dd / CONFIG_FILE_NAME).is_file():
        cfg_path = resolved_dd / CONFIG_FILE_NAME
        file_data = _read_toml(cfg_path)

    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    services: dict[str, dict[str, Any]] = {}
    for key, value in file_data.items():
        if key in RAW_SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{cfg_path}: [{key}] must be a table")
            services.setdefault(key, {}).update(value)
        elif key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{cfg_path}: [{key}] must be a table")
            sections[key].update(value)
        elif key in _TOP_LEVEL:
            top[key] = value
        else:
            raise ConfigError(
                f"{cfg_path}: unknown setting {key!r}; known: "
                + ", ".join(sorted(_TOP_LEVEL | set(_SECTIONS) | set(RAW_SECTIONS)))
            )

    for name, raw in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        if rest in _TOP_LEVEL:
            top[rest] = raw
            continue
        section, _, fname = rest.partition("_")
        if section in _SECTIONS and fname:
            if section in _SHARED_ENV and fname not in _FIELDS[section]:
                continue  # another tool's variable (DATAROOMS_STATEBOT_URL)
            sections[section][fname] = raw
        elif section in RAW_SECTIONS and fname:
            services.setdefault(section, {})[fname] = raw
        # Other DATAROOMS_* variables belong to other tools; ignore them.

    for section, values in (overrides or {}).items():
        sections.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})

    top["data_dir"] = resolved_dd
    built = {name: _build(cls, sections[name], f"[{name}]") for name, cls in _SECTIONS.items()}
    settings: Settings = _build(
        Settings, {**top, **built, "config_file": cfg_path, "sections": services}, "settings"
    )
    _check(settings)
    return settings


_FIELDS = {name: frozenset(f.name for f in fields(cls)) for name, cls in _SECTIONS.items()}


def load_section(
    cls: type[_T],
    name: str,
    values: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> _T:
    """One typed section from raw ``values`` (a TOML table), then ``DATAROOMS_<NAME>_<FIELD>``
    of ``env``: what :func:`load_settings` does for each section, for code that has no
    :class:`Settings` (a service started on its own)."""
    merged = dict(values or {})
    prefix = f"{ENV_PREFIX}{name.upper()}_"
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    for var, raw in (os.environ if env is None else env).items():
        if var.startswith(prefix) and var[len(prefix) :].lower() in known:
            merged[var[len(prefix) :].lower()] = raw
    built: _T = _build(cls, merged, f"[{name}]")
    check = getattr(built, "check", None)
    if check is not None:
        check()
    return built


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data: dict[str, Any] = tomllib.load(fh)
            return data
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc


def _build(cls: type[Any], values: dict[str, Any], where: str) -> Any:
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(known))}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        kwargs[name] = _coerce(hints[name], value, f"{where} {name}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return value
    if hint is Path or hint == (Path | None):
        return None if value is None else Path(value).expanduser()
    origin_args = get_args(hint)
    if get_origin(hint) in (Mapping, dict) or hint is Mapping:
        return _mapping(value, where)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in {"1", "true", "yes", "on"}:
            return True
        if str(value).lower() in {"0", "false", "no", "off"}:
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint == (int | None):
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        hint = int
    if hint is int:
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a whole number, got {value!r}") from None
    if hint is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        return str(value)
    if origin_args and all(isinstance(a, str) for a in origin_args):  # Literal[...]
        if value not in origin_args:
            raise ConfigError(f"{where}: must be one of {', '.join(origin_args)}, got {value!r}")
        return value
    return value


def _mapping(value: Any, where: str) -> dict[str, str]:
    """A ``{name: url}`` map: a TOML table, or (from the environment) a JSON object."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return {}
        if not text.startswith("{"):
            raise ConfigError(
                f"{where}: expected a JSON object such as "
                '\'{"example.org": "https://matrix.example.org"}\', got text'
            )
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(f"{where}: expected a table of names to URLs (text to text)")
    return dict(value)


def _check(s: Settings) -> None:
    hs = s.homeserver
    if hs.mode == "external" and not hs.url:
        raise ConfigError(
            "homeserver.mode is 'external' but homeserver.url is not set; "
            "set it in the config file or DATAROOMS_HOMESERVER_URL"
        )
    if hs.url and not hs.url.startswith(("http://", "https://")):
        raise ConfigError(f"homeserver.url must start with http:// or https://, got {hs.url!r}")
    if not 0 < hs.port < 65536:
        raise ConfigError(f"homeserver.port must be between 1 and 65535, got {hs.port}")
    _check_profile(s)
    wanted = {x.strip() for x in s.services.split(",") if x.strip()}
    if not wanted <= {"all", "none", *PLATFORM_SERVICES}:
        raise ConfigError(
            f"services must be all, none or a list of {', '.join(PLATFORM_SERVICES)}; "
            f"got {s.services!r}"
        )
    if s.trust_policy not in ("all", "cross-signed", "verified"):
        raise ConfigError(
            f"trust_policy must be all, cross-signed or verified, got {s.trust_policy!r}"
        )
    if s.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"log_level must be DEBUG, INFO, WARNING or ERROR, got {s.log_level!r}")
    if s.account.user_id and not (s.account.user_id.startswith("@") and ":" in s.account.user_id):
        raise ConfigError(f"account.user_id must look like @name:server, got {s.account.user_id!r}")
    for section in (s.statebot, s.claims, s.roomsbot, s.chain, s.mcp, s.automation, s.dashboard):
        section.check()
    s.federation.check(hs.server_name)
    if s.federation.enabled and hs.mode == "external":
        raise ConfigError(
            "federation.enabled configures the embedded homeserver; an external homeserver "
            "federates as its own config says"
        )


def _check_profile(s: Settings) -> None:
    hs = s.homeserver
    if hs.profile != "scale":
        return
    if hs.mode != "embedded":
        raise ConfigError(
            "homeserver.profile = 'scale' starts Synapse with workers; an external homeserver "
            "(homeserver.mode = 'external') is scaled as its own operator decides"
        )
    if not 1 <= hs.event_persisters <= 16:
        raise ConfigError(
            f"homeserver.event_persisters must be between 1 and 16, got {hs.event_persisters}"
        )
    base = hs.internal_port_base or hs.port + 100
    if not 1024 <= base <= 65535 - 32:
        raise ConfigError(
            f"homeserver.internal_port_base must be between 1024 and 65503, got {base}"
        )
    if hs.postgres_url and not hs.postgres_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("homeserver.postgres_url must start with postgresql://")
    if hs.services_postgres_url and not hs.services_postgres_url.startswith(
        ("postgresql://", "postgres://")
    ):
        raise ConfigError("homeserver.services_postgres_url must start with postgresql://")
    if hs.redis_url and not hs.redis_url.startswith("redis://"):
        raise ConfigError("homeserver.redis_url must start with redis://")
    if s.federation.enabled:
        raise ConfigError(
            "federation is not available with homeserver.profile = 'scale' yet: it needs a "
            "federation reader worker and a TLS listener on nginx (docs/scaling.md)"
        )


def mask_secret(value: str) -> str:
    if not value:
        return ""
    return "***"


#: A field or map key whose value is a secret, whatever the section (service tokens,
#: appservice hs/as tokens, passwords, shared secrets, keys).
_SECRET_NAME = re.compile(r"(token|secret|password|passphrase|private_key|pickle_key)", re.I)
_URL_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")


def _mask_value(name: str, value: Any) -> Any:
    if isinstance(value, str):
        if name in SECRET_FIELDS or _SECRET_NAME.search(name):
            return mask_secret(value)
        # user:password@ in a URL (a chain node, a homeserver, a webhook) is a secret too
        return _URL_USERINFO.sub(r"\1***@", value)
    return _to_masked_dict(value)


def _to_masked_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _mask_value(f.name, getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _mask_value(str(k), v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_mask_value("", v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
