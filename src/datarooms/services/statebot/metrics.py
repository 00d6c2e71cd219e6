"""Prometheus metrics of one state bot (its own registry, so several can share a process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """``statebot_*`` series, served at ``GET /metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "statebot_requests",
            "HTTP requests answered, by route and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "statebot_request_duration_seconds",
            "Time to answer a request, by route",
            ["method", "route"],
            buckets=_BUCKETS,
            registry=r,
        )
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

    def watch(self, rooms: Callable[[], float], token_cache: Callable[[], float]) -> None:
        self.rooms.set_function(rooms)
        self.token_cache.set_function(token_cache)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
