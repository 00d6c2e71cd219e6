"""Telemetry: durable, end-to-end encrypted, batched time series in data rooms.

::

    from datarooms.sdk.telemetry import Telemetry

    tel = Telemetry(client)                  # client: an open DataroomsClient
    await tel.append(room, "temperature", 21.5, tags={"site": "a"})
    await tel.append_many(room, [(ts, "pressure", 1.013), ...])
    await tel.flush()                        # optional: wait for the homeserver
    rows = await tel.query(room, "temperature", since=t0, until=t1)
    buckets = await tel.aggregate(room, "temperature", since=t0, until=t1, step=60_000)
    async for sample in tel.subscribe(room):
        ...

Synchronous programs use :class:`TelemetryThread` (the device runs in a thread).
The batch event format is specified in docs/telemetry.md.
"""

from __future__ import annotations

from datarooms.sdk.telemetry.api import Telemetry, TelemetryConfig, TelemetryStatus
from datarooms.sdk.telemetry.encoding import BatchFormatError, decode_batch, encode_batch
from datarooms.sdk.telemetry.model import Bucket, Sample, SeriesInfo
from datarooms.sdk.telemetry.outbox import OutboxFullError, OutboxLockedError
from datarooms.sdk.telemetry.reader import SubscriptionLagError
from datarooms.sdk.telemetry.schema import BATCH_SCHEMA, TELEMETRY_BATCH
from datarooms.sdk.telemetry.threaded import TelemetryThread

__all__ = [
    "BATCH_SCHEMA",
    "TELEMETRY_BATCH",
    "BatchFormatError",
    "Bucket",
    "OutboxFullError",
    "OutboxLockedError",
    "Sample",
    "SeriesInfo",
    "SubscriptionLagError",
    "Telemetry",
    "TelemetryConfig",
    "TelemetryStatus",
    "TelemetryThread",
    "decode_batch",
    "encode_batch",
]
