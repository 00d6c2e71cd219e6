"""Prometheus metrics of one automation service (its own registry)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from datarooms.services.scaffold import http_metrics

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """``automation_*`` series, served at ``GET /metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        #: ``automation_requests_total`` and ``automation_request_duration_seconds``.
        self.http = http_metrics("automation", r)
        self.hooks = Counter(
            "automation_webhooks",
            "Webhook requests by result: queued, duplicate, refused",
            ["format", "result"],
            registry=r,
        )
        self.delivered = Counter(
            "automation_deliveries", "Deliveries posted into rooms, by kind", ["kind"], registry=r
        )
        self.delivery_seconds = Histogram(
            "automation_delivery_seconds",
            "From a webhook's receipt to its event in the room",
            buckets=_BUCKETS,
            registry=r,
        )
        self.pending = Gauge(
            "automation_outbox_pending", "Deliveries waiting in the outbox", registry=r
        )
        self.failed = Gauge("automation_outbox_failed", "Deliveries refused for good", registry=r)

    def watch(self, pending: Callable[[], float], failed: Callable[[], float]) -> None:
        self.pending.set_function(pending)
        self.failed.set_function(failed)
