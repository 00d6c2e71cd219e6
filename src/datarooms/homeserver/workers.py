"""The worker topology of the scale profile, and nginx's routes to it.

What runs (Synapse's ``docs/workers.md``; every process listens on TCP, so moving one to
another machine is a change of its ``host`` here and in nginx's upstreams):

=====================  ==========================================================
``main``               Synapse's main process: what no worker handles (admin API,
                       ``/_synapse/client``, the rest); replication listener for
                       the workers (``instance_map.main``)
``client1``            generic worker: the client API reads, event creation, keys,
                       login/register (the regexes of workers.md, but sync)
``sync1``              generic worker: ``/sync``, ``/events``, ``/initialSync``
``persister1..N``      event persisters: ``stream_writers.events`` sharded by room
``federation_sender1`` ``federation_sender_instances``, only with federation (which the
                       scale profile does not offer yet: without it, no sender runs)
``media1``             the media repository (``enable_media_repo: false`` on main)
``appservice1``        ``notify_appservices_from_worker``: transactions to the bots
=====================  ==========================================================

nginx routes the endpoints exactly as workers.md lists them; the lists are below.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: workers.md, "Sync requests".
SYNC_ROUTES = (
    r"^/_matrix/client/(r0|v3)/sync$",
    r"^/_matrix/client/(api/v1|r0|v3)/events$",
    r"^/_matrix/client/(api/v1|r0|v3)/initialSync$",
    r"^/_matrix/client/(api/v1|r0|v3)/rooms/[^/]+/initialSync$",
)

#: workers.md, generic_worker: client API, encryption, registration/login, event sending,
#: user directory search (the federation requests are not served: no federation listener).
CLIENT_ROUTES = (
    # Client API requests
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/createRoom$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/publicRooms$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/joined_members$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/context/.*$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/members$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/state$",
    r"^/_matrix/client/v1/rooms/.*/hierarchy$",
    r"^/_matrix/client/(v1|unstable)/rooms/.*/relations/",
    r"^/_matrix/client/v1/rooms/.*/threads$",
    r"^/_matrix/client/unstable/im.nheko.summary/summary/.*$",
    r"^/_matrix/client/(r0|v3|unstable)/account/3pid$",
    r"^/_matrix/client/(r0|v3|unstable)/account/whoami$",
    r"^/_matrix/client/(r0|v3|unstable)/account/deactivate$",
    r"^/_matrix/client/(r0|v3)/delete_devices$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/devices(/|$)",
    r"^/_matrix/client/versions$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/voip/turnServer$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/event/",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/joined_rooms$",
    r"^/_matrix/client/v1/rooms/.*/timestamp_to_event$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable/.*)/rooms/.*/aliases",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/search$",
    r"^/_matrix/client/(r0|v3|unstable)/user/.*/filter(/|$)",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/directory/room/.*$",
    r"^/_matrix/client/(r0|v3|unstable)/capabilities$",
    r"^/_matrix/client/(r0|v3|unstable)/notifications$",
    r"^/_synapse/admin/v1/rooms/[^/]+$",
    # Encryption requests
    r"^/_matrix/client/(r0|v3|unstable)/keys/query$",
    r"^/_matrix/client/(r0|v3|unstable)/keys/changes$",
    r"^/_matrix/client/(r0|v3|unstable)/keys/claim$",
    r"^/_matrix/client/(r0|v3|unstable)/room_keys/",
    r"^/_matrix/client/(r0|v3|unstable)/keys/upload",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/keys/device_signing/upload$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/keys/signatures/upload$",
    # Registration/login requests
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/login$",
    r"^/_matrix/client/(r0|v3|unstable)/register$",
    r"^/_matrix/client/(r0|v3|unstable)/register/available$",
    r"^/_matrix/client/v1/register/m.login.registration_token/validity$",
    r"^/_matrix/client/(r0|v3|unstable)/password_policy$",
    # Event sending requests
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/redact",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/send",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/state/",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/rooms/.*/(join|invite|leave|ban|unban|kick)$",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/join/",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/knock/",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/profile/",
    # User directory search requests
    r"^/_matrix/client/(r0|v3|unstable)/user_directory/search$",
)

#: workers.md: "the following REST endpoints can be handled for GET requests" (the
#: others, PUT and POST, go to the stream's writer: the main process here).
CLIENT_GET_ROUTES = (
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/pushrules/",
    r"^/_matrix/client/unstable/org.matrix.msc4140/delayed_events",
    r"^/_matrix/client/(r0|v3|unstable)/.*/tags",
    r"^/_matrix/client/(r0|v3|unstable)/.*/account_data",
    r"^/_matrix/client/(api/v1|r0|v3|unstable)/presence/",
)

#: workers.md, media_repository: every endpoint under these prefixes ...
MEDIA_PREFIXES = (
    "/_matrix/media/",
    "/_matrix/client/v1/media/",
    "/_matrix/federation/v1/media/",
    "/_synapse/media/",
)
#: ... and the media administration APIs.
MEDIA_ADMIN_ROUTES = (
    r"^/_synapse/admin/v1/purge_media_cache$",
    r"^/_synapse/admin/v1/room/.*/media.*$",
    r"^/_synapse/admin/v1/user/.*/media.*$",
    r"^/_synapse/admin/v1/media/.*$",
    r"^/_synapse/admin/v1/quarantine_media/.*$",
    r"^/_synapse/admin/v1/users/.*/media$",
)

ROLES = ("client", "sync", "event_persister", "federation_sender", "media", "appservice")


@dataclass(frozen=True)
class Worker:
    """One Synapse worker process: its name, what it does, where it listens."""

    name: str
    role: str
    port: int
    host: str = "127.0.0.1"

    @property
    def resources(self) -> list[str]:
        return {
            "client": ["client"],
            "sync": ["client"],
            "event_persister": ["replication"],
            "media": ["media"],
        }.get(self.role, ["health"])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def render(self, directory: Path) -> dict[str, Any]:
        """The worker's own config file (read after the shared homeserver.yaml)."""
        config: dict[str, Any] = {
            "worker_app": "synapse.app.generic_worker",
            "worker_name": self.name,
            "worker_listeners": [
                {
                    "type": "http",
                    "port": self.port,
                    "bind_addresses": [self.host],
                    "x_forwarded": True,
                    "resources": [{"names": self.resources, "compress": False}],
                }
            ],
            "worker_log_config": str(directory / f"{self.name}.log.config"),
            "pid_file": str(directory / f"{self.name}.pid"),
        }
        if self.role == "media":
            config["enable_media_repo"] = True
        return config


@dataclass(frozen=True)
class Topology:
    """Where the main process and each worker listen."""

    host: str
    main_port: int
    replication_port: int
    workers: tuple[Worker, ...]

    @classmethod
    def build(
        cls,
        ports: Iterator[int],
        *,
        persisters: int = 2,
        host: str = "127.0.0.1",
        federation: bool = False,
    ) -> Topology:
        """The processes and their ports. ``federation``: with a federation sender (its
        port is reserved either way, so the ports after it never move)."""
        if persisters < 1:
            raise ValueError("the scale profile needs at least one event persister")
        main, replication = next(ports), next(ports)
        workers = [
            Worker("client1", "client", next(ports), host),
            Worker("sync1", "sync", next(ports), host),
            *(
                Worker(f"persister{i}", "event_persister", next(ports), host)
                for i in range(1, persisters + 1)
            ),
        ]
        # Without federation, a sender would still work out every new event's
        # destinations (none): a third of an entity's Synapse CPU on the embedded
        # homeserver (bench/roomsbot.py), as much again here in a process of its own.
        sender_port = next(ports)
        if federation:
            workers.append(Worker("federation_sender1", "federation_sender", sender_port, host))
        workers += [
            Worker("media1", "media", next(ports), host),
            Worker("appservice1", "appservice", next(ports), host),
        ]
        return cls(host, main, replication, tuple(workers))

    def by_role(self, role: str) -> list[Worker]:
        return [w for w in self.workers if w.role == role]

    def one(self, role: str) -> Worker:
        return self.by_role(role)[0]

    @property
    def persisters(self) -> list[str]:
        return [w.name for w in self.by_role("event_persister")]

    def shared_config(self, replication_secret: str) -> dict[str, Any]:
        """What homeserver.yaml (read by every process) says about the workers."""
        instance_map: dict[str, Any] = {"main": {"host": self.host, "port": self.replication_port}}
        for w in self.by_role("event_persister"):
            instance_map[w.name] = {"host": w.host, "port": w.port}
        return {
            "instance_map": instance_map,
            "stream_writers": {"events": self.persisters},
            "federation_sender_instances": [w.name for w in self.by_role("federation_sender")],
            "notify_appservices_from_worker": self.one("appservice").name,
            "enable_media_repo": False,
            "media_instance_running_background_jobs": self.one("media").name,
            "worker_replication_secret": replication_secret,
        }

    def main_listeners(self) -> list[dict[str, Any]]:
        return [
            {
                "port": self.main_port,
                "bind_addresses": [self.host],
                "type": "http",
                "tls": False,
                "x_forwarded": True,
                "resources": [{"names": ["client", "openid"], "compress": False}],
            },
            {
                "port": self.replication_port,
                "bind_addresses": [self.host],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["replication"], "compress": False}],
            },
        ]

    def worker_of(self, address: str) -> str | None:
        """The process behind ``host:port`` (nginx's ``$upstream_addr``)."""
        if address == f"{self.host}:{self.main_port}":
            return "main"
        for w in self.workers:
            if address == f"{w.host}:{w.port}":
                return w.name
        return None


#: nginx's access log: which upstream served each request (tests and operators read it).
ACCESS_LOG_FORMAT = (
    '$remote_addr [$time_iso8601] "$request_method $uri" $status $upstream_addr $request_time'
)


def render_nginx(
    topology: Topology,
    directory: Path,
    *,
    listen_host: str,
    listen_port: int,
    max_body: str,
    as_root: bool,
) -> str:
    """nginx.conf for the reverse proxy in front of Synapse's processes."""

    def upstream(name: str, servers: list[tuple[str, int]]) -> str:
        lines = [f"    upstream {name} {{"]
        lines += [f"        server {h}:{p};" for h, p in servers]
        lines += ["        keepalive 16;", "    }"]
        return "\n".join(lines)

    t = topology
    client, sync, media = t.one("client"), t.one("sync"), t.one("media")
    tmp = directory / "tmp"
    locations: list[str] = []
    for prefix in MEDIA_PREFIXES:
        locations.append(f"        location ^~ {prefix} {{ proxy_pass http://synapse_media; }}")
    for rx in SYNC_ROUTES:
        locations.append(f"        location ~ {rx} {{ proxy_pass http://synapse_sync; }}")
    for rx in MEDIA_ADMIN_ROUTES:
        locations.append(f"        location ~ {rx} {{ proxy_pass http://synapse_media; }}")
    for rx in CLIENT_ROUTES:
        locations.append(f"        location ~ {rx} {{ proxy_pass http://synapse_client; }}")
    for rx in CLIENT_GET_ROUTES:
        locations.append(f"        location ~ {rx} {{ proxy_pass http://$synapse_reads; }}")
    locations.append("        location / { proxy_pass http://synapse_main; }")
    head = ["user root;"] if as_root else []  # its workers write the temp files below
    return "\n".join(
        [
            *head,
            "worker_processes 1;",
            "daemon off;",
            f"pid {directory / 'nginx.pid'};",
            f"error_log {directory / 'error.log'} warn;",
            "events { worker_connections 4096; }",
            "http {",
            f"    log_format scale '{ACCESS_LOG_FORMAT}';",
            f"    access_log {directory / 'access.log'} scale;",
            f"    client_body_temp_path {tmp / 'body'};",
            f"    proxy_temp_path {tmp / 'proxy'};",
            f"    fastcgi_temp_path {tmp / 'fastcgi'};",
            f"    uwsgi_temp_path {tmp / 'uwsgi'};",
            f"    scgi_temp_path {tmp / 'scgi'};",
            f"    client_max_body_size {max_body};",
            "    proxy_http_version 1.1;",
            '    proxy_set_header Connection "";',
            "    proxy_set_header Host $host;",
            "    proxy_set_header X-Forwarded-For $remote_addr;",
            "    proxy_set_header X-Forwarded-Proto $scheme;",
            "    proxy_read_timeout 600s;",
            "    proxy_send_timeout 600s;",
            "    proxy_request_buffering off;",
            "    proxy_buffering off;",
            "    server_tokens off;",
            upstream("synapse_main", [(t.host, t.main_port)]),
            upstream("synapse_client", [(client.host, client.port)]),
            upstream("synapse_sync", [(sync.host, sync.port)]),
            upstream("synapse_media", [(media.host, media.port)]),
            "    map $request_method $synapse_reads {",
            "        GET synapse_client;",
            "        HEAD synapse_client;",
            "        default synapse_main;",
            "    }",
            "    server {",
            f"        listen {listen_host}:{listen_port};",
            *locations,
            "    }",
            "}",
            "",
        ]
    )
