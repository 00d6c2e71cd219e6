"""Prometheus metrics of the rooms bot (``GET /metrics``), in a registry of its own."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from datarooms.chain.watcher import WatcherStatus
from datarooms.services.scaffold import http_metrics


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rooms_created = Counter(
            "roomsbot_rooms_created_total", "Rooms and spaces the bot created", ["kind"], registry=r
        )
        self.rooms_recovered = Counter(
            "roomsbot_rooms_recovered_total",
            "Rooms found by their alias after an interrupted creation",
            ["kind"],
            registry=r,
        )
        self.entities_updated = Counter(
            "roomsbot_entities_updated_total",
            "Entities whose rooms got new controllers or facts",
            registry=r,
        )
        self.entity_seconds = Histogram(
            "roomsbot_entity_create_seconds",
            "Time to create an entity's rooms and space",
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.alias_queries = Counter(
            "roomsbot_alias_queries_total",
            "Alias queries from the homeserver",
            ["result"],
            registry=r,
        )
        self.as_transactions = Counter(
            "roomsbot_as_transactions_total",
            "Appservice transactions received",
            ["result"],
            registry=r,
        )
        self.as_events = Counter(
            "roomsbot_as_events_total", "Events received in appservice transactions", registry=r
        )
        #: ``roomsbot_requests_total`` and ``roomsbot_request_duration_seconds`` (the REST
        #: API and the appservice API alike, by route template).
        self.http = http_metrics("roomsbot", r)

    def watch(
        self, status: Callable[[], WatcherStatus | None], entities: Callable[[], int]
    ) -> None:
        self.registry.register(_StatusCollector(status, entities))


class _StatusCollector(Collector):
    def __init__(
        self, status: Callable[[], WatcherStatus | None], entities: Callable[[], int]
    ) -> None:
        self._status = status
        self._entities = entities

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("roomsbot_entities", "Entities with rooms", value=self._entities())
        st = self._status()
        if st is None:
            return
        for name, doc, value in (
            (
                "roomsbot_chain_connected",
                "1 while subscribed to the chain node",
                1 if st.connected else 0,
            ),
            ("roomsbot_chain_height", "The chain node's latest height", st.chain_height),
            (
                "roomsbot_chain_processed_height",
                "Every entity up to this height is handled",
                st.height,
            ),
            ("roomsbot_chain_entities_handled", "Entities handled since start", st.handled),
            ("roomsbot_chain_events_skipped", "Malformed events skipped since start", st.skipped),
            (
                "roomsbot_chain_reconnects",
                "Reconnections to the chain node since start",
                st.reconnects,
            ),
            ("roomsbot_chain_pending", "Transactions being handled", st.pending),
        ):
            yield GaugeMetricFamily(name, doc, value=value)
