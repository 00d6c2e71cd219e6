"""Prometheus metrics of one state bot (its own registry, so several can share a process)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from datarooms.services.scaffold import http_metrics

#: Room sizes (datarooms.sdk.usage) as gauges, one series a room the bot is in.
ROOM_SIZES = {
    "record_keys": ("keys", "Record keys in the room"),
    "record_versions": ("versions", "Record versions in the room"),
    "files": ("files", "Files in the room"),
    "file_bytes": ("file_bytes", "Bytes of the room's encrypted files"),
    "telemetry_samples": ("telemetry_samples", "Raw telemetry samples of the room indexed"),
    "index_bytes": ("index_bytes", "Bytes the bot's indexes spend on the room (estimate)"),
    "members": ("members", "Joined members of the room"),
}


class _RoomSizes:
    """A collector: reads the sizes when Prometheus scrapes, not before."""

    def __init__(self, usage: Callable[[], Sequence[Any]]) -> None:
        self._usage = usage

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        rows = self._usage()
        for name, (attr, doc) in ROOM_SIZES.items():
            family = GaugeMetricFamily(f"datarooms_room_{name}", doc, labels=["room"])
            for row in rows:
                family.add_metric([row.room_id], float(getattr(row, attr)))
            yield family


class Metrics:
    """``statebot_*`` series, served at ``GET /metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        #: ``statebot_requests_total`` and ``statebot_request_duration_seconds``.
        self.http = http_metrics("statebot", r)
        self.auth = Counter(
            "statebot_auth",
            "OpenID token checks: cached, verified, rejected, missing, limited",
            ["result"],
            registry=r,
        )
        self.writes = Counter(
            "statebot_writes",
            "State events written: clear, secure, acl",
            ["kind"],
            registry=r,
        )
        self.rooms = Gauge("statebot_rooms_joined", "Rooms the bot is in", registry=r)
        self.token_cache = Gauge(
            "statebot_token_cache_entries", "Entries in the OpenID token cache", registry=r
        )

    def watch(
        self,
        rooms: Callable[[], float],
        token_cache: Callable[[], float],
        room_sizes: Callable[[], Sequence[Any]] | None = None,
    ) -> None:
        self.rooms.set_function(rooms)
        self.token_cache.set_function(token_cache)
        if room_sizes is not None:
            self.registry.register(_RoomSizes(room_sizes))
