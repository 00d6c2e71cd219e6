"""Tools for telemetry: series, raw samples, aggregates, appends (encrypted time series)."""

from __future__ import annotations

import heapq
import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from datarooms.errors import ValidationError
from datarooms.sdk.telemetry import Bucket, Sample
from datarooms.sdk.telemetry.model import now_ms
from datarooms.services.mcp.reading import iso, parse_time
from datarooms.services.mcp.tools._common import MetricArg, RoomArg, TagsArg, TimeArg, ToolBase

#: Most samples one query_telemetry call returns, and buckets one aggregate_telemetry call.
MAX_TELEMETRY_SAMPLES = 10_000
MAX_TELEMETRY_BUCKETS = 10_000
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class TelemetrySampleArg(BaseModel):
    """One sample for append_telemetry."""

    model_config = ConfigDict(extra="forbid")

    metric: MetricArg
    value: Annotated[float, Field(description="The measured value (a finite number)")]
    ts: Annotated[
        str | int | None,
        Field(description="When: ISO 8601 time or milliseconds since the epoch; default now"),
    ] = None
    tags: Annotated[
        dict[str, str] | None, Field(description='Labels of the series, e.g. {"site": "a"}')
    ] = None


class TelemetryTools(ToolBase):
    """Telemetry (end-to-end encrypted time series)."""

    async def telemetry_series(
        self,
        room: RoomArg,
        metric: Annotated[str | None, Field(description="Only this metric's series")] = None,
    ) -> dict[str, Any]:
        """List a room's telemetry series (metric + tags) with sample counts and first/last
        sample times. Call this first to learn which metrics query_telemetry and
        aggregate_telemetry can read."""
        rid = await self.rt.room(room)
        infos = await self._c.telemetry.series(rid, metric)
        return {
            "room_id": rid,
            "series": [
                {
                    "metric": i.metric,
                    "tags": dict(i.tags),
                    "count": i.count,
                    "first_ts": i.first_ts,
                    "first_time": iso(i.first_ts),
                    "last_ts": i.last_ts,
                    "last_time": iso(i.last_ts),
                }
                for i in infos
            ],
        }

    async def query_telemetry(
        self,
        room: RoomArg,
        metric: Annotated[
            str | None,
            Field(
                description="Only this metric (e.g. 'temperature'); omit for every metric",
                min_length=1,
                max_length=255,
            ),
        ] = None,
        since: TimeArg = None,
        until: TimeArg = None,
        tags: TagsArg = None,
        limit: Annotated[
            int, Field(description="At most this many samples", ge=1, le=MAX_TELEMETRY_SAMPLES)
        ] = 1000,
        newest_first: Annotated[
            bool, Field(description="The latest samples first (with limit: the latest N)")
        ] = False,
    ) -> dict[str, Any]:
        """Read raw telemetry samples (decrypted) of a room within [since, until), oldest
        first: time, metric, value, tags. `more` is true when the limit cut the result.
        For long ranges prefer aggregate_telemetry (per-bucket statistics)."""
        rid = await self.rt.room(room)
        since_ms, until_ms = _time_range(since, until)
        tel = self._c.telemetry
        if metric is not None:
            metrics = [metric]
            fresh = True  # query catches the room up
        else:
            metrics = sorted({i.metric for i in await tel.series(rid)})  # catches up
            fresh = False
        streams: list[list[Sample]] = []
        for m in metrics:
            streams.append(
                await tel.query(
                    rid,
                    m,
                    since=since_ms or 0,
                    until=until_ms,
                    tags=tags,
                    limit=limit + 1,
                    newest_first=newest_first,
                    catch_up=fresh,
                )
            )
        merged = list(heapq.merge(*streams, key=lambda s: s.ts, reverse=newest_first))
        return {
            "room_id": rid,
            "metric": metric,
            "samples": [_sample_json(s) for s in merged[:limit]],
            "more": len(merged) > limit,
        }

    async def aggregate_telemetry(
        self,
        room: RoomArg,
        metric: MetricArg,
        since: Annotated[
            str | int,
            Field(
                description="Start of the first bucket: ISO 8601 time (e.g. "
                "2025-05-01T12:00:00Z) or milliseconds since the epoch"
            ),
        ],
        step: Annotated[
            str | int,
            Field(
                description="Bucket width: milliseconds, or a duration such as '30s', '5m', "
                "'1h', '1d'"
            ),
        ],
        until: TimeArg = None,
        tags: TagsArg = None,
    ) -> dict[str, Any]:
        """Aggregate a telemetry metric per time bucket [start, start + step) from `since`
        to `until` (default now): count, min, max, mean and last value of each bucket.
        Buckets without samples are left out. All series of the metric matching `tags`
        are aggregated together."""
        rid = await self.rt.room(room)
        since_ms, until_ms = _time_range(since, until)
        assert since_ms is not None
        end = until_ms if until_ms is not None else now_ms() + 1
        if end <= since_ms:
            raise ValidationError("until must be after since")
        step_ms = parse_step(step)
        if -(-(end - since_ms) // step_ms) > MAX_TELEMETRY_BUCKETS:
            raise ValidationError(
                f"that range holds more than {MAX_TELEMETRY_BUCKETS:,} buckets of {step_ms} ms: "
                "choose a larger step or a shorter range"
            )
        buckets = await self._c.telemetry.aggregate(
            rid, metric, since=since_ms, until=end, step=step_ms, tags=tags
        )
        return {
            "room_id": rid,
            "metric": metric,
            "since": since_ms,
            "until": end,
            "step_ms": step_ms,
            "buckets": [_bucket_json(b, step_ms) for b in buckets],
        }

    async def append_telemetry(
        self,
        room: RoomArg,
        samples: Annotated[
            list[TelemetrySampleArg],
            Field(
                description="The samples to append", min_length=1, max_length=MAX_TELEMETRY_SAMPLES
            ),
        ],
        wait_seconds: Annotated[
            float,
            Field(
                description="Wait at most this long for the homeserver to acknowledge them",
                ge=0,
                le=120,
            ),
        ] = 30,
    ) -> dict[str, Any]:
        """Append telemetry samples to a room (end-to-end encrypted, batched). They are
        durable in the agent's outbox on return and sent even if acknowledgement times
        out; `acknowledged` says whether the homeserver has them already."""
        rid = await self.rt.room(room, sends=True)
        rows = [
            (
                parse_time(s.ts, f"samples[{i}].ts") if s.ts is not None else None,
                s.metric,
                s.value,
                s.tags,
            )
            for i, s in enumerate(samples)
        ]
        tel = self._c.telemetry
        n = await tel.append_many(rid, rows)
        acknowledged = True
        try:
            await tel.flush(timeout=wait_seconds)
        except TimeoutError:
            acknowledged = False
        return {"room_id": rid, "appended": n, "acknowledged": acknowledged}


def _time_range(since: str | int | None, until: str | int | None) -> tuple[int | None, int | None]:
    since_ms, until_ms = parse_time(since, "since"), parse_time(until, "until")
    if since_ms is not None and until_ms is not None and until_ms <= since_ms:
        raise ValidationError(f"until ({until!r}) must be after since ({since!r})")
    return since_ms, until_ms


def parse_step(step: str | int) -> int:
    """A bucket width in ms: a positive number of ms, or '500ms', '30s', '5m', '1h', '1d'."""
    if isinstance(step, int) and not isinstance(step, bool):
        ms = step
    elif isinstance(step, str):
        m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h|d)?\s*", step)
        if m is None:
            raise ValidationError(
                f"step must be milliseconds or a duration such as '30s', '5m', '1h', '1d'; "
                f"got {step!r}"
            )
        ms = int(m.group(1)) * _UNITS_MS[m.group(2) or "ms"]
    else:
        raise ValidationError("step must be milliseconds or a duration such as '5m'")
    if ms < 1:
        raise ValidationError("step must be at least 1 ms")
    return ms


def _sample_json(s: Sample) -> dict[str, Any]:
    return {
        "ts": s.ts,
        "time": iso(s.ts),
        "metric": s.metric,
        "value": s.value,
        "tags": dict(s.tags),
    }


def _bucket_json(b: Bucket, step: int) -> dict[str, Any]:
    return {
        "start": b.start,
        "start_time": iso(b.start),
        "end": b.start + step,
        "count": b.count,
        "min": b.min,
        "max": b.max,
        "mean": b.mean,
        "last": b.last,
        "last_ts": b.last_ts,
        "last_time": iso(b.last_ts),
    }
